"""Keras's Adam with fewer ops per step and the same updates.

`keras.optimizers.Adam.update_step` (keras/src/optimizers/adam.py) computes
the step's scalars (the learning rate's cast, `beta ** t`, the bias
correction) again for every variable: about half of the ops it adds to a
traced train step, and tracing is the largest cost of a short run's first
task (docs/RESULTS.md, "Speed"). `Adam` here computes them once per `apply`
and shares them. Each variable's update is Keras's expression on the same
values, so the weights are bit-identical (tests/test_optimizers.py).

It reads Adam's slots through Keras's private `_momentums`, `_velocities`,
`_velocity_hats` and `_get_variable_index`, verified on the Keras versions
of `VERIFIED_KERAS`; on any other version it runs Keras's own
`update_step`. No upstream issue asks for the shared scalars yet.
"""

from __future__ import annotations

import keras
from keras import ops

VERIFIED_KERAS = ("3.15.",)


def shares_step_scalars(version=None):
    """Whether this Keras version gets the shared-scalar update."""
    return (version or keras.__version__).startswith(VERIFIED_KERAS)


@keras.saving.register_keras_serializable(package="cl_zoo")
class Adam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose per-step scalars are computed once.

    Same arguments, state, checkpoints and updates as Keras's (amsgrad
    included); see the module docstring.
    """

    _step_scalars = None

    def apply(self, grads, trainable_variables=None):
        # The scalars of this step, keyed by the learning-rate tensor Keras
        # hands every `update_step` of one step (one per device) and the
        # variable's dtype.
        self._step_scalars = {} if shares_step_scalars() else None
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._step_scalars = None

    def _alpha(self, learning_rate, dtype):
        """Adam's bias-corrected step size, as Keras's `update_step`
        computes it, once per step."""
        key = (id(learning_rate), dtype)
        cached = self._step_scalars.get(key)
        if cached is None:
            lr = ops.cast(learning_rate, dtype)
            local_step = ops.cast(self.iterations + 1, dtype)
            beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
            beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
            alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
            # The tensor is kept so that its id is not reused in this step.
            cached = (learning_rate, alpha)
            self._step_scalars[key] = cached
        return cached[1]

    def update_step(self, gradient, variable, learning_rate):
        if self._step_scalars is None:
            return super().update_step(gradient, variable, learning_rate)
        gradient = ops.cast(gradient, variable.dtype)
        alpha = self._alpha(learning_rate, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(
            m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1)
        )
        self.assign_add(
            v,
            ops.multiply(
                ops.subtract(ops.square(gradient), v), 1 - self.beta_2
            ),
        )
        if self.amsgrad:
            v_hat = self._velocity_hats[self._get_variable_index(variable)]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        self.assign_sub(
            variable,
            ops.divide(
                ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)
            ),
        )
