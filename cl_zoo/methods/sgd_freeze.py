"""SGD-F: the shared layers are frozen after the first task."""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("sgd_freeze")
class SGDFreeze(ContinualModel):
    """Learns the features on task 1 only; later tasks train their heads.

    The freeze is the base model's `frozen` variable, read by the gradient
    rule, so it takes effect without recompiling or retracing.
    """

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "multi", "consolidation": "none"}

    def frozen_variables(self):
        """Everything but the head."""
        head = {id(v) for v in self.head.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in head]
