"""Benchmark: one site's data from a 200,000-row file (4 sites) in CSV, JSONL and Parquet.

Each format is written to a temporary folder, then one site's data is loaded in a fresh subprocess (as a
simulated site's process would): its peak RSS (``resource.getrusage``, the whole process: Python, pandas,
numpy) and wall time are recorded, beside the time of the cheap pre-run checks. A case of the suite
(``python -m benchmarks --case data-loading``, writes benchmarks/results/data-loading.json); ``--quick``:
2,000 rows, loaded in the suite's own process (a crash check: its memory figures mean nothing).

    python benchmarks/data_loading.py [--rows 200000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BANKS = {"Bank of Avalon": 0.35, "Caledon Savings": 0.3, "Dunmore Trust": 0.2, "Eastwick Credit": 0.15}
WORDS = ("profit", "loss", "guidance", "dividend", "loan", "rates", "shares", "outlook", "merger", "costs",
         "quarter", "revenue", "capital", "deposits", "branch", "margin")
SETTINGS = ["data.text_column=headline", "data.label_column=sentiment", "data.partition_column=bank",
            "data.label_map={neg: negative, neu: neutral, pos: positive}"]

CHILD = "from benchmarks.data_loading import child; child()"


def load_one(path: str, settings: list[str]) -> dict:
    """One site's data from ``path``, timed; the peak RSS of this process (ru_maxrss)."""
    import resource

    started = time.perf_counter()
    from finfed.config import load_config
    from finfed.data.checks import check_data_config
    from finfed.data.partition import simulated_site
    from finfed.tasks.classification import SENTENCES
    imported = time.perf_counter()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = load_config(None, [f"data.path={path}", *settings])
    check_data_config(config, SENTENCES)
    checked = time.perf_counter()
    site = simulated_site(config.data, 0, 0, SENTENCES)
    loaded = time.perf_counter()
    return {"check_s": round(checked - imported, 3), "load_site_s": round(loaded - checked, 3),
            "import_s": round(imported - started, 3), "site_train_rows": len(site.train),
            "site_validation_rows": len(site.validation),
            "rss_after_imports_mb": round(baseline, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def child() -> None:
    """In the fresh process: argv is the file and the settings (JSON); prints the figures (JSON)."""
    print(json.dumps(load_one(sys.argv[1], json.loads(sys.argv[2]))))


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


#: rows of the generated file (full mode; `python benchmarks/data_loading.py --rows`)
OPTIONS = {"rows": 200_000}
QUICK_ROWS = 2_000


def data_loading(bench) -> dict:
    """One site's data from a generated 200,000-row file (4 banks) in CSV, JSONL and Parquet, loaded in a fresh
    process as a simulated site loads it: load and check time, peak RSS of that process."""
    rows = QUICK_ROWS if bench.quick else OPTIONS["rows"]
    frame = four_banks(rows)
    cases = []
    for fmt in ("csv", "jsonl", "parquet"):
        path = bench.work / f"banks.{fmt}"
        write(frame, path)
        started = time.perf_counter()
        if bench.quick:
            measured = load_one(str(path), SETTINGS)
        else:
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(SETTINGS)], cwd=str(ROOT),
                                 capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
        cases.append({"format": fmt, "rows": rows, "sites": len(BANKS),
                      "file_mb": round(path.stat().st_size / 2**20, 1),
                      "wall_s": round(time.perf_counter() - started, 2), **measured})
        print(json.dumps(cases[-1]), file=sys.stderr)
    return {"engine": "one site's data loaded in a fresh process" if not bench.quick else
            "one site's data loaded in the suite's process (quick)",
            "note": "peak RSS of the loading process (ru_maxrss)" + ("" if bench.quick else
                                                                      "; timings measured on a contended machine"),
            "cases": cases}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="the suite's quick mode")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import benchmarks.data_loading as suite_module
    from benchmarks.__main__ import main as suite

    suite_module.OPTIONS["rows"] = args.rows
    return suite(["--case", "data-loading", *(["--quick"] if args.quick else [])])


if __name__ == "__main__":
    raise SystemExit(main())
