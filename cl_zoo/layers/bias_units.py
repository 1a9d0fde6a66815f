"""Dense layers with per-task parameters: BPN's bias units and PSP's keys."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

NO_TASK = -1


def _check_positive(name, value, allow_zero=False):
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"Expected a {kind} integer for `{name}`. "
            f"Received: {name}={value!r}"
        )


def binary_keys(num_tasks, features, seed):
    """Random +-1 context keys, one row per task (binary PSP)."""
    rng = np.random.default_rng(seed)
    signs = np.array([-1.0, 1.0], "float32")
    return rng.choice(signs, (num_tasks, features))


class _TaskDenseBase(keras.layers.Layer):
    """A dense layer whose input may be bound to a task by a binary key."""

    task_conditioned = True

    def __init__(
        self,
        units,
        num_tasks,
        activation=None,
        superposition=False,
        key_seed=0,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive("units", units)
        _check_positive("num_tasks", num_tasks)
        self.units = units
        self.num_tasks = num_tasks
        self.activation = keras.activations.get(activation)
        self.superposition = bool(superposition)
        self.key_seed = int(key_seed)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        features = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel",
            shape=(features, self.units),
            initializer=self.kernel_initializer,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.units,), initializer="zeros"
        )
        if self.superposition:
            keys = binary_keys(self.num_tasks, features, self.key_seed)
            self.keys = self.add_weight(
                name="keys",
                shape=keys.shape,
                initializer=keras.initializers.Constant(keys),
                trainable=False,
            )

    def linear(self, inputs, task_ids):
        """`(kernel_inputs, pre_activation)`: what the kernel multiplies
        (the input, bound to its task's key with PSP) and the pre-activation
        (the per-example kernel gradients of `cl_zoo.consolidation.
        dense_path` are products of the two's)."""
        task_ids = ops.cast(task_ids, "int32")
        if self.superposition:
            inputs = inputs * ops.take(self.keys, task_ids, axis=0)
        return inputs, ops.matmul(inputs, self.kernel) + self.bias

    def finish(self, pre_activation, task_ids):
        """The layer's output from its pre-activation."""
        del task_ids
        return self.activation(pre_activation)

    def call(self, inputs, task_ids):
        return self.finish(self.linear(inputs, task_ids)[1], task_ids)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def per_task_bytes(self):
        """Bytes one more task adds (its key row, if any)."""
        return 4 * int(self.kernel.shape[0]) if self.superposition else 0

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_tasks": self.num_tasks,
            "activation": keras.activations.serialize(self.activation),
            "superposition": self.superposition,
            "key_seed": self.key_seed,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }


@keras.saving.register_keras_serializable(package="cl_zoo")
class SuperpositionDense(_TaskDenseBase):
    """Dense layer with binary parameter superposition (PSP).

    Cheung et al., "Superposition of many models into one" (NeurIPS 2019),
    binary variant: each task t has a fixed random key `k_t` in {-1, +1}^d and
    the layer computes `act(W (x * k_t) + b)`, so tasks use the shared weights
    in nearly orthogonal ways.

    Args:
        units: output features.
        num_tasks: rows of the key table.
        activation: activation function.
        key_seed: seed of the keys (layers of one model use different seeds).

    Call arguments:
        inputs: `(batch, features)`.
        task_ids: int32 task id per example, `(batch,)`.

    Input shape:
        `(batch, features)`.

    Output shape:
        `(batch, units)`.
    """

    def __init__(self, units, num_tasks, activation=None, key_seed=0,
                 **kwargs):
        kwargs.pop("superposition", None)
        super().__init__(
            units, num_tasks, activation=activation, superposition=True,
            key_seed=key_seed, **kwargs,
        )


@keras.saving.register_keras_serializable(package="cl_zoo")
class BiasUnitDense(_TaskDenseBase):
    """Dense layer with per-task bias units (Beneficial Perturbation Network).

    Wen, Tran, Kim & Itti, "Beneficial Perturbation Network for designing
    general adaptive artificial intelligence systems" (IEEE TNNLS 2021). The
    layer computes `act(W x + b + BIAS_t)`. While task t trains,
    `BIAS_t = M_t @ W_t` with `M_t` of shape `(1, H)` and `W_t` of shape
    `(H, units)` (the live factors: `M_t` is meant to move by
    `eps * sign(grad)`, see `cl_zoo.rules`); `freeze_task(t)` stores the
    product in row t of a frozen table (`units` floats per task) and the
    factors are re-initialized for the next task by `start_task`. Any task's
    frozen row can be selected at inference by its task id.

    Args:
        units: output features.
        num_tasks: rows of the frozen bias table.
        bias_hidden: H, the inner dimension of the factorization.
        activation: activation function.
        superposition: also bind the input to the task with a binary PSP key
            (BD+PSP).
        key_seed: seed of the PSP keys, and of the factors' initialization.

    Call arguments:
        inputs: `(batch, features)`.
        task_ids: int32 task id per example, `(batch,)`. Examples of the task
            being trained use the live factors, the others their frozen row
            (zeros for tasks not trained yet).

    Input shape:
        `(batch, features)`.

    Output shape:
        `(batch, units)`.
    """

    def __init__(self, units, num_tasks, bias_hidden=200, activation=None,
                 superposition=False, key_seed=0, **kwargs):
        super().__init__(
            units, num_tasks, activation=activation,
            superposition=superposition, key_seed=key_seed, **kwargs,
        )
        _check_positive("bias_hidden", bias_hidden)
        self.bias_hidden = bias_hidden

    def build(self, input_shape):
        super().build(input_shape)
        self.bias_table = self.add_weight(
            name="bias_table",
            shape=(self.num_tasks, self.units),
            initializer="zeros",
            trainable=False,
        )
        self.factor_m = self.add_weight(
            name="factor_m", shape=(1, self.bias_hidden), initializer="zeros"
        )
        self.factor_w = self.add_weight(
            name="factor_w",
            shape=(self.bias_hidden, self.units),
            initializer=keras.initializers.Constant(self._new_factor_w()),
        )
        self.live_task = self.add_weight(
            name="live_task",
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(NO_TASK),
            trainable=False,
        )

    def _new_factor_w(self, draw=0):
        """The `draw`-th random `W` of the layer: 0 at build, t + 1 for task t.

        A function of the draw alone, not of the draws this process made
        before, so that a resumed run gives a task the factors that the
        uninterrupted run gave it (the numbers of one stream drawn in task
        order).
        """
        limit = np.sqrt(6.0 / (self.bias_hidden + self.units))
        shape = (self.bias_hidden, self.units)
        rng = np.random.default_rng(self.key_seed + 10_007)
        for _ in range(draw):
            rng.uniform(-limit, limit, shape)
        return rng.uniform(-limit, limit, shape).astype("float32")

    def linear(self, inputs, task_ids):
        task_ids = ops.cast(task_ids, "int32")
        inputs, outputs = super().linear(inputs, task_ids)
        live = ops.matmul(self.factor_m, self.factor_w)
        frozen = ops.take(self.bias_table, task_ids, axis=0)
        is_live = ops.expand_dims(ops.equal(task_ids, self.live_task), -1)
        return inputs, outputs + ops.where(is_live, live, frozen)

    # Task life cycle (eager code between fits: writes every replica).
    def start_task(self, task):
        """Fresh factors `M_t = 0`, random `W_t`, live for `task`."""
        self.factor_m.assign(ops.zeros_like(self.factor_m))
        self.factor_w.assign(self._new_factor_w(int(task) + 1))
        self.live_task.assign(task)

    def freeze_task(self, task):
        """Stores `M_t @ W_t` as task's frozen bias row; factors go dead."""
        product = ops.matmul(self.factor_m, self.factor_w)[0]
        self.bias_table.assign(
            ops.scatter_update(self.bias_table, [[task]], product[None])
        )
        self.live_task.assign(NO_TASK)

    def frozen_bias(self, task):
        return ops.convert_to_numpy(self.bias_table[task])

    def per_task_bytes(self):
        return super().per_task_bytes() + 4 * self.units

    def get_config(self):
        return {**super().get_config(), "bias_hidden": self.bias_hidden}
