"""Consolidation penalties as pure functions of parameters and state."""

from __future__ import annotations

import tensorflow as tf
from keras import ops


@tf.custom_gradient
def _weighted_square_sum(param, anchor, importance):
    """`sum(importance * (param - anchor)^2)` with a closed-form gradient.

    The gradient `2 * importance * (param - anchor)` reuses the forward's
    product, one op per tensor instead of autodiff through four; anchors and
    importances are state, not trained, and get no gradient.
    """
    diff = param - anchor
    weighted = importance * diff

    def grad(upstream):
        return 2.0 * upstream * weighted, None, None

    return tf.reduce_sum(weighted * diff), grad


def quadratic_penalty(params, anchors, importances):
    """`sum_i sum(importance_i * (param_i - anchor_i) ** 2)`.

    The penalty of EWC (importance = diagonal Fisher), SI, MAS and SPP
    (importance = their own per-weight estimates).

    Args:
        params: list of current parameter tensors.
        anchors: list of tensors of the same shapes (the old parameters).
        importances: list of non-negative tensors of the same shapes.

    Returns:
        A float32 scalar.
    """
    if not (len(params) == len(anchors) == len(importances)):
        raise ValueError(
            "Expected as many anchors and importances as parameters. "
            f"Received {len(params)} parameters, {len(anchors)} anchors, "
            f"{len(importances)} importances."
        )
    terms = [
        _weighted_square_sum(
            ops.cast(p, "float32"), ops.cast(a, "float32"),
            ops.cast(w, "float32"),
        )
        for p, a, w in zip(params, anchors, importances)
    ]
    return ops.sum(ops.stack(terms)) if terms else ops.zeros((), "float32")


def merge_quadratic(importance, anchor, new_importance, new_anchor, decay=1.0):
    """Merges two quadratic penalties into one with the same gradient.

    `decay * F (p - a)^2 + G (p - b)^2` equals `(decay*F + G)(p - m)^2` plus a
    constant, with `m = (decay*F a + G b) / (decay*F + G)` (and `m = b` where
    both importances are 0). So offline EWC's sum over tasks needs one
    importance and one anchor, not one pair per task.

    Returns:
        `(merged_importance, merged_anchor)`.
    """
    old = decay * importance
    total = old + new_importance
    safe = ops.where(total > 0, total, ops.ones_like(total))
    merged = ops.where(
        total > 0, (old * anchor + new_importance * new_anchor) / safe,
        new_anchor,
    )
    return total, merged
