"""From start/end logits over a record's windows to one answer span of its context.

In each window the best span is the (start, end) pair of context tokens with
``start <= end < start + max_answer_tokens`` maximising start + end logit. Its
score is p(start) * p(end) under a softmax over the window's context tokens (the
score ``transformers``' question-answering pipeline reports), and the record's
answer is the best-scoring span over all its windows, mapped back to characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from finfed.models.hf_qa_pipeline import span_in_window
from finfed.tasks.qa_windows import Window


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    start: int  # character offsets into the context
    end: int


def best_span(window: Window, start_logits: torch.Tensor, end_logits: torch.Tensor,
              max_answer_tokens: int) -> tuple[float, int, int] | None:
    """(score, first token, last token) of the window's best span, or None if it has no context token."""
    # One implementation, shared with the pipeline shipped in exports, so both decode alike.
    is_context = torch.tensor([span is not None for span in window.offsets])
    return span_in_window(start_logits, end_logits, is_context, max_answer_tokens)


def decode_answer(context: str, windows: Sequence[Window], start_logits: Sequence[torch.Tensor],
                  end_logits: Sequence[torch.Tensor], max_answer_tokens: int) -> Answer:
    """The best span over all of one record's windows."""
    best: tuple[float, Window, int, int] | None = None
    for window, starts, ends in zip(windows, start_logits, end_logits):
        found = best_span(window, starts, ends, max_answer_tokens)
        if found and (best is None or found[0] > best[0]):
            best = (found[0], window, found[1], found[2])
    if best is None:
        return Answer(text="", score=0.0, start=0, end=0)
    score, window, first, last = best
    start_char, end_char = window.offsets[first][0], window.offsets[last][1]
    return Answer(text=context[start_char:end_char], score=score, start=start_char, end=end_char)
