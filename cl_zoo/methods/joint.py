"""Joint training: the data of every task seen so far at once."""

from cl_zoo.methods.base import ContinualModel
from cl_zoo.methods.registry import register


@register("joint")
class Joint(ContinualModel):
    """The upper bound of methods that see each task once.

    While "learning" task t it trains on the union of tasks 0..t, shuffled
    together, each example carrying its own task id (so one head per task
    works too). After the last task it has trained on all tasks' data at once.
    """

    @classmethod
    def default_config(cls, benchmark):
        return {"head": "single", "consolidation": "none"}

    def train_dataset(self, task, benchmark, batch_size, seed=0):
        return self.limit_steps(benchmark.joint_train_dataset(
            list(range(task + 1)), batch_size, head=self.label_mode, seed=seed
        ))
