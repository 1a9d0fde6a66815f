"""Per-example gradients, vectorized, and their mean over a task's data.

The importances of EWC (diagonal Fisher), SPP and MAS are means over
examples of a function of *each example's* gradient (a square, an absolute
value, a clipped Taylor term), which the gradient of a mini-batch mean does
not give. `tf.vectorized_map` computes a chunk's per-example gradients in
one batched pass inside one `tf.function`.
"""

from __future__ import annotations

import tensorflow as tf


def per_example_terms(model, variables, x, task_ids, objective, term,
                      extra=None, reduce=True, group=1):
    """`term(grad, variable)` of each example's gradient, summed over x.

    With `group > 1` the gradient is that of the objective summed over each
    run of `group` consecutive examples (a mini-batch's gradient), and the
    terms are of those gradients; `objective` then gets `(group, classes)`
    logits and must sum over them.

    Args:
        model: a `ContinualModel` (called with `{"x", "task"}` inputs).
        variables: the variables to differentiate.
        x: a chunk of examples; `task_ids` their int32 task ids.
        objective: `(logits_row, extra_row) -> scalar`, the function of one
            example's logits whose gradient is taken.
        term: `(grad, variable) -> tensor` shaped like the variable.
        extra: optional per-example tensor passed to `objective` (labels).
        reduce: sum over the chunk; if False, keep a leading example axis.
        group: examples per gradient; the chunk's size must be a multiple.

    Returns:
        A list of tensors shaped like `variables`: the sums over the chunk
        (or the per-example terms stacked, if `reduce` is False).
    """
    if extra is None:
        extra = tf.zeros(tf.shape(task_ids), tf.int32)

    if group > 1:
        x = tf.reshape(x, (-1, group, *x.shape[1:]))
        task_ids = tf.reshape(task_ids, (-1, group))
        extra = tf.reshape(extra, (-1, group))

    def one(args):
        xi, ti, ei = args
        with tf.GradientTape() as tape:
            if group > 1:
                value = objective(model({"x": xi, "task": ti}), ei)
            else:
                logits = model(
                    {"x": xi[None], "task": ti[None]}, training=False
                )
                value = objective(logits[0], ei)
        grads = tape.gradient(value, variables)
        return [
            term(g, v) if g is not None else tf.zeros_like(v)
            for g, v in zip(grads, variables)
        ]

    terms = tf.vectorized_map(
        one, (x, task_ids, extra), fallback_to_while_loop=False
    )
    if not reduce:
        return terms
    return [tf.reduce_sum(t, axis=0) for t in terms]


def task_chunks(model, benchmark, task, chunk_size, seed,
                drop_remainder=False):
    """A task's training data in chunks `({"x", "task"}, y)`, labels in the
    model's label mode, shuffled with a seed of its own per task."""
    return benchmark.train_dataset(
        task,
        chunk_size,
        head=model.label_mode,
        seed=seed + 7919 * (task + 1),
        drop_remainder=drop_remainder,
        with_task_id=True,
    )


def jit_compile_ok():
    """Whether to compile importance functions with XLA.

    XLA fuses the per-example terms with their sum over the chunk instead of
    writing every example's gradient to memory (about 3x faster on CPU for
    a 784-512-256 MLP). Not under a multi-device strategy, where XLA on
    logical CPU devices fails (keras-team/keras#19005).
    """
    return tf.distribute.get_strategy().num_replicas_in_sync == 1


def mean_over_examples(chunk_fn, variables, dataset, num_samples, seed=0,
                       group=1):
    """Means of `chunk_fn`'s per-chunk sums over up to `num_samples` examples.

    Args:
        chunk_fn: `(x, task_ids, y, seed) -> list of sums` (traced once).
        variables: the variables the sums are shaped like.
        dataset: yields `({"x": x, "task": ids}, y)` chunks (64-256 examples
            keep `vectorized_map` fast and its memory small).
        num_samples: examples to use; fewer if the dataset runs out.
        seed: base of the per-chunk seeds handed to `chunk_fn`.
        group: examples per gradient of `chunk_fn` (see `per_example_terms`):
            chunks are cut to whole groups and the mean is over groups.

    Returns:
        A list of tensors shaped like `variables`.
    """
    if num_samples < 1:
        raise ValueError(
            "Expected a positive number of samples. "
            f"Received: num_samples={num_samples}"
        )
    totals = [tf.zeros(v.shape, tf.float32) for v in variables]
    seen = 0
    for step, (inputs, y) in enumerate(dataset):
        x, task_ids = inputs["x"], inputs["task"]
        take = min(int(tf.shape(x)[0]), num_samples - seen)
        take -= take % group
        if take <= 0:
            break
        sums = chunk_fn(
            x[:take],
            tf.cast(task_ids[:take], tf.int32),
            y[:take],
            tf.constant([seed, step], tf.int32),
        )
        totals = [t + s for t, s in zip(totals, sums)]
        seen += take
    if seen == 0:
        raise ValueError("The importance dataset yielded no examples.")
    return [t / (seen // group) for t in totals]
