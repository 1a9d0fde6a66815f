"""Keras layers of cl_zoo."""

from cl_zoo.layers.heads import HEAD_MODES, TaskHead
from cl_zoo.layers.task_dense import TaskDense

__all__ = ["HEAD_MODES", "TaskDense", "TaskHead"]
