"""Weight initialization schemes of a backbone, applied after it is built.

The layers of cl_zoo create their weights with Keras's defaults (Glorot
uniform kernels, zero biases), whose random draws are fixed when the layers
are constructed. A scheme other than `"glorot_uniform"` redraws the kernels
and biases of the backbone's layers once they exist (`reinitialize`), from
a stateless generator seeded by the caller, so that Glorot models stay what
they were bit for bit and the other schemes repeat with the seed:

- `"glorot_uniform"`: nothing is redrawn (the layers' own initialization).
- `"he_uniform"`: kernels uniform in `+-sqrt(6 / fan_in)` (He et al., 2015;
  Keras's `HeUniform`), biases zero.
- `"torch_default"`: PyTorch's `nn.Linear` / `nn.Conv2d` default: kernels
  uniform in `+-1/sqrt(fan_in)` (`kaiming_uniform_(a=sqrt(5))`) and biases
  uniform in `+-1/sqrt(fan_in)`, `fan_in` from the layer's kernel
  (`kh * kw * in_channels` for a convolution).

`fan_in` is that of one output unit of one task: a table of per-task
kernels (`TaskDense`) or a head per task (`TaskHead`) is drawn as one
PyTorch layer per task. Batch normalization keeps scale 1 and offset 0 (as
PyTorch does), and what a method initializes in its own way (BPN's bias
units, AMN's memory units, PSP's keys, per-task tables of masks) is left
alone. A layer with weights that no rule here knows is an error, not
something to skip.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from cl_zoo.layers.bias_units import _TaskDenseBase
from cl_zoo.layers.heads import TaskHead
from cl_zoo.layers.memory_units import MemoryNeuronDense
from cl_zoo.layers.resnet import BasicBlock, ConvBatchNorm
from cl_zoo.layers.task_dense import TaskDense

DEFAULT_INITIALIZER = "glorot_uniform"
INITIALIZERS = ("glorot_uniform", "he_uniform", "torch_default")


def check_initializer(initializer):
    """Raises a Keras-style ValueError for an unknown scheme name."""
    if initializer not in INITIALIZERS:
        raise ValueError(
            f"Expected `initializer` in {INITIALIZERS}. "
            f"Received: initializer={initializer!r}"
        )
    return initializer


def _dense_parts(layer):
    """(variable, fan_in, role) of a layer computing `x @ kernel + bias`."""
    fan_in = int(layer.kernel.shape[-2])
    parts = [(layer.kernel, fan_in, "kernel")]
    if getattr(layer, "bias", None) is not None:
        parts.append((layer.bias, fan_in, "bias"))
    return parts


def _conv_parts(layer):
    """A 2-D convolution: `fan_in = kh * kw * in_channels`."""
    fan_in = math.prod(int(d) for d in layer.kernel.shape[:-1])
    parts = [(layer.kernel, fan_in, "kernel")]
    if layer.bias is not None:
        parts.append((layer.bias, fan_in, "bias"))
    return parts


# The weights each known layer type hands to a scheme, most specific type
# first. `_TaskDenseBase` (SuperpositionDense, BiasUnitDense) and
# `MemoryNeuronDense` hand over their shared kernel and bias only: their
# keys, bias units and memory units stay as the layer drew them.
# `TaskDense` has a kernel `(tasks, features, units)`: `fan_in` is
# `features`, as `_dense_parts` reads it.
_RULES = (
    (keras.layers.Dense, _dense_parts),
    (keras.layers.Conv2D, _conv_parts),
    (TaskHead, _dense_parts),
    (_TaskDenseBase, _dense_parts),
    (MemoryNeuronDense, _dense_parts),
    (TaskDense, _dense_parts),
    (keras.layers.BatchNormalization, lambda layer: []),
)
# Layers made of other layers: their parts are their sublayers'.
_COMPOSITES = (ConvBatchNorm, BasicBlock)


def scheme_parts(layers):
    """`(variable, fan_in, role)` of every weight a scheme draws in `layers`
    (and their sublayers), in order; role is `"kernel"` or `"bias"`.

    Raises:
        TypeError: for a layer with weights of a type no rule knows.
    """
    parts = []
    for layer in layers:
        if isinstance(layer, _COMPOSITES):
            parts += scheme_parts(layer.sublayers())
            continue
        rule = next((r for kind, r in _RULES if isinstance(layer, kind)),
                    None)
        if rule is not None:
            parts += rule(layer)
        elif layer.weights:
            raise TypeError(
                f"No initialization rule for layer {layer.name!r} of type "
                f"{type(layer).__name__}: add one to "
                "cl_zoo.layers.initialization (its kernels and biases, with "
                "their fan-in) before using --initializer with it."
            )
    return parts


def bounds(initializer, role, fan_in):
    """The half-width of the uniform draw of a weight (0: zeros)."""
    if initializer == "he_uniform":
        return math.sqrt(6.0 / fan_in) if role == "kernel" else 0.0
    if initializer == "torch_default":
        return 1.0 / math.sqrt(fan_in)
    raise ValueError(f"No bounds for initializer={initializer!r}.")


def reinitialize(layers, initializer, seed):
    """Redraws the kernels and biases of `layers` with `initializer`.

    Call on built layers, eagerly (under a distribution strategy's scope
    the assignments write every replica). `"glorot_uniform"` changes
    nothing and reads nothing. Weight `i` of the walk is drawn by
    `tf.random.stateless_uniform` with the seed `(seed, i)`.

    Args:
        layers: the layers to initialize (composites are walked).
        initializer: one of `INITIALIZERS`.
        seed: an integer; the same seed gives the same weights.
    """
    check_initializer(initializer)
    if initializer == DEFAULT_INITIALIZER:
        return
    for i, (variable, fan_in, role) in enumerate(scheme_parts(layers)):
        limit = bounds(initializer, role, fan_in)
        shape = tuple(variable.shape)
        if limit == 0.0:
            value = tf.zeros(shape, variable.dtype)
        else:
            value = tf.random.stateless_uniform(
                shape, seed=[int(seed), i], minval=-limit, maxval=limit,
                dtype=variable.dtype,
            )
        variable.assign(value)
