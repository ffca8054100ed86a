"""SQuAD exact match and F1, with SQuAD's answer normalisation.

Normalisation (lower case, no punctuation, no articles a/an/the, single spaces)
follows the official SQuAD v1.1 evaluation script, so figures are comparable with
published extractive-QA results. Each prediction is scored against its best
matching gold answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 (each the best over a record's gold answers), in [0, 1]."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} records")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = [max(exact_match(p, g) for g in gold) for p, gold in zip(predictions, golds)]
    overlap = [max(f1(p, g) for g in gold) for p, gold in zip(predictions, golds)]
    return {"exact_match": sum(em) / len(em), "f1": sum(overlap) / len(overlap)}
