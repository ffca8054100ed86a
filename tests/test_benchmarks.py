"""The benchmark suite (`python -m benchmarks`): its quick mode runs in CI, its page is generated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main, resolve
from benchmarks.cases import Bench
from benchmarks.docs import DOCS, render, tuning_table
from benchmarks.measure import sites_validation
from benchmarks.registry import CASES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OWN_CASES = ["default-classification", "default-qa", "phrasebank-dp", "phrasebank-nodp", "phrasebank-central",
             "phrasebank-warm", "tatqa-dp", "tatqa-nodp", "tatqa-warm"]
COST_CASES = ["default-speed", "scale-50", "scale-5", "data-loading", "int8-export", "test-tiers"]
COMMON_KEYS = {"case", "description", "mode", "date", "ok", "error", "wall_s", "peak_rss_mb"}


def test_the_committed_benchmarks_page_is_the_generated_one():
    assert DOCS.read_text(encoding="utf-8") == render(RESULTS), \
        "docs/benchmarks.md is stale: run `python -m benchmarks --write-docs`"


def test_every_registered_case_names_a_documented_function():
    assert set(CASES) == {*OWN_CASES, *COST_CASES}
    for name, target in CASES.items():
        assert target.startswith("benchmarks."), name
        function = resolve(name)
        assert callable(function) and function.__doc__, name


def test_the_data_loading_case_loads_one_site_of_every_format(tmp_path):
    figures = resolve("data-loading")(Bench(quick=True, work=tmp_path))
    assert [case["format"] for case in figures["cases"]] == ["csv", "jsonl", "parquet"]
    assert all(case["site_train_rows"] > 0 and case["rows"] == 2000 for case in figures["cases"])


def test_the_page_shows_a_cases_own_figures():
    page = DOCS.read_text(encoding="utf-8")
    for name in ("scale-50", "data-loading", "int8-export"):
        assert f"### `{name}`" in page, name
    assert "| parquet | 200000 |" in page and "| label agreement | 1 |" in page
    assert "peak memory of 50 sites" in page


def test_the_cost_goals_are_judged_from_the_speed_records():
    from benchmarks.docs import goal_table

    speed = {"ok": True, "date": "2026-12-03", "wall_s": 150.0, "train_step_s": 100.0, "wall_over_train_step": 1.5,
             "peak_rss_mb": 2048}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in goal_table({"default-speed": speed}).splitlines()}
    assert "| 150.0 s | missed by 30.0 s |" in rows["issue 14: default `finfed simulate` wall time"]
    assert "| 1.50 | missed by 0.20 |" in rows["issue 14: its wall time / the sites' training-step time"]
    assert "| 2.00 GB | met |" in rows["issue 14: its peak RSS, every process of the run (3 sites)"]
    stopped = {"ok": True, "date": "2026-12-03", "exit_code": -15, "timed_out_after_s": 450, "wall_s": 455}
    assert "missed: did not complete" in goal_table({"scale-50": stopped})
    tiers = {"ok": True, "date": "2026-12-03", "fast_tier_s": 73.2, "whole_tier_s": 750.0}
    rows = {line.split(" | ")[0].lstrip("| "): line for line in goal_table({"test-tiers": tiers}).splitlines()}
    assert "| 73.2 s | met |" in rows['issue 14: `pytest -m "not slow"` (the fast tier, 2 workers)']
    assert "| 750.0 s | missed by 30.0 s |" in rows["issue 14: `pytest` (everything, as CI, 2 workers)"]


def test_the_test_tiers_are_counted_from_pytests_own_summary():
    from benchmarks.suite_time import counts, slowest

    output = ("....\n============ slowest 10 durations ============\n"
              "16.85s call     tests/test_engine.py::test_sigkill\n0.50s setup    tests/test_qa.py::test_x\n"
              "=== 1 failed, 676 passed, 2 skipped, 140 warnings in 670.82s (0:11:10) ===\n")
    assert counts(output, quick=False) == {"failed": 1, "passed": 676, "skipped": 2}
    assert counts("629 passed, 49 deselected in 72.71s (0:01:12)", quick=False) == {"passed": 629, "deselected": 49}
    assert counts("tests/x.py::a\n\n629/678 tests collected (49 deselected) in 3.50s", quick=True) == {"collected": 629}
    assert slowest(output) == [{"seconds": 16.85, "phase": "call", "test": "tests/test_engine.py::test_sigkill"},
                               {"seconds": 0.5, "phase": "setup", "test": "tests/test_qa.py::test_x"}]


def _speed_run(wall: float, rss: float, accuracy: float, ok: bool = True) -> dict:
    return {"ok": ok, "error": None if ok else "RuntimeError: boom", "date": "2026-12-03", "wall_s": wall,
            "train_step_s": wall / 2, "wall_over_train_step": 2.0, "peak_rss_mb": rss,
            "final": {"accuracy": accuracy}, "rounds": [{"round": 1, "accuracy": accuracy}]}


def test_a_repeated_case_keeps_its_median_run_and_every_runs_figures():
    from benchmarks.repeats import combine

    runs = [_speed_run(147.4, 3229, 0.829), _speed_run(120.1, 3257, 0.855), _speed_run(128.1, 3225, 0.837)]
    record = combine(runs)
    assert record["wall_s"] == 128.1 and record["rounds"] == runs[2]["rounds"]  # the run with the median wall time
    assert record["spread"]["wall_s"] == {"min": 120.1, "median": 128.1, "max": 147.4}
    assert record["spread"]["peak_rss_mb"]["median"] == 3229  # each figure's own median, not the chosen run's
    assert record["spread"]["final.accuracy"]["median"] == 0.837
    assert [r["wall_s"] for r in record["repeats"]] == [147.4, 120.1, 128.1]
    assert combine(runs[:1]) is runs[0]
    crashed = combine([*runs[:2], _speed_run(1.0, 1, 0.0, ok=False)])
    assert crashed["ok"] is False and len(crashed["repeats"]) == 3


def test_two_repeated_records_of_one_case_combine_into_one_over_every_run():
    from benchmarks.repeats import combine

    first = combine([_speed_run(147.4, 3229, 0.829), _speed_run(120.1, 3257, 0.855), _speed_run(128.1, 3225, 0.837)])
    second = combine([_speed_run(131.0, 3100, 0.801), _speed_run(119.0, 3300, 0.861)])
    record = combine([first, second])
    assert [r["wall_s"] for r in record["repeats"]] == [147.4, 120.1, 128.1, 131.0, 119.0]
    assert record["spread"]["final.accuracy"] == {"min": 0.801, "median": 0.837, "max": 0.861}
    assert record["spread"]["wall_s"]["median"] == 128.1
    assert record["wall_s"] == 128.1  # the given record nearest the median run (its median run is that run)
    crashed = combine([first, _speed_run(1.0, 1, 0.0, ok=False)])
    assert crashed["ok"] is False and len(crashed["repeats"]) == 4  # the repeated record's runs, flattened
    with pytest.raises(ValueError, match="their overrides differ"):
        combine([first, {**_speed_run(100.0, 3000, 0.8), "overrides": ["train.head_learning_rate=0.15"]}])


def test_a_repeated_federation_keeps_every_runs_validation_figures_for_tuning():
    """Settings are chosen on the sites' validation splits: each run's last-round figures and their spread."""
    from benchmarks.repeats import combine

    runs = [{**_speed_run(wall, 3000, 0.7), "validation": [
        {"round": 1, "accuracy": 0.5, "macro_f1": 0.4, "examples": 364},
        {"round": 6, "accuracy": accuracy, "macro_f1": f1, "examples": 364}]}
        for wall, accuracy, f1 in ((90.0, 0.758, 0.579), (85.0, 0.728, 0.554), (80.0, 0.741, 0.560))]
    record = combine(runs)
    assert [r["validation.accuracy"] for r in record["repeats"]] == [0.758, 0.728, 0.741]
    assert record["spread"]["validation.macro_f1"] == {"min": 0.554, "median": 0.56, "max": 0.579}
    assert "validation.examples" not in record["spread"] and "validation.round" not in record["spread"]


def test_the_label_share_goal_judges_a_repeated_case_on_the_median_of_each_runs_largest_gap():
    from benchmarks.docs import goal_table
    from benchmarks.repeats import combine

    def run(wall: float, neutral_gap: float, validation_gap: float) -> dict:
        shares = {"negative": {"predicted": 0.12 - neutral_gap, "gold": 0.12},
                  "neutral": {"predicted": 0.6 + neutral_gap, "gold": 0.6},
                  "positive": {"predicted": 0.28, "gold": 0.28}}
        return {**_speed_run(wall, 3000, 0.77), "label_share": shares, "validation": [
            {"round": 6, "accuracy": 0.78, "share_gap": {"neutral": validation_gap, "negative": -validation_gap}}]}

    record = combine([run(60.0, 0.112, 0.099), run(70.0, 0.04, 0.05), run(65.0, 0.06, -0.07)])
    assert [r["largest_share_gap"] for r in record["repeats"]] == [0.112, 0.04, 0.06]
    assert record["spread"]["validation.largest_share_gap"]["median"] == 0.07  # a lean either way counts
    rows = {line.split(" | ")[0].lstrip("| "): line for line in goal_table({"phrasebank-warm": record}).splitlines()}
    row = rows["the same, PhraseBank DP with the public warm start"]
    assert "largest gap 6.0 points (median of 3 runs; 4.0 to 11.2) | missed by 1.0 points" in row


def test_the_goals_judge_a_repeated_case_on_its_medians():
    from benchmarks.docs import case_section, goal_table
    from benchmarks.repeats import combine

    record = combine([_speed_run(147.4, 3229, 0.829), _speed_run(120.1, 3257, 0.855),
                      _speed_run(118.0, 2900, 0.837)])
    rows = {line.split(" | ")[0].lstrip("| "): line
            for line in goal_table({"default-speed": record, "default-classification": record}).splitlines()}
    wall = rows["issue 14: default `finfed simulate` wall time"]
    assert "| 120.1 s (median of 3 runs; 118.0 to 147.4) | missed by 0.1 s |" in wall
    assert "3.15 GB (median of 3 runs; 2.83 to 3.18) | missed by 0.15 GB" in rows[
        "issue 14: its peak RSS, every process of the run (3 sites)"]
    assert "0.837 accuracy (median of 3 runs; 0.829 to 0.855) | met" in rows["default classification run"]
    section = case_section("default-speed", record)
    assert "run 3 times" in section and "Repeats:" in section


def test_committed_results_carry_the_common_figures():
    for path in RESULTS.glob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert set(record) >= COMMON_KEYS, path.name
        assert record["case"] == path.stem and record["mode"] == "full"


def test_the_sites_validation_figures_are_weighted_by_their_examples():
    record = {"round": 3, "evaluation": [
        {"site": 0, "eval-accuracy": 0.5, "eval-macro-f1": 0.4, "num-examples": 10},
        {"site": 1, "eval-accuracy": 0.8, "eval-macro-f1": 0.7, "num-examples": 30}]}
    assert sites_validation(record) == {"round": 3, "accuracy": 0.725, "macro_f1": 0.625, "examples": 40}
    assert sites_validation({"round": 0, "evaluation": []}) is None
    qa = {"round": 2, "evaluation": [{"site": 0, "eval-f1": 0.2, "eval-exact-match": 0.1, "num-examples": 12},
                                     {"site": 1, "eval-f1": 0.6, "eval-exact-match": 0.3, "num-examples": 4}]}
    assert sites_validation(qa) == {"round": 2, "f1": 0.3, "exact_match": 0.15, "examples": 16}


def test_the_sites_validation_label_share_gap_pools_their_records_and_needs_every_site():
    gaps = [{"eval-share-gap-0": 0.1, "eval-share-gap-1": -0.1}, {"eval-share-gap-0": -0.02, "eval-share-gap-1": 0.02}]
    record = {"round": 6, "evaluation": [
        {"site": 0, "eval-accuracy": 0.5, "num-examples": 10, **gaps[0]},
        {"site": 1, "eval-accuracy": 0.8, "num-examples": 30, **gaps[1]}]}
    figures = sites_validation(record, ["negative", "neutral"])
    assert figures["share_gap"] == {"negative": 0.01, "neutral": -0.01}  # (0.1 * 10 - 0.02 * 30) / 40
    del record["evaluation"][1]["eval-share-gap-0"], record["evaluation"][1]["eval-share-gap-1"]
    assert "share_gap" not in sites_validation(record, ["negative", "neutral"])  # not the whole validation set


def test_the_tuning_table_lists_every_tuning_run_with_its_validation_figures(tmp_path):
    run = {"case": "phrasebank-warm", "date": "2026-12-02", "ok": True, "dp": True, "warm_start_source": {"final": {}},
           "training": {"train.batch_size": 128}, "overrides": ["train.batch_size=128", "lora.alpha=2"],
           "validation": [{"round": 6, "accuracy": 0.81, "macro_f1": 0.74,
                           "share_gap": {"negative": -0.03, "neutral": 0.112, "positive": -0.082}}],
           "final": {"accuracy": 0.8, "macro_f1": 0.7}}
    (tmp_path / "tuning" / "b128").mkdir(parents=True)
    (tmp_path / "tuning" / "b128" / "phrasebank-warm.json").write_text(json.dumps(run), encoding="utf-8")
    (tmp_path / "phrasebank-dp.json").write_text(json.dumps({**run, "case": "phrasebank-dp", "validation": [],
                                                             "warm_start_source": None}), encoding="utf-8")
    rows = tuning_table(tmp_path).splitlines()[2:]
    assert len(rows) == 2
    assert "b128 (`phrasebank-warm`)" in rows[0] and "`train.batch_size=128`" in rows[0]
    assert "`lora.alpha=2`" in rows[0] and rows[0].count("train.batch_size") == 1  # an override `training` lacks
    assert "| 0.8100 | 0.7400 | neutral +11.2 |" in rows[0] and "| yes | yes |" in rows[0]
    assert "suite (`phrasebank-dp`)" in rows[1] and "not recorded" in rows[1]


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
    assert dp["validation"] and 0 <= dp["validation"][-1]["accuracy"] <= 1 and dp["training"]["train.batch_size"]
    for name in COST_CASES:
        record = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert record["ok"] and record["mode"] == "quick", (name, record.get("error"))
    for name in ("default-speed", "scale-50", "scale-5"):
        record = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
        assert record["examples_trained"] > 0 and record["rounds_completed"] == 1, name
    tiers = {row["tier"]: row for row in json.loads((tmp_path / "test-tiers.json").read_text())["tiers"]}
    assert 0 < tiers["fast"]["collected"] < tiers["whole"]["collected"]  # quick: the tiers are collected, not run
    export = json.loads((tmp_path / "int8-export.json").read_text(encoding="utf-8"))
    assert [e["form"] for e in export["exports"]] == ["fp32", "int8"] and export["weights_ratio"] < 1
    warm = json.loads((tmp_path / "phrasebank-warm.json").read_text(encoding="utf-8"))
    assert warm["warm_start_source"]["final"] and warm["rounds"][0] != dp["rounds"][0]  # not from scratch
    qa_warm, qa_cold = (json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
                        for name in ("tatqa-warm", "tatqa-dp"))
    assert qa_warm["warm_start_source"]["final"] and qa_warm["rounds"][0] != qa_cold["rounds"][0]


def test_repeat_runs_a_case_in_fresh_run_folders_and_keeps_every_run(tmp_path):
    """`--repeat 2` on the quick default federation: two complete runs (a run folder is never reused)."""
    assert main(["--quick", "--case", "default-classification", "--repeat", "2", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "default-classification.json").read_text(encoding="utf-8"))
    assert record["ok"] and len(record["repeats"]) == 2 and all(r["ok"] for r in record["repeats"])
    assert record["spread"]["final.accuracy"]["min"] <= record["spread"]["final.accuracy"]["max"]


def test_seeds_run_a_case_once_per_training_seed_and_keep_every_run(tmp_path, capsys):
    """`--seeds 3,5`: a run per seed (a run without DP repeats itself with one seed), combined as `--repeat`
    combines; the seed travels with each run's figures and into the docs' ranges."""
    from benchmarks.repeats import range_text

    assert main(["--quick", "--case", "default-classification", "--seeds", "3,5", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "default-classification.json").read_text(encoding="utf-8"))
    assert record["ok"] and [r["seed"] for r in record["repeats"]] == [3, 5]
    assert record["overrides"][-1] in ("seed=3", "seed=5")  # the median run's own settings
    assert "seeds 3, 5;" in range_text(record, "final.accuracy", digits=3)
    assert main(["--quick", "--case", "default-classification", "--seeds", "3", "--repeat", "2"]) == 2
    assert "--seeds gives each run its seed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seeds", "1,1"])


def test_runs_with_other_seeds_combine_and_runs_with_other_settings_do_not():
    from benchmarks.repeats import combine

    runs = [{**_speed_run(wall, 3000, accuracy), "overrides": ["privacy.enabled=false", f"seed={seed}"]}
            for wall, accuracy, seed in ((90.0, 0.78, 0), (95.0, 0.80, 1), (85.0, 0.79, 2))]
    record = combine(runs)
    assert [r["seed"] for r in record["repeats"]] == [0, 1, 2] and record["overrides"][-1] == "seed=0"
    assert record["spread"]["final.accuracy"]["median"] == 0.79 and "seed" not in record["spread"]
    other = {**runs[0], "overrides": ["privacy.enabled=true", "seed=3"]}
    with pytest.raises(ValueError, match="their overrides differ"):
        combine([*runs, other])


def _stopping_engine(calls: list, stop):
    def engine(config_file, overrides):
        calls.append(overrides)
        return stop()
    return engine


@pytest.mark.parametrize("stop", ["the federation's own stop", "SIGTERM to the suite"])
def test_a_signal_stops_every_case_and_repeat_and_writes_nothing_for_the_one_running(tmp_path, monkeypatch,
                                                                                       capsys, stop):
    """`finfed simulate` turns Ctrl-C or SIGTERM into a graceful stop of its run (exit 130); the suite must then
    stop too, not go on with the next repeat or case, and SIGTERM to the suite itself must do the same."""
    import os
    import signal

    import benchmarks.cases as cases
    from finfed.runs.stop import EXIT_INTERRUPTED

    calls: list = []
    if stop == "SIGTERM to the suite":
        def stopping():
            os.kill(os.getpid(), signal.SIGTERM)
            return 0
    else:
        def stopping():
            return EXIT_INTERRUPTED
    monkeypatch.setitem(cases.ENGINES, "inprocess", _stopping_engine(calls, stopping))
    handler = signal.getsignal(signal.SIGTERM)
    code = main(["--quick", "--case", "default-classification", "--case", "phrasebank-dp", "--repeat", "3",
                 "--results", str(tmp_path)])
    assert code == EXIT_INTERRUPTED and len(calls) == 1
    assert not list(tmp_path.glob("*.json"))
    assert "stopped by a signal" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is handler  # the suite's own handler is gone again


def test_a_repeat_below_one_is_refused(capsys):
    assert main(["--case", "default-speed", "--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_a_rerun_keeps_the_replaced_results_row_in_the_tuning_table(tmp_path):
    from benchmarks.__main__ import keep_previous_tuning_row

    old = {"case": "phrasebank-dp", "ok": True, "date": "2026-12-03", "commit": "7564cf7",
           "training": {"lora.method": "ffa"}, "validation": [{"round": 6, "accuracy": 0.7363, "macro_f1": 0.5298}],
           "final": {"accuracy": 0.7129, "macro_f1": 0.5848}}
    (tmp_path / "phrasebank-dp.json").write_text(json.dumps(old), encoding="utf-8")
    keep_previous_tuning_row(tmp_path, "phrasebank-dp")
    kept = tmp_path / "tuning" / "suite-2026-12-03-7564cf7" / "phrasebank-dp.json"
    assert kept.is_file() and not (tmp_path / "phrasebank-dp.json").exists()
    table = tuning_table(tmp_path)
    assert "suite-2026-12-03-7564cf7 (`phrasebank-dp`)" in table and "| 0.7363 |" in table
    promoted = {**old, "tuning_run": "b128"}  # its row is its tuning run's already
    (tmp_path / "phrasebank-warm.json").write_text(json.dumps(promoted), encoding="utf-8")
    keep_previous_tuning_row(tmp_path, "phrasebank-warm")
    keep_previous_tuning_row(tmp_path, "default-speed")  # not a PhraseBank case: nothing to keep, no error
    assert (tmp_path / "phrasebank-warm.json").is_file() and len(list((tmp_path / "tuning").iterdir())) == 1
