"""Helpers for code that runs in a `tf.distribute` replica context.

Keras divides compiled losses by the replica count before the gradients are
summed across replicas (`optimizer.apply` sums them). Everything else that
enters a train step goes through these helpers, so that the scaling lives in
one place: a loss term added by hand (`replica_share`), a rule that is not
linear in the gradient (`cross_replica_sum`, via `cl_zoo.rules.apply_rules`).
"""

from __future__ import annotations

import tensorflow as tf


def num_replicas():
    """Replicas in sync under the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_share(value):
    """A loss term added to a replica's loss: `value / replicas`, so that
    the sum over replicas counts it once (as Keras does for its losses)."""
    replicas = num_replicas()
    return value if replicas == 1 else value / replicas


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
