"""Per-site fairness of the global model, and the updates the coordinator rejected, for the run report.

Fairness comes from what each site sent after evaluating the global model on its own validation
split in the last round it evaluated (metrics.jsonl ``evaluation``): its metrics and, for
classification, each label's recall (``eval-recall-<index>``) and, from the sites that opted in, each label's
predicted minus true share (``eval-share-gap-<index>``), pooled for every round they were sent in. These are
disclosed, non-private statistics of the sites' validation records: no noise, not covered by any epsilon.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from finfed.constants import EVAL_RECALL_PREFIX, EVAL_SHARE_GAP_PREFIX, NUM_EXAMPLES

# The metric a site's standing is judged by: the first one the task reports (higher is better for each).
PREFERRED = ("accuracy", "macro_f1", "f1", "exact_match")
DISCLOSURE = ("These are **disclosed, non-private statistics**: each site computed them on its own validation "
              "split and sent them in the clear. No noise is added and no epsilon covers them; a site's "
              "per-label recall tells the coordinator, for instance, how often that site's validation records of "
              "each label are classified correctly, and a site's label share gaps (sent only by sites that opted "
              "in) how far the share of its validation records predicted as each label is from that label's "
              "true share.")
PER_LABEL = (EVAL_RECALL_PREFIX, EVAL_SHARE_GAP_PREFIX)
MAX_LABEL_COLUMNS = 8  # the per-round label share table's columns, one per label, up to this many labels


def _metric_name(key: str) -> str:
    return key.removeprefix("eval-").replace("-", "_")


def last_evaluation(rounds: list[dict[str, Any]]) -> tuple[int | None, list[dict[str, Any]]]:
    """The latest round in which sites evaluated the global model, and their entries."""
    for record in reversed(rounds):
        if record.get("evaluation"):
            return int(record["round"]), record["evaluation"]
    return None, []


def fairness_section(rounds: list[dict[str, Any]], labels: list[str],
                     name_of: Callable[[str], str]) -> dict[str, Any] | None:
    """The global model per site (metrics, per-label recall), the worst site and the largest gaps; None: no data."""
    server_round, entries = last_evaluation(rounds)
    if not entries:
        return None
    sites = []
    for entry in entries:
        metrics = {_metric_name(k): float(v) for k, v in entry.items()
                   if k.startswith("eval-") and not k.startswith(PER_LABEL)}
        sites.append({"site": int(entry["site"]), "name": name_of(str(int(entry["site"]))),
                      "records": int(entry.get(NUM_EXAMPLES, 0)), "metrics": metrics,
                      "recall": _per_label(labels, entry, EVAL_RECALL_PREFIX),
                      "share_gap": _per_label(labels, entry, EVAL_SHARE_GAP_PREFIX)})
    metric = next((m for m in PREFERRED if all(m in s["metrics"] for s in sites)), None)
    section: dict[str, Any] = {"round": server_round, "metric": metric, "sites": sites, "disclosure": DISCLOSURE,
                               "worst_site": None, "best_site": None, "gap": None, "recall_gaps": [],
                               "largest_recall_gap": None}
    if metric:
        ranked = sorted(sites, key=lambda s: s["metrics"][metric])
        worst, best = ranked[0], ranked[-1]
        section.update(worst_site={"name": worst["name"], "value": worst["metrics"][metric]},
                       best_site={"name": best["name"], "value": best["metrics"][metric]},
                       gap=best["metrics"][metric] - worst["metrics"][metric])
    section["recall_gaps"] = _recall_gaps(sites)
    section["label_share_gaps"] = pooled_share_gaps(entries, labels)
    section["label_share_gaps_by_round"] = share_gaps_by_round(rounds, labels)
    columns = _share_gap_labels(section["label_share_gaps_by_round"])
    # A column per label while they fit on a page; beyond that, each round's largest gap and the last round per label
    section["label_share_columns"] = columns if len(columns) <= MAX_LABEL_COLUMNS else []
    section["largest_recall_gap"] = max(section["recall_gaps"], key=lambda g: g["gap"], default=None)
    section["summary"] = _summary(section)
    return section


def _per_label(labels: list[str], entry: dict[str, Any], prefix: str) -> dict[str, float]:
    """A site's per-label figures under ``prefix`` (keyed by index on the wire), by label name."""
    return {_label(labels, int(k.removeprefix(prefix))): float(v) for k, v in entry.items() if k.startswith(prefix)}


def _label(labels: list[str], index: int) -> str:
    return str(labels[index]) if index < len(labels) else f"label {index}"


def largest_gap(gaps: Mapping[str, float]) -> tuple[str, float]:
    """The label whose predicted share is furthest from its true share (either way), with its signed gap."""
    label = max(gaps, key=lambda name: abs(gaps[name]))
    return label, gaps[label]


def pooled_share_gaps(entries: list[dict[str, Any]], labels: list[str]) -> dict[str, Any] | None:
    """Each label's predicted minus true share over the validation records of every site that reported it (the
    sites' ``eval-share-gap-<index>`` weighted by their records: exactly the gap on their pooled records), in the
    order of the label indices; None: no site reported one."""
    reporting = [({int(k.removeprefix(EVAL_SHARE_GAP_PREFIX)): float(v) for k, v in e.items()
                   if k.startswith(EVAL_SHARE_GAP_PREFIX)}, int(e.get(NUM_EXAMPLES, 0))) for e in entries]
    reporting = [(gaps, records) for gaps, records in reporting if gaps and records]
    total = sum(records for _, records in reporting)
    if not total:
        return None
    indices = sorted({index for gaps, _ in reporting for index in gaps})
    pooled = {_label(labels, i): sum(gaps.get(i, 0.0) * records for gaps, records in reporting) / total
              for i in indices}
    return {"sites": len(reporting), "records": total, "gaps": pooled, "largest": largest_gap(pooled)[0]}


def share_gaps_by_round(rounds: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """The pooled label share gaps after every round in which a site shared them (``pooled_share_gaps``, with the
    round): whether the model's lean shrinks as training goes on."""
    return [{"round": int(record["round"]), **pooled} for record in rounds
            if (pooled := pooled_share_gaps(record.get("evaluation") or [], labels))]


def _share_gap_labels(by_round: list[dict[str, Any]]) -> list[str]:
    """The labels of the per-round table's columns, in the order the rounds list them."""
    return list(dict.fromkeys(label for entry in by_round for label in entry["gaps"]))


def _recall_gaps(sites: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per label: the site with the lowest recall and the spread between sites (labels seen at two sites or more)."""
    gaps = []
    for label in sorted({label for s in sites for label in s["recall"]}):
        values = [(s["recall"][label], s["name"]) for s in sites if label in s["recall"]]
        if len(values) < 2:
            continue
        (low, low_site), (high, high_site) = min(values), max(values)
        gaps.append({"label": label, "worst_site": low_site, "worst": low, "best_site": high_site, "best": high,
                     "gap": high - low})
    return gaps


def _summary(section: dict[str, Any]) -> str:
    if not section["metric"]:
        return f"The sites reported no common metric in round {section['round']}."
    worst, best, metric = section["worst_site"], section["best_site"], section["metric"]
    text = (f"On their own validation splits after round {section['round']}, the global model's {metric} ranges "
            f"from {worst['value']:.4f} ({worst['name']}, the worst-served site) to {best['value']:.4f} "
            f"({best['name']}): a gap of {section['gap']:.4f}.")
    largest = section["largest_recall_gap"]
    if largest:
        text += (f" The largest per-label gap is in the recall of `{largest['label']}`: {largest['worst']:.4f} at "
                 f"{largest['worst_site']} against {largest['best']:.4f} at {largest['best_site']} "
                 f"({largest['gap']:.4f}).")
    pooled = section.get("label_share_gaps")
    if pooled and abs(pooled["gaps"][pooled["largest"]]) >= 0.0005:  # no lean worth a sentence under 0.05 points
        label = pooled["largest"]
        gap = pooled["gaps"][label]
        text += (f" Over the {pooled['records']} validation records of the {pooled['sites']} site(s) that shared "
                 f"their label shares, the model predicts `{label}` for {abs(gap) * 100:.1f} points "
                 f"{'more' if gap >= 0 else 'fewer'} of them than are `{label}` (its largest lean).")
    by_round = section.get("label_share_gaps_by_round") or []
    if len(by_round) > 1:
        first, last = by_round[0], by_round[-1]
        text += (f" The largest gap of any label was {_largest_points(first):.1f} points after round "
                 f"{first['round']} and {_largest_points(last):.1f} after round {last['round']}.")
    return text


def _largest_points(pooled: dict[str, Any]) -> float:
    return abs(pooled["gaps"][pooled["largest"]]) * 100


def fairness_plot(section: dict[str, Any] | None) -> dict[str, Any]:
    """What the fairness plot draws: one group of bars per site (the metric, then each label's recall)."""
    if not section:
        return {"groups": [], "series": {}}
    series: dict[str, dict[str, float]] = {}
    if section["metric"]:
        series[section["metric"]] = {s["name"]: s["metrics"][section["metric"]] for s in section["sites"]}
    for label in sorted({label for s in section["sites"] for label in s["recall"]}):
        series[f"recall {label}"] = {s["name"]: s["recall"][label] for s in section["sites"] if label in s["recall"]}
    return {"groups": [s["name"] for s in section["sites"]], "series": series}


def rejections_section(status: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Updates rejected before aggregation (finfed/coordinator/validation.py): counts by reason and by site."""
    by_round = status.get("site_rejections") or {str(r["round"]): r["rejections"] for r in rounds
                                                 if r.get("rejections")}
    every = [(int(r), item) for r, items in by_round.items() for item in items]
    reasons = Counter(item["reason"] for _, item in every)
    sites = Counter(str(item["site"]) for _, item in every)
    if not every:
        text = "No site update was rejected: every update received passed validation before aggregation."
    else:
        text = (f"{len(every)} update(s) were rejected before aggregation and left out of their round (the round "
                "went on with the others): " + ", ".join(f"{n} for {reason}" for reason, n in sorted(reasons.items()))
                + "; by site: " + ", ".join(f"{site} {n}" for site, n in sorted(sites.items())) + ".")
    return {"count": len(every), "by_reason": dict(sorted(reasons.items())), "by_site": dict(sorted(sites.items())),
            "by_round": {str(r): [i for rr, i in every if rr == r] for r in sorted({r for r, _ in every})},
            "text": text}
