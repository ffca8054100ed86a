"""The two task-dependent strings a report shows: what the data is, and what one protected unit is.

Both come from the task (finfed/tasks/): the report never branches on a task's name.
"""

from __future__ import annotations

from finfed.config import ExperimentConfig
from finfed.tasks import task_named


def protected_unit_text(config: ExperimentConfig) -> str:
    """What one protected record is, where the task needs saying so; empty otherwise."""
    return task_named(config.task).protected_unit


def data_description(config: ExperimentConfig) -> str:
    """The data the run trained on, in words (synthetic data is named as such)."""
    if config.data.source == "synthetic":
        return (f"Synthetic: finfed's generated {task_named(config.task).synthetic_description} "
                f"({config.data.partitioner} partitioning), not real institutions' data.")
    return f"{config.data.path} ({config.data.partitioner} partitioning)."
