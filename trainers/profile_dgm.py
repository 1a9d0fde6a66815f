r"""Profiles DGM's training step on class-incremental MNIST at one task.

    python -m trainers.profile_dgm --task=T [--steps=N] [--components] [--fit]

Builds `--method=dgm` for `class_incremental_mnist` (its defaults, or its
`--fast` preset) and brings it to task T without training the earlier
tasks: each of them reserves half of its layer's free units (and half of
the units it reuses), as the real run's growth does, so that task T has
the real run's layer widths and replays as many past classes.

`--fit` times `model.fit` over `--steps` steps of task T's data (one
timing per step, from a callback): the first step (tracing included), and
the median and mean of the others, in CPU time of this process (all its
threads) and in wall-clock time.

`--components` times the parts of the step apart, each as its own
`tf.function` traced once and then run `--reps` times (median): the
current task's fake generation; the replay's generation, alone and with
its jitter; the critic's and classifier's forward and backward pass over
real, fake and replayed images (without the gradient penalty); the
gradient penalty (a double backward pass); the generator's forward and
backward pass; and the mask bookkeeping (the gates' gradient
multipliers). The parts are timed outside the step, so they do not add up
to it exactly: what they leave out (the optimizers' updates, the metrics,
`fit`'s loop) shows as the rest when `--fit` is given too.

With neither flag, both run. Prints the table (ms per step, CPU and wall,
and each part's share of the whole step: `fit`'s median step with
`--fit`, else the sum of the parts) and writes the figures to `--out` as
JSON with the command line that made them. `--reps` (default 5): runs
of each part; `--fast`: DGM's quick preset; `--out=FILE`: the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

BENCHMARK = "class_incremental_mnist"
# Component key -> its row in the table, in the table's order. The rows
# but the nested ones add up to the step ("gen_replay" is part of
# "gen_replay_jitter").
COMPONENTS = {
    "gen_fake": "fake generation (current task)",
    "gen_replay_jitter": "replay generation + jitter",
    "gen_replay": "replay generation",
    "d_fwd_bwd": "critic/classifier fwd+bwd (no GP)",
    "gp": "gradient penalty (double backprop)",
    "g_step_grads": "generator fwd+bwd",
    "g_multipliers": "mask bookkeeping (gate multipliers)",
}
NESTED = {"gen_replay": "gen_replay_jitter"}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m trainers.profile_dgm",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=int, default=0,
                        help="task profiled (0-9); the earlier ones are "
                        "emulated without training")
    parser.add_argument("--steps", type=int, default=20,
                        help="steps of model.fit timed with --fit (>= 2)")
    parser.add_argument("--components", action="store_true",
                        help="time the parts of the step apart")
    parser.add_argument("--fit", action="store_true",
                        help="time model.fit step by step")
    parser.add_argument("--reps", type=int, default=5,
                        help="timed runs of each part (median reported)")
    parser.add_argument("--fast", action="store_true",
                        help="DGM's --fast preset instead of its defaults")
    parser.add_argument("--out", default=None,
                        help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not 0 <= args.task < 10:
        parser.error(f"--task must be in 0..9; got {args.task}")
    if args.steps < 2:
        parser.error(f"--steps must be at least 2; got {args.steps}")
    if args.reps < 1:
        parser.error(f"--reps must be at least 1; got {args.reps}")
    if not (args.fit or args.components):
        args.fit = args.components = True
    return args


def build_at_task(task, fast, model_dir):
    """DGM at the start of `task`, the earlier tasks emulated.

    Returns `(model, benchmark, config)`.
    """
    import keras
    import numpy as np

    from cl_zoo import benchmarks, train_lib
    from cl_zoo.config import resolve_config
    from cl_zoo.methods import get_method

    cls = get_method("dgm")
    config = resolve_config(cls, BENCHMARK,
                            {"model_dir": model_dir, "fast": fast})
    bm = benchmarks.run_benchmark(config.to_dict())
    keras.utils.set_random_seed(0)
    model = cls.from_run_config(config, bm)
    model.build_for_inputs()
    model.compile(optimizer=train_lib.make_optimizer(config))
    model.build_optimizers()
    for t in range(task):
        model.begin_task(t, bm)
        # Task t's mask: half of the free units and half of the reused ones.
        for layer in model.generator.masked_layers:
            active = int(layer.active.numpy())
            cumulative = layer.cumulative.numpy()
            free = np.where(cumulative[:active] == 0)[0]
            reused = np.where(cumulative[:active] > 0)[0]
            embedding = -np.ones(layer.capacity, np.float32)
            embedding[free[:max(1, len(free) // 2)]] = 1.0
            embedding[reused[:len(reused) // 2]] = 1.0
            table = layer.embedding.numpy()
            table[t] = embedding
            layer.embedding.assign(table)
        model.end_task(t, bm)
    model.begin_task(task, bm)
    return model, bm, config


def _step_timer():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Wall and CPU seconds of every training batch."""

        def __init__(self):
            super().__init__()
            self.wall, self.cpu = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self._wall, self._cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self.wall.append(time.perf_counter() - self._wall)
            self.cpu.append(time.process_time() - self._cpu)

    return StepTimer()


def time_fit(model, dataset, steps):
    """Seconds per step of `model.fit` over `steps` steps: the first, and
    the median and mean of the others, in wall and CPU time."""
    import numpy as np

    timer = _step_timer()
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset.repeat(), steps_per_epoch=steps, epochs=1, verbose=0,
              shuffle=False, callbacks=[timer])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    w, c = np.array(timer.wall), np.array(timer.cpu)
    return {
        "first_wall": float(w[0]), "first_cpu": float(c[0]),
        "median_wall": float(np.median(w[1:])),
        "median_cpu": float(np.median(c[1:])),
        "mean_wall": float(np.mean(w[1:])),
        "mean_cpu": float(np.mean(c[1:])),
        "total_wall": wall, "total_cpu": cpu,
    }


def _median_seconds(fn, args, reps):
    """`{"wall", "cpu"}`: median seconds of `fn(*args)` (after a first,
    tracing call), its results fetched."""
    import numpy as np
    import tensorflow as tf

    fn(*args)
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args)
        for value in tf.nest.flatten(result, expand_composites=True):
            if value is not None:
                value.numpy()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall": float(np.median(walls)), "cpu": float(np.median(cpus))}


def time_components(model, dataset, reps):
    """`{key: {"wall", "cpu"}}` for every key of `COMPONENTS`: the parts of
    `model.train_step` on one batch of `dataset`, each timed apart."""
    import keras
    import tensorflow as tf

    from cl_zoo.augment import jitter

    m = model
    x, y = next(iter(dataset.repeat()))
    if isinstance(x, dict):
        x = x["x"]
    x = tf.cast(x, tf.float32)
    y = tf.cast(tf.reshape(y, (-1,)), tf.int32)
    batch = tf.shape(x)[0]
    unused = tf.zeros((batch,), tf.int32)

    @tf.function
    def gen_fake():
        return m.generate(y, m._noise(batch, m.noise_dim, 1), m.task,
                          m.gate_scale(), batch_stats=True)

    @tf.function
    def gen_replay():
        replay_y, replay_n = m._replay_labels(batch)
        return m.generate(replay_y, m._noise(replay_n, m.noise_dim, 2))

    @tf.function
    def gen_replay_jitter():
        replay_y, replay_n = m._replay_labels(batch)
        replay = m.generate(replay_y, m._noise(replay_n, m.noise_dim, 2))
        return jitter(replay, m._noise(replay_n, 4, 5, "uniform"),
                      m.replay_jitter)

    fake = gen_fake()
    replay = gen_replay_jitter()
    replay_n = tf.shape(replay)[0]

    @tf.function
    def d_fwd_bwd(fake, replay):
        with tf.GradientTape() as tape:
            h = m.features(tf.concat([x, fake, replay], 0),
                           tf.zeros((2 * batch + replay_n,), tf.int32),
                           training=True)
            loss = (tf.reduce_mean(m.critic(h))
                    + tf.reduce_mean(m.classify(h)))
        return tape.gradient(loss, m.discriminator_variables())

    @tf.function
    def gp(fake):
        mix = m._noise(batch, 1, 3, kind="uniform")[:, :, None, None]
        x_hat = mix * x + (1.0 - mix) * fake
        with tf.GradientTape() as tape:
            with tf.GradientTape() as inner:
                inner.watch(x_hat)
                critic = m.critic(m.features(x_hat, unused, training=True))
            slopes = inner.gradient(critic, x_hat)
            norms = tf.sqrt(tf.reduce_sum(tf.square(slopes), [1, 2, 3])
                            + 1e-12)
            penalty = tf.reduce_mean(tf.square(norms - 1.0))
        return tape.gradient(penalty, m.discriminator_variables())

    @tf.function
    def g_step_grads():
        s = m.gate_scale()
        with tf.GradientTape() as tape:
            fake = m.generate(y, m._noise(batch, m.noise_dim, 4), m.task, s,
                              batch_stats=True)
            h = m.features(fake, unused, training=True)
            loss = (-tf.reduce_mean(m.critic(h))
                    + tf.reduce_mean(
                        keras.losses.sparse_categorical_crossentropy(
                            y, m.classify(h), from_logits=True))
                    + m.generator.sparsity(m.task, s))
        return tape.gradient(loss, m.generator_variables())

    @tf.function
    def g_multipliers():
        return list(m.generator.gradient_multipliers(
            m.gate_scale(), m.s_max).values())

    calls = {
        "gen_fake": (gen_fake, ()),
        "gen_replay": (gen_replay, ()),
        "gen_replay_jitter": (gen_replay_jitter, ()),
        "d_fwd_bwd": (d_fwd_bwd, (fake, replay)),
        "gp": (gp, (fake,)),
        "g_step_grads": (g_step_grads, ()),
        "g_multipliers": (g_multipliers, ()),
    }
    out = {}
    for key, (fn, args) in calls.items():
        out[key] = _median_seconds(fn, args, reps)
        print(f"timed {COMPONENTS[key]}", flush=True)
    return out


def format_table(profile):
    """The profile as a Markdown table: ms per step, CPU and wall, and each
    row's share of the whole step."""
    fit = profile.get("fit")
    components = profile.get("components")
    rows = []
    if components:
        parts = [k for k in COMPONENTS if k not in NESTED]
        total = {clock: sum(components[k][clock] for k in parts)
                 for clock in ("cpu", "wall")}
        if fit:
            whole = {"cpu": fit["median_cpu"], "wall": fit["median_wall"]}
        else:
            whole = total
        for key, label in COMPONENTS.items():
            if key in NESTED:
                label = f"- of which {label}"
            rows.append((label, components[key], whole))
        rows.append(("sum of the parts", total, whole))
        if fit:
            rest = {c: whole[c] - total[c] for c in ("cpu", "wall")}
            rows.append(("rest (optimizer updates, metrics, fit's loop)",
                         rest, whole))
    if fit:
        whole = {"cpu": fit["median_cpu"], "wall": fit["median_wall"]}
        rows.append(("whole step: model.fit, median", whole, whole))
        rows.append(("whole step: model.fit, mean",
                     {"cpu": fit["mean_cpu"], "wall": fit["mean_wall"]},
                     whole))
        rows.append(("first step of fit (tracing)",
                     {"cpu": fit["first_cpu"], "wall": fit["first_wall"]},
                     None))
    lines = ["| part | CPU ms/step | wall ms/step | CPU share | "
             "wall share |", "|---|---|---|---|---|"]
    for label, seconds, whole in rows:
        share = ["", ""]
        if whole is not None:
            share = [f"{100 * seconds[c] / whole[c]:.0f}%"
                     if whole[c] > 0 else "" for c in ("cpu", "wall")]
        lines.append(f"| {label} | {1e3 * seconds['cpu']:.1f} | "
                     f"{1e3 * seconds['wall']:.1f} | {share[0]} | "
                     f"{share[1]} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from cl_zoo.startup import import_tensorflow_quietly

    import_tensorflow_quietly()  # no C++ start-up notices on stderr
    import tensorflow as tf

    from cl_zoo.benchmarks import BenchmarkError

    tf.get_logger().setLevel("ERROR")
    command = shlex.join(["python", "-m", "trainers.profile_dgm", *argv])
    with tempfile.TemporaryDirectory(prefix="profile_dgm_") as model_dir:
        try:
            model, bm, config = build_at_task(args.task, args.fast,
                                              model_dir)
        except BenchmarkError as e:  # MNIST unavailable among others
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
        units = {layer.name: int(layer.active.numpy())
                 for layer in model.generator.masked_layers}
        dataset = model.train_dataset(args.task, bm, config.batch_size,
                                      seed=0)
        profile = {
            "command": command, "task": args.task, "units": units,
            "batch_size": config.batch_size,
            "steps_per_epoch": int(dataset.cardinality()),
        }
        print(f"{command}\nDGM, {BENCHMARK}, task {args.task}: generator "
              f"units {units}, batch {config.batch_size}, "
              f"{profile['steps_per_epoch']} steps/epoch", flush=True)
        if args.fit:
            profile["fit"] = time_fit(model, dataset, args.steps)
            print(f"timed {args.steps} steps of fit", flush=True)
        if args.components:
            profile["components"] = time_components(model, dataset,
                                                    args.reps)
    details = []
    if args.fit:
        details.append(f"fit: median of steps 2..{args.steps}")
    if args.components:
        runs = "1 run" if args.reps == 1 else f"median of {args.reps} runs"
        details.append(f"parts: {runs}")
    print(f"\nDGM step at task {args.task} ({'; '.join(details)}):")
    print(format_table(profile), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(profile, f, indent=1)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
