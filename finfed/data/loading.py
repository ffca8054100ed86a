"""Reading a site's examples from CSV, JSONL, Parquet or a hub dataset, with checks."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from finfed.config import DataSettings
from finfed.errors import DataError

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
TEXT_FORMATS = (".csv", ".jsonl", ".json")
#: where ``read_table`` keeps every column the file has (it may read only some of them), for errors
FILE_COLUMNS = "finfed_file_columns"


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet file into a DataFrame of plain Python values (``object`` columns).

    ``columns``: read only these (those the file lacks are left out, for the caller to report); every
    column the file has is listed in ``frame.attrs[FILE_COLUMNS]``. Memory: the columns read, once,
    as Python strings: no pandas/Arrow string columns (which cost ~3 MB a row going through ``datasets``).
    Text files are checked line by line as they are read, so an error names its line: a byte that is not
    UTF-8, a JSON line that does not parse or is not an object, a column named twice (pandas would rename it
    and train on the first one silently).
    """
    path = _checked_path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        available = check_text_file(path, json_lines=False)
        wanted = available if columns is None else [c for c in available if c in set(columns)]
        try:
            frame = pd.read_csv(path, usecols=wanted, dtype=object, keep_default_na=False, na_values=[""],
                                encoding="utf-8-sig") if wanted else pd.DataFrame()
        except Exception as exc:  # pandas raises many parser types; all mean the same to a user
            raise _unparsable(path, exc) from exc
    elif suffix == ".parquet":
        frame, available = _read_parquet(path, columns)
    else:
        frame, available = _read_json_lines(path, columns)
    frame.attrs[FILE_COLUMNS] = list(available)
    if len(frame.columns) and frame.empty:
        raise DataError(f"data file {path} holds no rows", public_reason="the data file holds no rows")
    return frame


def file_columns(path: str | Path) -> list[str]:
    """The columns a data file has, read cheaply (a CSV's header, a Parquet schema, JSON lines' keys)."""
    path = _checked_path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return check_text_file(path, json_lines=False, header_only=True)
    if suffix == ".parquet":
        return _read_parquet(path, [])[1]
    return _read_json_lines(path, [])[1]


def _checked_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist", public_reason="the data file does not exist")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"data file {path}: unsupported extension {path.suffix!r}; "
                        f"expected one of {sorted(SUFFIXES)}",
                        public_reason=f"the data file's extension is not one of {sorted(SUFFIXES)}")
    return path


def _unparsable(path: Path, exc: Exception) -> DataError:
    return DataError(f"data file {path} could not be parsed as {path.suffix[1:]}: {exc}",
                     public_reason=f"the data file could not be parsed as {path.suffix[1:]}")


def _read_parquet(path: Path, columns: Sequence[str] | None) -> tuple[pd.DataFrame, list[str]]:
    import pyarrow.parquet as pq

    try:
        available = [str(name) for name in pq.read_schema(path).names]
        twice = sorted({name for name in available if available.count(name) > 1})
        if twice:
            raise DataError(f"data file {path}: column(s) {twice} appear more than once; each column needs its "
                            "own name", public_reason="the data file names a column more than once")
        wanted = available if columns is None else [c for c in available if c in set(columns)]
        table = pq.read_table(path, columns=wanted)
    except DataError:
        raise
    except Exception as exc:
        raise _unparsable(path, exc) from exc
    frame = pd.DataFrame({name: pd.Series(table.column(name).to_pylist(), dtype=object) for name in wanted},
                         index=pd.RangeIndex(table.num_rows))
    return frame, available


def _read_json_lines(path: Path, columns: Sequence[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """One pass: each line decoded, parsed (named on error) and only the wanted keys kept."""
    values: dict[str, list] = {}
    seen: dict[str, None] = {}
    rows = 0
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode_line(raw, path, number).rstrip("\r\n")
            if not line.strip():
                continue
            record = _check_json_line(line, f"data file {path}: line {number}", number)
            for key in record:
                if key not in seen:
                    seen[key] = None
                    if columns is None or key in columns:
                        values[key] = [None] * rows
            for key, column in values.items():
                column.append(record.get(key))
            rows += 1
    frame = pd.DataFrame({key: pd.Series(column, dtype=object) for key, column in values.items()},
                         index=pd.RangeIndex(rows))
    return frame, list(seen)


def _open_binary(path: Path):
    try:
        return path.open("rb")
    except OSError as exc:
        raise DataError(f"data file {path} is not readable: {exc.strerror}",
                        public_reason="the data file is not readable") from None


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = exc.start + 1
        raise DataError(f"data file {path}: line {number}, column {column}: byte 0x{raw[exc.start]:02x} is not "
                        "UTF-8; save the file as UTF-8",
                        public_reason=f"the data file is not UTF-8 (line {number}, column {column})") from None


def check_text_file(path: Path, *, json_lines: bool, header_only: bool = False) -> list[str]:
    """UTF-8 throughout (read line by line, never whole); every JSON line parses to an object without repeated
    keys, or a CSV header without repeated names. Returns the columns (CSV: the header; JSON lines: every key)."""
    if json_lines:
        return _read_json_lines(path, [])[1]
    header: list[str] = []
    with _open_binary(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode_line(raw, path, number)
            if number == 1:
                header = _check_csv_header(line, f"data file {path}")
                if header_only:
                    break
    return header


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


def _check_json_line(line: str, where: str, number: int) -> dict:
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
    return value


def _check_csv_header(text: str, source: str) -> list[str]:
    header = next(csv.reader(io.StringIO(text.removeprefix("\ufeff"))), [])
    names = [name.strip() for name in header]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        where = ", ".join(f"{name!r} in columns {[i + 1 for i, n in enumerate(names) if n == name]}"
                          for name in twice)
        raise DataError(f"{source}: line 1 (the header) names a column more than once: {where}; each column "
                        "needs its own name", public_reason="the data file's header names a column more than once")
    return header


def read_hub_dataset(name: str, split: str = "train") -> pd.DataFrame:
    """Load a Hugging Face hub dataset (needs network access to the hub)."""
    import datasets  # imported late: only hub users pay for it

    try:
        return datasets.load_dataset(name, split=split).to_pandas()
    except Exception as exc:
        raise DataError(f"hub dataset {name!r} could not be loaded (is the hub reachable?): {exc}",
                        public_reason="the hub dataset could not be loaded") from exc


def user_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of the user's file (all of them, even those not read), for error messages."""
    return list(frame.attrs.get(FILE_COLUMNS, [str(c) for c in frame.columns]))


def check_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; the file has {user_columns(frame)}. "
                        "Set `data.text_column` / `data.label_column` to the right names "
                        "(e.g. --set data.text_column=headline --set data.label_column=sentiment).",
                        public_reason="the data file lacks the text or label column (`data.text_column` / "
                                      "`data.label_column`)")


def as_text(values: pd.Series) -> pd.Series:
    """``values`` as an ``object`` column of Python strings (never pandas' Arrow-backed ``str`` dtype)."""
    if values.dtype == object and all(type(v) is str for v in values):
        return values
    return pd.Series([v if type(v) is str else str(v) for v in values], index=values.index, dtype=object)


def mapped_labels(labels: pd.Series, label_map: Mapping[str, str]) -> pd.Series:
    """File label values as text, renamed by ``data.label_map`` (values it does not list stay as they are)."""
    labels = as_text(labels)
    if not label_map:
        return labels
    return pd.Series([label_map.get(v, v) for v in labels], index=labels.index, dtype=object)


def normalise_examples(frame: pd.DataFrame, settings: DataSettings, source: str) -> pd.DataFrame:
    """Add ``text`` and ``label`` (text, after ``data.label_map``) columns to ``frame`` (other columns kept).

    Works in place on the frame just read (no copy of the table): its columns are the user's.
    """
    check_columns(frame, [settings.text_column, settings.label_column], source)
    texts = frame[settings.text_column]
    missing = texts.isna().to_numpy()
    empty = missing | (as_text(texts.where(~missing, "")).str.strip() == "").to_numpy()
    if empty.any():
        row = int(empty.argmax())
        raise DataError(f"{source}: row {row + 1} has an empty `{settings.text_column}`",
                        public_reason=f"a text is empty (row {row + 1})")
    labels = frame[settings.label_column]
    if labels.isna().any():
        row = int(labels.isna().to_numpy().argmax())
        raise DataError(f"{source}: row {row + 1} has no `{settings.label_column}`",
                        public_reason=f"a label is missing (row {row + 1})")
    attrs = dict(frame.attrs)
    frame = frame.reset_index(drop=True) if not isinstance(frame.index, pd.RangeIndex) else frame
    frame["text"] = as_text(frame[settings.text_column])
    frame["label"] = mapped_labels(frame[settings.label_column], settings.label_map)
    frame.attrs.update(attrs)
    return frame


def resolve_labels(frame: pd.DataFrame, settings: DataSettings, source: str) -> list[str]:
    """The federation's fixed label list: configured, or inferred (sorted) from ``frame``."""
    labels = list(settings.labels) or sorted(set(frame["label"]))
    if len(labels) < 2:
        raise DataError(f"{source}: classification needs at least 2 labels, found {labels}",
                        public_reason="classification needs at least 2 labels")
    check_labels(frame, labels, source)
    return labels


def check_labels(frame: pd.DataFrame, labels: list[str], source: str) -> None:
    unknown = ~frame["label"].isin(labels).to_numpy()
    if unknown.any():
        row = int(unknown.argmax())
        raise DataError(f"{source}: row {row + 1} has unknown label {frame['label'].iloc[row]!r}; "
                        f"expected one of {labels} (`data.labels`); rename the file's values with "
                        "`data.label_map` (e.g. --set 'data.label_map={neg: negative, pos: positive}')",
                        public_reason=f"a label is not in the run's label list (row {row + 1})")
