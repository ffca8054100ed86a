"""Empirical privacy audit: a loss-threshold membership-inference attack, beside the ceiling DP implies.

The attacker guesses "member" when the model's loss on a record is low. Its ROC AUC
over a site's training records (members) against records of the same site that were
held back from its training (non-members) is 0.5 when the model reveals nothing about
membership and approaches 1.0 when it has memorised its training data.

Members and non-members come from the same site and the same distribution: with
non-members from elsewhere (another site, the central test split) the AUC would also
measure distribution shift, not only membership. A low AUC is evidence about this one
attack, not proof; the ceiling (``dp_auc_ceiling``) bounds every attack.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from torch import nn

    from finfed.config import ExperimentConfig

AUDITED_SITE = 0  # the simulated site whose records the audit attacks
ATTACK = "loss-threshold"


def audit_holdout_fraction(config: "ExperimentConfig", site_id: int) -> float:
    """Share of ``site_id``'s training records held back as the audit's non-members (0 = none).

    Only the audited site, only when the audit will run (simulation with local data): the
    site then never trains on these records, and the coordinator attacks with them.
    """
    privacy = config.privacy
    if not privacy.membership_audit or config.data.source == "hub" or site_id != AUDITED_SITE:
        return 0.0
    return privacy.audit_holdout_fraction


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


def chance_spread(members: int, non_members: int) -> float:
    """Standard deviation of the AUC when the scores carry no membership signal at all.

    The Mann-Whitney statistic's null variance: (n1 + n2 + 1) / (12 n1 n2). A measured AUC
    within about two of these of 0.5 cannot be told apart from guessing at this sample size.
    """
    return math.sqrt((members + non_members + 1) / (12 * members * non_members))


def dp_tpr_bound(fpr: float, epsilon: float, delta: float) -> float:
    """The highest true-positive rate any test can reach at ``fpr`` against an (ε, δ)-DP mechanism.

    The (ε, δ)-DP hypothesis-testing region (Kairouz, Oh and Viswanath, "The composition
    theorem for differential privacy", ICML 2015; for δ = 0 already Wasserman and Zhou 2010):
    TPR <= min(1, e^ε FPR + δ, 1 - e^-ε (1 - δ - FPR)).
    """
    epsilon = min(epsilon, 700.0)  # e^700 is still a float; the bound is 1 long before
    return min(1.0, math.exp(epsilon) * fpr + delta, 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr))


def dp_auc_ceiling(epsilon: float, delta: float) -> float:
    """The largest ROC AUC any membership test can reach against one record of an (ε, δ)-DP mechanism.

    The area under ``dp_tpr_bound`` over FPR in [0, 1] (the bound is itself an achievable,
    concave ROC curve, so no test's curve lies above it). It assumes the member and the
    non-member are exchangeable, independent records; Humphries et al., "Investigating
    membership inference attacks under data dependencies" (IEEE CSF 2023), show attacks
    exceeding such bounds when records depend on each other. The bound is piecewise linear,
    so the trapezoid rule over its corner points integrates it exactly.
    δ = 0 gives e^ε / (1 + e^ε); ε = δ = 0 gives 0.5.
    """
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got epsilon={epsilon}, delta={delta}")
    growth = math.exp(min(epsilon, 700.0))
    corners = {0.0, 1.0, (1 - delta) / (1 + growth), (1 - delta) / growth, 1 - delta}
    points = sorted(x for x in corners if 0.0 <= x <= 1.0)
    tprs = [dp_tpr_bound(x, epsilon, delta) for x in points]
    return sum((b - a) * (ta + tb) / 2 for a, b, ta, tb in zip(points, points[1:], tprs, tprs[1:]))


def loss_threshold_auc(task, model: "nn.Module", members: Sequence[dict], non_members: Sequence[dict],
                       *, max_each: int = 500, seed: int = 0) -> dict:
    """Run the attack on up to ``max_each`` members and non-members (balanced, seeded sample)."""
    rng = random.Random(seed)
    count = min(len(members), len(non_members), max_each)
    members, non_members = rng.sample(list(members), count), rng.sample(list(non_members), count)
    # Lower loss means "member": score = -loss.
    auc = roc_auc([-x for x in task.example_losses(model, members)],
                  [-x for x in task.example_losses(model, non_members)])
    return {"attack": ATTACK, "auc": auc, "members": count, "non_members": count,
            "chance_spread": chance_spread(count, count)}


def ceiling_for(site_privacy: dict[str, Any] | None) -> dict[str, Any] | None:
    """The DP ceiling at the audited site's own final ε and the δ it was computed at (None without DP)."""
    if not site_privacy or site_privacy.get("epsilon") is None or site_privacy.get("delta") is None:
        return None
    epsilon, delta = float(site_privacy["epsilon"]), float(site_privacy["delta"])
    return {"auc": dp_auc_ceiling(epsilon, delta), "epsilon": epsilon, "delta": delta,
            "accountant": site_privacy.get("accountant")}


NOT_COVERED = ("The ceiling covers the model's parameters and the site's training records only. It does not "
               "cover what a site discloses outside DP-SGD (record counts, the label set, participation and "
               "refusals, validation metrics, opted-in training losses, error categories), records outside the "
               "training split, facts shared by many records, or records that are not independent of each other "
               "(a near-duplicate of a record carries its information past the per-record bound); and it holds "
               "only under the trust assumptions of the guarantee above.")


def audit_reading(audit: dict[str, Any]) -> str:
    """What the audit measured and what DP promises, in words (report.md, report.json, report.html)."""
    site, members, non_members = audit["site"], audit["members"], audit["non_members"]
    source = audit.get("non_member_source", "held-out records")
    text = (f"Membership audit: one attack (loss threshold: 'member' when the final global model's loss on a "
            f"record is low), measured on {members} training records of site {site} (members) against "
            f"{non_members} non-members, {source}: loss-threshold attack AUC **{audit['auc']:.3f}**.")
    if "chance_spread" in audit:
        text += (f" With no membership signal at all, 95 % of such measurements fall within "
                 f"0.5 ± {1.96 * audit['chance_spread']:.3f}.")
    ceiling = audit.get("ceiling")
    if ceiling:
        text += (f" Ceiling implied by DP for site {site}'s ε = {ceiling['epsilon']:.3f} at δ = "
                 f"{ceiling['delta']:g} ({ceiling.get('accountant') or 'accountant not recorded'}): no membership "
                 f"test of any kind can exceed AUC **{ceiling['auc']:.4f}** on these records (the (ε, δ)-DP "
                 "hypothesis-testing bound). The measured AUC is evidence about this one attack, not a proof; "
                 "the ceiling is what the guarantee promises against every attack. " + NOT_COVERED)
    elif "ceiling" in audit:
        text += " Differential privacy was off: no ceiling applies, and an attack may reach AUC 1.0."
    return text
