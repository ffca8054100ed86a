"""Cheap checks of the data settings, before any model or engine starts (well under 5 s for 200,000 rows).

They read a file's header and its label and partition columns only, never the texts: the file exists and
parses as its format says, the columns the settings name are there (errors list the user's own columns
and the settings that fix them), every label (after `data.label_map`) is one of `data.labels`, and the
partition column agrees with `federation.num_sites`.
"""

from __future__ import annotations

from finfed.config import ExperimentConfig
from finfed.data.loading import check_labels, mapped_labels, read_table, user_columns
from finfed.data.partition import (
    RecordFormat,
    check_site_count,
    normalise_partition_column,
    partitioner_used,
    split_rows,
)
from finfed.errors import DataError


def check_data_config(config: ExperimentConfig, records: RecordFormat) -> None:
    """Raise :class:`DataError` / :class:`ConfigError` for what the data settings get wrong, without loading
    any model (``records``: the task's record format, ``finfed.tasks.task_class(config).records``).

    Synthetic data needs no check; a hub dataset is checked when it is loaded (that needs the network).
    """
    settings = config.data
    if settings.source != "file":
        return
    needed = list(records.columns(settings)) if records.columns else []
    label = settings.label_column if records.labelled else None
    wanted = [c for c in (label, settings.partition_column) if c]
    source = f"data file {settings.path}"
    frame = read_table(settings.path, columns=wanted) if records.columns else read_table(settings.path)
    _check_named_columns(frame, needed, source)
    kind = partitioner_used(settings, list(frame.columns), source, user_columns(frame))
    if kind == "column":
        values = normalise_partition_column(frame, settings, source)
        if not settings.test_path:
            values = values.iloc[split_rows(len(values), settings)[0]]
        check_site_count(settings.partition_column, len(set(values)), config.federation.num_sites)
    if label is None:
        return
    labels = _checked_labels(frame, label, settings.label_map, list(settings.labels), source)
    if settings.test_path:
        test_source = f"test file {settings.test_path}"
        test = read_table(settings.test_path, columns=[label])
        _check_named_columns(test, needed, test_source)
        _checked_labels(test, label, settings.label_map, labels, test_source)


def _check_named_columns(frame, needed: list[str], source: str) -> None:
    found = user_columns(frame)
    missing = [c for c in needed if c not in found]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has {found}. Set `data.text_column` / "
                        "`data.label_column` to the right names (e.g. --set data.text_column=headline "
                        "--set data.label_column=sentiment)",
                        public_reason="the data file lacks the text or label column (`data.text_column` / "
                                      "`data.label_column`)")


def _checked_labels(frame, column: str, label_map, labels: list[str], source: str) -> list[str]:
    """The file's labels (after ``label_map``) all in ``labels`` (or, when empty, at least two of them)."""
    values = frame[column]
    if values.isna().any():
        row = int(values.isna().to_numpy().argmax())
        raise DataError(f"{source}: row {row + 1} has no `{column}`",
                        public_reason=f"a label is missing (row {row + 1})")
    mapped = mapped_labels(values, label_map)
    found = sorted(set(mapped))
    if not labels:
        if len(found) < 2:
            raise DataError(f"{source}: classification needs at least 2 labels, found {found}",
                            public_reason="classification needs at least 2 labels")
        return found
    check_labels(mapped.to_frame("label"), labels, source)  # the same error as a loaded file gives
    return labels
