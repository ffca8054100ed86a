"""Extractive question answering as a ``transformers`` pipeline, shipped beside exported QA models.

transformers 5 removed its ``question-answering`` pipeline. ``finfed export``
copies this very file beside an exported QA model and names it under
``custom_pipelines`` in ``config.json``, so that
``pipeline("question-answering", model=FOLDER, trust_remote_code=True)`` still
loads and answers, with no finfed installed. It must therefore stay
self-contained: it imports only ``torch`` and ``transformers``, never ``finfed``.

Decoding follows the old pipeline's rules, as finfed's own decoder does: the
context is cut into windows of ``max_seq_len`` tokens overlapping by
``doc_stride``; in each window the best span maximises p(start) * p(end) (each a
softmax over the window's context tokens) with
``start <= end < start + max_answer_len``, and that product is its ``score``;
the answer is the best-scoring span over all windows, grown to whole words of the
context (:func:`whole_words`: "EUR 0.42", never "EUR 0", though the tokenizer cuts
"0.42" into "0", "." and "42"). Defaults come from
``config.finfed_qa`` (the settings the model was trained with), so the pipeline
answers as ``finfed`` does.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Sequence

import torch
from transformers import Pipeline

PIPELINE_TASK = "question-answering"
_DEFAULTS = {"max_seq_len": 384, "doc_stride": 128, "max_answer_len": 15}
# Inside a number, date, rating or compound these join word characters: "0.42", "1,204.5", "2025-05-14", "A-1",
# "1/2". Not the apostrophe: "Harbor Retail's" is a name and its possessive.
_JOINERS = frozenset(".,-/:")


class ExtractiveQAPipeline(Pipeline):
    """``pipe(question=..., context=...)`` -> ``{"answer", "score", "start", "end"}`` (character offsets)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __call__(self, inputs: Any = None, *, question: str | None = None, context: str | None = None,
                 **kwargs: Any) -> Any:
        if inputs is None:
            if question is None or context is None:
                raise ValueError("give question= and context=, or a dict (or list of dicts) with both keys")
            inputs = {"question": question, "context": context}
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, max_seq_len: int | None = None, doc_stride: int | None = None,
                             max_answer_len: int | None = None, **unknown: Any):
        if unknown:
            raise TypeError(f"unknown question-answering option(s): {sorted(unknown)}; "
                            "known: max_seq_len, doc_stride, max_answer_len")
        settings = {**_DEFAULTS, **getattr(self.model.config, "finfed_qa", {})}
        preprocess = {"max_seq_len": max_seq_len or settings["max_seq_len"],
                      "doc_stride": settings["doc_stride"] if doc_stride is None else doc_stride}
        return preprocess, {}, {"max_answer_len": max_answer_len or settings["max_answer_len"]}

    def preprocess(self, inputs: dict, max_seq_len: int, doc_stride: int) -> dict:
        if not isinstance(inputs, dict) or not {"question", "context"} <= set(inputs):
            raise ValueError(f"each input must be a dict with 'question' and 'context', got {inputs!r}")
        encoded = self.tokenizer(inputs["question"], inputs["context"], truncation="only_second",
                                 max_length=max_seq_len, stride=doc_stride, return_overflowing_tokens=True,
                                 return_offsets_mapping=True, padding="longest", return_tensors="pt")
        windows = len(encoded["input_ids"])
        context_mask = torch.tensor([[sid == 1 for sid in encoded.sequence_ids(w)] for w in range(windows)])
        model_inputs = {key: encoded[key] for key in ("input_ids", "attention_mask", "token_type_ids")
                        if key in encoded}
        return {**model_inputs, "offset_mapping": encoded["offset_mapping"], "context_mask": context_mask,
                "context": inputs["context"]}

    def _forward(self, model_inputs: dict) -> dict:
        extras = {key: model_inputs.pop(key) for key in ("offset_mapping", "context_mask", "context")}
        outputs = self.model(**model_inputs)
        return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits, **extras}

    def postprocess(self, model_outputs: dict, max_answer_len: int) -> dict:
        offsets = [[(int(s), int(e)) for s, e in window] for window in model_outputs["offset_mapping"]]
        answer = best_answer(model_outputs["context"], offsets, model_outputs["context_mask"],
                             model_outputs["start_logits"], model_outputs["end_logits"], max_answer_len)
        return {"answer": answer[0], "score": answer[1], "start": answer[2], "end": answer[3]}


def best_answer(context: str, offsets: Sequence[Sequence[tuple[int, int] | None]], context_masks: Sequence,
                start_logits: Sequence[torch.Tensor], end_logits: Sequence[torch.Tensor],
                max_answer_tokens: int) -> tuple[str, float, int, int]:
    """(text, score, start, end character) of the best span over all windows of one context.

    The one decoder: this pipeline and finfed's own evaluation (finfed.tasks.qa_decoding) both call it.
    ``offsets[w][t]``: the characters token ``t`` of window ``w`` covers; ``context_masks[w]``: which
    of its tokens are context. ``("", 0.0, 0, 0)`` when no window has a context token.
    """
    best = None  # (score, window, first token, last token); the first window wins ties
    for window, (is_context, starts, ends) in enumerate(zip(context_masks, start_logits, end_logits)):
        found = span_in_window(starts, ends, torch.as_tensor(is_context), max_answer_tokens)
        if found and (best is None or found[0] > best[0]):
            best = (found[0], window, found[1], found[2])
    if best is None:
        return "", 0.0, 0, 0
    score, window, first, last = best
    start, end = whole_words(context, offsets[window][first][0], offsets[window][last][1])
    return context[start:end], score, start, end


def _word_character(character: str) -> bool:
    return character.isalnum()


def whole_words(context: str, start: int, end: int) -> tuple[int, int]:
    """The characters ``[start, end)`` of ``context`` grown so that they neither start nor end inside a word.

    Word characters are letters and digits, joined by ``.,-/:`` between two of them ("0.42", "1,204.5",
    "A-1", "2025-05-14"); a currency sign just before the span and a per-cent sign just after it belong to
    the amount ("$1.20bn", "4.5%"). Tokenizers cut such words into pieces ("0", ".", "42"), and a span that
    ends on a piece ("EUR 0") names a different amount than the passage states. Punctuation that ends a
    clause ("per share,") is not taken.
    """
    if start >= end:
        return start, end

    def joined(before: int) -> bool:  # a word continues across the boundary before index `before`
        if before <= 0 or before >= len(context):
            return False
        left, right = context[before - 1], context[before]
        if _word_character(left) and _word_character(right):
            return True
        if right in _JOINERS and _word_character(left):
            return before + 1 < len(context) and _word_character(context[before + 1])
        if left in _JOINERS and _word_character(right):
            return before >= 2 and _word_character(context[before - 2])
        return False

    while joined(start):
        start -= 1
    while joined(end):
        end += 1
    if start > 0 and unicodedata.category(context[start - 1]) == "Sc" and _word_character(context[start]):
        start -= 1
    if end < len(context) and context[end] == "%" and _word_character(context[end - 1]):
        end += 1
    return start, end


def span_scores(start_logits: torch.Tensor, end_logits: torch.Tensor, is_context: torch.Tensor,
                max_answer_tokens: int) -> torch.Tensor | None:
    """p(start) * p(end) of every (first, last) token pair of one window, each a softmax over the window's
    context tokens; -1 where a pair is no allowed span (``start <= end < start + max_answer_tokens``, both in
    the context). None if the window has no context token."""
    is_context = is_context.bool()
    if not is_context.any():
        return None
    length = len(is_context)
    start, end = start_logits[:length].float(), end_logits[:length].float()
    start_p = torch.softmax(start.masked_fill(~is_context, float("-inf")), dim=0)
    end_p = torch.softmax(end.masked_fill(~is_context, float("-inf")), dim=0)
    scores = start_p[:, None] * end_p[None, :]
    positions = torch.arange(length)
    allowed = ((positions[None, :] >= positions[:, None])
               & (positions[None, :] < positions[:, None] + max_answer_tokens)
               & is_context[:, None] & is_context[None, :])
    return scores.masked_fill(~allowed, -1.0)


def span_in_window(start_logits: torch.Tensor, end_logits: torch.Tensor, is_context: torch.Tensor,
                   max_answer_tokens: int) -> tuple[float, int, int] | None:
    """(score, first token, last token) of one window's best span, or None if it has no context token.

    The best span maximises p(start) * p(end) (:func:`span_scores`), i.e. the largest start + end logit.
    """
    scores = span_scores(start_logits, end_logits, is_context, max_answer_tokens)
    if scores is None:
        return None
    length = scores.shape[0]
    flat = int(torch.argmax(scores))
    return float(scores.flatten()[flat]), flat // length, flat % length
