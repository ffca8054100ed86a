"""Extractive-QA records (SQuAD style): reading, normalising and checking answer offsets.

A record is one question about one context with one or more gold answers, each a
span of the context given by its text and character offset. Every offset is checked
against its context, because a wrong offset silently teaches the model a wrong span.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from finfed.config import DataSettings
from finfed.data.loading import decode_utf8, read_table
from finfed.errors import DataError
from finfed.privacy.disclosure import SITE_ONLY

logger = logging.getLogger(__name__)

#: columns of a normalised QA frame (other columns, e.g. ``institution``, are kept)
QA_COLUMNS = ("id", "question", "context", "answer_texts", "answer_starts")


def read_qa_file(path: str | Path) -> pd.DataFrame:
    """A SQuAD JSON document (``data`` -> ``paragraphs`` -> ``qas``), or JSONL/CSV/Parquet with one record a row."""
    path = Path(path)
    if path.suffix.lower() == ".json" and path.is_file():
        try:
            text = decode_utf8(path.read_bytes(), f"data file {path}")
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            if not _first_line_is_json(text):  # one JSON document, broken at exc's line
                raise DataError(f"data file {path}: line {exc.lineno}, column {exc.colno}: not valid JSON "
                                f"({exc.msg})",
                                public_reason=f"the data file is not valid JSON (line {exc.lineno})") from None
            document = None  # JSON lines: read below (errors there name their line)
        except OSError as exc:
            raise DataError(f"data file {path} is not readable: {exc.strerror}",
                            public_reason="the data file is not readable") from exc
        if isinstance(document, dict) and "data" in document:
            return _flatten_squad(document, path)
    return read_table(path)


def _first_line_is_json(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _flatten_squad(document: dict, path: Path) -> pd.DataFrame:
    rows = []
    for article in document.get("data", []):
        for paragraph in article.get("paragraphs", []):
            for qa in paragraph.get("qas", []):
                answers = qa.get("answers", [])
                rows.append({"id": qa.get("id"), "question": qa.get("question"),
                             "context": paragraph.get("context"), "title": article.get("title", ""),
                             "answers": {"text": [a.get("text") for a in answers],
                                         "answer_start": [a.get("answer_start") for a in answers]}})
    if not rows:
        raise DataError(f"data file {path}: SQuAD JSON with no questions (expected data/paragraphs/qas)",
                        public_reason="the SQuAD JSON file holds no questions")
    return pd.DataFrame(rows)


def _answers(value: Any, record: str, row: int) -> tuple[list[str], list[int]]:
    """(texts, starts) of one record's ``answers`` field, shape-checked (``row``: its place, for the
    record-free reason a site may send)."""
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{record}: `answers` is not JSON: {value[:80]!r}",
                            public_reason=f"a QA record's `answers` is not JSON (row {row})") from None
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise DataError(f"{record}: `answers` must be {{\"text\": [...], \"answer_start\": [...]}}, "
                        f"got {str(value)[:80]!r}",
                        public_reason=f"a QA record's `answers` has the wrong shape (row {row})")
    texts, starts = list(value["text"]), list(value["answer_start"])
    if not texts or len(texts) != len(starts):
        raise DataError(f"{record}: `answers` needs one or more texts and as many `answer_start` offsets, got "
                        f"{len(texts)} text(s) and {len(starts)} offset(s) (unanswerable questions are not "
                        "supported)",
                        public_reason=f"a QA record's `answers` has no text or mismatched offsets (row {row})")
    try:
        return [str(t) for t in texts], [int(s) for s in starts]
    except (TypeError, ValueError):
        raise DataError(f"{record}: `answer_start` must be whole numbers, got {starts!r}",
                        public_reason=f"a QA record's `answer_start` is not a whole number (row {row})") from None


def offset_problem(context: str, text: str, start: int) -> str | None:
    """Why ``text`` is not at ``start`` in ``context``, or None if it is."""
    if not text.strip():
        return "the answer text is empty"
    if not 0 <= start <= len(context) - len(text):
        return f"offset {start} is outside the context ({len(context)} characters)"
    found = context[start:start + len(text)]
    if found != text:
        return f"the context has {found!r} at offset {start}, not {text!r}"
    return None


def normalise_qa_records(frame: pd.DataFrame, settings: DataSettings, source: str) -> pd.DataFrame:
    """A frame with :data:`QA_COLUMNS` (other columns kept); bad offsets refused or dropped per settings."""
    columns = [settings.question_column, settings.context_column, settings.answers_column]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing QA field(s) {missing}; found {list(frame.columns)}. Set "
                        "`data.question_column` / `data.context_column` / `data.answers_column`.",
                        public_reason="the data file lacks a QA field (`data.question_column` / "
                                      "`data.context_column` / `data.answers_column`)")
    ids = (frame[settings.id_column].astype(str) if settings.id_column in frame.columns
           else pd.Series([f"row-{i + 1}" for i in range(len(frame))], index=frame.index))
    rows, bad, bad_rows = [], [], []
    for position, (index, row) in enumerate(frame.iterrows()):
        record = f"{source}: record {ids[index]!r} (row {position + 1})"
        question, context = row[settings.question_column], row[settings.context_column]
        for name, value in (("question", question), ("context", context)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{record}: empty or missing `{name}`",
                                public_reason=f"a QA record's {name} is empty or missing (row {position + 1})")
        texts, starts = _answers(row[settings.answers_column], record, position + 1)
        problems = [p for p in (offset_problem(context, t, s) for t, s in zip(texts, starts)) if p]
        if problems:
            bad.append(f"{record}: {problems[0]}")
            bad_rows.append(position + 1)
            continue
        rows.append({**row.drop(labels=columns).to_dict(), "id": ids[index], "question": question,
                     "context": context, "answer_texts": texts, "answer_starts": starts})
    return _apply_bad_answer_policy(rows, bad, bad_rows, settings, source)


def _apply_bad_answer_policy(rows: list[dict], bad: list[str], bad_rows: list[int], settings: DataSettings,
                             source: str) -> pd.DataFrame:
    """``bad``: full descriptions (they quote the answer and the context: for the log of whoever reads the
    file only); ``bad_rows``: their row numbers, all a site may send."""
    if bad and settings.bad_answers == "refuse":
        shown = "\n  ".join(bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{source}: {len(bad)} record(s) whose answer is not at its offset:\n  {shown}{more}\n"
                        "Fix the offsets, or set `data.bad_answers=drop` to leave such records out.",
                        public_reason=f"{len(bad)} QA record(s) whose answer is not at its offset "
                                      f"(first: row {bad_rows[0]})")
    if bad:
        # Counts and rows only off the site: in simulation the coordinator reads the same file.
        logger.info(f"dropped {len(bad)} QA record(s) whose answer is not at its offset (first: row "
                    f"{bad_rows[0]})")
        logger.info("%s: dropped %d record(s) whose answer is not at its offset:\n  %s", source, len(bad),
                    "\n  ".join(bad), extra=SITE_ONLY)
    if not rows:
        raise DataError(f"{source}: no usable QA records", public_reason="no usable QA records")
    frame = pd.DataFrame(rows)
    frame.attrs["dropped_bad_answers"] = len(bad)
    return frame
