"""Dense layer with per-task memory units (Adversarial Memory Network)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cl_zoo.layers.bias_units import _check_positive
from cl_zoo.layers.heads import add_class_mask, mask_padding

# Memory values start uniform in [-MEMORY_VALUE_SCALE, MEMORY_VALUE_SCALE].
MEMORY_VALUE_SCALE = 0.05


@keras.saving.register_keras_serializable(package="cl_zoo")
class MemoryNeuronDense(keras.layers.Layer):
    """Dense layer whose neurons hold memory units for every task.

    Wen & Itti, "Overcoming catastrophic forgetting problem by weight
    consolidation and long-term memory" (the Adversarial Memory Network, AD
    and AD+EWC). Each task t has `memory_units` memory values
    `X_t` (shape `(memory_units,)`) and memory weights `U_t` (shape
    `(memory_units, units)`) into the layer's neurons; only the example's
    own task's units are active. The layer computes
    `act(W x + b + X_t @ U_t)`. The memory values are meant to move in the
    adversarial direction, `X_t <- X_t - eps * sign(dL/dX_t)` (a
    `cl_zoo.rules.SignGradientRule`), the memory weights and the normal
    weights `W, b` by gradient steps. Every task's units are kept (none are
    folded into a bias), and the rows of tasks other than the examples' own
    get exactly zero gradient.

    Args:
        units: output features (neurons).
        num_tasks: rows of the memory tables.
        memory_units: memory values per task and neuron group (the paper's
            best is 6 to 9).
        activation: activation function.
        seed: seed of the memory tables' initialization (values uniform in
            +-0.05, weights glorot-uniform drawn independently per task).
        kernel_initializer: initializer of the normal weights `W`.
        task_sizes: optional number of valid outputs per task, for an output
            layer shared by tasks of different sizes: for examples of task t
            the outputs from `task_sizes[t]` on get a logit of -1e9.

    Call arguments:
        inputs: `(batch, features)`.
        task_ids: int32 task id per example, `(batch,)`.

    Input shape:
        `(batch, features)`.

    Output shape:
        `(batch, units)`.
    """

    task_conditioned = True

    def __init__(
        self,
        units,
        num_tasks,
        memory_units=9,
        activation=None,
        seed=0,
        kernel_initializer="glorot_uniform",
        task_sizes=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_positive("units", units)
        _check_positive("num_tasks", num_tasks)
        _check_positive("memory_units", memory_units)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(
                f"Expected an integer for `seed`. Received: seed={seed!r}"
            )
        if task_sizes is not None:
            task_sizes = [int(s) for s in task_sizes]
            if len(task_sizes) != num_tasks or not all(
                1 <= s <= units for s in task_sizes
            ):
                raise ValueError(
                    f"Expected `task_sizes` to hold {num_tasks} integers in "
                    f"[1, units={units}]. Received: task_sizes={task_sizes}"
                )
        self.units = units
        self.num_tasks = num_tasks
        self.memory_units = memory_units
        self.activation = keras.activations.get(activation)
        self.seed = seed
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.task_sizes = task_sizes

    def _initial_memory(self):
        rng = np.random.default_rng(self.seed)
        values = rng.uniform(
            -MEMORY_VALUE_SCALE,
            MEMORY_VALUE_SCALE,
            (self.num_tasks, self.memory_units),
        )
        limit = np.sqrt(6.0 / (self.memory_units + self.units))
        weights = rng.uniform(
            -limit, limit, (self.num_tasks, self.memory_units, self.units)
        )
        return values.astype("float32"), weights.astype("float32")

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
        values, weights = self._initial_memory()
        self.memory_values = self.add_weight(
            name="memory_values",
            shape=values.shape,
            initializer=keras.initializers.Constant(values),
        )
        self.memory_weights = self.add_weight(
            name="memory_weights",
            shape=weights.shape,
            initializer=keras.initializers.Constant(weights),
        )
        if self.task_sizes is not None:
            self.class_mask = add_class_mask(
                self, self.task_sizes, self.units
            )

    def memory_contributions(self):
        """`X_t @ U_t` of every task, shape `(num_tasks, units)`."""
        return ops.einsum(
            "tn,tnk->tk", self.memory_values, self.memory_weights
        )

    def linear(self, inputs, task_ids):
        """`(kernel_inputs, pre_activation)` (see `_TaskDenseBase.linear` in
        `cl_zoo.layers.bias_units`)."""
        task_ids = ops.cast(task_ids, "int32")
        outputs = ops.matmul(inputs, self.kernel) + self.bias
        memory = ops.take(self.memory_contributions(), task_ids, axis=0)
        return inputs, outputs + memory

    def finish(self, pre_activation, task_ids):
        """The layer's output from its pre-activation."""
        outputs = self.activation(pre_activation)
        if self.task_sizes is None:
            return outputs
        return mask_padding(outputs, self.class_mask,
                            ops.cast(task_ids, "int32"))

    def call(self, inputs, task_ids):
        return self.finish(self.linear(inputs, task_ids)[1], task_ids)

    def memory_variables(self):
        """The per-task tables: memory values and memory weights."""
        return [self.memory_values, self.memory_weights]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def per_task_bytes(self):
        """Bytes one more task adds: its memory values and weights."""
        return 4 * (self.memory_units + self.memory_units * self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_tasks": self.num_tasks,
            "memory_units": self.memory_units,
            "activation": keras.activations.serialize(self.activation),
            "seed": self.seed,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "task_sizes": (
                None if self.task_sizes is None else list(self.task_sizes)
            ),
        }
