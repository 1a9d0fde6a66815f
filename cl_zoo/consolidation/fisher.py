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

from cl_zoo.consolidation.dense_path import DensePath
from cl_zoo.consolidation.per_example import (
    jit_compile_ok,
    mean_over_examples,
    per_example_terms,
)

FISHER_MODES = ("empirical", "true", "expected")


def _log_likelihood(logits, label):
    return tf.gather(tf.nn.log_softmax(logits), label)


def _log_likelihoods(logits, labels):
    """`_log_likelihood` of every row of a batch."""
    return tf.gather(tf.nn.log_softmax(logits), labels, batch_dims=1)


def _per_example_squared_grads(model, variables, x, task_ids, labels,
                               reduce=True):
    """Squared gradients of log p(label | x), per example or summed."""
    return per_example_terms(
        model, variables, x, task_ids, _log_likelihood,
        lambda g, v: tf.square(g), extra=labels, reduce=reduce,
    )


def make_fisher_fn(model, variables, mode="empirical"):
    """A traced function `(x, task_ids, y, seed) -> summed squared grads`.

    Returns per-variable sums over the chunk (divide by the example count).
    """
    if mode not in FISHER_MODES:
        raise ValueError(
            f"Expected a Fisher mode in {FISHER_MODES}. Received: {mode!r}"
        )

    # A dense network's squared per-example gradients cost two matmuls per
    # layer (`dense_path`); other networks take the vectorized path.
    dense = DensePath.of(model, variables) if mode != "expected" else None

    def squared_grads(x, task_ids, labels):
        if dense is not None:
            return dense.sums(x, task_ids, _log_likelihoods, labels)
        return _per_example_squared_grads(model, variables, x, task_ids,
                                          labels)

    # No autograph: the code has no tensor-dependent Python control flow,
    # and converting it took longer than the function's first run.
    @tf.function(reduce_retracing=True, autograph=False,
                 jit_compile=dense is None and jit_compile_ok())
    def chunk_fisher(x, task_ids, y, seed):
        if mode == "empirical":
            return squared_grads(x, task_ids, tf.cast(y, tf.int32))
        logits = model({"x": x, "task": task_ids}, training=False)
        if mode == "true":
            sampled = tf.random.stateless_categorical(
                logits, 1, seed=seed, dtype=tf.int32
            )[:, 0]
            return squared_grads(x, task_ids, sampled)
        # Expected Fisher: sum_c p_c * g_c^2, one vectorized pass per class.
        probs = tf.nn.softmax(logits)
        totals = [tf.zeros_like(v) for v in variables]
        for c in range(logits.shape[-1]):
            label = tf.fill(tf.shape(task_ids), c)
            squares = _per_example_squared_grads(
                model, variables, x, task_ids, label, reduce=False
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
    chunk_fisher = fisher_fn or make_fisher_fn(model, variables, mode)
    return mean_over_examples(
        chunk_fisher, variables, dataset, num_samples, seed=seed
    )
