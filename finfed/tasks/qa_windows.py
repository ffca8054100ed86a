"""Cutting (question, context) records into token windows, and finding the answer in them.

A context longer than ``max_length`` tokens is split into overlapping windows
(``stride`` tokens shared) with the tokenizer's offset mapping, so every token
knows which characters of the context it covers. A window that holds the whole
answer is labelled with the answer's first and last token; any other window points
at the no-answer position (token 0, ``[CLS]``).

Training takes **one window per record** (the first that holds the answer, chosen
from the record alone): a record is the privacy unit of DP-SGD, and a record cut
into several training samples would be sampled, clipped and counted several times
per step, so the stated epsilon would be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from finfed.errors import DataError

NO_ANSWER = 0  # the [CLS] token


@dataclass(frozen=True)
class Window:
    """One tokenised window of one record."""

    record: int
    input_ids: list[int]
    attention_mask: list[int]
    token_type_ids: list[int] | None  # None: the tokenizer gives none (RoBERTa, DistilBERT, ModernBERT, ...)
    offsets: list[tuple[int, int] | None]  # character span of each context token, None elsewhere
    start: int  # answer token positions, or NO_ANSWER when the answer is not (wholly) in this window
    end: int

    @property
    def holds_answer(self) -> bool:
        return self.start != NO_ANSWER


def tokenize_windows(tokenizer: Any, questions: Sequence[str], contexts: Sequence[str], *,
                     max_length: int, stride: int) -> list[tuple[int, dict]]:
    """(record index, token fields) for every window of every record, in record order."""
    try:
        encoded = tokenizer(list(questions), list(contexts), truncation="only_second", max_length=max_length,
                            stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    except Exception as exc:  # the tokenizer refuses questions that leave no room for the context
        raise DataError(f"QA records could not be cut into windows of {max_length} tokens with stride {stride}: "
                        f"{exc} (a question may be too long; raise `data.max_length`)") from exc
    windows = []
    for i, record in enumerate(encoded["overflow_to_sample_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        offsets = [tuple(span) if sequence_ids[t] == 1 else None
                   for t, span in enumerate(encoded["offset_mapping"][i])]
        fields = {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i],
                  "token_type_ids": encoded["token_type_ids"][i] if "token_type_ids" in encoded else None,
                  "offsets": offsets}
        windows.append((int(record), fields))
    return windows


def answer_tokens(offsets: Sequence[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int]:
    """First and last token of the answer characters [start_char, end_char), or NO_ANSWER twice."""
    context = [t for t, span in enumerate(offsets) if span is not None]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return NO_ANSWER, NO_ANSWER
    first = max(t for t in context if offsets[t][0] <= start_char)
    last = min(t for t in context if offsets[t][1] >= end_char)
    return first, last


def record_windows(frame: pd.DataFrame, tokenizer: Any, *, max_length: int, stride: int) -> list[Window]:
    """Every window of every record, labelled with the (first) gold answer's tokens."""
    windows = []
    tokenized = tokenize_windows(tokenizer, frame["question"].tolist(), frame["context"].tolist(),
                                 max_length=max_length, stride=stride)
    for record, fields in tokenized:
        row = frame.iloc[record]
        start_char = int(list(row["answer_starts"])[0])
        end_char = start_char + len(list(row["answer_texts"])[0])
        start, end = answer_tokens(fields["offsets"], start_char, end_char)
        windows.append(Window(record=record, start=start, end=end, **fields))
    return windows


def training_windows(windows: Sequence[Window]) -> tuple[list[Window], list[int]]:
    """At most one window per record (the first holding its answer); and the records left without one."""
    chosen: dict[int, Window] = {}
    records = set()
    for window in windows:
        records.add(window.record)
        if window.holds_answer and window.record not in chosen:
            chosen[window.record] = window
    return [chosen[r] for r in sorted(chosen)], sorted(records - set(chosen))
