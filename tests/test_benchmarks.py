"""The benchmark suite (`python -m benchmarks`): its quick mode runs in CI, its page is generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main, resolve
from benchmarks.docs import DOCS, render
from benchmarks.registry import CASES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OWN_CASES = ["default-classification", "default-qa", "phrasebank-dp", "phrasebank-nodp", "phrasebank-central",
             "phrasebank-warm", "tatqa-dp", "tatqa-nodp"]
COMMON_KEYS = {"case", "description", "mode", "date", "ok", "error", "wall_s", "peak_rss_mb"}


def test_the_committed_benchmarks_page_is_the_generated_one():
    assert DOCS.read_text(encoding="utf-8") == render(RESULTS), \
        "docs/benchmarks.md is stale: run `python -m benchmarks --write-docs`"


def test_every_registered_case_names_a_function_or_a_module_still_to_come():
    for name in OWN_CASES:
        function = resolve(name)
        assert callable(function) and function.__doc__, name
    for name, target in CASES.items():
        assert ":" in target and target.startswith("benchmarks."), name


def test_committed_results_carry_the_common_figures():
    for path in RESULTS.glob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert set(record) >= COMMON_KEYS, path.name
        assert record["case"] == path.stem and record["mode"] == "full"


def test_an_unknown_case_is_refused(capsys):
    assert main(["--case", "no-such-case"]) == 2
    assert "unknown case" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_mode_runs_every_case_to_the_end(tmp_path):
    """`python -m benchmarks --quick` as CI runs it: exit 0, one complete result per available case."""
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--results", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in OWN_CASES:
        record = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert record["ok"] and record["mode"] == "quick", (name, record.get("error"))
        assert record["rounds"] and record["final"], name
    dp = json.loads((tmp_path / "phrasebank-dp.json").read_text(encoding="utf-8"))
    assert dp["epsilon_per_site"] and all(0 < eps <= 8.0 + 1e-6 for eps in dp["epsilon_per_site"].values())
    assert dp["upload_bytes_per_site_round"] > 0 and set(dp["label_share"]) == {"negative", "neutral", "positive"}
    warm = json.loads((tmp_path / "phrasebank-warm.json").read_text(encoding="utf-8"))
    assert warm["warm_start_source"]["final"] and warm["rounds"][0] != dp["rounds"][0]  # not from scratch
