"""Reading a site's examples from CSV, JSONL, Parquet or a hub dataset, with checks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from finfed.config import DataSettings
from finfed.errors import DataError

READERS = {
    ".csv": lambda p: pd.read_csv(p),
    ".jsonl": lambda p: pd.read_json(p, lines=True),
    ".json": lambda p: pd.read_json(p, lines=True),
    ".parquet": lambda p: pd.read_parquet(p),
}


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file into a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", public_reason="the data file does not exist")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"data file {path}: unsupported extension {path.suffix!r}; "
                        f"expected one of {sorted(READERS)}",
                        public_reason=f"the data file's extension is not one of {sorted(READERS)}")
    try:
        frame = reader(path)
    except Exception as exc:  # pandas raises many parser types; all mean the same to a user
        raise DataError(f"data file {path} could not be parsed as {path.suffix[1:]}: {exc}",
                        public_reason=f"the data file could not be parsed as {path.suffix[1:]}") from exc
    if frame.empty:
        raise DataError(f"data file {path} holds no rows", public_reason="the data file holds no rows")
    return frame


def read_hub_dataset(name: str, split: str = "train") -> pd.DataFrame:
    """Load a Hugging Face hub dataset (needs network access to the hub)."""
    import datasets  # imported late: only hub users pay for it

    try:
        return datasets.load_dataset(name, split=split).to_pandas()
    except Exception as exc:
        raise DataError(f"hub dataset {name!r} could not be loaded (is the hub reachable?): {exc}",
                        public_reason="the hub dataset could not be loaded") from exc


def check_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; found {list(frame.columns)}. "
                        "Set `data.text_column` / `data.label_column` to the right names.",
                        public_reason="the data file lacks the text or label column (`data.text_column` / "
                                      "`data.label_column`)")


def normalise_examples(frame: pd.DataFrame, settings: DataSettings, source: str) -> pd.DataFrame:
    """Return a frame with ``text`` and ``label`` (text) columns, other columns kept."""
    check_columns(frame, [settings.text_column, settings.label_column], source)
    texts = frame[settings.text_column]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        row = int(empty.idxmax())
        raise DataError(f"{source}: row {row + 1} has an empty `{settings.text_column}`",
                        public_reason=f"a text is empty (row {row + 1})")
    labels = frame[settings.label_column]
    if labels.isna().any():
        row = int(labels.isna().idxmax())
        raise DataError(f"{source}: row {row + 1} has no `{settings.label_column}`",
                        public_reason=f"a label is missing (row {row + 1})")
    out = frame.copy()
    out["text"] = texts.astype(str)
    out["label"] = labels.astype(str)
    return out


def resolve_labels(frame: pd.DataFrame, settings: DataSettings, source: str) -> list[str]:
    """The federation's fixed label list: configured, or inferred (sorted) from ``frame``."""
    labels = list(settings.labels) or sorted(frame["label"].unique().tolist())
    if len(labels) < 2:
        raise DataError(f"{source}: classification needs at least 2 labels, found {labels}",
                        public_reason="classification needs at least 2 labels")
    check_labels(frame, labels, source)
    return labels


def check_labels(frame: pd.DataFrame, labels: list[str], source: str) -> None:
    unknown = ~frame["label"].isin(labels)
    if unknown.any():
        row = int(unknown.idxmax())
        raise DataError(f"{source}: row {row + 1} has unknown label {frame['label'].iloc[row]!r}; "
                        f"expected one of {labels} (`data.labels`)",
                        public_reason=f"a label is not in the run's label list (row {row + 1})")
