"""Privacy ledger and site-owned budgets: spend composes across runs and is never overspent."""

import json
import os

import pytest
from inprocess_grid import serve

from finfed.cli.main import main
from finfed.errors import BudgetExhausted, PrivacyError
from finfed.models.adapters import exchanged_state
from finfed.privacy.ledger import PrivacyLedger
from finfed.reporting.ledger_report import ledger_summary
from finfed.runs.outputs import read_metrics, read_privacy, read_status
from finfed.site.rounds import site_context, train_round


def _initial(site):
    return {k: v.numpy() for k, v in exchanged_state(site.task.build_model()).items()}


def test_ledger_composes_spend_across_runs(tiny_config, tmp_path):
    config = tiny_config(f"privacy.ledger_dir={tmp_path / 'ledgers'}", "privacy.site_budget_epsilon=30",
                         "privacy.accountant=rdp")
    site = site_context(config, {"partition-id": 0})
    first = [train_round(site, _initial(site), server_round=r, accountant_state=None, run_id="run-a")
             for r in (1, 2)]
    second = train_round(site, _initial(site), server_round=1, accountant_state=None, run_id="run-b")
    assert first[0].metrics["epsilon"] < first[1].metrics["epsilon"] < second.metrics["epsilon"]
    ledger = PrivacyLedger(tmp_path / "ledgers" / "site-0.json")
    assert [(e.run_id, e.round) for e in ledger.entries] == [("run-a", 1), ("run-a", 2), ("run-b", 1)]
    assert ledger.entries[-1].epsilon_after == pytest.approx(second.metrics["epsilon"])
    assert all(e.dataset_fingerprint == site.fingerprint for e in ledger.entries)
    # A different dataset at the same site starts from zero spend.
    assert ledger.accountant("another-dataset", "rdp").epsilon(1e-5) == 0.0

    assert all(e.dataset == "synthetic/site-0" for e in ledger.entries)  # keyed by the site's dataset name

    summary = ledger_summary(tmp_path / "ledgers" / "site-0.json")["datasets"]["synthetic/site-0"]
    assert summary["runs"] == ["run-a", "run-b"] and summary["rounds"] == 3
    assert summary["epsilon"] == pytest.approx(second.metrics["epsilon"])
    assert summary["epsilon_stored"] == pytest.approx(summary["epsilon"], rel=1e-6)
    assert main(["report", "--ledger", str(tmp_path / "ledgers" / "site-0.json")]) == 0


def test_ledger_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path)
    from finfed.privacy.ledger import new_entry
    entry = dict(run_id="r", fingerprint="f", accountant="rdp", noise_multiplier=1.0, sample_rate=0.1,
                 steps=5, max_grad_norm=1.0, delta=1e-5, epsilon_after=1.0)
    ledger.append(new_entry(server_round=1, **entry))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk pulled mid-write")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ledger.append(new_entry(server_round=2, **entry))
    assert path.read_bytes() == before  # the old ledger is whole
    assert len(PrivacyLedger(path).entries) == 1


def test_corrupt_ledger_is_refused_not_reset(tiny_config, tmp_path):
    ledgers = tmp_path / "ledgers"
    ledgers.mkdir()
    (ledgers / "site-0.json").write_text('{"version": 1, "entries": [{"run_id": ')
    site = site_context(tiny_config(f"privacy.ledger_dir={ledgers}"), {"partition-id": 0})
    with pytest.raises(PrivacyError, match=r"site-0.json is unreadable.*erase this site's privacy history"):
        train_round(site, _initial(site), server_round=1, accountant_state=None)
    assert (ledgers / "site-0.json").read_text() == '{"version": 1, "entries": [{"run_id": '


@pytest.mark.parametrize("server_asks", [
    "privacy.target_epsilon=50",      # a larger epsilon, hence less noise
    "privacy.noise_multiplier=0.05",  # a smaller noise outright
    "privacy.target_delta=0.01",      # a weaker delta
])
def test_server_cannot_make_a_site_overspend(tiny_config, tmp_path, server_asks):
    ledger = tmp_path / "site.json"
    site = site_context(tiny_config(server_asks),
                        {"partition-id": 0, "budget-epsilon": 2.0, "budget-delta": 1e-5,
                         "ledger-path": str(ledger)})
    with pytest.raises(BudgetExhausted):
        train_round(site, _initial(site), server_round=1, accountant_state=None)
    assert not ledger.exists()  # nothing was trained, nothing was spent


MID_RUN_REFUSAL = ("federation.rounds=3", "train.learning_rate=0.005", "privacy.site_budget_epsilon=6.5")


def _check_refused_mid_run(run_dir, ledgers) -> None:
    status = read_status(run_dir)
    assert status["state"] == "budget-exhausted" and status["budget_exhausted_at_round"] == 2
    assert status["trained_rounds"] == 1 and status["model_round"] == 1 and (run_dir / "model").is_dir()
    rounds = read_metrics(run_dir)
    assert len(rounds[1]["sites"]) == 2 and rounds[1]["refusals"] == []
    assert rounds[2]["refusals"] == [0, 1] and rounds[2]["sites"] == []
    privacy = read_privacy(run_dir)
    for site_id in ("0", "1"):
        assert privacy["sites"][site_id]["epsilon"] <= 6.5
        assert privacy["sites"][site_id]["refused_rounds"] == [2]
        ledger = json.loads((ledgers / f"site-{site_id}.json").read_text())
        assert len(ledger["entries"]) == 1
    assert "Refused to train" in (run_dir / "report.md").read_text()


def test_sites_refuse_mid_run_and_the_run_ends_cleanly_in_process(tiny_config, tmp_path):
    """finfed's ServerApp and ClientApps in this process (tests/inprocess_grid.py): the fast tier's cover."""
    config = tiny_config(*MID_RUN_REFUSAL, f"privacy.ledger_dir={tmp_path / 'ledgers'}")
    serve(config)
    _check_refused_mid_run(config.resolved_run_dir, tmp_path / "ledgers")


@pytest.mark.slow  # a whole Flower simulation (~40 s on 2 cores)
def test_sites_refuse_mid_run_and_the_run_ends_cleanly(tiny_simulate, tmp_path):
    code = tiny_simulate(*MID_RUN_REFUSAL, f"privacy.ledger_dir={tmp_path / 'ledgers'}")
    assert code == 0
    _check_refused_mid_run(tmp_path / "run", tmp_path / "ledgers")
