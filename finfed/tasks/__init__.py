"""Tasks are pluggable: each knows its model, encoding, loss and metrics.

The federation, privacy and run-directory machinery never branch on the task;
they call the :class:`~finfed.tasks.base.Task` interface.
"""

from finfed.tasks.base import Task, get_task, register_task
from finfed.tasks.classification import ClassificationTask

register_task("classification", ClassificationTask)

__all__ = ["ClassificationTask", "Task", "get_task", "register_task"]
