"""Plain gradient descent, one head shared by all tasks (PGD in AMN)."""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("sgd")
class SGD(ContinualModel):
    """Trains each task in turn with no protection: the lower bound."""

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "single", "consolidation": "none"}
