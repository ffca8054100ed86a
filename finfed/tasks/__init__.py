"""Tasks are pluggable: each knows its model, encoding, loss and metrics.

The federation, privacy and run-directory machinery never branch on the task;
they call the :class:`~finfed.tasks.base.Task` interface.
"""

from finfed.tasks.base import (
    Explainable,
    Task,
    federation_labels,
    get_task,
    register_task,
    task_class,
    task_named,
    task_names,
)
from finfed.tasks.classification import ClassificationTask
from finfed.tasks.qa import QuestionAnsweringTask

register_task("classification", ClassificationTask)
register_task("qa", QuestionAnsweringTask)

__all__ = ["ClassificationTask", "Explainable", "QuestionAnsweringTask", "Task", "federation_labels", "get_task",
           "register_task", "task_class", "task_named", "task_names"]
