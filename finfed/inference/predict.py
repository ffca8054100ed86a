"""Using a finished run's global model: texts or questions given one by one, or a CSV/JSONL file of them."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from finfed.errors import ConfigError, DataError
from finfed.runs.outputs import check_run_model

FORMATS = (".csv", ".jsonl")


def load_run_model(run_dir: str | Path) -> tuple[Any, Any, Any]:
    """(task, model, tokenizer): PyTorch, transformers and PEFT are imported only when a model is loaded, so
    that every check before it answers in a moment."""
    from finfed.runs.model_store import load_run_model as load

    return load(run_dir)


def predict_texts(run_dir: str | Path, texts: list[str]) -> list[dict]:
    """Each text's label and class probabilities under the run's global model."""
    task, model, tokenizer = load_run_model(run_dir)
    with _naming_the_run(run_dir):
        return task.label_texts(model, tokenizer, texts)


def answer_question(run_dir: str | Path, question: str, context: str,
                    max_answer_tokens: int | None = None) -> dict:
    """The answer span of ``question`` in ``context`` under a QA run's global model.

    Returns the answer text, its score (p(start) * p(end) in the best window) and its
    character offsets in ``context`` (``context[start:end] == answer``).
    """
    task, model, tokenizer = load_run_model(run_dir)
    with _naming_the_run(run_dir):
        answer = task.answer_question(model, tokenizer, question, context, max_answer_tokens=max_answer_tokens)
    return {"question": question, "answer": answer.text, "score": answer.score, "start": answer.start,
            "end": answer.end}


# --------------------------------------------------------------------------- a file of inputs

@dataclass(frozen=True)
class FilePrediction:
    """A checked `finfed predict RUN --input FILE` job: everything that can fail without the model already has."""

    run_dir: Path
    input: Path
    output: Path | None  # None: JSON lines on stdout
    columns: dict[str, str]  # the task's field -> the input file's column
    rows: list[dict[str, str]]  # keyed by field
    batch_size: int
    max_answer_tokens: int | None = None


def plan_file_prediction(run_dir: str | Path, input_path: str | Path, output: str | Path | None = None, *,
                         columns: dict[str, str] | None = None, overwrite: bool = False,
                         max_answer_tokens: int | None = None) -> FilePrediction:
    """The cheap checks of a file prediction, in order: the run and its model files, the output (never
    replaced unless ``overwrite``), the input's format, columns and rows. No model is built."""
    run_dir, input_path = Path(run_dir), Path(input_path)
    config, _ = check_run_model(run_dir)
    _check_format(input_path, "input")
    if not input_path.is_file():
        raise DataError(f"input file {input_path} does not exist")
    output = Path(output) if output is not None else None
    if output is not None:
        _check_output(output, input_path, overwrite)
    header, records = _read_records(input_path)
    from finfed.tasks import task_class  # PyTorch: after the checks that need none

    defaults = task_class(config).prediction_columns(config)
    unknown = sorted(set(columns or {}) - set(defaults))
    if unknown:
        raise ConfigError(f"run {run_dir} is a {config.task!r} run: it reads no {', '.join(map(repr, unknown))} "
                          f"column; its inputs are {_options(defaults)}")
    chosen = {field: _column(input_path, header, field, column, (columns or {}).get(field))
              for field, column in defaults.items()}
    rows = [_row(input_path, number, record, chosen) for number, record in records]
    if not rows:
        raise DataError(f"input file {input_path} holds no rows")
    return FilePrediction(run_dir, input_path, output, chosen, rows, config.train.eval_batch_size, max_answer_tokens)


def predict_file(job: FilePrediction, *, progress: Callable[[int, int], None] | None = None,
                 stdout: TextIO | None = None) -> int:
    """Run a checked job: one output row per input row, in order, written in batches of the run's
    `train.eval_batch_size`; returns the number of rows. The output file appears only when complete."""
    task, model, tokenizer = load_run_model(job.run_dir)
    total = len(job.rows)
    with _naming_the_run(job.run_dir), _output(job.output, stdout) as write:
        for begin in range(0, total, job.batch_size):
            batch = job.rows[begin:begin + job.batch_size]
            results = task.predict_rows(model, tokenizer, batch, max_answer_tokens=job.max_answer_tokens)
            write([{"row": begin + offset, **result} for offset, result in enumerate(results)])
            if progress:
                progress(begin + len(batch), total)
    return total


def _options(defaults: dict[str, str]) -> str:
    return ", ".join(f"{field} (column {column!r}, --{field}-column)" for field, column in defaults.items())


def _check_format(path: Path, what: str) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{what} file {path}: unsupported extension {path.suffix!r}; expected one of "
                          f"{', '.join(FORMATS)}")


def _check_output(output: Path, input_path: Path, overwrite: bool) -> None:
    _check_format(output, "output")
    if output.exists() and output.resolve() == input_path.resolve():
        raise ConfigError(f"output file {output} is the input file; choose another --output")
    if output.is_dir():
        raise ConfigError(f"output file {output} is a folder; name a .csv or .jsonl file")
    if output.exists() and not overwrite:
        raise ConfigError(f"output file {output} already exists; choose another --output or pass --overwrite "
                          "to replace it")
    if not output.parent.is_dir():
        raise ConfigError(f"output file {output}: its folder {output.parent} does not exist")


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """(column names, [(line number, record)]) of a CSV (header + rows) or a JSONL file (one object a line)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"input file {path}: byte {exc.start} is not UTF-8; save the file as UTF-8") from None
    except OSError as exc:
        raise DataError(f"input file {path} is not readable: {exc.strerror}") from None
    if path.suffix.lower() == ".csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, [])
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise DataError(f"input file {path}: column(s) {twice} appear more than once")
        records = []
        for values in reader:
            if not values:
                continue  # a blank line (an empty text in a one-column file reads as [""])
            if len(values) != len(header):
                raise DataError(f"input file {path}: line {reader.line_num} has {len(values)} field(s), the header "
                                f"{len(header)}")
            records.append((reader.line_num, dict(zip(header, values))))
        return header, records
    header: dict[str, None] = {}
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"input file {path}: line {number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"input file {path}: line {number} is not a JSON object")
        header.update(dict.fromkeys(record))
        records.append((number, record))
    return list(header), records


def _column(path: Path, header: list[str], field: str, run_column: str, chosen: str | None) -> str:
    """The column holding ``field``: the one chosen, else the run's own, else one named like the field."""
    if chosen is not None:
        if chosen not in header:
            raise DataError(f"input file {path} has no column {chosen!r} (--{field}-column); its columns: "
                            f"{', '.join(header)}")
        return chosen
    for candidate in (run_column, field):
        if candidate in header:
            return candidate
    raise DataError(f"input file {path} has no column {run_column!r} (the run's {field} column); its columns: "
                    f"{', '.join(header)}; choose one with --{field}-column NAME")


def _row(path: Path, number: int, record: dict[str, Any], columns: dict[str, str]) -> dict[str, str]:
    row = {}
    for field, column in columns.items():
        value = record.get(column)
        if not isinstance(value, str):
            found = "missing" if column not in record else f"{type(value).__name__}, not text"
            raise DataError(f"input file {path}: line {number}: column {column!r} is {found}")
        row[field] = value
    return row


@contextlib.contextmanager
def _output(output: Path | None, stdout: TextIO | None) -> Iterator[Callable[[list[dict]], None]]:
    """A writer of result rows: JSON lines on stdout, or a CSV/JSONL file written beside its name and renamed
    when complete (an interrupted prediction leaves no half file, and nothing existing is touched before)."""
    if output is None:
        stream = stdout or sys.stdout
        yield lambda rows: stream.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        stream.flush()
        return
    partial = output.parent / f".{output.name}.partial"
    try:
        with open(partial, "w", encoding="utf-8", newline="") as handle:
            if output.suffix.lower() == ".jsonl":
                yield lambda rows: handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            else:
                yield _csv_writer(handle)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _csv_writer(handle: TextIO) -> Callable[[list[dict]], None]:
    """Nested values (a label's probabilities) become columns of their own: ``probabilities.negative``."""
    writer: list[csv.DictWriter] = []

    def write(rows: list[dict]) -> None:
        flat = [_flatten(row) for row in rows]
        if not writer and flat:
            writer.append(csv.DictWriter(handle, fieldnames=list(flat[0])))
            writer[0].writeheader()
        if flat:
            writer[0].writerows(flat)
    return write


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@contextlib.contextmanager
def _naming_the_run(run_dir: str | Path):
    """A task asked what it cannot answer (a QA run given texts, ...) refuses; say which run."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"run {run_dir}: {exc}") from None

