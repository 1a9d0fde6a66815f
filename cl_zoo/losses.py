"""Training losses over logits with sparse (integer) labels.

`--loss=softmax` is Keras's `SparseCategoricalCrossentropy(from_logits=True)`.
`--loss=sigmoid` is the sigmoid cross-entropy the AMN paper compares with it:
each output is an independent binary classifier against a one-hot target.
"""

from __future__ import annotations

import keras
from keras import ops

# The training losses over the logits (`--loss`).
LOSSES = ("softmax", "sigmoid")


@keras.saving.register_keras_serializable(package="cl_zoo")
class SparseSigmoidCrossEntropy(keras.losses.Loss):
    """Binary cross-entropy of every output against a one-hot target.

    For an example with label `y` and logits `z` of width C, the loss is
    `mean_c BCE(sigmoid(z_c), [c == y])`, then the batch mean (Keras's
    `"sum_over_batch_size"` reduction). Padding classes of a masked head
    (logit -1e9, target 0) contribute exactly 0 to the sum over classes.

    Args:
        reduction: Keras loss reduction.
        name: loss name.
    """

    def __init__(self, reduction="sum_over_batch_size",
                 name="sparse_sigmoid_cross_entropy", **kwargs):
        super().__init__(reduction=reduction, name=name, **kwargs)

    def call(self, y_true, y_pred):
        logits = ops.convert_to_tensor(y_pred)
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        targets = ops.one_hot(labels, ops.shape(logits)[-1],
                              dtype=logits.dtype)
        per_class = ops.binary_crossentropy(targets, logits, from_logits=True)
        return ops.mean(per_class, axis=-1)


def make_loss(name):
    """The compiled training loss called `name` (`--loss`)."""
    if name == "softmax":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "sigmoid":
        return SparseSigmoidCrossEntropy()
    raise ValueError(
        f"Expected `loss` in {LOSSES}. Received: loss={name!r}"
    )
