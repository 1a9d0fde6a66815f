"""Layers whose units are gated per task by learned binary masks (HAT / DGM).

`MaskedDense` and `MaskedConv2DTranspose` (the layers of DGM's generator)
multiply their output units by a per-task gate:

- while task t trains, the gate is `sigmoid(s * e_t)` with `e_t` the task's
  trainable mask embedding (initialised at 0, gate 0.5) and `s` annealed by
  the model from `1 / s_max` to `s_max`;
- when task t ends (`finish_task`), its gate is binarised (`e_t > 0`) and
  stored; inference and replay of task t use the stored binary mask, so a
  task's output depends only on the units it reserved;
- the cumulative mask (every unit some finished task reserved) blocks weight
  gradients: `gradient_multipliers` returns, per weight, `1 - min(cum_out,
  cum_in)` (HAT, Serra et al. 2018: a weight is frozen when both the unit it
  feeds and the unit it reads are reserved; a weight from a free unit may
  change, since no old task reads that unit), and the HAT compensation for
  the embeddings' gradient.

Growth. A layer is allocated `capacity` units up front and uses the first
`active` of them; units past `active` have gate 0 for every task (they take
no part in any output and get no gradient). `grow(n)` makes n more units
active: they start from their initial weights and old tasks' gates on them
are 0, so old tasks' outputs do not change: the new units add exact zeros.
DGM grows each layer after every task by the number of units the task newly
reserved, so that the free capacity stays what it was at the start. Exports
and `per_task_bytes` count active units only.

The computation covers the active units only (`compact=True` passes them
on to the next layer without the spare ones, whose outputs are zeros): at
DGM's defaults the first tasks use a fraction of the capacity, and the
spare units would otherwise take most of the generator's time. While a
task trains the shapes are fixed (no retrace: `active` is read as a
tensor); after growth an old task's sums run over more terms, all of them
exact zeros, but the CPU kernels block longer sums differently, so its
outputs may move by float rounding (up to 2e-7 in DGM's [0, 1] pixels at
the defaults, measured; bit for bit when the shapes stay the same).

An unmasked variant (`masked=False`) is the generator's output layer, one
per task as in the authors' code: a kernel and a bias per task, of which
each example uses its task's (all tasks' outputs are computed, a cheap
layer, and the example's own is selected). Only the current task's kernel
gets gradients, so a new task may combine reused (frozen) units freely.

Batch normalization (`batch_norm=True`, as in the authors' generator) is
per task: one row of scale, offset and statistics per task, applied to the
units before the activation and the gate. While a task trains, its examples
are normalized with the batch's statistics (summed over replicas, so two
replicas normalize as one); `record_statistics` then stores the task's
statistics, measured on a large batch at the end of the task, and every
later call uses them. A task's output thus depends on its own rows only.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

EMBEDDING_LIMIT = 6.0  # HAT's clamp of the embeddings (thres_emb).
COSH_LIMIT = 50.0  # HAT's clamp inside the compensation's cosh (thres_cosh).


@keras.saving.register_keras_serializable(package="cl_zoo")
class ClipValue(keras.constraints.Constraint):
    """Clips a variable to `[-limit, limit]` after every optimizer step."""

    def __init__(self, limit):
        self.limit = float(limit)

    def __call__(self, w):
        return ops.clip(w, -self.limit, self.limit)

    def get_config(self):
        return {"limit": self.limit}


def _global_moments(y, axes):
    """Mean and variance over `axes` and over every replica's batch."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(y), list(axes))),
                    y.dtype)
    total, squares = ops.sum(y, axis=axes), ops.sum(ops.square(y), axis=axes)
    if replicas > 1:
        total, squares, count = (
            ctx.all_reduce(tf.distribute.ReduceOp.SUM, v)
            for v in (total, squares, count)
        )
    mean = total / count
    return mean, ops.maximum(squares / count - ops.square(mean), 0.0)


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Expected a positive integer for `{name}`. "
            f"Received: {name}={value!r}"
        )
    return value


class _MaskedLayer(keras.layers.Layer):
    """Per-task unit gates, cumulative masks and growth; see module doc.

    A subclass defines the op: `kernel_shape(in_units)`, `linear(x)`,
    `kernel_gate(out_free, in_free)` (the `1 - cum` of the output and input
    units to the kernel's gradient multiplier), and the kernel's `in_axis`
    and `out_axis`.

    Args:
        units: units in use at the start (the free capacity kept by DGM's
            growth).
        num_tasks: number of tasks (rows of the embedding and mask tables).
        capacity: units allocated, `>= units` (default: `units`, no growth).
        masked: whether the units are gated per task (False: the output
            layer, units always in use, one bias row per task).
        activation: applied before the gate.
        kernel_initializer: of the kernel.
    """

    def __init__(
        self,
        units,
        num_tasks,
        capacity=None,
        masked=True,
        activation=None,
        kernel_initializer="glorot_uniform",
        batch_norm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.num_tasks = check_positive_int("num_tasks", num_tasks)
        capacity = units if capacity is None else capacity
        self.capacity = check_positive_int("capacity", capacity)
        if self.capacity < self.units:
            raise ValueError(
                f"Expected capacity >= units. Received: capacity={capacity}, "
                f"units={units}"
            )
        if not masked and self.capacity != self.units:
            raise ValueError("An unmasked layer cannot grow: capacity=units.")
        self.masked = bool(masked)
        # Outputs of the kernel: one set per task when unmasked.
        self.out_units = self.capacity * (1 if masked else self.num_tasks)
        self.batch_norm = bool(batch_norm)
        if self.batch_norm and not self.masked:
            raise ValueError("Only masked layers take batch_norm=True.")
        self.activation = keras.activations.get(activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        in_units = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel",
            shape=self.kernel_shape(in_units),
            initializer=self.kernel_initializer,
        )
        if self.masked:
            # Batch normalization's offset takes the place of the bias.
            self.bias = None if self.batch_norm else self.add_weight(
                name="bias", shape=(self.capacity,), initializer="zeros"
            )
            self.embedding = self.add_weight(
                name="embedding",
                shape=(self.num_tasks, self.capacity),
                initializer="zeros",
                constraint=ClipValue(EMBEDDING_LIMIT),
            )
            self.masks = self.add_weight(
                name="masks",
                shape=(self.num_tasks, self.capacity),
                initializer="zeros",
                trainable=False,
            )
            self.cumulative = self.add_weight(
                name="cumulative",
                shape=(self.capacity,),
                initializer="zeros",
                trainable=False,
            )
            self.active = self.add_weight(
                name="active",
                shape=(),
                dtype="int32",
                initializer=keras.initializers.Constant(self.units),
                trainable=False,
            )
            # Units in use while each task trained (for the counts of
            # DGM's Fig. 6 and for storage).
            self.sizes = self.add_weight(
                name="sizes",
                shape=(self.num_tasks,),
                dtype="int32",
                initializer="zeros",
                trainable=False,
            )
        else:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.num_tasks, self.capacity),
                initializer="zeros",
            )
        if self.batch_norm:
            table = (self.num_tasks, self.capacity)
            self.gamma = self.add_weight(name="gamma", shape=table,
                                         initializer="ones")
            self.beta = self.add_weight(name="beta", shape=table,
                                        initializer="zeros")
            self.moving_mean = self.add_weight(
                name="moving_mean", shape=table, initializer="zeros",
                trainable=False,
            )
            self.moving_variance = self.add_weight(
                name="moving_variance", shape=table, initializer="ones",
                trainable=False,
            )

    # ------------------------------------------------------------------
    # Gates.
    def units_on(self):
        """1.0 for the active units, 0.0 for the allocated spare ones."""
        return ops.cast(
            ops.arange(self.capacity) < ops.cast(self.active, "int32"),
            "float32",
        )

    def soft_gate(self, task, s):
        """`sigmoid(s * e_task)` on the active units, 0 elsewhere."""
        e = ops.take(self.embedding, task, axis=0)
        return ops.sigmoid(s * e) * self.units_on()

    def gates(self, task_ids, current_task=-1, s=1.0):
        """Per-example gates `(batch, capacity)`.

        Examples of `current_task` get the soft gate at scale `s`, every
        other example its task's stored binary mask (`current_task=-1`: all
        stored masks, inference).
        """
        hard = ops.take(self.masks, task_ids, axis=0)
        if isinstance(current_task, int) and current_task < 0:
            return hard
        current = ops.cast(current_task, "int32")
        soft = self.soft_gate(ops.maximum(current, 0), s)
        is_current = ops.equal(task_ids, current)[:, None]
        return ops.where(is_current, soft[None, :], hard)

    def units_in_use(self):
        """Output units computed: the active ones (masked; a scalar int32
        tensor, read from `active` when the step runs) or every output
        (unmasked, an int)."""
        if not self.masked:
            return self.out_units
        return ops.cast(self.active, "int32")

    def call(self, x, task_ids, current_task=-1, s=1.0, batch_stats=False,
             record=False, compact=False):
        """Args (besides the input and each example's task id):
            current_task, s: the task whose soft gate (at scale s) applies.
            batch_stats: normalize with the batch's statistics (training;
                the batch must hold one task's examples) instead of the
                stored ones.
            record: store the batch's statistics as the task's (eager,
                between tasks; implies batch_stats).
            compact: return the active units only (masked layers; the
                spare ones are zeros). The input may be compact too: it
                then holds the previous layer's first units, and only the
                matching rows of the kernel are used.
        """
        task_ids = ops.cast(task_ids, "int32")
        units = self.units_in_use()
        y = self.linear(x, units)
        spatial = (1,) * (len(y.shape) - 2)
        if not self.masked:
            # Each example's own task's output.
            y = tf.reshape(y, tf.concat(
                [tf.shape(y)[:-1], [self.num_tasks, self.capacity]], 0))
            select = ops.one_hot(task_ids, self.num_tasks, dtype=y.dtype)
            y = ops.sum(y * ops.reshape(select, (-1, *spatial,
                                                 self.num_tasks, 1)),
                        axis=-2)

        def in_use(row):
            # (batch, capacity) -> (batch, *spatial, units)
            row = row[:, :units]
            for _ in spatial:
                row = ops.expand_dims(row, 1)
            return row

        def rows(table):
            return in_use(ops.take(table, task_ids, axis=0))

        if not self.masked:
            y = y + ops.reshape(ops.take(self.bias, task_ids, axis=0),
                                (-1, *spatial, self.capacity))
        elif self.bias is not None:
            y = y + self.bias[:units]
        if self.batch_norm:
            axes = tuple(range(len(y.shape) - 1))
            if batch_stats or record:
                mean, variance = _global_moments(y, axes)
                if record:
                    task = int(task_ids[0])
                    for table, value in ((self.moving_mean, mean),
                                         (self.moving_variance, variance)):
                        # The spare units keep their rows' values.
                        row = ops.concatenate([value, table[task, units:]],
                                              axis=0)
                        table.assign(ops.scatter_update(
                            table, [[task]], row[None]))
            else:
                mean, variance = rows(self.moving_mean), rows(
                    self.moving_variance)
            y = (y - mean) * ops.rsqrt(variance + 1e-5)
            y = y * rows(self.gamma) + rows(self.beta)
        if self.activation is not None:
            y = self.activation(y)
        if not self.masked:
            return y
        y = y * in_use(self.gates(task_ids, current_task, s))
        if compact:
            return y
        # The spare units' outputs: exact zeros.
        pad = [[0, 0]] * (len(y.shape) - 1) + [[0, self.capacity - units]]
        return tf.ensure_shape(tf.pad(y, pad),
                               (*y.shape[:-1], self.capacity))

    def used_kernel(self, in_units, units):
        """The kernel's entries that the first `in_units` inputs and the
        first `units` outputs use (the whole kernel when they are all)."""
        kernel = self.kernel
        index = [slice(None)] * len(kernel.shape)
        if not isinstance(units, int) or units != self.out_units:
            index[self.out_axis] = slice(None, units)
        if (not isinstance(in_units, int)
                or in_units != kernel.shape[self.in_axis]):
            index[self.in_axis] = slice(None, in_units)
        return kernel[tuple(index)]

    # ------------------------------------------------------------------
    # Training rules.
    def gradient_multipliers(self, in_cumulative, s, s_max):
        """`{id(variable): multiplier}` for this layer's trainable weights.

        Args:
            in_cumulative: cumulative mask of the input units (`None`: the
                inputs are not masked, i.e. always in use).
            s: the current gate scale; s_max: its final value.
        """
        if not self.masked:
            return {}  # one kernel per task: nothing to protect
        out_free = 1.0 - self.cumulative
        in_units = self.kernel.shape[self.in_axis]
        in_free = (
            ops.zeros((in_units,)) if in_cumulative is None
            else 1.0 - in_cumulative
        )
        rules = {id(self.kernel): self.kernel_gate(out_free, in_free)}
        # gamma and beta: one row per task, only the current row has a
        # gradient; they need no gate.
        if self.bias is not None:
            rules[id(self.bias)] = out_free
        # HAT: undo the 1/s flattening of the sigmoid's slope, so the
        # embeddings learn at s_max's rate whatever s is.
        e = self.embedding
        num = ops.cosh(ops.clip(s * e, -COSH_LIMIT, COSH_LIMIT)) + 1.0
        den = ops.cosh(e) + 1.0
        rules[id(self.embedding)] = (s_max / s) * num / den
        return rules

    def sparsity_terms(self, task, s):
        """(sum of gate * free, sum of free) over the active units.

        DGM's regularizer is the ratio of the sums over all layers: the share
        of the free units the task is taking.
        """
        free = (1.0 - self.cumulative) * self.units_on()
        gate = self.soft_gate(task, s)
        return ops.sum(gate * free), ops.sum(free)

    # ------------------------------------------------------------------
    # Between tasks (eager).
    def start_task(self, task):
        """Before `task` trains: records the units in use (masked), or
        starts the task's kernel and bias from the previous task's
        (unmasked: a fresh output layer would paint every pixel at
        sigmoid(0) = 0.5 and take most of the task to unlearn it)."""
        task = int(task)
        if self.masked:
            self.sizes.assign(
                ops.scatter_update(
                    self.sizes, [[task]], [int(self.active.numpy())]
                )
            )
        elif task > 0:
            c = self.capacity
            kernel = np.moveaxis(self.kernel.numpy(), self.out_axis, 0)
            kernel[task * c:(task + 1) * c] = kernel[(task - 1) * c:task * c]
            self.kernel.assign(np.moveaxis(kernel, 0, self.out_axis))
            bias = self.bias.numpy()
            bias[task] = bias[task - 1]
            self.bias.assign(bias)

    def finish_task(self, task):
        """Binarises the task's gate; returns units it newly reserved."""
        if not self.masked:
            return 0
        task = int(task)
        mask = ops.cast(self.embedding[task] > 0, "float32") * self.units_on()
        newly = int(ops.sum(mask * (1.0 - self.cumulative)))
        self.masks.assign(ops.scatter_update(self.masks, [[task]], mask[None]))
        self.cumulative.assign(ops.maximum(self.cumulative, mask))
        return newly

    def grow(self, n):
        """Activates up to `n` more units; returns how many it activated."""
        if not self.masked:
            return 0
        active = int(self.active.numpy())
        granted = max(0, min(int(n), self.capacity - active))
        self.active.assign(active + granted)
        return granted

    def unit_counts(self, task):
        """`{"free", "reused", "new", "size"}` units of `task` (finished).

        free: units in use but reserved by no earlier task when `task`
        started; reused / new: units the task's mask kept that earlier tasks
        had / had not reserved; size: units in use while it trained.
        """
        if not self.masked:
            return None
        masks = self.masks.numpy()
        task = int(task)
        prev = masks[:task].max(axis=0) if task else masks[0] * 0
        size = int(self.sizes.numpy()[task])
        mask = masks[task]
        return {
            "size": size,
            "free": int(size - prev[:size].sum()),
            "reused": int((mask * prev).sum()),
            "new": int((mask * (1 - prev)).sum()),
        }

    def per_task_bytes(self):
        """One float32 mask value per active unit (masked), with batch
        normalization four more rows (scale, offset, mean and variance);
        unmasked, the task's kernel and bias."""
        if not self.masked:
            return 4 * (int(np.prod(self.kernel.shape)) // self.num_tasks
                        + self.capacity)
        rows = 5 if self.batch_norm else 1
        return 4 * rows * int(self.active.numpy())

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_tasks": self.num_tasks,
            "capacity": self.capacity,
            "masked": self.masked,
            "batch_norm": self.batch_norm,
            "activation": keras.activations.serialize(self.activation)
            if self.activation is not None else None,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
        }


@keras.saving.register_keras_serializable(package="cl_zoo")
class MaskedDense(_MaskedLayer):
    """A dense layer with per-task unit gates (see `_MaskedLayer`)."""

    in_axis = 0
    out_axis = 1

    def kernel_shape(self, in_units):
        return (in_units, self.out_units)

    def kernel_gate(self, out_free, in_free):
        # 1 - min(cum_out, cum_in) = max(free_out, free_in).
        return ops.maximum(out_free[None, :], in_free[:, None])

    def linear(self, x, units):
        in_units = x.shape[-1] or tf.shape(x)[-1]
        return ops.matmul(x, self.used_kernel(in_units, units))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.capacity)


@keras.saving.register_keras_serializable(package="cl_zoo")
class MaskedConv2DTranspose(_MaskedLayer):
    """A transposed 2-D convolution with per-task channel gates.

    Args:
        kernel_size: int, square kernel.
        strides: int.
        padding: `"same"` or `"valid"`.
        (and the arguments of `_MaskedLayer`; units are output channels.)
    """

    in_axis = 3
    out_axis = 2

    def __init__(self, units, num_tasks, kernel_size=4, strides=2,
                 padding="same", **kwargs):
        super().__init__(units, num_tasks, **kwargs)
        self.kernel_size = check_positive_int("kernel_size", kernel_size)
        self.strides = check_positive_int("strides", strides)
        if padding not in ("same", "valid"):
            raise ValueError(
                "Expected `padding` in ('same', 'valid'). "
                f"Received: padding={padding!r}"
            )
        self.padding = padding

    def kernel_shape(self, in_units):
        k = self.kernel_size
        return (k, k, self.out_units, in_units)

    def kernel_gate(self, out_free, in_free):
        gate = ops.maximum(out_free[:, None], in_free[None, :])
        return ops.broadcast_to(gate[None, None], self.kernel.shape)

    def _output_size(self, size):
        if self.padding == "same":
            return size * self.strides
        return (size - 1) * self.strides + self.kernel_size

    def linear(self, x, units):
        in_units = x.shape[-1] or tf.shape(x)[-1]
        kernel = self.used_kernel(in_units, units)
        static_units = units if isinstance(units, int) else None
        out_shape = (*self.compute_output_shape(x.shape)[:-1], static_units)
        k = self.kernel_size
        if x.shape[1] == x.shape[2] == 1 and self.padding == "valid":
            # From a single pixel (DGM's projection) the transposed
            # convolution is a matrix product: the same sums, several times
            # faster than conv2d_transpose on a CPU. kernel: (k, k, out, in).
            flat = tf.reshape(kernel, (-1, in_units))
            y = tf.linalg.matmul(tf.reshape(x, (-1, in_units)), flat,
                                 transpose_b=True)
            y = ops.reshape(y, (-1, k, k, tf.shape(kernel)[2]))
            return tf.ensure_shape(y, out_shape)
        shape = tf.shape(x)
        out = tf.stack([
            shape[0],
            self._output_size(shape[1]),
            self._output_size(shape[2]),
            tf.shape(kernel)[2],
        ])
        y = tf.nn.conv2d_transpose(
            x, kernel, out, self.strides, padding=self.padding.upper()
        )
        return tf.ensure_shape(y, out_shape)

    def compute_output_shape(self, input_shape):
        def size(n):
            return None if n is None else self._output_size(n)

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]),
                self.capacity)

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
        }
