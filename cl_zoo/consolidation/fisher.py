"""Diagonal Fisher information from per-example gradients, vectorized.

The diagonal Fisher is the mean over examples of the squared gradient of each
example's log-likelihood. The squared gradient of a mini-batch mean is *not*
the diagonal Fisher, so the gradients here are per example, computed with
`tf.vectorized_map` over chunks inside one `tf.function`.

Modes:
- `empirical`: the log-likelihood of the true label.
- `true`: of a label sampled from the model's own predictive distribution
  (the Fisher of the model, as in Kirkpatrick et al. 2017).
- `expected`: the exact expectation over every class of the model's
  distribution (one gradient per class: slower, no sampling noise).
"""

from __future__ import annotations

import tensorflow as tf

FISHER_MODES = ("empirical", "true", "expected")


def _per_example_squared_grads(model, variables, x, task_ids, labels):
    """Per-example squared gradients of log p(label | x), summed over x."""

    def one(args):
        xi, ti, yi = args
        with tf.GradientTape() as tape:
            logits = model({"x": xi[None], "task": ti[None]}, training=False)
            log_probs = tf.nn.log_softmax(logits[0])
            log_likelihood = tf.gather(log_probs, yi)
        grads = tape.gradient(log_likelihood, variables)
        return [
            tf.square(g) if g is not None else tf.zeros_like(v)
            for g, v in zip(grads, variables)
        ]

    squares = tf.vectorized_map(
        one, (x, task_ids, labels), fallback_to_while_loop=False
    )
    return squares


def make_fisher_fn(model, variables, mode="empirical"):
    """A traced function `(x, task_ids, y, seed) -> summed squared grads`.

    Returns per-variable sums over the chunk (divide by the example count).
    """
    if mode not in FISHER_MODES:
        raise ValueError(
            f"Expected a Fisher mode in {FISHER_MODES}. Received: {mode!r}"
        )

    @tf.function(reduce_retracing=True)
    def chunk_fisher(x, task_ids, y, seed):
        if mode == "empirical":
            squares = _per_example_squared_grads(
                model, variables, x, task_ids, tf.cast(y, tf.int32)
            )
            return [tf.reduce_sum(s, axis=0) for s in squares]
        logits = model({"x": x, "task": task_ids}, training=False)
        if mode == "true":
            sampled = tf.random.stateless_categorical(
                logits, 1, seed=seed, dtype=tf.int32
            )[:, 0]
            squares = _per_example_squared_grads(
                model, variables, x, task_ids, sampled
            )
            return [tf.reduce_sum(s, axis=0) for s in squares]
        # Expected Fisher: sum_c p_c * g_c^2, one vectorized pass per class.
        probs = tf.nn.softmax(logits)
        totals = [tf.zeros_like(v) for v in variables]
        for c in range(logits.shape[-1]):
            label = tf.fill(tf.shape(task_ids), c)
            squares = _per_example_squared_grads(
                model, variables, x, task_ids, label
            )
            weight = probs[:, c]
            totals = [
                t + tf.tensordot(weight, s, axes=1)
                for t, s in zip(totals, squares)
            ]
        return totals

    return chunk_fisher


def diagonal_fisher(
    model,
    variables,
    dataset,
    num_samples,
    mode="empirical",
    seed=0,
    fisher_fn=None,
):
    """Mean per-example squared gradients over up to `num_samples` examples.

    Args:
        model: a `ContinualModel` (called with `{"x", "task"}` inputs).
        variables: the variables to estimate the Fisher of.
        dataset: yields `({"x": x, "task": ids}, y)` chunks (64-256 examples
            keep `vectorized_map` fast and its memory small).
        num_samples: examples to use; fewer if the dataset runs out.
        mode: one of `FISHER_MODES`.
        seed: seed of the label sampling of `mode="true"`.
        fisher_fn: a function from `make_fisher_fn` to reuse (its trace is
            kept between calls); made here if not given.

    Returns:
        A list of tensors shaped like `variables`.
    """
    if num_samples < 1:
        raise ValueError(
            f"Expected a positive number of Fisher samples. "
            f"Received: num_samples={num_samples}"
        )
    chunk_fisher = fisher_fn or make_fisher_fn(model, variables, mode)
    totals = [tf.zeros(v.shape, tf.float32) for v in variables]
    seen = 0
    for step, (inputs, y) in enumerate(dataset):
        x, task_ids = inputs["x"], inputs["task"]
        take = min(int(tf.shape(x)[0]), num_samples - seen)
        if take <= 0:
            break
        sums = chunk_fisher(
            x[:take],
            tf.cast(task_ids[:take], tf.int32),
            y[:take],
            tf.constant([seed, step], tf.int32),
        )
        totals = [t + s for t, s in zip(totals, sums)]
        seen += take
    if seen == 0:
        raise ValueError("The Fisher dataset yielded no examples.")
    return [t / seen for t in totals]
