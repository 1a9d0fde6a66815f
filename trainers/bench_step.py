r"""Times a method's training step against a plain Keras MLP of the same shape.

    python -m trainers.bench_step --method=bd_ewc --benchmark=split_mnist \
        [--steps=200] [--repeats=5] [--batch_size=128] \
        [--set=bias_hidden=200,consolidation=none]

Both models get the same layers' shapes, optimizer, batch size and in-memory
batches, and are timed in alternation in one process (`model.fit` over a
fixed number of steps after a warm-up; median and minimum of the repeats,
the minimum being the least disturbed by other processes). The method's
consolidation state is filled (as after a first task) so its penalty is
really computed. Prints milliseconds per step and the ratio
method / plain Keras, twice: in wall-clock time, and in the CPU time of
this process (all its threads). On a shared machine the CPU time is the
steadier of the two: another process that takes a core stretches the wall
clock but not the work this process does.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("method", "bd_ewc", "Method to time.")
flags.DEFINE_string("benchmark", "split_mnist", "Benchmark whose shapes and "
                    "defaults to use.")
flags.DEFINE_integer("steps", 200, "Training steps per timing.")
flags.DEFINE_integer("repeats", 5, "Timings per model (median reported).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_boolean("jit_compile", False, "Compile both models' train "
                     "steps with XLA.")
flags.DEFINE_list("set", [], "Settings of the method's run config that "
                  "win over its defaults, as KEY=VALUE pairs (e.g. "
                  "bias_hidden=200,consolidation=none); a list takes ':' "
                  "between its items (generator_capacity=6:2.5).")


def _parse_settings(pairs):
    """`["k=v", ...]` into a dict typed by the settings' declarations."""
    from cl_zoo.config import ConfigError, all_settings

    settings = all_settings()
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in settings:
            raise ConfigError(
                f"--set expects KEY=VALUE with KEY a run setting; got "
                f"{pair!r}."
            )
        try:
            out[key] = settings[key].parse(text)
        except ValueError:
            raise ConfigError(
                f"--set {key}: cannot read {text!r} as "
                f"{settings[key].type_name}."
            ) from None
    return out


def _plain_mlp(input_shape, hidden_units, num_classes, activation):
    import keras

    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    layers += [keras.layers.Dense(u, activation=activation)
               for u in hidden_units]
    layers.append(keras.layers.Dense(num_classes))
    return keras.Sequential(layers)


def _time_fit(model, dataset, steps):
    """`(wall seconds, CPU seconds)` per step of `steps` steps of `fit`."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
              shuffle=False)
    return ((time.perf_counter() - wall) / steps,
            (time.process_time() - cpu) / steps)


def _report(label, method, plain):
    """Prints one clock's figures; `method`, `plain`: seconds per step."""
    med = {k: 1000 * statistics.median(v)
           for k, v in (("method", method), ("plain", plain))}
    low = {k: 1000 * min(v) for k, v in (("method", method), ("plain", plain))}
    print(f"{label}: {FLAGS.method} {med['method']:.2f} ms/step (median), "
          f"{low['method']:.2f} (min); plain Keras MLP {med['plain']:.2f} "
          f"(median), {low['plain']:.2f} (min)")
    print(f"{label}: ratio {FLAGS.method} / plain: "
          f"{med['method'] / med['plain']:.3f} (median), "
          f"{low['method'] / low['plain']:.3f} (min)")


def main(argv):
    del argv
    from cl_zoo.startup import import_tensorflow_quietly

    import_tensorflow_quietly()  # no C++ start-up notices on stderr
    import numpy as np
    import tensorflow as tf

    from cl_zoo import benchmarks
    from cl_zoo.config import ConfigError, resolve_config
    from cl_zoo.losses import make_loss
    from cl_zoo.methods import UnknownMethodError, get_method
    from cl_zoo.train_lib import make_optimizer

    tf.get_logger().setLevel("ERROR")
    try:
        cls = get_method(FLAGS.method)
        settings = _parse_settings(FLAGS.set)
        config = resolve_config(
            cls, FLAGS.benchmark,
            {**settings, "batch_size": FLAGS.batch_size},
        )
        bm = benchmarks.get_benchmark(FLAGS.benchmark, seed=config.seed)
    except (benchmarks.BenchmarkError, ConfigError,
            UnknownMethodError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    model = cls.from_run_config(config, bm)
    x, y = bm.train_arrays(0, head=model.label_mode,
                           limit=FLAGS.batch_size * 8)
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(FLAGS.batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    loss = make_loss(config.loss)

    model.build_for_inputs()
    model.compile(optimizer=make_optimizer(config), loss=loss,
                  jit_compile=FLAGS.jit_compile)
    model.build_optimizers()
    model.begin_task(0, bm)
    if model.consolidation is not None:
        # Fill the penalty's state, as after a first task, so it is non-zero.
        model.consolidation.end_task(model, 0, bm)
        model.begin_task(1, bm)

    width = bm.num_classes if config.head == "single" else bm.max_task_classes
    plain = _plain_mlp(bm.input_shape, config.hidden_units, width,
                       config.activation)
    plain.compile(optimizer=make_optimizer(config), loss=loss,
                  jit_compile=FLAGS.jit_compile)

    times = {"method": [], "plain": []}
    for m in (model, plain):  # warm-up: tracing
        _time_fit(m, dataset, 20)
    for _ in range(FLAGS.repeats):
        times["method"].append(_time_fit(model, dataset, FLAGS.steps))
        times["plain"].append(_time_fit(plain, dataset, FLAGS.steps))
    params = sum(int(np.prod(v.shape)) for v in plain.trainable_variables)
    print(f"benchmark {FLAGS.benchmark}, layers {config.hidden_units}, "
          f"batch {FLAGS.batch_size}, optimizer {config.optimizer}, "
          f"{params} weights, {FLAGS.repeats} x {FLAGS.steps} steps")
    if settings:
        print("set: " + ", ".join(
            f"{key}={getattr(config, key)}" for key in settings))
    for label, clock in (("wall", 0), ("cpu", 1)):
        _report(label, [t[clock] for t in times["method"]],
                [t[clock] for t in times["plain"]])

if __name__ == "__main__":
    app.run(main)
