"""`finfed simulate`: what can fail from the settings alone fails first, before any site's data is loaded,
model built or engine started; a run folder in the way says what it holds and what to do, and is left as is."""

from __future__ import annotations

import json

import pytest
from report_runs import finished_run

import finfed.runtime.local_engine as local_engine
import finfed.runtime.preflight as preflight
from finfed.cli.main import main
from finfed.errors import FinfedError
from finfed.runs.outputs import STATUS
from finfed.tasks.base import Task


class ReachedTheHeavyChecks(FinfedError):
    pass


@pytest.fixture
def heavy_work(monkeypatch):
    """The functions that load the sites' data, build a model or start the engine: each records its call."""
    called = []

    def forbid(name):
        def stand_in(*args, **kwargs):
            called.append(name)
            raise ReachedTheHeavyChecks(f"{name} was reached")
        return stand_in
    monkeypatch.setattr(preflight, "check_simulation", forbid("check_simulation"))
    monkeypatch.setattr(local_engine, "run_simulation", forbid("run_simulation"))
    monkeypatch.setattr(Task, "build_model", forbid("build_model"))
    return called


def _simulate(capsys, run_dir, *settings: str) -> str:
    capsys.readouterr()
    args = [arg for item in (f"run_dir={run_dir}", *settings) for arg in ("--set", item)]
    code = main(["simulate", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("finfed: error: "), err
    return err


def _status(run_dir, **status):
    (run_dir / STATUS).write_text(json.dumps(status), encoding="utf-8")


def test_a_run_folder_in_the_way_fails_first_saying_what_to_do(tmp_path, capsys, heavy_work):
    run_dir = finished_run(tmp_path)
    err = _simulate(capsys, run_dir)
    assert "holds a completed run" in err and "--set name=" in err and "--overwrite" in err
    _status(run_dir, state="failed", error="site 1 ran out of memory\nTraceback ...")
    err = _simulate(capsys, run_dir)
    assert "holds a failed run (site 1 ran out of memory)" in err and "--overwrite" in err
    _status(run_dir, state="interrupted", last_completed_round=2)
    assert f"finfed simulate --resume {run_dir}" in _simulate(capsys, run_dir)
    (run_dir / STATUS).write_text("{not json", encoding="utf-8")
    assert "status is unreadable" in _simulate(capsys, run_dir)
    assert not heavy_work
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "privacy.json"}


def test_overwrite_replaces_a_failed_run_only_after_every_check_passed(tmp_path, capsys, heavy_work):
    run_dir = finished_run(tmp_path)
    _status(run_dir, state="failed", error="boom")
    capsys.readouterr()
    assert main(["simulate", "--set", f"run_dir={run_dir}", "--overwrite"]) == 2
    assert heavy_work == ["check_simulation"]  # the folder check passed; the data check stopped the run
    assert (run_dir / "metrics.jsonl").is_file()  # nothing removed before the checks passed


@pytest.mark.parametrize("settings, expected", [
    (["data.source=file", "data.path={tmp}/absent.csv"], "data file {tmp}/absent.csv does not exist"),
    (["data.source=file"], "`data.path` is required"),
    (["task=qa", "data.partitioner=dirichlet"], "has no labels"),
    (["federation.rounds=-1"], "federation.rounds"),
])
def test_settings_that_cannot_work_fail_before_any_data_model_or_engine(tmp_path, capsys, heavy_work,
                                                                      settings, expected):
    err = _simulate(capsys, tmp_path / "run", *(s.format(tmp=tmp_path) for s in settings))
    assert expected.format(tmp=tmp_path) in err
    assert not heavy_work and not (tmp_path / "run").exists()
