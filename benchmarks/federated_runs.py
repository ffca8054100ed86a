"""Benchmark: run finfed simulations and print/write their headline figures.

    python benchmarks/federated_runs.py default               # the README's main job
    python benchmarks/federated_runs.py phrasebank --data ../shared/data/financial_phrasebank/sentences_50agree.csv
    python benchmarks/federated_runs.py qa                    # extractive QA on the synthetic filings
    python benchmarks/federated_runs.py tatqa --data ../shared/data/tatqa_text_span   # dev.jsonl + test.jsonl

Each case runs `finfed simulate` for real (Flower simulation engine, bundled MiniLM) and
records wall time, per-round central metrics (accuracy / macro-F1, or exact match / F1), the
trivial baseline and each site's final epsilon in benchmarks/results/<case>.json. Cases with
real data run with DP (epsilon 8) and without.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from finfed.cli.main import main as finfed
from finfed.runs.outputs import read_metrics, read_privacy, read_status

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_case(name: str, args: list[str], run_dir: Path) -> dict:
    started = time.time()
    code = finfed(["simulate", *args, "--set", f"run_dir={run_dir}", "--set", f"name={name}"])
    wall = time.time() - started
    rounds = read_metrics(run_dir)
    privacy = read_privacy(run_dir)
    return {"case": name, "exit_code": code, "wall_s": round(wall, 1),
            "baseline": read_status(run_dir).get("baseline"),
            "rounds": [{"round": r["round"], **{k: round(v, 4) for k, v in r["central"].items()}} for r in rounds],
            "final_epsilon": {site: s.get("epsilon") for site, s in privacy.get("sites", {}).items()}}


def cases(which: str, data: str | None) -> dict[str, list[str]]:
    if which == "default":
        return {"default": []}
    if which == "qa":
        return {"qa": ["--config", str(ROOT / "simulations" / "qa.yaml")]}
    if not data:
        raise SystemExit(f"--data is required for the {which} benchmark")
    if which == "tatqa":
        base = ["--config", str(ROOT / "simulations" / "tatqa.yaml"), "--set", f"data.path={data}/dev.jsonl",
                "--set", f"data.test_path={data}/test.jsonl"]
    else:
        base = ["--config", str(ROOT / "simulations" / "phrasebank.yaml"), "--set", f"data.path={data}"]
    return {f"{which}-dp": base, f"{which}-nodp": base + ["--set", "privacy.enabled=false"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["default", "phrasebank", "qa", "tatqa"])
    parser.add_argument("--data", help="Financial PhraseBank CSV (phrasebank), or the TAT-QA folder (tatqa)")
    parser.add_argument("--only", help="run just this case (e.g. tatqa-dp)")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="extra override for every case")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="finfed-bench-") as tmp:
        for name, case_args in cases(args.which, args.data).items():
            if args.only and name != args.only:
                continue
            extra = [a for item in args.extra for a in ("--set", item)]
            summary = run_case(name, case_args + extra, Path(tmp) / name)
            (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
            print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
