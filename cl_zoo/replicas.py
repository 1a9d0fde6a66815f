"""Helpers for code that runs in a `tf.distribute` replica context."""

from __future__ import annotations

import tensorflow as tf


def cross_replica_sum(value):
    """Sums `value` over replicas (identity outside a strategy).

    Gradient rules that are not linear in the gradient (a sign, a
    projection) and online estimates that must agree across replicas (SI)
    call it on each replica's gradient: Keras scales each replica's loss by
    1/replicas, so the sum is the gradient of the global batch's mean.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)
