"""The default QA run's DP tuning: every setting tried, with the sites' validation figures.

    python -m benchmarks.qa_tuning --list                 # the settings
    python -m benchmarks.qa_tuning NAME [NAME ...]        # run them, one after the other
    python -m benchmarks.qa_tuning --engine simulate NAME # with `finfed simulate` (default: in-process)

Each setting is `finfed simulate --set task=qa` (the default QA run: synthetic filings, 3 sites,
DP epsilon 8) plus its overrides, on the settings of the commit it runs at (`base`: the defaults
then in force). A setting's record keeps the sites' validation F1 and exact match (the `eval-*`
figures each site reports on the global model, on its own validation split; mean over sites, weighted
by their validation questions) after every round, which is what a choice is made on, and beside it
the central test F1, which is only reported, never chosen on. Records are merged by name into
``benchmarks/results/qa-tuning.json`` (rendered into docs/benchmarks.md like a case's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.__main__ import commit
from benchmarks.cases import ROOT
from benchmarks.engine import ENGINES, Meter
from benchmarks.measure import rounded
from finfed.runs.outputs import read_metrics, read_privacy

RESULTS = ROOT / "benchmarks" / "results" / "qa-tuning.json"
DESCRIPTION = ("The default QA run's DP tuning (`python -m benchmarks.qa_tuning`): every setting tried on top of "
               "`finfed simulate --set task=qa` at the commit named, chosen on the sites' validation F1 (final "
               "round, mean over sites weighted by validation questions); the central test F1 is shown, not "
               "chosen on.")

# MiniLM's top two layers' query and value projections only (the `top2-*` settings).
TOP_TWO_LAYERS = ("lora.target_modules=" + ",".join(f"encoder.layer.{layer}.attention.self.{name}"
                                                    for layer in (4, 5) for name in ("query", "value")))

# The public QA source of the `from-tatqa-*` settings (trained first, once): TAT-QA's dev questions on one site, no DP.
TATQA_SOURCE = ("`finfed simulate --config simulations/tatqa.yaml --set data.path=.../dev.jsonl --set "
                "data.test_path=.../test.jsonl --set privacy.enabled=false --set privacy.membership_audit=false "
                "--set federation.num_sites=1 --set federation.rounds=4 --set data.validation_fraction=0.05 "
                "--set name=tatqa-public`: 372 s, F1 0.376 on TAT-QA's test questions")

# name -> (what it changes, overrides on top of `task=qa`). Never remove a tried setting: the page lists them all.
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "base": ("the defaults before tuning (600 questions, 4 rounds, batch 64, lr 5e-3, head lr 0.05, span head at the "
             "backbone's std 0.02)", ["qa.head_init_std=0"]),
    "base-nodp": ("the same without DP: the ceiling at this data size", ["privacy.enabled=false"]),
    "size-1800": ("3 times the questions (600 per site)", ["data.synthetic_size=1800", "qa.head_init_std=0"]),
    "head-0.1": ("the span head started at std 0.1 instead of 0.02 (at 0.02 a record's head gradient is 5 to 15 "
                 "times its adapters' one, so clipping leaves the adapters little signal under the noise; at 0.1 "
                 "about 2 to 3 times)", ["qa.head_init_std=0.1"]),
    "b32-r6": ("more, smaller DP steps: expected batch 32 and 6 rounds (about 4 steps a round, 24 in all, per "
               "site instead of 8); the central non-DP run at this batch and rounds reaches test F1 0.676",
               ["train.batch_size=32", "federation.rounds=6"]),
    "top2-size1800-r2": ("adapters in the top two layers only (their query and value: the backward pass stops there, "
                         "about half the cost of a record) with 3 times the questions in 2 rounds instead of 4: more "
                         "records per DP step at about the default run's time",
                         ["data.synthetic_size=1800", "federation.rounds=2",
                          TOP_TWO_LAYERS]),
    "top2-size3600-r3": ("the same adapters with 6 times the questions (1,200 per site) in 3 rounds: under DP the "
                         "signal against the noise grows with the records per site, not with the steps",
                         ["data.synthetic_size=3600", "federation.rounds=3",
                          TOP_TWO_LAYERS]),
    "top2-size3600-r3-nodp": ("the same without DP: what these adapters learn from this data at all",
                              ["data.synthetic_size=3600", "federation.rounds=3", "privacy.enabled=false",
                               TOP_TWO_LAYERS]),
    "size3600-r3": ("6 times the questions (1,200 per site) in 3 rounds, adapters in every layer (the default): "
                    "more records per DP step at about twice the default run's time",
                    ["data.synthetic_size=3600", "federation.rounds=3"]),
    "defaults-simulate": ("the defaults as they stand, no override, with `finfed simulate` in the same hour as the "
                          "`from-tatqa-*` runs: what they are compared with", []),
    "from-tatqa-head": ("a public warm start on other text than the sites' generator: the model of a non-private run "
                        "on TAT-QA's public questions (" + TATQA_SOURCE + "; it must exist before this setting runs), "
                        "the span head alone trained under DP",
                        ["model.init_from=runs/tatqa-public", "lora.method=head"]),
    "from-tatqa-ffa": ("the same TAT-QA warm start (runs/tatqa-public must exist), FFA-LoRA and the span head trained "
                       "under DP (the default's tensors)", ["model.init_from=runs/tatqa-public"]),
}


def site_validation(record: dict[str, Any]) -> dict[str, float]:
    """One round's `eval-f1` and `eval-exact-match`, mean over sites weighted by their validation questions."""
    sites = [s for s in record.get("evaluation", []) if "eval-f1" in s]
    weights = [float(s.get("num-examples") or 1) for s in sites]
    total = sum(weights) or 1.0
    return {"f1": sum(w * s["eval-f1"] for w, s in zip(weights, sites)) / total,
            "exact_match": sum(w * s.get("eval-exact-match", 0.0) for w, s in zip(weights, sites)) / total}


def run_setting(name: str, engine: str, work: Path) -> dict[str, Any]:
    what, overrides = SETTINGS[name]
    run_dir = work / name
    with Meter() as meter:
        code = ENGINES[engine](None, ["task=qa", *overrides, f"run_dir={run_dir}", f"name={name}"])
    if code != 0 or not read_metrics(run_dir):
        raise RuntimeError(f"setting {name} ended with exit code {code} (run directory {run_dir})")
    return record_of(name, run_dir, engine, meter.wall_s)


def record_of(name: str, run_dir: Path, engine: str, wall_s: float, stopped: str = "") -> dict[str, Any]:
    """A setting's record, read from its run directory (``stopped``: why a run was cut short, if it was)."""
    what, overrides = SETTINGS[name]
    rounds = read_metrics(run_dir)
    validation = [site_validation(r) for r in rounds if r.get("evaluation")]
    final = rounds[-1]["central"]
    epsilons = [s.get("epsilon") for s in read_privacy(run_dir).get("sites", {}).values()]
    return rounded({"setting": name, "changes": what, "overrides": " ".join(overrides) or "-",
                    "date": datetime.date.today().isoformat(), "commit": commit(), "engine": engine,
                    "rounds": len(rounds) - 1,
                    "validation_f1_by_round": [round(v["f1"], 3) for v in validation],
                    "validation_f1": validation[-1]["f1"] if validation else None,
                    "validation_em": validation[-1]["exact_match"] if validation else None,
                    "test_f1": final.get("f1"), "test_em": final.get("exact_match"),
                    "max_epsilon": max((e for e in epsilons if e is not None), default=None),
                    "wall_s": round(wall_s, 1), "stopped": stopped or "-"}, 3)


def merge(records: list[dict[str, Any]], path: Path = RESULTS) -> dict[str, Any]:
    """The results file with ``records`` replacing any earlier ones of the same names."""
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    tried = {r["setting"]: r for r in old.get("settings_tried", [])}
    tried.update({r["setting"]: r for r in records})
    ordered = [tried[n] for n in SETTINGS if n in tried] + [r for n, r in tried.items() if n not in SETTINGS]
    scored = [r for r in ordered if r.get("validation_f1") is not None]
    best = max(scored, key=lambda r: r["validation_f1"])["setting"] if scored else None
    return {"case": "qa-tuning", "description": DESCRIPTION, "mode": "full",
            "date": max((r["date"] for r in ordered), default=datetime.date.today().isoformat()),
            "commit": "", "ok": True, "error": None,
            "wall_s": round(sum(r.get("wall_s") or 0 for r in ordered), 1), "peak_rss_mb": None,
            "engine": "inprocess unless a row says otherwise",
            "best_on_validation": best,
            "settings_tried": ordered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.qa_tuning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="inprocess")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--stopped", nargs=3, metavar=("NAME", "RUN_DIR", "WHY"),
                        help="record a run that was cut short from its run directory (its rounds so far)")
    args = parser.parse_args(argv)
    if args.stopped:
        name, run_dir, why = args.stopped
        rounds = read_metrics(Path(run_dir))
        record = record_of(name, Path(run_dir), args.engine, rounds[-1].get("elapsed_s", 0.0), why)
        args.results.write_text(json.dumps(merge([record], args.results), indent=2) + "\n", encoding="utf-8")
        return 0
    if args.list or not args.names:
        for name, (what, overrides) in SETTINGS.items():
            print(f"{name:20s} {what}: {' '.join(overrides) or '-'}")
        return 0
    unknown = [n for n in args.names if n not in SETTINGS]
    if unknown:
        print(f"unknown setting(s) {unknown}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="finfed-qa-tuning-") as scratch:
        work = args.keep or Path(scratch)
        for name in args.names:
            record = run_setting(name, args.engine, work)
            print(f"[qa-tuning] {json.dumps(record)}", file=sys.stderr)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(merge([record], args.results), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
