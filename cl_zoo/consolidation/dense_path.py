"""Sums of squared per-example gradients of a dense network, two matmuls
per layer.

For a layer `z = x W + b (+ terms free of W and b)`, example i's gradient
of W is the outer product `x_i^T d_i`, with `d_i` the gradient of its own
objective with respect to its pre-activation `z_i`; that of b is `d_i`.
Examples do not interact in an evaluation pass, so one backward pass of the
objective summed over a chunk gives every `d_i`, and

    sum_i (x_i^T d_i)^2 = (x^2)^T (d^2),    sum_i d_i^2,

elementwise squares. This is the exact empirical (or sampled-label) diagonal
Fisher of `cl_zoo.consolidation.fisher`, equal to the vectorized per-example
computation up to float rounding (tests/test_speed.py), at the cost of a
training step instead of one gradient per example.

It applies when every variable asked for is the kernel or bias of a hidden
layer or of the head, those layers are Keras `Dense` layers or cl_zoo's
dense layers (which split their `call` into `linear` and `finish`), and the
layers before them hold none of the variables (a `Flatten`). Anything else
(convolutions, per-task kernels, other variables) takes the vectorized path.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


class _KerasDense:
    """`linear` / `finish` of a Keras `Dense` layer, as its `call` computes
    them (`ops.matmul`, `ops.add`, activation)."""

    def __init__(self, layer):
        self.layer = layer

    def linear(self, inputs, task_ids):
        del task_ids
        outputs = ops.matmul(inputs, self.layer.kernel)
        if self.layer.bias is not None:
            outputs = ops.add(outputs, self.layer.bias)
        return inputs, outputs

    def finish(self, pre_activation, task_ids):
        del task_ids
        if self.layer.activation is None:
            return pre_activation
        return self.layer.activation(pre_activation)


def _adapter(layer):
    """The layer's `linear` / `finish` pair, or None if it has none."""
    if type(layer) is keras.layers.Dense:
        if getattr(layer, "lora_enabled", False) or getattr(
                layer, "quantization_mode", None):
            return None
        return _KerasDense(layer)
    if hasattr(layer, "linear") and hasattr(layer, "finish"):
        return layer
    return None


class DensePath:
    """The plan of one model's dense layers for a set of variables."""

    def __init__(self, model, layers, slots):
        self.model = model
        self.layers = layers  # (layer, adapter) of the dense stack and head
        self.slots = slots  # per variable: (layer index, "kernel" | "bias")

    @classmethod
    def of(cls, model, variables):
        """The plan, or None when the vectorized path must be used."""
        # The path replays ContinualModel's forward pass: a model that
        # overrides it (DGM's classifier) takes the vectorized path.
        for name in ("call", "features"):
            method = getattr(type(model), name, None)
            if getattr(method, "__qualname__", "") != f"ContinualModel.{name}":
                return None
        for layer in getattr(model, "feature_layers", ()):
            if layer.weights:
                return None
        stack = [*getattr(model, "hidden_layers", ()),
                 getattr(model, "head", None)]
        layers = []
        for layer in stack:
            adapter = None if layer is None else _adapter(layer)
            if adapter is None:
                return None
            layers.append((layer, adapter))
        where = {}
        for index, (layer, _) in enumerate(layers):
            for name in ("kernel", "bias"):
                variable = getattr(layer, name, None)
                if variable is not None:
                    where[id(variable)] = (index, name)
        slots = [where.get(id(v)) for v in variables]
        if any(slot is None for slot in slots):
            return None
        return cls(model, layers, slots)

    def sums(self, x, task_ids, objective, labels, term="square"):
        """Per variable, the sum over the chunk of `term` (`"square"` or
        `"abs"`) of each example's gradient of its objective.

        `objective(logits, labels)` gives every example's objective, shape
        `(batch,)`, each a function of its own row alone."""
        model = self.model
        kernel_inputs, pre_activations = [], []
        with tf.GradientTape() as tape:
            h = model.normalize(x)
            for layer in model.feature_layers:
                h = layer(h, training=False)
            for _, adapter in self.layers:
                inputs, z = adapter.linear(h, task_ids)
                tape.watch(z)
                kernel_inputs.append(inputs)
                pre_activations.append(z)
                h = adapter.finish(z, task_ids)
            total = tf.reduce_sum(objective(h, labels))
        deltas = tape.gradient(total, pre_activations)
        power = tf.square if term == "square" else tf.abs
        out = []
        for index, name in self.slots:
            delta = power(deltas[index])
            if name == "bias":
                out.append(tf.reduce_sum(delta, axis=0))
            else:
                inputs = power(kernel_inputs[index])
                out.append(tf.matmul(inputs, delta, transpose_a=True))
        return out
