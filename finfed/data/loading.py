"""Reading a site's examples from CSV, JSONL, Parquet or a hub dataset, with checks."""

from __future__ import annotations

import csv
import io
import json
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
TEXT_FORMATS = (".csv", ".jsonl", ".json")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file into a DataFrame.

    Text files are checked line by line first, so an error names its line: a byte that is not
    UTF-8, a JSON line that does not parse or is not an object, a column named twice (pandas
    would rename it and train on the first one silently).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", public_reason="the data file does not exist")
    suffix = path.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise DataError(f"data file {path}: unsupported extension {path.suffix!r}; "
                        f"expected one of {sorted(READERS)}",
                        public_reason=f"the data file's extension is not one of {sorted(READERS)}")
    if suffix in TEXT_FORMATS:
        check_text_file(path, json_lines=suffix != ".csv")
    try:
        frame = reader(path)
    except Exception as exc:  # pandas raises many parser types; all mean the same to a user
        raise DataError(f"data file {path} could not be parsed as {path.suffix[1:]}: {exc}",
                        public_reason=f"the data file could not be parsed as {path.suffix[1:]}") from exc
    twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if twice:
        raise DataError(f"data file {path}: column(s) {twice} appear more than once; each column needs its "
                        "own name", public_reason="the data file names a column more than once")
    if frame.empty:
        raise DataError(f"data file {path} holds no rows", public_reason="the data file holds no rows")
    return frame


def check_text_file(path: Path, *, json_lines: bool) -> None:
    """UTF-8 throughout; a CSV header or every JSON line without repeated names; JSON lines that parse."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data file {path} is not readable: {exc.strerror}") from None
    text = decode_utf8(data, f"data file {path}")
    if json_lines:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                _check_json_line(line, f"data file {path}: line {number}", number)
    else:
        _check_csv_header(text, f"data file {path}")


def decode_utf8(data: bytes, source: str) -> str:
    """``data`` as text, or an error naming the line and column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(f"{source}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
                        "save the file as UTF-8",
                        public_reason=f"the data file is not UTF-8 (line {line}, column {column})") from None


def _check_json_line(line: str, where: str, number: int) -> None:
    def no_repeats(pairs: list) -> dict:
        names = [name for name, _ in pairs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise DataError(f"{where}: key(s) {twice} appear more than once in one object",
                            public_reason=f"a JSON line names a key more than once (line {number})")
        return dict(pairs)
    try:
        value = json.loads(line, object_pairs_hook=no_repeats)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}, column {exc.colno}: not valid JSON ({exc.msg})",
                        public_reason=f"a line is not valid JSON (line {number})") from None
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object ({{...}}) per line, got {type(value).__name__}",
                        public_reason=f"a line is not a JSON object (line {number})")


def _check_csv_header(text: str, source: str) -> None:
    header = next(csv.reader(io.StringIO(text)), [])
    names = [name.strip() for name in header]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        where = ", ".join(f"{name!r} in columns {[i + 1 for i, n in enumerate(names) if n == name]}"
                          for name in twice)
        raise DataError(f"{source}: line 1 (the header) names a column more than once: {where}; each column "
                        "needs its own name", public_reason="the data file's header names a column more than once")


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
