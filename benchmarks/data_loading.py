"""Benchmark: one site's data from a 200,000-row file (4 sites) in CSV, JSONL and Parquet.

Each format is written to a temporary folder, then one site's data is loaded in a fresh subprocess (as a
simulated site's process would): its peak RSS (``resource.getrusage``, the whole process: Python, pandas,
numpy) and wall time are recorded, beside the time of the cheap pre-run checks. Writes
benchmarks/results/data-loading.json.

    python benchmarks/data_loading.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results" / "data-loading.json"
BANKS = {"Bank of Avalon": 0.35, "Caledon Savings": 0.3, "Dunmore Trust": 0.2, "Eastwick Credit": 0.15}
WORDS = ("profit", "loss", "guidance", "dividend", "loan", "rates", "shares", "outlook", "merger", "costs",
         "quarter", "revenue", "capital", "deposits", "branch", "margin")
SETTINGS = ["data.text_column=headline", "data.label_column=sentiment", "data.partition_column=bank",
            "data.label_map={neg: negative, neu: neutral, pos: positive}"]

CHILD = """
import json, resource, sys, time
started = time.perf_counter()
from finfed.config import load_config
from finfed.data.checks import check_data_config
from finfed.data.partition import simulated_site
from finfed.tasks.classification import SENTENCES
imported = time.perf_counter()
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
config = load_config(None, [f"data.path={sys.argv[1]}", *json.loads(sys.argv[2])])
check_data_config(config, SENTENCES)
checked = time.perf_counter()
site = simulated_site(config.data, 0, 0, SENTENCES)
loaded = time.perf_counter()
print(json.dumps({"check_s": round(checked - imported, 3), "load_site_s": round(loaded - checked, 3),
                  "import_s": round(imported - started, 3), "site_train_rows": len(site.train),
                  "site_validation_rows": len(site.validation),
                  "rss_after_imports_mb": round(baseline, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def four_banks(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    banks = rng.choice(list(BANKS), size=rows, p=list(BANKS.values()))
    sentiment = rng.choice(["neg", "neu", "pos"], size=rows)
    words = rng.choice(WORDS, size=(rows, 14))
    return pd.DataFrame({"bank": banks, "headline": [f"{b} {' '.join(w)} {i}" for i, (b, w) in
                                                     enumerate(zip(banks, words))], "sentiment": sentiment})


def write(frame: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    frame = four_banks(args.rows)
    cases = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt in ("csv", "jsonl", "parquet"):
            path = Path(folder) / f"banks.{fmt}"
            write(frame, path)
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(SETTINGS)],
                                 capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            case = {"format": fmt, "rows": args.rows, "sites": len(BANKS),
                    "file_mb": round(path.stat().st_size / 2**20, 1),
                    "wall_s": round(time.perf_counter() - started, 2), **measured}
            cases.append(case)
            print(json.dumps(case))
    result = {"case": "data-loading", "note": "one site's data loaded in a fresh process; peak RSS of that "
                                              "process (ru_maxrss); timings measured on a shared, contended machine",
              "cases": cases}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
