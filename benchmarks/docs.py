"""docs/benchmarks.md, generated from benchmarks/results/*.json and benchmarks/docs_template.md.

The template holds the hand-written prose (what was tried, what the next lever is); the figures
come only from the results files, through two markers in it: ``{{goals}}`` (the issue-12 goal
table, with how far each goal is missed) and ``{{cases}}`` (one section per case).
``python -m benchmarks --write-docs`` writes the file; tests/test_benchmarks.py checks it is current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from benchmarks.cases import ROOT
from benchmarks.registry import CASES
from benchmarks.repeats import median, range_text, test_share_gaps
from finfed.reporting.fairness import largest_gap

DOCS = ROOT / "docs" / "benchmarks.md"
TEMPLATE = ROOT / "benchmarks" / "docs_template.md"

Results = dict[str, dict[str, Any]]


def load_results(folder: Path) -> Results:
    found = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))}
    order = {name: i for i, name in enumerate(CASES)}
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def final(results: Results, case: str, metric: str) -> float | None:
    """A case's final metric (the median over the runs of a repeated case)."""
    record = results.get(case) or {}
    return median(record, f"final.{metric}") if record.get("ok", True) else None


def _pts(value: float) -> str:
    return f"{value * 100:+.1f} points"


def _source(*cases: str) -> str:
    return ", ".join(f"`{c}`" for c in cases)


# ----------------------------------------------------------------------------- goals
# Each goal: (case, what it measures, goal text, measure(results) -> (figure text, missed-by text or "met")).
def _threshold(case: str, metric: str, goal: float) -> Callable[[Results], tuple[str, str]]:
    def measure(results: Results) -> tuple[str, str]:
        value = final(results, case, metric)
        if value is None:
            return "not measured", "-"
        spread = range_text(results[case], f"final.{metric}", digits=3)
        return (f"{value:.3f} {metric.replace('_', '-')}{spread}",
                "met" if value >= goal else f"missed by {goal - value:.3f}")
    return measure


def _both(case: str, goals: dict[str, float]) -> Callable[[Results], tuple[str, str]]:
    def measure(results: Results) -> tuple[str, str]:
        parts = [_threshold(case, metric, goal)(results) for metric, goal in goals.items()]
        if all(p[1] == "-" for p in parts):
            return "not measured", "-"
        figures = " / ".join(p[0] for p in parts)
        misses = [f"{metric.replace('_', '-')} {p[1]}" for metric, p in zip(goals, parts) if p[1] not in ("met",)]
        return figures, "met" if not misses else "; ".join(misses)
    return measure


def _gap(better: str, worse: str, limit: float) -> Callable[[Results], tuple[str, str]]:
    def measure(results: Results) -> tuple[str, str]:
        high, low = final(results, better, "accuracy"), final(results, worse, "accuracy")
        if high is None or low is None:
            return "not measured", "-"
        gap = high - low
        sides = "; ".join(f"`{case}` {value:.3f}{range_text(results[case], 'final.accuracy', digits=3)}"
                          for case, value in ((worse, low), (better, high)))
        return (_pts(-gap) + f" accuracy ({sides})",
                "met" if gap <= limit else f"missed by {(gap - limit) * 100:.1f} points")
    return measure


def _label_share(case: str, limit: float) -> Callable[[Results], tuple[str, str]]:
    def measure(results: Results) -> tuple[str, str]:
        record = results.get(case) or {}
        shares = record.get("label_share")
        if not shares:
            return "not measured", "-"
        if (record.get("spread") or {}).get("largest_share_gap"):  # repeated: the median over runs of their largest
            worst = median(record, "largest_share_gap")
            text = f"largest gap {worst * 100:.1f} points" + range_text(record, "largest_share_gap", scale=100)
        else:
            worst_label, gap = largest_gap(test_share_gaps(record))
            worst = abs(gap)
            text = f"largest gap {worst * 100:.1f} points ({worst_label})"
        return text, "met" if worst <= limit else f"missed by {(worst - limit) * 100:.1f} points"
    return measure


def _memory_ratio(case: str, reference: str, limit: float) -> Callable[[Results], tuple[str, str]]:
    def measure(results: Results) -> tuple[str, str]:
        high, low = ((results.get(c) or {}) for c in (case, reference))
        if not high.get("peak_rss_mb") or not low.get("peak_rss_mb"):
            known = [f"`{c}` {r['peak_rss_mb']:.0f} MB" + (", stopped early" if r.get("timed_out_after_s") else "")
                     for c, r in ((case, high), (reference, low))
                     if r.get("peak_rss_mb")]
            return "not measured" + (f" (only {', '.join(known)})" if known else ""), "-"
        ratio = high["peak_rss_mb"] / low["peak_rss_mb"]
        partial = [f"`{c}` stopped early" for c, r in ((case, high), (reference, low)) if r.get("timed_out_after_s")]
        text = f"{ratio:.2f} × ({high['peak_rss_mb']:.0f} / {low['peak_rss_mb']:.0f} MB)"
        return text + (f" ({', '.join(partial)})" if partial else ""), \
            "met" if ratio <= limit else f"missed by {ratio - limit:.2f} ×"
    return measure


def _at_most(case: str, key: str, unit: str, limit: float, scale: float = 1.0) -> Callable[[Results], tuple[str, str]]:
    """A cost figure of a case's record (wall time, memory, a ratio; the median of a repeated case) against
    its ceiling, ``scale`` converting the recorded unit to the goal's."""
    def measure(results: Results) -> tuple[str, str]:
        record = results.get(case) or {}
        value = median(record, key) if record.get("ok", True) and not record.get("timed_out_after_s") else None
        if value is None:
            return "not measured", "-"
        value *= scale
        digits = 1 if unit == "s" else 2
        return (f"{value:.{digits}f} {unit}".rstrip() + range_text(record, key, digits, scale),
                "met" if value <= limit else f"missed by {value - limit:.{digits}f} {unit}".rstrip())
    return measure


def _completed(case: str) -> Callable[[Results], tuple[str, str]]:
    def measure(results: Results) -> tuple[str, str]:
        record = results.get(case)
        if not record:
            return "not measured", "-"
        done = bool(record.get("ok")) and record.get("exit_code") == 0 and not record.get("timed_out_after_s")
        text = (f"{record.get('rounds_completed')} rounds, {record.get('examples_trained')} examples trained in "
                f"{record.get('wall_s')} s")
        return text, "met" if done else "missed: did not complete"
    return measure


GOALS = [
    ("PhraseBank, 4 sites Dirichlet(0.5), ε = 8", "≥ 0.80 acc and ≥ 0.72 macro-F1",
     _both("phrasebank-dp", {"accuracy": 0.80, "macro_f1": 0.72}), ("phrasebank-dp",)),
    ("same, DP minus non-DP (accuracy)", "≤ 3 points", _gap("phrasebank-nodp", "phrasebank-dp", 0.03),
     ("phrasebank-dp", "phrasebank-nodp")),
    ("non-DP federated minus central non-private", "≤ 2 points",
     _gap("phrasebank-central", "phrasebank-nodp", 0.02), ("phrasebank-nodp", "phrasebank-central")),
    ("PhraseBank DP with the public warm start", "≥ 0.80 acc and ≥ 0.72 macro-F1 (the first row's goal)",
     _both("phrasebank-warm", {"accuracy": 0.80, "macro_f1": 0.72}), ("phrasebank-warm",)),
    ("warm-started DP minus the non-DP federation from scratch (accuracy)", "≤ 3 points",
     _gap("phrasebank-nodp", "phrasebank-warm", 0.03), ("phrasebank-warm", "phrasebank-nodp")),
    ("default QA (synthetic filings), ε = 8", "F1 ≥ 0.70", _threshold("default-qa", "f1", 0.70), ("default-qa",)),
    ("TAT-QA, ε = 8", "F1 ≥ 0.40", _threshold("tatqa-dp", "f1", 0.40), ("tatqa-dp",)),
    ("TAT-QA DP with the public warm start (synthetic filings)", "F1 ≥ 0.40 (the row above's goal)",
     _threshold("tatqa-warm", "f1", 0.40), ("tatqa-warm",)),
    ("default classification run", "keep ≥ 0.83 acc", _threshold("default-classification", "accuracy", 0.83),
     ("default-classification",)),
    ("share of each predicted label vs gold share, PhraseBank DP test split", "within 5 points per class",
     _label_share("phrasebank-dp", 0.05), ("phrasebank-dp",)),
    ("the same, PhraseBank DP with the public warm start", "within 5 points per class",
     _label_share("phrasebank-warm", 0.05), ("phrasebank-warm",)),
    ("issue 14: default `finfed simulate` wall time", "≤ 120 s",
     _at_most("default-speed", "wall_s", "s", 120.0), ("default-speed",)),
    ("issue 14: its wall time / the sites' training-step time", "≤ 1.3",
     _at_most("default-speed", "wall_over_train_step", "", 1.3), ("default-speed",)),
    ("issue 14: its peak RSS, every process of the run (3 sites)", "≤ 3 GB",
     _at_most("default-speed", "peak_rss_mb", "GB", 3.0, scale=1 / 1024), ("default-speed",)),
    ("issue 14: 50 sites, 10 % per round, 5 rounds", "completes",
     _completed("scale-50"), ("scale-50",)),
    ("issue 14: peak memory of 50 sites (10 % per round) against 5 sites", "≤ 1.2 ×",
     _memory_ratio("scale-50", "scale-5", 1.2), ("scale-50", "scale-5")),
    ('issue 14: `pytest -m "not slow"` (the fast tier, 2 workers)', "≤ 2 min (120 s)",
     _at_most("test-tiers", "fast_tier_s", "s", 120.0), ("test-tiers",)),
    ("issue 14: `pytest` (everything, as CI, 2 workers)", "≤ 12 min (720 s)",
     _at_most("test-tiers", "whole_tier_s", "s", 720.0), ("test-tiers",)),
]


def goal_table(results: Results) -> str:
    lines = ["| case | goal | measured | verdict | from |", "|---|---|---|---|---|"]
    for what, goal, measure, cases in GOALS:
        figure, verdict = measure(results)
        dates = sorted({results[c]["date"] for c in cases if c in results})
        lines.append(f"| {what} | {goal} | {figure} | {verdict} | {_source(*cases)} {', '.join(dates)} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- DP tuning
TUNED_CASES = ("phrasebank-dp", "phrasebank-warm", "phrasebank-nodp")


def tuning_records(results_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every PhraseBank federation measured: the tuning runs (``<results>/tuning/<label>/<case>.json``, written
    by ``python -m benchmarks --case ... --set ... --results benchmarks/results/tuning/<label>``) and the
    suite's own results, oldest first."""
    found = [(path.parent.name, json.loads(path.read_text(encoding="utf-8")))
             for path in sorted((results_dir / "tuning").glob("*/*.json"))]
    # a suite result promoted from a tuning run (its `tuning_run`) is that run's row already
    found += [("suite", record) for name, record in load_results(results_dir).items()
              if name in TUNED_CASES and not record.get("tuning_run")]
    return sorted(found, key=lambda item: (item[1].get("date", ""), item[0]))


def _validation(record: dict[str, Any]) -> tuple[str, str, str]:
    rounds = record.get("validation") or []
    if not record.get("ok", True):
        return f"crashed: {record.get('error')}", "-", "-"
    if not rounds:
        return "not recorded (run before the suite kept it)", "-", "-"
    last, spread = rounds[-1], record.get("spread") or {}
    if "validation.accuracy" in spread:  # repeated: the medians over the runs, which choices are made on
        runs = f" (median of {len(record['repeats'])})"
        gap = spread.get("validation.largest_share_gap")
        return (_number(spread["validation.accuracy"]["median"]) + runs,
                _number((spread.get("validation.macro_f1") or {}).get("median")) + runs,
                f"{gap['median'] * 100:.1f}{runs}" if gap else "-")
    return _number(last.get("accuracy")), _number(last.get("macro_f1")), _largest_share_gap(last.get("share_gap"))


def _largest_share_gap(gaps: dict[str, float] | None) -> str:
    """'neutral +11.2': the label whose predicted share is furthest from its true share, in points ('-': the run's
    sites did not report label shares: runs before they could)."""
    if not gaps:
        return "-"
    label, gap = largest_gap(gaps)
    return f"{label} {gap * 100:+.1f}"


def tuning_table(results_dir: Path) -> str:
    """One row per PhraseBank federation: its settings on top of the recipe and the sites' validation
    figures after its last round (example-weighted over the sites' validation splits)."""
    lines = ["| date | run | DP | warm start | settings (the run's own; older runs: overrides of the recipe then) "
             "| sites' validation accuracy | validation macro-F1 | validation's largest label-share gap (points; "
             "a repeated run: the median of each run's largest, whatever its label) "
             "| test accuracy / macro-F1 (not used to choose; a repeated run: medians) | kept? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    kept = {record.get("tuning_run"): name for name, record in load_results(results_dir).items()}
    for label, record in tuning_records(results_dir):
        training = record.get("training") or {}
        # a run's own overrides of settings `training` does not list (older records: all of them)
        extra = [o for o in record.get("overrides") or []
                 if o != "privacy.enabled=false" and o.split("=", 1)[0] not in training]
        settings = [f"{k}={v}" for k, v in training.items()] + extra
        warm = "yes" if record.get("warm_start_source") else "no"
        note = f" (note: {_value(record['note'])})" if record.get("note") else ""
        accuracy, macro_f1, share_gap = _validation(record)
        test = " / ".join(_number(median(record, f"final.{m}")) for m in ("accuracy", "macro_f1"))  # repeated: medians
        lines.append(f"| {record.get('date', '-')} | {label} (`{record.get('case')}`) "
                     f"| {'yes' if record.get('dp', True) else 'no'} | {warm} "
                     f"| {' '.join(f'`{o}`' for o in settings) or 'the recipe as it was then'}{note} "
                     f"| {accuracy} | {macro_f1} | {share_gap} "
                     f"| {test} "
                     f"| {f'yes: the `{kept[label]}` result' if label in kept else '-'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the head's ceiling
def _pair(figures: dict[str, Any]) -> str:
    return f"{figures['accuracy']:.3f} / {figures['macro_f1']:.3f}"


def head_study_table(results_dir: Path) -> str:
    """benchmarks.head_ceiling's studies: the linear ceiling and each replica setting (mean over its seeds)."""
    out = []
    for path in sorted((results_dir / "studies").glob("head-ceiling*.json")):
        study = json.loads(path.read_text(encoding="utf-8"))
        ceiling, gold = study["linear_ceiling"], study["gold_share"]
        out += [f"**{study['features'].capitalize()}** (`{path.relative_to(results_dir.parent.parent)}`; "
                f"{sum(study['records']['train'])} training records at {len(study['records']['train'])} sites, "
                f"{study['records']['validation']} validation, {study['records']['test']} test; "
                f"gold test shares {', '.join(f'{label} {g:.3f}' for label, g in zip(study['labels'], gold))}). "
                f"The linear ceiling (no DP, every site's records together, L2 C = {ceiling['chosen_C']:g} chosen on "
                f"validation): validation {_pair(ceiling['validation'])}, test **{_pair(ceiling['test'])}**."]
        if "source_head" in study:
            out[-1] += f" The source's head as it is: validation {_pair(study['source_head']['validation'])}, " \
                       f"test {_pair(study['source_head']['test'])}."
        out += ["", "| setting | DP | start | sites' validation acc / macro-F1 | test acc / macro-F1 "
                    "| predicted share (test) |", "|---|---|---|---|---|---|"]
        out += [f"| {row['setting']} | {'yes' if row['dp'] else 'no'} | {row['start']} | {_pair(row['validation'])} "
                f"| {_pair(row['test'])} | {', '.join(f'{share:.3f}' for share in row['test']['predicted_share'])} |"
                for row in study["replica"]]
        out.append("")
    out += warm_sources_table(results_dir / "studies" / "warm-sources.json")
    return "\n".join(out).rstrip() or "(no study recorded)"


def warm_sources_table(path: Path) -> list[str]:
    """benchmarks.head_ceiling --compare: public sources side by side (ceiling and the warm recipe's replica)."""
    if not path.is_file():
        return []
    study = json.loads(path.read_text(encoding="utf-8"))
    out = [f"**Public sources compared** (`{path.relative_to(path.parents[3])}`, {study['wall_s']:.0f} s): each "
           f"source's features on the same sites' records, its linear ceiling (no DP) and the replica's first row, "
           f"the {study['recipe']}, started from the source's head, mean of {study['seeds']} seeds.", "",
           "| source | rounds | LoRA | adapter rate | ceiling validation / test acc | recipe replica: sites' "
           "validation acc / macro-F1 | test acc / macro-F1 |", "|---|---|---|---|---|---|---|"]
    for row in study["sources"]:
        settings, ceiling = row["source_settings"], row["linear_ceiling"]
        out.append(f"| {row['source']} | {settings['rounds']} | {settings['lora_method']} | "
                   f"{settings['learning_rate']} | {ceiling['validation']['accuracy']:.3f} / "
                   f"{ceiling['test']['accuracy']:.3f} | {_pair(row['validation'])} | {_pair(row['test'])} |")
    return [*out, ""]


# ----------------------------------------------------------------------------- cases
def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# What case_section shows on its own; a case's other keys go to its figures table.
SHOWN = {"case", "description", "mode", "date", "commit", "ok", "error", "wall_s", "peak_rss_mb", "engine", "config",
         "overrides", "note", "state", "rounds", "final", "baseline", "baseline_description", "dp", "epsilon_per_site",
         "target_epsilon", "upload_bytes_per_site_round", "membership_audit_auc", "label_share", "warm_start_source",
         "tuning_run", "spread"}


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(" ".join(_value(v) for v in item) if isinstance(item, list) else _value(item)
                         for item in value) or "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _number(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return ["| " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---" * len(keys) + "|",
            *["| " + " | ".join(_value(row.get(k)) for k in keys) + " |" for row in rows]]


def other_figures(record: dict[str, Any]) -> list[str]:
    """A case's own keys (a loader's, an export's): scalars in one table, lists of records in their own."""
    extra = {k: v for k, v in record.items() if k not in SHOWN and v not in (None, "", [], {})}
    if not record.get("rounds") and record.get("final"):
        extra = {"final": record["final"], **extra}
    out: list[str] = []
    scalars = {k: v for k, v in extra.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
    if scalars:
        out += ["", "| figure | value |", "|---|---|", *[f"| {k.replace('_', ' ')} | {_value(v)} |"
                                                        for k, v in scalars.items()]]
    for key, rows in extra.items():
        if key not in scalars:
            out += ["", f"{key.replace('_', ' ').capitalize()}:", "", *_table(rows)]
    return out


def _wall_time(record: dict[str, Any]) -> str:
    """The wall time with how busy the machine was, where the record measured it (benchmarks/speed.py)."""
    if record.get("wall_s") is None:
        return "wall time not recorded"
    load = (record.get("measured") or {}).get("note") or "other load not recorded: the machine may have been shared"
    text = f"wall time {record['wall_s']} s (2-core machine; {load})"
    if record.get("repeats"):
        text += (f"; run {len(record['repeats'])} times (`--repeat`): this section shows the run with the median "
                 "wall time, and the Repeats table below every run")
    return text


def case_section(name: str, record: dict[str, Any]) -> str:
    out = [f"### `{name}`", "", record.get("description", ""), ""]
    facts = [f"measured {record.get('date')}" + (f" at commit {record['commit']}" if record.get("commit") else ""),
             f"engine: {record.get('engine', '-')}"]
    if record.get("overrides"):
        facts.append("settings: " + " ".join(f"`{o}`" for o in record["overrides"]))
    facts.append(_wall_time(record))
    facts.append(f"peak memory {record['peak_rss_mb']:.0f} MB (process tree)" if record.get("peak_rss_mb")
                 else "peak memory not recorded")
    if record.get("upload_bytes_per_site_round"):
        facts.append(f"upload {record['upload_bytes_per_site_round'] / 1024:.1f} KiB per site and round")
    if record.get("note"):
        facts.append(f"note: {record['note']}")
    out += [f"- {fact}" for fact in facts]
    if not record.get("ok", True):
        return "\n".join([*out, f"- **crashed**: {record.get('error')}", ""])
    rounds = record.get("rounds") or []
    if rounds:
        metrics = [k for k in rounds[0] if k != "round"]
        out += ["", "| round | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        out += ["| " + " | ".join(_number(r.get(k)) for k in ["round", *metrics]) + " |" for r in rounds]
    if record.get("baseline"):
        out += ["", f"Baseline ({record.get('baseline_description')}): "
                + ", ".join(f"{k} {_number(v)}" for k, v in record["baseline"].items()) + "."]
    epsilons = {site: eps for site, eps in (record.get("epsilon_per_site") or {}).items() if eps is not None}
    if epsilons:
        out += ["", f"Final ε per site (target {record.get('target_epsilon')}): "
                + ", ".join(f"site {site} {eps:.3f}" for site, eps in epsilons.items()) + "."]
    elif "dp" in record:
        out += ["", "No DP: no ε." if not record["dp"] else ""]
    shares = record.get("label_share")
    if shares:
        out += ["", "| label | predicted share | gold share | gap |", "|---|---|---|---|"]
        out += [f"| {label} | {s['predicted']:.3f} | {s['gold']:.3f} | {(s['predicted'] - s['gold']) * 100:+.1f} |"
                for label, s in shares.items()]
    if record.get("warm_start_source"):
        source = record["warm_start_source"]
        out += ["", f"Warm start: {source.get('config') or 'a given run'}, final on its own test data "
                    f"{source.get('final')}."]
    out += other_figures(record)
    return "\n".join(out).rstrip() + "\n"


def render(results_dir: Path) -> str:
    results = load_results(results_dir)
    cases = "\n".join(case_section(name, record) for name, record in results.items())
    text = TEMPLATE.read_text(encoding="utf-8")
    return (text.replace("{{goals}}", goal_table(results)).replace("{{tuning}}", tuning_table(results_dir))
            .replace("{{head_study}}", head_study_table(results_dir))
            .replace("{{cases}}", cases.rstrip() + "\n"))
