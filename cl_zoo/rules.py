"""Gradient rules: updates that replace the gradient of some variables.

BPN's bias-unit factors `M_t` move in the *beneficial direction* and AMN's
memory units in the *adversarial direction*; both are the fast-gradient-sign
step of the papers, `x <- x - eps * sign(dL/dx)`. A rule owns its variables
and its own optimizer (plain SGD with learning rate 1, so `eps` is the step
size whatever the main optimizer is); the main optimizer never sees them.

Under `tf.distribute` the sign is taken after the cross-replica sum: two
replicas with opposite local signs would otherwise cancel. The update is then
divided by the replica count because `optimizer.apply` sums over replicas.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from cl_zoo.replicas import cross_replica_sum
from cl_zoo.settings import Setting

# The step of the sign rule, read by every method that uses one.
EPSILON = Setting(
    "epsilon", float, 0.01,
    "Step of the sign updates: BPN's bias-unit factors M_t (beneficial "
    "direction) and AMN's memory units X_t (adversarial direction), "
    "v -= epsilon * sign(grad) per training step (the papers do not give "
    "it).", above=0, expected="a positive number")


class SignGradientRule:
    """`v <- v - epsilon * sign(grad)` for a group of variables.

    `sign=False` gives the ablation in the gradient direction,
    `v <- v - epsilon * grad`: the same step scale and plain SGD, so the two
    differ only by the sign (an adaptive main optimizer such as Adam would
    itself make the steps sign-like and blur the ablation).

    Args:
        epsilon: the step size (the paper's eps of the FGSM update).
        name: a label for logs.
        sign: take the sign of the (all-reduced) gradient.
    """

    def __init__(self, epsilon, name="sign_rule", sign=True):
        if not epsilon > 0:
            raise ValueError(
                "Expected a positive `epsilon` for the sign rule. "
                f"Received: epsilon={epsilon}"
            )
        self.epsilon = float(epsilon)
        self.name = name
        self.sign = bool(sign)
        self.variables = []
        self.optimizer = None

    def bind(self, variables):
        """Takes ownership of `variables` (call before `build`)."""
        self.variables = list(variables)

    def build(self):
        self.optimizer = keras.optimizers.SGD(
            learning_rate=1.0, name=f"{self.name}_sgd"
        )
        self.optimizer.build(self.variables)

    def apply(self, grads):
        if not self.sign:
            # Linear in the gradient: apply's sum over replicas is right.
            self.optimizer.apply(
                [self.epsilon * g for g in grads], self.variables
            )
            return
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        updates = [
            self.epsilon * ops.sign(cross_replica_sum(g)) / replicas
            for g in grads
        ]
        self.optimizer.apply(updates, self.variables)
