"""Checkpoints after every round; a stopped coordinator resumes at the next round, nothing applied twice."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from inprocess_grid import InProcessGrid, message_round, serve

from finfed.cli.main import main
from finfed.config import to_run_config
from finfed.constants import CALIBRATION_CACHE_ENV
from finfed.errors import RunError
from finfed.flower_app.client import app as client_app
from finfed.privacy.accounting import SiteAccountant
from finfed.runs.checkpoint import (
    Checkpoint,
    checkpoint_path,
    read_checkpoint,
    resume_point,
    write_checkpoint,
)
from finfed.runs.outputs import read_metrics, read_privacy, read_status


def _checkpoint(config, round_=1, scale=1.0):
    arrays = {"b.lora_B.weight": np.full((4, 8), scale, np.float32), "a.classifier.bias": np.arange(3.0)}
    return Checkpoint(round=round_, total_rounds=3, run_config=to_run_config(config), arrays=arrays,
                      run_state={"history": [{"round": 0}]}, strategy_state={"training": {"clipping_norm": 0.5}})


def test_checkpoint_round_trip_keeps_names_order_and_values(tiny_config):
    config = tiny_config()
    write_checkpoint(config.resolved_run_dir, _checkpoint(config))
    write_checkpoint(config.resolved_run_dir, _checkpoint(config, round_=2, scale=2.0))
    back = read_checkpoint(config.resolved_run_dir)
    assert back.round == 2 and list(back.arrays) == ["b.lora_B.weight", "a.classifier.bias"]
    assert np.array_equal(back.arrays["b.lora_B.weight"], np.full((4, 8), 2.0, np.float32))
    assert back.arrays["b.lora_B.weight"].dtype == np.float32
    assert back.strategy_state == {"training": {"clipping_norm": 0.5}} and back.run_config == to_run_config(config)
    folder = checkpoint_path(config.resolved_run_dir).parent
    assert sorted(p.name for p in folder.iterdir()) == ["arrays-round-2.npz", "checkpoint.json"]


def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint_whole(tiny_config, monkeypatch):
    config = tiny_config()
    write_checkpoint(config.resolved_run_dir, _checkpoint(config))
    real_replace = os.replace

    def crash_on_commit(source, target):
        if str(target).endswith("checkpoint.json"):
            raise OSError("power cut")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_on_commit)
    with pytest.raises(OSError):
        write_checkpoint(config.resolved_run_dir, _checkpoint(config, round_=2, scale=2.0))
    monkeypatch.setattr(os, "replace", real_replace)
    back = read_checkpoint(config.resolved_run_dir)
    assert back.round == 1 and np.array_equal(back.arrays["b.lora_B.weight"], np.ones((4, 8), np.float32))


def test_a_tampered_checkpoint_is_refused(tiny_config):
    config = tiny_config()
    write_checkpoint(config.resolved_run_dir, _checkpoint(config))
    arrays = checkpoint_path(config.resolved_run_dir).parent / "arrays-round-1.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, as a bad disk or a hand edit would leave
    arrays.write_bytes(bytes(data))
    with pytest.raises(RunError, match="does not match the SHA-256 recorded in checkpoint.json"):
        read_checkpoint(config.resolved_run_dir)


def test_bad_resume_targets_are_refused_with_the_reason(tiny_config, tmp_path, capsys):
    config = tiny_config()
    run_dir = config.resolved_run_dir
    with pytest.raises(RunError, match="does not exist"):
        resume_point(run_dir, None)
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"state": "running"}))
    assert main(["simulate", "--resume", str(run_dir)]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    write_checkpoint(run_dir, _checkpoint(config))
    with pytest.raises(RunError, match=r"different settings.*`privacy.target_epsilon`: interrupted run 8.0, now 3.0"):
        resume_point(run_dir, to_run_config(tiny_config("privacy.target_epsilon=3")))
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    with pytest.raises(RunError, match="belongs to run directory"):
        resume_point(moved, None)
    moved.rename(run_dir)
    assert main(["simulate", "--resume", str(run_dir), "--set", "federation.rounds=5"]) == 2
    assert "it takes no --config, --set or --overwrite" in capsys.readouterr().err
    (run_dir / "status.json").write_text(json.dumps({"state": "complete"}))
    assert main(["simulate", "--resume", str(run_dir)]) == 2
    assert "holds a complete run; there is nothing to resume" in capsys.readouterr().err


class CoordinatorStopped(BaseException):
    """Stands for the coordinator process dying: nothing after it runs."""


def _stop_at_round_2(grid, message):
    if message.metadata.message_type == "train" and message_round(message) == 2:
        raise CoordinatorStopped()


def _stop_then_resume(config):
    grid = InProcessGrid(client_app.app, config)
    grid.before_send = _stop_at_round_2
    with pytest.raises(CoordinatorStopped):
        serve(config, grid)
    assert [r["round"] for r in read_metrics(config.resolved_run_dir)] == [0, 1]
    # A new Flower run: fresh ClientApp contexts (the sites' accountant state is gone) and new node ids.
    resumed = dataclasses.replace(config, resume_from=str(config.resolved_run_dir))
    return serve(resumed, InProcessGrid(client_app.app, resumed, node_base=2000))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_config, tmp_path):
    # privacy.reproducible: the resumed run must repeat the reference's DP sampling and noise bit for bit
    settings = ["federation.rounds=3", "privacy.membership_audit=false", f"privacy.ledger_dir={tmp_path / 'ledgers'}",
                "privacy.reproducible=true"]
    reference = tiny_config(*settings, f"run_dir={tmp_path / 'reference'}",
                            f"privacy.ledger_dir={tmp_path / 'reference-ledgers'}")
    serve(reference)
    config = tiny_config(*settings)
    _stop_then_resume(config)

    run_dir = config.resolved_run_dir
    status = read_status(run_dir)
    assert status["state"] == "complete" and status["rounds"] == 3 and status["resumed_from_rounds"] == [1]
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["failures"] == [] for r in rounds)  # the sites' new node ids are not taken for dead sites
    expected = read_metrics(tmp_path / "reference")
    for mine, theirs in zip(rounds, expected):
        assert mine["central"] == pytest.approx(theirs["central"], abs=1e-5)
    final, final_reference = read_checkpoint(run_dir).arrays, read_checkpoint(tmp_path / "reference").arrays
    assert all(np.allclose(final[name], final_reference[name], atol=1e-6) for name in final)
    privacy, privacy_reference = read_privacy(run_dir), read_privacy(tmp_path / "reference")
    for site, record in privacy["sites"].items():
        assert record["epsilon_by_round"] == pytest.approx(privacy_reference["sites"][site]["epsilon_by_round"])
        ledger = json.loads((tmp_path / "ledgers" / f"site-{site}.json").read_text())
        assert [e["round"] for e in ledger["entries"]] == [1, 2, 3]  # no round trained twice


def test_a_site_without_a_ledger_refuses_to_train_in_a_resumed_run(tiny_config):
    config = tiny_config("federation.rounds=3", "privacy.membership_audit=false")
    with pytest.raises(RunError, match="keeps no privacy ledger"):
        _stop_then_resume(config)
    assert "refusing rather than under-reporting epsilon" in read_status(config.resolved_run_dir)["error"]


def _kill_tree(process: subprocess.Popen) -> tuple[list[psutil.Process], set[str]]:
    """SIGKILL the process and every descendant's process group, as a coordinator losing power would
    be; returns them, and what their runner can no longer remove: the private Flower homes (FLWR_HOME)
    and `finfed simulate`'s calibration folder (its children carry its path in their environment)."""
    if process.poll() is not None:
        return [], set()  # it ended by itself (the test then fails on why)
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    groups, homes = set(), set()
    for member in family:
        try:
            groups.add(os.getpgid(member.pid))
            command = member.cmdline()
        except (ProcessLookupError, psutil.Error):
            continue  # already gone
        if "--log-file" in command and any("flower-superlink" in part for part in command):
            homes.add(os.path.dirname(command[command.index("--log-file") + 1]))
        try:
            calibration = member.environ().get(CALIBRATION_CACHE_ENV)
        except psutil.Error:
            calibration = None
        if calibration:
            homes.add(os.path.dirname(calibration))
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=30)
    psutil.wait_procs(family, timeout=30)  # SIGKILL is delivered asynchronously
    return family, homes


@pytest.mark.slow
def test_simulate_resume_after_the_coordinator_is_killed(tiny_backbone, tmp_path):
    run_dir = tmp_path / "run"
    settings = [f"model.backbone={tiny_backbone}", f"run_dir={run_dir}", "data.synthetic_size=400",
                "federation.num_sites=2", "federation.rounds=3", "train.batch_size=16", "lora.r=4",
                "privacy.membership_audit=false"]
    command = [sys.executable, "-m", "finfed.cli", "simulate", *[a for s in settings for a in ("--set", s)]]
    output = tmp_path / "first-attempt.log"
    with open(output, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    family, homes = [], set()
    try:
        deadline = time.time() + 600
        while not checkpoint_path(run_dir).is_file():
            assert process.poll() is None and time.time() < deadline, output.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        family, homes = _kill_tree(process)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
    assert homes and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    assert read_checkpoint(run_dir).round == 1 and read_status(run_dir)["state"] == "running"

    assert main(["simulate", "--resume", str(run_dir)]) == 0
    status = read_status(run_dir)
    assert status["state"] == "complete" and status["resumed_from_rounds"] == [1]
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1, 2, 3]
    assert all(r["failures"] == [] for r in read_metrics(run_dir))
    for site, record in read_privacy(run_dir)["sites"].items():
        entries = json.loads((run_dir / "ledgers" / f"site-{site}.json").read_text())["entries"]
        assert [e["round"] for e in entries] == [1, 2, 3]
        # What an uninterrupted run reports: every step of all three rounds, once, calibrated to the target.
        accountant = SiteAccountant("prv")
        for entry in entries:
            accountant.record(entry["noise_multiplier"], entry["sample_rate"], entry["steps"])
        assert record["epsilon"] == pytest.approx(accountant.epsilon(1e-5), rel=1e-9)
        assert 7.9 < record["epsilon"] <= 8.0
    assert (run_dir / "flower.log").read_text().count("Successfully started run") == 2
