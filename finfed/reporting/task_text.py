"""The two task-dependent strings a report shows: what the data is, and what one protected unit is.

They live here alone so the task interface can take them over in one place (issue 10: no task-name
branches outside finfed/tasks/).
"""

from __future__ import annotations

from finfed.config import ExperimentConfig

QA_UNIT = ("For question answering the protected unit is one record: a question, its context and its answer. "
           "A context longer than one model window is cut into overlapping windows, but training uses exactly one "
           "window per record (the first that holds the answer, chosen from that record alone), so a record joins "
           "each DP-SGD step at most once and contributes at most one clipped gradient to it; records whose "
           "answer fits no window are left out of training. Several questions about the same passage are "
           "separate records: the passage itself is protected only as far as each of its records is.")

GENERATED = {"classification": "financial-news sentences", "qa": "financial passages and questions"}


def protected_unit_text(config: ExperimentConfig) -> str:
    """What one protected record is, where the task needs saying so; empty otherwise."""
    return QA_UNIT if config.task == "qa" else ""


def data_description(config: ExperimentConfig) -> str:
    """The data the run trained on, in words (synthetic data is named as such)."""
    if config.data.source == "synthetic":
        generated = GENERATED.get(config.task, "examples")
        return (f"Synthetic: finfed's generated {generated} ({config.data.partitioner} partitioning), "
                "not real institutions' data.")
    return f"{config.data.path} ({config.data.partitioner} partitioning)."
