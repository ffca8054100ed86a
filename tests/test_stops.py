"""Stopping a run (SIGINT/SIGTERM → RUN/.stop) and the run states that say what happened.

Unit tests use a tiny model or the in-process grid (no Flower processes); the two `finfed simulate`
tests at the end start Flower, so they run under the heavy-test lock and are marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from inprocess_grid import InProcessGrid, message_round, serve
from torch import nn

from finfed.cli.main import finish_run, main
from finfed.config import load_config
from finfed.errors import RunError, RunInterrupted
from finfed.flower_app.client import app as client_app
from finfed.inference.export import export_run
from finfed.models.adapters import exchanged_state
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import plan_privacy
from finfed.runs.checkpoint import read_checkpoint, resume_point, write_checkpoint
from finfed.runs.outputs import read_metrics, read_status
from finfed.runs.stop import (
    SignalStop,
    clear_stop,
    request_stop,
    signals_handled,
    sigterm_interrupts,
    stop_path,
    stop_time,
)
from finfed.site.rounds import site_context, train_round
from finfed.training.local import train_locally

# --------------------------------------------------------------------------- a site between DP steps


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x)


def _linear_setup():
    config = load_config(None, ["train.batch_size=2", "train.learning_rate=0.1", "train.optimizer=sgd"])
    dataset = [{"x": torch.randn(4), "y": i % 2} for i in range(8)]
    collate = lambda items: {"x": torch.stack([i["x"] for i in items]), "y": torch.tensor([i["y"] for i in items])}
    loss = lambda model, batch: nn.functional.cross_entropy(model(batch["x"]), batch["y"])
    plan = plan_privacy(num_records=8, train=config.train, privacy=config.privacy, rounds=1)
    return config, dataset, collate, loss, plan


def test_a_stop_between_dp_steps_abandons_the_round_with_only_the_steps_taken_accounted():
    config, dataset, collate, loss, plan = _linear_setup()
    accountant, asked = SiteAccountant("rdp"), []

    def should_stop() -> bool:  # asked before each step; says stop once two steps are done
        asked.append(accountant.total_steps)
        return len(asked) > 2

    with pytest.raises(RunInterrupted, match="before step 3 of 6"):
        train_locally(_Linear(), dataset, collate, loss, loss_reduction="mean", settings=config.train, steps=6,
                      seed=0, plan=plan, accountant=accountant, should_stop=should_stop)
    assert asked == [0, 1, 2] and accountant.total_steps == 2


def test_without_a_stop_every_step_runs():
    config, dataset, collate, loss, plan = _linear_setup()
    accountant = SiteAccountant("rdp")
    outcome = train_locally(_Linear(), dataset, collate, loss, loss_reduction="mean", settings=config.train,
                            steps=4, seed=0, plan=plan, accountant=accountant, should_stop=lambda: False)
    assert outcome.steps == 4 and accountant.total_steps == 4


def _initial_arrays(site):
    return {name: tensor.numpy() for name, tensor in exchanged_state(site.task.build_model()).items()}


def _stop_after_step(run_dir: Path, step: int):
    def progress(done: int, total: int, loss: float) -> None:
        if done >= step:
            request_stop(run_dir, "test")
    return progress


def test_a_simulated_site_seeing_the_stop_mid_round_records_no_spend(tiny_config, tmp_path):
    config = tiny_config("train.local_epochs=2")
    ledger = tmp_path / "site-0.json"
    site = site_context(config, {"partition-id": 0, "ledger-path": str(ledger)})
    with pytest.raises(RunInterrupted, match="before step 2 of"):
        train_round(site, _initial_arrays(site), server_round=1, accountant_state=None,
                    progress=_stop_after_step(config.resolved_run_dir, 1))
    assert not ledger.exists()  # the round is abandoned: no entry, so no spend recorded and no update made
    with pytest.raises(RunInterrupted, match="before step 1 of"):  # a stop already there: not even one step
        train_round(site, _initial_arrays(site), server_round=1, accountant_state=None)
    assert not ledger.exists()


def test_a_deployed_site_cannot_see_the_coordinators_stop_and_trains_its_round(tiny_config, tmp_path):
    config = tiny_config()
    request_stop(config.resolved_run_dir, "test")
    ledger = tmp_path / "site-0.json"
    site = site_context(config, {"site-id": 0, "ledger-path": str(ledger)})  # no partition-id: deployment
    update = train_round(site, _initial_arrays(site), server_round=1, accountant_state=None)
    assert update.metrics["epsilon"] > 0 and len(json.loads(ledger.read_text())["entries"]) == 1


def test_a_stop_request_keeps_its_first_moment_and_is_cleared_before_a_new_submission(tmp_path):
    first = request_stop(tmp_path, "SIGTERM")
    assert request_stop(tmp_path, "SIGINT") == first == stop_time(tmp_path)
    clear_stop(tmp_path)
    assert stop_time(tmp_path) is None and not stop_path(tmp_path).exists()


# --------------------------------------------------------------------------- the coordinator (in process)

def _settings(tmp_path, *extra):
    return ["federation.rounds=3", "privacy.membership_audit=false", f"privacy.ledger_dir={tmp_path / 'ledgers'}",
            *extra]


def _ledger_rounds(tmp_path, site) -> list[int]:
    path = tmp_path / "ledgers" / f"site-{site}.json"
    return [e["round"] for e in json.loads(path.read_text())["entries"]] if path.exists() else []


def _stop_when(kind: str, server_round: int):
    def hook(grid, message):
        if message.metadata.message_type == kind and message_round(message) == server_round:
            request_stop(grid.run_dir, "test")
    return hook


# --------------------------------------------------------------------------- signals (one scheme: finfed.runs.stop)

def test_inside_sigterm_interrupts_sigterm_is_ctrl_c_and_the_earlier_handler_comes_back():
    earlier = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises first
    assert signal.getsignal(signal.SIGTERM) is earlier


def test_signals_handled_changes_nothing_outside_the_main_thread():
    seen = []

    def install():
        with signals_handled(lambda *_: None, (signal.SIGTERM,)):
            seen.append(signal.getsignal(signal.SIGTERM))
    earlier = signal.getsignal(signal.SIGTERM)
    worker = threading.Thread(target=install)
    worker.start()
    worker.join()
    assert seen == [earlier]


def test_signal_stop_asks_the_run_to_stop_then_a_second_signal_is_ctrl_c(tmp_path):
    earlier = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(KeyboardInterrupt), SignalStop(tmp_path, record_wait=60) as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested_at == stop_time(tmp_path) and stop_path(tmp_path).exists()
        signal.raise_signal(signal.SIGINT)
        time.sleep(5)  # not reached
    assert {s: signal.getsignal(s) for s in earlier} == earlier


def test_a_supervised_deployment_process_is_stopped_by_sigterm():
    from finfed.deploy.launch import _supervise

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    threading.Timer(0.5, signal.pthread_kill, (threading.main_thread().ident, signal.SIGTERM)).start()
    assert _supervise(child, child.wait) == 130
    assert child.poll() is not None


@pytest.mark.slow  # five in-process rounds
def test_a_stop_during_training_abandons_the_round_and_the_run_resumes_from_the_last_one(tiny_config, tmp_path):
    config = tiny_config(*_settings(tmp_path))
    run_dir = config.resolved_run_dir
    grid = InProcessGrid(client_app.app, config)
    grid.run_dir = run_dir
    grid.before_send = _stop_when("train", 2)  # the stop lands while round 2's train requests go out
    serve(config, grid)
    status = read_status(run_dir)
    assert status["state"] == "interrupted" and status["last_completed_round"] == 1
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1] and read_checkpoint(run_dir).round == 1
    assert not (run_dir / "model").exists()
    assert _ledger_rounds(tmp_path, 0) == _ledger_rounds(tmp_path, 1) == [1]  # round 2 spent nothing
    asked = {m.metadata.message_id for m in grid.sent if message_round(m) == 2}
    replies = [m for m in grid.received if m.metadata.reply_to_message_id in asked]
    assert len(replies) == 2 and all(m.has_error() for m in replies)  # no update left a site

    clear_stop(run_dir)  # as `finfed simulate --resume` does before it submits
    resumed = dataclasses.replace(config, resume_from=str(run_dir))
    serve(resumed, InProcessGrid(client_app.app, resumed, node_base=2000))
    status = read_status(run_dir)
    assert status["state"] == "complete" and status["resumed_from_rounds"] == [1]
    assert _ledger_rounds(tmp_path, 0) == _ledger_rounds(tmp_path, 1) == [1, 2, 3]  # no round trained twice


def test_a_stop_after_the_training_replies_keeps_the_round_and_starts_no_other(tiny_config, tmp_path):
    config = tiny_config(*_settings(tmp_path))
    grid = InProcessGrid(client_app.app, config)
    grid.run_dir = config.resolved_run_dir
    grid.before_send = _stop_when("evaluate", 1)  # round 1's updates are in: its spend is used, not wasted
    serve(config, grid)
    status = read_status(config.resolved_run_dir)
    assert status["state"] == "interrupted" and status["last_completed_round"] == 1
    assert read_checkpoint(config.resolved_run_dir).round == 1
    assert max(message_round(m) for m in grid.sent) == 1


def test_a_coordinator_stopped_by_a_signal_is_interrupted_not_failed(tiny_config, tmp_path):
    config = tiny_config(*_settings(tmp_path))

    def sigterm_in_round_2(grid, message):
        if message_round(message) == 2:
            raise SystemExit(0)  # what Flower's handler makes of SIGTERM in the ServerApp's process

    grid = InProcessGrid(client_app.app, config)
    grid.before_send = sigterm_in_round_2
    with pytest.raises(SystemExit):
        serve(config, grid)
    status = read_status(config.resolved_run_dir)
    assert status["state"] == "interrupted" and status["last_completed_round"] == 1 and "error" not in status


def test_a_run_every_site_refuses_saves_no_model_and_report_and_export_explain(tiny_config, tmp_path, capsys):
    config = tiny_config(*_settings(tmp_path, "privacy.site_budget_epsilon=0.05"))
    run_dir = config.resolved_run_dir
    serve(config)
    status = read_status(run_dir)
    assert status["state"] == "budget-exhausted" and status["trained_rounds"] == 0
    assert status["budget_exhausted_at_round"] == 1 and status["model_round"] is None
    assert not (run_dir / "model").exists()
    assert [r["round"] for r in read_metrics(run_dir)] == [0, 1]  # no round after everyone refused
    assert _ledger_rounds(tmp_path, 0) == _ledger_rounds(tmp_path, 1) == []

    assert main(["report", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "No round trained" in report and "Every site refused round 1 of 3" in report
    assert "spent no privacy budget" in report and "epsilon <= 0 (delta )" not in report
    with pytest.raises(RunError, match="has no model: every site refused round 1"):
        export_run(run_dir, tmp_path / "export")
    assert main(["export", str(run_dir), str(tmp_path / "export")]) == 2
    assert "has no model" in capsys.readouterr().err and not (tmp_path / "export").exists()
    with pytest.raises(RunError, match="resuming it cannot train further"):
        resume_point(run_dir, None)


def test_finish_run_records_a_run_it_had_to_stop_and_exits_130(tiny_config, tmp_path, capsys):
    config = tiny_config()
    run_dir = config.resolved_run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "started": time.time() - 5}))
    from test_resume import _checkpoint

    write_checkpoint(run_dir, _checkpoint(config, round_=2))
    assert finish_run(run_dir, None, time.time()) == 130
    status = read_status(run_dir)
    assert status["state"] == "interrupted" and status["last_completed_round"] == 2
    assert f"interrupted after round 2; resume with finfed simulate --resume {run_dir}" in capsys.readouterr().err
    (run_dir / "status.json").write_text(json.dumps({"state": "complete"}))
    assert finish_run(run_dir, None, time.time()) == 0
    assert read_status(run_dir)["state"] == "complete"  # a state the ServerApp recorded is kept


# --------------------------------------------------------------------------- finfed simulate (Flower)

def _simulate_command(backbone: str, run_dir: Path, *extra: str) -> list[str]:
    settings = [f"model.backbone={backbone}", f"run_dir={run_dir}", "data.synthetic_size=400",
                "federation.num_sites=2", "train.batch_size=16", "lora.r=4", "privacy.membership_audit=false",
                *extra]
    return [sys.executable, "-m", "finfed.cli", "simulate", *[a for s in settings for a in ("--set", s)]]


class _Output:
    """A child's merged stdout/stderr, read as it comes."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self.reader.start()

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def text(self) -> str:
        return "".join(self.lines)


def _family(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.Error:
        return []


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_sigterm_during_training_stops_spending_records_interrupted_and_resumes(tiny_backbone, tmp_path):
    run_dir = tmp_path / "run"
    command = _simulate_command(tiny_backbone, run_dir, "federation.rounds=3", "train.local_epochs=10")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output, family = _Output(process), []
    try:
        deadline = time.time() + 600
        # A site's per-step progress line (in its own log, never on stdout): round 2 is training.
        while not any("round 2 site" in log.read_text(errors="replace")
                      for log in (run_dir / "sites").glob("site-*/site.log")):
            assert process.poll() is None and time.time() < deadline, output.text()[-3000:]
            time.sleep(0.05)
        family = _family(process)
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        stopped_in = time.time() - signalled
    finally:
        for member in _alive(_family(process) or family):
            os.killpg(os.getpgid(member.pid), signal.SIGKILL)  # only if the test failed: leave nothing behind
    output.reader.join(timeout=10)
    print(f"SIGTERM to exit: {stopped_in:.1f}s")

    assert code == 130, output.text()[-3000:]
    assert "finfed: interrupted after round 1; resume with finfed simulate --resume" in output.text()
    assert stopped_in < 30
    status = read_status(run_dir)
    assert status["state"] == "interrupted" and status["last_completed_round"] == 1
    assert "recorded_by" not in status  # the ServerApp recorded it, not the CLI's fallback
    decided = json.loads((run_dir / ".stop").read_text())["requested_at"]
    assert signalled <= decided < signalled + 2
    spent = _ledger_entries(run_dir)
    assert all(e["time"] < decided for e in spent)  # no site spent epsilon after the stop was decided
    # Both sites trained round 1; round 2 was cut short (a site that finished it before the stop keeps
    # that spend in its ledger: it happened; the sites here train one at a time, so at most one did).
    assert sorted(e["round"] for e in spent if e["round"] == 1) == [1, 1] and len(spent) <= 3
    psutil.wait_procs(family, timeout=10)
    assert not _alive(family), [p.cmdline() for p in _alive(family)]

    assert main(["simulate", "--resume", str(run_dir)]) == 0
    status = read_status(run_dir)
    assert status["state"] == "complete" and status["resumed_from_rounds"] == [1]
    resumed = [e for e in _ledger_entries(run_dir) if e["time"] > decided]
    assert sorted(e["round"] for e in resumed) == [2, 2, 3, 3]


def _ledger_entries(run_dir: Path) -> list[dict]:
    return [e for ledger in (run_dir / "ledgers").glob("*.json") for e in json.loads(ledger.read_text())["entries"]]


@pytest.mark.slow
def test_simulate_of_a_run_every_site_refuses_exits_non_zero_without_a_model(tiny_simulate, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert tiny_simulate("privacy.site_budget_epsilon=0.05", "privacy.membership_audit=false") == 1
    err = capsys.readouterr().err
    assert "Run ended WITHOUT TRAINING: every site refused round 1" in err and "Run complete" not in err
    status = read_status(run_dir)
    assert status["state"] == "budget-exhausted" and status["trained_rounds"] == 0
    assert not (run_dir / "model").exists()
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 2
    assert "has no model" in capsys.readouterr().err


def test_a_round_whose_sampled_sites_all_refuse_does_not_end_the_run_while_other_sites_may_train(tiny_config):
    """Rounds that ask only some sites (`fraction_train`, client-level Poisson sampling) end the run
    only once every configured site has refused: an unasked site may still have budget."""
    from finfed.coordinator.run import FederatedRun

    run = FederatedRun(tiny_config("federation.num_sites=3"))
    run.record_training(1, [], [], refusals=[{"site-id": 0, "refused": 1}])
    assert not run.exhausted
    run.record_training(2, [], [], refusals=[{"site-id": 1, "refused": 1}, {"site-id": 0, "refused": 1}])
    assert not run.exhausted
    run.record_training(3, [], [], refusals=[{"site-id": 2, "refused": 1}])
    assert run.exhausted and run.exhausted_round == 3
