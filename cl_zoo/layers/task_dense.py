"""A dense layer with separate weights for every task."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="cl_zoo")
class TaskDense(keras.layers.Layer):
    """Dense layer whose kernel and bias are a table with one row per task.

    The building block of separate networks per task (`stl`): a stack of
    `TaskDense` layers is `num_tasks` independent networks that share nothing
    but the code path, so switching tasks does not retrace. Every row is
    initialized independently. All examples of a batch must belong to the same
    task (the layer reads the first example's task and checks the rest).

    Args:
        units: output features.
        num_tasks: rows of the tables.
        activation: activation function.
        kernel_initializer: initializer of each task's kernel.

    Call arguments:
        inputs: `(batch, features)` float tensor.
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
        activation=None,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for arg, value in (("units", units), ("num_tasks", num_tasks)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"Expected a positive integer for `{arg}`. "
                    f"Received: {arg}={value}"
                )
        self.units = units
        self.num_tasks = num_tasks
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        features = input_shape[-1]
        init = self.kernel_initializer

        def per_task(shape, dtype=None):
            # Each task's kernel is drawn on its own, with the fans of one
            # task's kernel (not of the whole table) and its own seed.
            config = init.get_config()
            rows = []
            for _ in range(shape[0]):
                if "seed" in config:
                    config["seed"] = int(np.random.randint(0, 2**31 - 1))
                rows.append(init.__class__.from_config(config)(
                    shape[1:], dtype=dtype
                ))
            return ops.stack(rows)

        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.num_tasks, features, self.units),
            initializer=per_task,
        )
        self.bias = self.add_weight(
            name="bias", shape=(self.num_tasks, self.units), initializer="zeros"
        )

    def call(self, inputs, task_ids):
        task_ids = ops.cast(task_ids, "int32")
        task = task_ids[0]
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    task_ids,
                    task,
                    message="TaskDense needs every example of a batch to "
                    "belong to the same task",
                )
            ]
        ):
            kernel = ops.take(self.kernel, task, axis=0)
        outputs = ops.matmul(inputs, kernel) + ops.take(self.bias, task, axis=0)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def per_task_bytes(self):
        return 4 * (self.kernel.shape[1] + 1) * self.units

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_tasks": self.num_tasks,
            "activation": keras.activations.serialize(self.activation),
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }
