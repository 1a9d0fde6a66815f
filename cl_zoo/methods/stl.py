"""Single-task learning: a separate network for every task."""

from cl_zoo.layers.heads import TaskHead
from cl_zoo.layers.task_dense import TaskDense
from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register
from cl_zoo.settings import ConfigError


@register("stl")
class STL(ContinualModel):
    """One independent network per task: no forgetting, no transfer.

    Every dense layer is a `TaskDense` table with a row per task, so the
    networks share nothing and the active task still switches without a
    retrace. A task's network starts from its own random initialization.
    """

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "multi", "consolidation": "none"}

    def __init__(self, *args, **kwargs):
        if kwargs.get("architecture", "mlp") != "mlp":
            raise ConfigError(
                "--method=stl supports --architecture=mlp only (separate "
                "conv stacks per task are not implemented)."
            )
        super().__init__(*args, **kwargs)

    def make_hidden_layer(self, units, index):
        return TaskDense(
            units, self.num_tasks, activation=self.activation,
            name=f"task_dense_{index}",
        )

    def make_head(self):
        if self.head_mode == "single":
            return TaskDense(self.num_classes, self.num_tasks, name="head")
        return TaskHead(
            "multi", self.num_classes, [len(c) for c in self.task_classes],
            name="head",
        )
