"""Classification metrics, computed without extra dependencies."""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    if not y_true:
        return 0.0
    return sum(int(t == p) for t, p in zip(y_true, y_pred)) / len(y_true)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over all ``num_classes`` (a constant predictor scores low)."""
    scores = []
    for cls in range(num_classes):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == cls and p == cls)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != cls and p == cls)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == cls and p != cls)
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / num_classes


def recall_per_label(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[int, float]:
    """Share of each label's examples predicted as that label; labels absent from ``y_true`` are left out."""
    totals = Counter(y_true)
    hits = Counter(t for t, p in zip(y_true, y_pred) if t == p)
    return {cls: hits[cls] / totals[cls] for cls in range(num_classes) if totals[cls]}


def share_gap_per_label(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> dict[int, float]:
    """Each label's share of the predictions minus its share of the true labels, for every label (0 when absent
    from both): the model's lean towards (positive) or away from (negative) each label on these records."""
    if not y_true:
        return {}
    total, truth, predicted = len(y_true), Counter(y_true), Counter(y_pred)
    return {cls: (predicted[cls] - truth[cls]) / total for cls in range(num_classes)}


def majority_accuracy(y_true: Sequence[int]) -> float:
    """Accuracy of always predicting the most frequent true label."""
    if not y_true:
        return 0.0
    return Counter(y_true).most_common(1)[0][1] / len(y_true)
