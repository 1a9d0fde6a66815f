"""Fine-tuning: plain gradient descent with one head per task."""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("finetune")
class FineTune(ContinualModel):
    """Shared layers keep training on each new task; each task its own head."""

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "multi", "consolidation": "none"}
