r"""Trains a continual-learning method on a benchmark's task sequence.

    python -m trainers.train --method=ewc --benchmark=split_mnist \
        --model_dir=/tmp/ewc_split [--epochs=N] [--batch_size=N] [--lr=F] \
        [--seed=N] [--num_tasks=N] [--strategy=default|mirrored] \
        [--num_cpu_devices=N] [method flags...]

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

from flags import common

FLAGS = flags.FLAGS
common.define_run_flags()
# `--help` lists the main module's key flags: make the shared ones key here.
flags.adopt_module_key_flags(common)

USAGE_ERROR = 2


def _fail(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


_HELP_FLAGS = ("help", "h", "?", "helpshort", "helpfull", "helpxml")


def parse_flags(argv):
    """absl's parser, but a bad flag exits with status 2 and one line."""
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


def build_config():
    """The frozen RunConfig of the command line; exits 2 when it is bad."""
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
        return resolve_config(
            method_cls, FLAGS.benchmark, common.config_overrides(FLAGS)
        )
    except (ConfigError, UnknownMethodError) as e:
        _fail(str(e))


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {' '.join(argv[1:])}; flags take the "
              "form --name=value.")
    config = build_config()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    # Logical CPU devices must exist before TensorFlow runs any op.
    from cl_zoo import train_lib

    train_lib.split_cpu(config.num_cpu_devices)
    from cl_zoo import benchmarks
    from cl_zoo.config import ConfigError

    try:
        # Load the data before the run touches --model_dir: a bad
        # --num_tasks or missing data must leave no trace behind (and must
        # not let --overwrite delete the previous run first).
        benchmark = benchmarks.get_benchmark(
            config.benchmark,
            num_tasks=config.num_tasks,
            seed=config.seed,
            data_dir=config.data_dir,
        )
        run = train_lib.ContinualRun(config, benchmark=benchmark)
    except (
        benchmarks.BenchmarkError, ConfigError, train_lib.RunStateError
    ) as e:
        _fail(str(e))
    try:
        run.run()
    except train_lib.RunStateError as e:
        _fail(str(e))
    logging.info("Done: %s", config.model_dir)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
