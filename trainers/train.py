r"""Trains a continual-learning method on a benchmark's task sequence.

    python -m trainers.train --method=ewc --benchmark=split_mnist \
        --model_dir=/tmp/ewc_split [--epochs=N] [--batch_size=N] [--lr=F] \
        [--seed=N] [--num_tasks=N] [--num_cpu_devices=N] \
        [--strategy=default|mirrored|multi_worker_mirrored] [method flags...]

A sweep runs the same command once per value of one setting, each run in
MODEL_DIR/KEY=VALUE (finished ones are kept, unfinished ones resume):

    python -m trainers.train --method=spp --benchmark=split_mnist \
        --model_dir=/tmp/spp_sweep --sweep=spp_lambda=0.01,0.1,1,4,12

Writes results.json, TensorBoard summaries (`tensorboard --logdir
MODEL_DIR/summaries`) and SavedModels under MODEL_DIR/export. Unset flags take
the paper's settings for the (method, benchmark) pair. A bad name or value
ends the run before training with a one-line error and exit status 2.
"""

from __future__ import annotations

import os
import sys

# TensorFlow's C++ start-up chatter hides the progress bars; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging

from cl_zoo.startup import import_tensorflow_quietly

import_tensorflow_quietly()
from flags import common  # noqa: E402  (after TensorFlow's quiet start)

FLAGS = flags.FLAGS
common.define_run_flags()
flags.DEFINE_string(
    "sweep", None,
    "KEY=V1,V2,...: one run per value of the setting KEY (any flag of this "
    "trainer that takes one value), in MODEL_DIR/KEY=V. Finished runs are "
    "kept (unless --overwrite); tabulate with `python -m trainers.report "
    "--runs='MODEL_DIR/*' --sweep=KEY --plot=sweep.png`.",
)
# `--help` lists the main module's key flags: make the shared ones key here.
flags.adopt_module_key_flags(common)

USAGE_ERROR = 2


def _fail(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


_HELP_FLAGS = ("help", "h", "?", "helpshort", "helpfull", "helpxml")


def _method_help(argv):
    """`--help`: the short, grouped help; with `--method=M [--benchmark=B]`
    that method's settings and the defaults it will use. Exits 0 (returns
    None when no help is asked; `--helpfull` is absl's full list)."""
    words = dict(
        a.lstrip("-").partition("=")[::2] for a in argv[1:]
        if a.startswith("-")
    )
    if not {"help", "h", "?", "helpshort"} & set(words):
        return None
    if "method" not in words:
        print(common.short_help(__doc__, extra=[
            ("Output", "sweep", FLAGS["sweep"].help)]))
        sys.exit(0)
    from cl_zoo.config import ConfigError
    from cl_zoo.methods import UnknownMethodError

    try:
        print(common.method_help(words["method"], words.get("benchmark")))
    except (ConfigError, UnknownMethodError) as e:
        _fail(str(e))
    sys.exit(0)


def parse_flags(argv):
    """absl's parser, but a bad flag exits with status 2 and one line."""
    _method_help(argv)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e}. See --help.")
    except SystemExit as e:
        # absl prints the help asked for, then exits 1; asking is no error.
        asked = any(
            a.lstrip("-").split("=")[0] in _HELP_FLAGS
            for a in argv[1:] if a.startswith("-")
        )
        if asked and e.code == 1:
            sys.exit(0)
        raise


def parse_sweep(text):
    """`KEY=V1,V2` -> (key, [values as the setting's type]); exits 2 if bad."""
    from cl_zoo.config import all_settings

    key, sep, values = (text or "").partition("=")
    settings = all_settings()
    if key not in settings or settings[key].is_list or key in (
            "model_dir", "overwrite", "fast", "strategy", "num_cpu_devices",
            "threads"):
        _fail(f"--sweep={text}: expected KEY=V1,V2,... with KEY a setting "
              "of one value (e.g. spp_lambda, epsilon, epochs, seed).")
    if not sep or not values:
        _fail(f"--sweep={text}: give the values, e.g. --sweep={key}=1,2.")
    try:
        return key, [settings[key].parse(v) for v in values.split(",")]
    except ValueError:
        _fail(f"--sweep={text}: the values of {key} must be of type "
              f"{settings[key].type_name}.")


def build_config(extra=None):
    """The frozen RunConfig of the command line; exits 2 when it is bad.

    Args:
        extra: settings that win over the command line (a sweep's value).
    """
    from cl_zoo import benchmarks
    from cl_zoo.config import ConfigError, resolve_config
    from cl_zoo.methods import UnknownMethodError, get_method, method_names

    if FLAGS.method is None:
        _fail("--method is required; one of: " + ", ".join(method_names()))
    if FLAGS.benchmark is None:
        _fail("--benchmark is required; one of: "
              + ", ".join(benchmarks.BENCHMARKS))
    if FLAGS.model_dir is None:
        _fail("--model_dir is required: the directory the run writes to.")
    try:
        method_cls = get_method(FLAGS.method)
        if FLAGS.benchmark not in benchmarks.BENCHMARKS:
            raise ConfigError(
                f"Unknown benchmark {FLAGS.benchmark!r}; expected one of: "
                f"{', '.join(benchmarks.BENCHMARKS)}."
            )
        overrides = common.config_overrides(FLAGS)
        if overrides["verbose"] is None and not sys.stdout.isatty():
            # A log file or a pipe: one line per epoch, no bar redraws.
            overrides["verbose"] = 2
        return resolve_config(
            method_cls, FLAGS.benchmark, {**overrides, **(extra or {})},
        )
    except (ConfigError, UnknownMethodError) as e:
        _fail(str(e))


def sweep_configs():
    """The configs of the runs to make: one, or one per swept value."""
    if FLAGS.sweep is None:
        return [build_config()]
    import os

    key, values = parse_sweep(FLAGS.sweep)
    return [
        build_config({
            key: value,
            "model_dir": os.path.join(FLAGS.model_dir, f"{key}={value}"),
        })
        for value in values
    ]


INTERRUPTED = 130  # the shell's status for a run ended by SIGINT
WORKER_LOST = 1  # a multi-worker run whose cluster lost a worker


def main(argv):
    """`_main`, with Ctrl-C ending in one line that says how to resume."""
    import signal

    from cl_zoo import train_lib

    started = []  # the model_dirs of the runs that started

    def on_interrupt(signum, frame):
        # A second Ctrl-C ends the process at once.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        train_lib.StopRequest.request()

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        _main(argv, started)
    except KeyboardInterrupt:
        if started:
            where = (f"{started[-1]} keeps every finished epoch; rerun the "
                     "same command to resume.")
        else:
            where = "no run had started; nothing was written."
        print(f"\ninterrupted: {where}", file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED)


def _main(argv, started):
    if len(argv) > 1:
        _fail(f"unexpected arguments {' '.join(argv[1:])}; flags take the "
              "form --name=value.")
    configs = sweep_configs()
    config = configs[0]
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    # Logical CPU devices must exist before TensorFlow runs any op.
    from cl_zoo import train_lib

    train_lib.set_threads(config)
    train_lib.split_cpu(config.num_cpu_devices)
    from cl_zoo import benchmarks
    from cl_zoo.config import ConfigError

    try:
        # Before any other TensorFlow op: a multi-worker strategy sets up
        # the cluster's collectives at start.
        strategy = train_lib.make_strategy(config)
    except ConfigError as e:
        _fail(str(e))

    benchmark, loaded_key = None, None
    for config in configs:
        if len(configs) > 1:
            try:
                progress = (None if config.overwrite else
                            train_lib.read_progress(config.model_dir))
            except train_lib.RunStateError as e:
                _fail(str(e))
            if (progress and progress.get("status") == "finished"
                    and not config.overwrite):
                print(f"{config.model_dir}: finished already, kept.",
                      flush=True)
                continue
            print(f"Sweep run {config.model_dir}", flush=True)
        try:
            # Load the data before the run touches --model_dir: a bad
            # --num_tasks or missing data must leave no trace behind (and
            # must not let --overwrite delete the previous run first).
            data_key = (config.num_tasks, config.seed, config.data_dir,
                        tuple(benchmarks.benchmark_options(config).items()))
            if benchmark is None or data_key != loaded_key:
                benchmark = benchmarks.run_benchmark(config)
                loaded_key = data_key
            started.append(config.model_dir)
            run = train_lib.ContinualRun(config, benchmark=benchmark,
                                         strategy=strategy)
        except (
            benchmarks.BenchmarkError, ConfigError, train_lib.RunStateError
        ) as e:
            _fail(str(e))
        try:
            run.run()
        except train_lib.RunStateError as e:
            _fail(str(e))
        except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.AbortedError) as e:
            if config.strategy != "multi_worker_mirrored":
                raise
            # A worker died or cannot be reached: the collectives fail.
            print(f"error: a worker of the cluster stopped or cannot be "
                  f"reached ({type(e).__name__} in a collective); restart "
                  "every worker with the same command to resume from the "
                  "last finished epoch.", file=sys.stderr, flush=True)
            sys.exit(WORKER_LOST)
        logging.info("Done: %s", config.model_dir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
