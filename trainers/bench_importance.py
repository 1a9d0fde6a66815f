r"""Times a vectorized importance against a per-example Python loop.

    python -m trainers.bench_importance [--kind=spp|mas|ewc] \
        [--examples=10000] [--loop_examples=10000] [--chunk_size=128]

The network is the SPP paper's 784-512-256-10 MLP (one head per task, task
0's head), the data 10,000 MNIST-shaped inputs (random pixels: the cost
does not depend on their values). Both ways compute the same per-example
terms (SPP's clipped pruning cost of the entropy gradient, MAS's absolute
gradient of the output norm or EWC's squared log-likelihood gradient) and
average them:

- vectorized: `tf.vectorized_map` over chunks inside one `tf.function`, as
  `cl_zoo.consolidation` does;
- loop: a Python loop calling a traced one-example gradient function.

Checks that both agree, then prints seconds for each and the ratio
loop / vectorized. `--loop_examples` below `--examples` times the loop on
the first examples only and scales it up (said in the output).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("kind", "spp", ["spp", "mas", "ewc"], "Which importance.")
flags.DEFINE_integer("examples", 10000, "Examples the importance averages.")
flags.DEFINE_integer("loop_examples", 10000, "Examples the loop is timed on.")
flags.DEFINE_integer("chunk_size", 128, "Examples per vectorized chunk.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and the data.")


def main(argv):
    del argv
    from cl_zoo.startup import import_tensorflow_quietly

    import_tensorflow_quietly()  # no C++ start-up notices on stderr
    import keras
    import numpy as np
    import tensorflow as tf

    from cl_zoo.consolidation import EWC, MAS, SPP
    from cl_zoo.consolidation import importance as importance_lib
    from cl_zoo.consolidation.per_example import mean_over_examples
    from cl_zoo.methods import get_method

    keras.utils.set_random_seed(FLAGS.seed)
    task_classes = [[2 * t, 2 * t + 1] for t in range(5)]
    consolidation = {"spp": SPP(1.0), "mas": MAS(1.0),
                     "ewc": EWC(1.0)}[FLAGS.kind]
    model = get_method("finetune")(
        input_shape=(28, 28, 1), num_classes=10, task_classes=task_classes,
        head="multi", hidden_units=(512, 256), consolidation=consolidation,
    )
    model.build_for_inputs()
    consolidation.build(model)
    variables = consolidation.params
    rng = np.random.default_rng(FLAGS.seed)
    n = FLAGS.examples
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 2, n)
    ids = np.zeros(n, "int32")
    dataset = tf.data.Dataset.from_tensor_slices(
        ({"x": x, "task": ids}, y)).batch(FLAGS.chunk_size).cache()
    if FLAGS.kind == "ewc":
        chunk_fn = consolidation._fisher_fn

        def objective(logits, label):
            return tf.gather(tf.nn.log_softmax(logits), label)

        def term(g, w):
            return tf.square(g)
    else:
        chunk_fn = consolidation._chunk_fn
        if FLAGS.kind == "spp":
            objective = importance_lib.output_entropy
            term = importance_lib.spp_term
        else:
            objective = importance_lib.squared_output_norm
            term = importance_lib.mas_term

    def vectorized():
        return mean_over_examples(chunk_fn, variables, dataset, n)

    @tf.function
    def one_example(xi, ti, yi):
        with tf.GradientTape() as tape:
            logits = model({"x": xi[None], "task": ti[None]}, training=False)
            value = objective(logits[0], yi)
        grads = tape.gradient(value, variables)
        return [term(g, w) for g, w in zip(grads, variables)]

    def loop(count):
        totals = [np.zeros(v.shape, np.float32) for v in variables]
        for i in range(count):
            terms = one_example(x[i], ids[i], y[i])
            totals = [t + s.numpy() for t, s in zip(totals, terms)]
        return [t / count for t in totals]

    # Warm-ups trace both functions.
    vectorized()
    loop(2)
    start = time.perf_counter()
    fast = vectorized()
    fast_seconds = time.perf_counter() - start
    count = min(FLAGS.loop_examples, n)
    start = time.perf_counter()
    slow = loop(count)
    loop_seconds = (time.perf_counter() - start) * n / count
    if count == n:
        for a, b in zip(fast, slow):
            np.testing.assert_allclose(a.numpy(), b, rtol=2e-3, atol=1e-7)
        agreement = "the two agree (rtol 2e-3)"
    else:
        agreement = f"loop timed on {count} examples and scaled to {n}"
    params = sum(int(np.prod(v.shape)) for v in variables)
    print(
        f"{FLAGS.kind} importance of a 784-512-256-10 MLP ({params} "
        f"parameters) over {n} examples: vectorized {fast_seconds:.2f} s, "
        f"per-example loop {loop_seconds:.2f} s, ratio "
        f"{loop_seconds / fast_seconds:.1f}x; {agreement}."
    )


if __name__ == "__main__":
    app.run(main)
