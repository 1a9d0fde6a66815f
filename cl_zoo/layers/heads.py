"""Output heads: one head over all classes, one per task, or one shared
by all tasks with per-task labels."""

from __future__ import annotations

import keras
from keras import ops

# Logit given to the padding classes of a task with fewer classes than the
# widest task: far below any real logit, finite so that softmax stays exact.
_MASKED_LOGIT = -1e9

HEAD_MODES = ("single", "multi", "shared")


def add_class_mask(layer, task_sizes, width):
    """A `(num_tasks, width)` table: 1 for each task's classes, 0 for padding.

    For output layers shared by tasks of different sizes; `mask_padding`
    applies it.
    """
    valid = [[1.0 if c < size else 0.0 for c in range(width)]
             for size in task_sizes]
    return layer.add_weight(
        name="class_mask",
        shape=(len(task_sizes), width),
        initializer=keras.initializers.Constant(valid),
        trainable=False,
    )


def mask_padding(outputs, class_mask, task_ids):
    """Gives each example's padding classes the logit -1e9."""
    mask = ops.take(class_mask, task_ids, axis=0)
    return ops.where(mask > 0, outputs, _MASKED_LOGIT)


@keras.saving.register_keras_serializable(package="cl_zoo")
class TaskHead(keras.layers.Layer):
    """Classification head, shared by all tasks or one per task.

    With `mode="single"` the head is a dense layer over every class of the
    benchmark and ignores the task. With `mode="multi"` it holds one dense head
    per task, padded to the widest task; each example reads the head of its
    task and the padding classes of narrower tasks get a logit of -1e9, so
    shapes never depend on the task and switching tasks does not retrace.
    With `mode="shared"` one dense head as wide as the widest task serves
    every task (labels are indices into the task's classes, so output k
    stands for a different class in each task: the "3 shared outputs" of the
    AMN paper); padding classes of narrower tasks are masked as in `"multi"`.

    Args:
        mode: `"single"`, `"multi"` or `"shared"`.
        num_classes: width of the single head (every class of the benchmark).
        task_sizes: number of classes of each task (multi-head only needs it;
            its length is the number of tasks).
        kernel_initializer: initializer of the head weights.

    Call arguments:
        inputs: features of shape `(batch, features)`.
        task_ids: int32 task id per example, shape `(batch,)`.

    Input shape:
        `(batch, features)`.

    Output shape:
        `(batch, num_classes)` for one head, `(batch, max(task_sizes))` for
        one head per task or a shared head.
    """

    task_conditioned = True

    def __init__(
        self,
        mode,
        num_classes,
        task_sizes,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mode not in HEAD_MODES:
            raise ValueError(
                f"Expected `mode` in {HEAD_MODES}. Received: mode={mode!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                "Expected a positive integer for `num_classes`. "
                f"Received: num_classes={num_classes}"
            )
        task_sizes = [int(s) for s in task_sizes]
        if not task_sizes or min(task_sizes) < 1:
            raise ValueError(
                "Expected a non-empty list of positive task sizes. "
                f"Received: task_sizes={task_sizes}"
            )
        self.mode = mode
        self.num_classes = num_classes
        self.task_sizes = task_sizes
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    @property
    def num_tasks(self):
        return len(self.task_sizes)

    @property
    def output_width(self):
        if self.mode == "single":
            return self.num_classes
        return max(self.task_sizes)

    def build(self, input_shape):
        features = input_shape[-1]
        heads = self.num_tasks if self.mode == "multi" else 1
        width = self.output_width
        self.kernel = self.add_weight(
            name="kernel",
            shape=(features, heads * width),
            initializer=self.kernel_initializer,
        )
        self.bias = self.add_weight(
            name="bias", shape=(heads * width,), initializer="zeros"
        )
        if self.mode != "single":
            self.class_mask = add_class_mask(self, self.task_sizes, width)

    def linear(self, inputs, task_ids):
        """`(kernel_inputs, pre_activation)`: the features and every head's
        logits (see `_TaskDenseBase.linear` in `cl_zoo.layers.bias_units`)."""
        del task_ids
        return inputs, ops.matmul(inputs, self.kernel) + self.bias

    def call(self, inputs, task_ids):
        return self.finish(self.linear(inputs, task_ids)[1], task_ids)

    def finish(self, logits, task_ids):
        """The logits of each example's head from every head's."""
        if self.mode == "single":
            return logits
        task_ids = ops.cast(task_ids, "int32")
        if self.mode == "multi":
            width = self.output_width
            logits = ops.reshape(logits, (-1, self.num_tasks, width))
            select = ops.one_hot(task_ids, self.num_tasks, dtype=logits.dtype)
            logits = ops.einsum("btw,bt->bw", logits, select)
        return mask_padding(logits, self.class_mask, task_ids)

    def all_heads(self, inputs):
        """Every head's logits at once: `(batch, heads, width)`.

        `heads` is the number of tasks for `"multi"` (each task's padding
        classes masked), 1 for `"single"` and `"shared"` (their one head,
        unmasked). LwF distils old tasks' heads with it.
        """
        logits = ops.matmul(inputs, self.kernel) + self.bias
        if self.mode != "multi":
            return logits[:, None, :]
        logits = ops.reshape(logits, (-1, self.num_tasks, self.output_width))
        return ops.where(self.class_mask[None] > 0, logits, _MASKED_LOGIT)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_width)

    def per_task_bytes(self):
        """Bytes one more task adds to this head (0 for a shared head)."""
        if self.mode != "multi":
            return 0
        features = self.kernel.shape[0]
        return 4 * (features + 1) * self.output_width

    def get_config(self):
        return {
            **super().get_config(),
            "mode": self.mode,
            "num_classes": self.num_classes,
            "task_sizes": list(self.task_sizes),
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }
