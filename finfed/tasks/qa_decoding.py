"""From start/end logits over a record's windows to one answer span of its context.

In each window the best span is the (start, end) pair of context tokens with
``start <= end < start + max_answer_tokens`` maximising start + end logit. Its
score is p(start) * p(end) under a softmax over the window's context tokens (the
score ``transformers``' question-answering pipeline reports), and the record's
answer is the best-scoring span over all its windows, mapped back to characters and
grown to whole words (``hf_qa_pipeline.whole_words``: "EUR 0.42", never "EUR 0").
The decoding itself is the exported pipeline's (finfed.models.hf_qa_pipeline), so
``finfed predict`` and an exported model answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from finfed.models.hf_qa_pipeline import best_answer, span_scores, whole_words
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


@dataclass(frozen=True)
class RankedSpan:
    """A candidate answer span: where it is in the context, and which window tokens hold it."""

    answer: Answer
    window: int
    first: int  # token positions in that window
    last: int


def ranked_answers(context: str, windows: Sequence[Window], start_logits: Sequence[torch.Tensor],
                   end_logits: Sequence[torch.Tensor], max_answer_tokens: int, count: int) -> list[RankedSpan]:
    """The ``count`` best distinct spans over all windows, best first, scored as :func:`decode_answer` scores
    them (p(start) * p(end) in their window); the first is :func:`decode_answer`'s answer. A span seen in
    several overlapping windows counts once, at its best score (the first window wins ties, as there)."""
    candidates = []  # (-score, window, flat index): sorted, ties go to the earlier window and span, as argmax does
    for index, (window, starts, ends) in enumerate(zip(windows, start_logits, end_logits)):
        is_context = torch.tensor([span is not None for span in window.offsets])
        scores = span_scores(starts, ends, is_context, max_answer_tokens)
        if scores is None:
            continue
        top = torch.topk(scores.flatten(), min(scores.numel(), count * 4 + 4))
        candidates += [(-float(score), index, int(flat), len(is_context)) for score, flat in
                       zip(top.values, top.indices) if score >= 0]
    ranked, seen = [], set()
    for negative, index, flat, length in sorted(candidates, key=lambda c: (c[0], c[1], c[2])):
        first, last = flat // length, flat % length
        offsets = windows[index].offsets
        start, end = whole_words(context, offsets[first][0], offsets[last][1])
        if (start, end) in seen:
            continue
        seen.add((start, end))
        ranked.append(RankedSpan(Answer(context[start:end], -negative, start, end), index, first, last))
        if len(ranked) == count:
            break
    return ranked
