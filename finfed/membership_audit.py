"""Empirical privacy audit: a loss-threshold membership-inference attack.

The attacker guesses "member" when the model's loss on a record is low. Its ROC AUC
over a site's training records (members) against held-out records of the same
distribution (non-members) is 0.5 when the model reveals nothing about membership
and approaches 1.0 when it has memorised its training data. A low AUC is evidence,
not proof: DP's epsilon bounds every attack, this audit measures one.
"""

from __future__ import annotations

import random
from typing import Sequence

from torch import nn

READING = ("AUC of a loss-threshold membership-inference attack on the final global model: 0.5 means the "
           "attack cannot tell a site's training records from unseen ones; values near 1.0 mean the model "
           "memorised its training data. It measures one attack; the epsilon above bounds all of them.")


def roc_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting half (Mann-Whitney)."""
    if not positives or not negatives:
        raise ValueError("the attack needs at least one member and one non-member")
    ranked = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum, index = 0.0, 0
    while index < len(ranked):
        end = index
        while end < len(ranked) and ranked[end][0] == ranked[index][0]:
            end += 1
        average_rank = (index + 1 + end) / 2  # ranks are 1-based; ties share their mean rank
        rank_sum += average_rank * sum(label for _, label in ranked[index:end])
        index = end
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def loss_threshold_auc(task, model: nn.Module, members: Sequence[dict], non_members: Sequence[dict],
                       *, max_each: int = 500, seed: int = 0) -> dict:
    """Run the attack on up to ``max_each`` members and non-members (balanced, seeded sample)."""
    rng = random.Random(seed)
    count = min(len(members), len(non_members), max_each)
    members, non_members = rng.sample(list(members), count), rng.sample(list(non_members), count)
    # Lower loss means "member": score = -loss.
    auc = roc_auc([-x for x in task.example_losses(model, members)],
                  [-x for x in task.example_losses(model, non_members)])
    return {"attack": "loss-threshold", "auc": auc, "members": count, "non_members": count}
