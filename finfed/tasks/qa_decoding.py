"""From start/end logits over a record's windows to one answer span of its context.

In each window the best span is the (start, end) pair of context tokens with
``start <= end < start + max_answer_tokens`` maximising start + end logit. Its
score is p(start) * p(end) under a softmax over the window's context tokens (the
score ``transformers``' question-answering pipeline reports), and the record's
answer is the best-scoring span over all its windows, mapped back to characters.
The decoding itself is the exported pipeline's (finfed.models.hf_qa_pipeline), so
``finfed predict`` and an exported model answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from finfed.models.hf_qa_pipeline import best_answer
from finfed.tasks.qa_windows import Window


@dataclass(frozen=True)
class Answer:
    text: str
    score: float
    start: int  # character offsets into the context
    end: int


def decode_answer(context: str, windows: Sequence[Window], start_logits: Sequence[torch.Tensor],
                  end_logits: Sequence[torch.Tensor], max_answer_tokens: int) -> Answer:
    """The best span over all of one record's windows."""
    is_context = [torch.tensor([span is not None for span in window.offsets]) for window in windows]
    text, score, start, end = best_answer(context, [window.offsets for window in windows], is_context,
                                          start_logits, end_logits, max_answer_tokens)
    return Answer(text=text, score=score, start=start, end=end)
