"""``python -m benchmarks --repeat N``: one case run N times, kept as its median run and the spread.

On this 2-core VM the same training takes 20 % longer in one run than in the next (the CPU's speed
varies), and a DP run's accuracy varies with its secret noise. A goal that sits inside that spread
cannot be judged from one run. A repeated case keeps the run whose wall time is the median as its
record (its rounds, settings and figures), adds ``repeats`` (each run's main figures) and ``spread``
(minimum, median and maximum of each figure over the runs); the docs' goal table judges on the medians.

``--seeds 0,1,2`` repeats a case once per training seed instead (``seed=``: dropout, the shuffling of the
batches, the audit's draws; not the test split nor the sites' shares, which ``data.split_seed`` fixes). A run
without DP is the same run each time with one seed, so only other seeds show how far its figures move.
"""

from __future__ import annotations

import statistics
from typing import Any

from finfed.reporting.fairness import largest_gap

NOT_FIGURES = ("ok", "other_load", "error", "seed")  # what a run's summary holds beside its figures
# Figures of a record compared across runs (those the record has): cost, then the final metrics.
COST = ("wall_s", "peak_rss_mb", "train_step_s", "wall_over_train_step")
SEED = "seed="  # the override `--seeds` gives each run


def _figures(record: dict[str, Any]) -> dict[str, float]:
    figures = {key: record[key] for key in COST if isinstance(record.get(key), (int, float))}
    figures.update({f"final.{k}": v for k, v in (record.get("final") or {}).items() if isinstance(v, (int, float))})
    # The sites' validation figures after the last round: what settings are chosen on (never the test split)
    last = (record.get("validation") or [{}])[-1]
    figures.update({f"validation.{k}": v for k, v in last.items()
                    if k not in ("round", "examples") and isinstance(v, (int, float))})
    # The label-share goal's figure, per run: on the test split and on the sites' validation splits
    for key, gaps in (("largest_share_gap", test_share_gaps(record)),
                      ("validation.largest_share_gap", last.get("share_gap"))):
        if gaps:
            figures[key] = round(abs(largest_gap(gaps)[1]), 4)
    return figures


def test_share_gaps(record: dict[str, Any]) -> dict[str, float]:
    """Each label's predicted minus gold share on the test split (the record's ``label_share``)."""
    return {label: s["predicted"] - s["gold"] for label, s in (record.get("label_share") or {}).items()}


def combine(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run's record, with every run's figures and their spread; a crashed run makes it a crash.

    A record that is itself repeated (another ``--repeat`` of the same case and settings) adds all its runs:
    the spread is over every run, and the record shown is the given one nearest the median wall time."""
    if len(records) == 1:
        return records[0]
    for key, read in (("case", lambda r: r.get("case")), ("overrides", lambda r: _without_seed(r.get("overrides")))):
        if len({repr(read(record)) for record in records}) > 1:
            raise ValueError(f"records of different runs cannot be combined: their {key} differ "
                             f"({', '.join(sorted({repr(read(record)) for record in records}))})")
    runs = [run for record in records for run in (record.get("repeats") or [_summary(record)])]
    crashed = [r for r in records if not r.get("ok")]
    if crashed:
        return {**crashed[0], "repeats": runs}
    walls = sorted(run.get("wall_s") or 0.0 for run in runs)
    middle = walls[(len(walls) - 1) // 2]  # the lower median: a run that happened
    chosen = min(records, key=lambda r: abs((r.get("wall_s") or 0.0) - middle))
    figures = [{k: v for k, v in run.items() if k not in NOT_FIGURES and _is_figure(v)} for run in runs]
    keys = [k for k in figures[0] if all(k in f for f in figures)]
    spread = {k: {"min": min(f[k] for f in figures), "median": statistics.median(f[k] for f in figures),
                  "max": max(f[k] for f in figures)} for k in keys}
    return {**chosen, "repeats": runs, "spread": spread}


def _without_seed(overrides: list[str] | None) -> list[str] | None:
    """A run's settings less its ``seed=``: runs of one setting with other seeds (``--seeds``) combine."""
    return None if overrides is None else [o for o in overrides if not o.startswith(SEED)]


def run_seed(record: dict[str, Any]) -> int | None:
    """The ``seed=`` a run was given (``--seeds``), if any."""
    given = [o.removeprefix(SEED) for o in record.get("overrides") or [] if o.startswith(SEED)]
    return int(given[-1]) if given else None


def _is_figure(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    load = (record.get("measured") or {}).get("other_share_of_machine")
    seed = run_seed(record)
    return {"ok": record.get("ok"), **({"seed": seed} if seed is not None else {}), **_figures(record),
            **({"other_load": load} if load is not None else {}), **({"error": record["error"]}
                                                                     if record.get("error") else {})}


def median(record: dict[str, Any], key: str) -> Any:
    """A figure's median over the runs of a repeated record (``final.accuracy`` for a final metric), else its
    one value."""
    spread = (record.get("spread") or {}).get(key)
    if spread:
        return spread["median"]
    if key.startswith("final."):
        return (record.get("final") or {}).get(key.removeprefix("final."))
    return record.get(key)


def range_text(record: dict[str, Any], key: str, digits: int = 1, scale: float = 1.0) -> str:
    """`` (median of 3 runs; 120.1 to 147.4)`` for a repeated record (``scale`` converts its unit), else nothing."""
    spread = (record.get("spread") or {}).get(key)
    if not spread:
        return ""
    seeds = [run["seed"] for run in record["repeats"] if "seed" in run]
    runs = f"{len(record['repeats'])} runs" + (f", seeds {', '.join(map(str, seeds))}" if seeds else "")
    return f" (median of {runs}; {spread['min'] * scale:.{digits}f} to {spread['max'] * scale:.{digits}f})"
