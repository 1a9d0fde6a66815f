"""SGD-F: the shared layers are frozen after the first task."""

import keras
from keras import ops

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("sgd_freeze")
class SGDFreeze(ContinualModel):
    """Learns the features on task 1 only; later tasks train their heads.

    The freeze is a variable read by the gradient rule, so it takes effect
    without recompiling or retracing.
    """

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "multi", "consolidation": "none"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen = keras.Variable(
            0.0, dtype="float32", trainable=False, name="frozen"
        )

    def begin_task(self, task, benchmark=None):
        super().begin_task(task, benchmark)
        self.frozen.assign(1.0 if task > 0 else 0.0)

    def transform_gradients(self, grads, variables):
        grads = super().transform_gradients(grads, variables)
        head = {id(v) for v in self.head.trainable_variables}
        keep = 1.0 - self.frozen
        return [
            g if id(v) in head else g * ops.cast(keep, g.dtype)
            for g, v in zip(grads, variables)
        ]
