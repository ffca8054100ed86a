"""The site privacy ledger: spend composes per dataset name, and no edit or deletion goes unnoticed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from finfed.cli.main import main
from finfed.errors import LedgerIntegrityError, PrivacyError
from finfed.models.adapters import exchanged_state
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.ledger import PrivacyLedger, new_entry
from finfed.privacy.ledger_chain import HEAD_FILE, ChainHead, record_hash
from finfed.reporting.ledger_report import ledger_summary
from finfed.reporting.render import render_ledger
from finfed.site.rounds import _site_context, site_context, train_round

DATASET = "loans.csv"
NOISE = [1.1, 1.1, 0.9]


def _initial(site):
    return {k: v.numpy() for k, v in exchanged_state(site.task.build_model()).items()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def kept(tmp_path):
    """A site folder and a ledger of three DP rounds, written through the ledger's own API."""
    folder, path = tmp_path / "site", tmp_path / "site" / "privacy-ledger.json"
    ledger = PrivacyLedger(path, head_dir=folder)
    accountant = SiteAccountant("rdp")
    for server_round, noise in enumerate(NOISE, start=1):
        accountant.record(noise, 0.05, 40)
        ledger.append(new_entry(run_id="run-a", server_round=server_round, fingerprint="f" * 64,
                                accountant="rdp", noise_multiplier=noise, sample_rate=0.05, steps=40,
                                max_grad_norm=1.0, delta=1e-5, epsilon_after=accountant.epsilon(1e-5),
                                dataset=DATASET, budget_epsilon=20.0))
    return folder, path, accountant.epsilon(1e-5)


def _rewrite(path: Path, change) -> None:
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload, indent=1))


def _rehash(payload: dict) -> None:
    """What a careful editor does after an edit: recompute every hash and link, so only the head can tell."""
    records = sorted([*payload["events"], *payload["entries"]], key=lambda record: record["seq"])
    prev = "0" * 64
    for record in records:
        record["prev"] = prev
        record["hash"] = prev = record_hash(record)


def _triple_noise(payload):
    payload["entries"][1]["noise_multiplier"] *= 3


def _lower_epsilon(payload):
    payload["entries"][2]["epsilon_after"] = 0.5


def _delete_middle(payload):
    del payload["entries"][1]


def _delete_last(payload):
    del payload["entries"][-1]


def _reorder(payload):
    payload["entries"][0], payload["entries"][1] = payload["entries"][1], payload["entries"][0]


def _edit_first_noise(payload):
    payload["entries"][0]["noise_multiplier"] *= 3


def _triple_noise_and_rehash(payload):
    _triple_noise(payload)
    _rehash(payload)


@pytest.mark.parametrize("edit, message", [
    (_triple_noise, r"record 2 was edited after it was written"),
    (_lower_epsilon, r"record 3 was edited after it was written"),
    (_delete_middle, r"record 2 is missing .*a record was deleted"),
    (_delete_last, r"holds 3 records but its chain head in .*ledger-head.json records 4: records were deleted"),
    (_reorder, r"records are out of order"),
    (_triple_noise_and_rehash, r"does not match its chain head in .*ledger-head.json"),
])
def test_every_edit_of_a_kept_ledger_is_refused(kept, edit, message):
    folder, path, _ = kept
    _rewrite(path, edit)
    with pytest.raises(LedgerIntegrityError, match=message) as refused:
        PrivacyLedger(path, head_dir=folder)
    assert str(path) in str(refused.value)  # for the site; its `public_reason` names no path
    # `finfed report --ledger` refuses it too, and says the integrity check failed.
    assert main(["report", "--ledger", str(path)]) != 0


def test_a_deleted_ledger_whose_head_exists_is_refused(kept, capsys):
    folder, path, _ = kept
    path.unlink()
    with pytest.raises(PrivacyError, match=r"privacy-ledger.json is missing, but its chain head in .* records 4"):
        PrivacyLedger(path, head_dir=folder)
    assert main(["report", "--ledger", str(path)]) != 0
    assert "integrity check FAILED" in capsys.readouterr().err


def test_a_site_refuses_to_train_on_an_edited_ledger(tiny_config, tmp_path):
    config = tiny_config("privacy.site_budget_epsilon=30", "privacy.accountant=rdp")
    node = {"partition-id": 0, "ledger-path": str(tmp_path / "ledger.json"), "site-dir": str(tmp_path / "site")}
    site = site_context(config, node)
    train_round(site, _initial(site), server_round=1, accountant_state=None, run_id="run-a")
    _rewrite(tmp_path / "ledger.json", _edit_first_noise)
    before = (tmp_path / "ledger.json").read_bytes()
    with pytest.raises(PrivacyError, match="edited after it was written"):
        train_round(site, _initial(site), server_round=2, accountant_state=None, run_id="run-a")
    assert (tmp_path / "ledger.json").read_bytes() == before  # nothing appended, nothing reset


def test_report_recomputes_epsilon_and_shows_integrity_and_budget(kept, capsys):
    folder, path, epsilon = kept
    assert main(["report", "--ledger", str(path)]) == 0  # the head is found beside the ledger
    out = capsys.readouterr().out
    assert "integrity check: passed; chain verified (4 records); head matches" in out
    assert f"epsilon {epsilon:.3f} (recomputed" in out and "rdp, delta 1e-05" in out
    assert f"budget 20, remaining {20 - epsilon:.3f}" in out and "WARNING" not in out
    summary = ledger_summary(path)["datasets"][DATASET]
    assert summary["rounds"] == 3 and summary["runs"] == ["run-a"] and summary["stored_differs"] == []


def test_a_stored_epsilon_that_disagrees_with_its_parameters_is_flagged_not_trusted(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json", head_dir=tmp_path)
    ledger.append(new_entry(run_id="r", server_round=1, fingerprint="f", accountant="rdp", noise_multiplier=0.8,
                            sample_rate=0.1, steps=50, max_grad_norm=1.0, delta=1e-5, epsilon_after=0.01,
                            dataset=DATASET))
    summary = ledger_summary(tmp_path / "ledger.json")
    data = summary["datasets"][DATASET]
    recomputed = SiteAccountant("rdp")
    recomputed.record(0.8, 0.1, 50)
    assert data["epsilon"] == pytest.approx(recomputed.epsilon(1e-5)) and data["epsilon"] > 1
    assert data["stored_differs"] == [{"run_id": "r", "round": 1, "stored": 0.01,
                                       "recomputed": pytest.approx(data["epsilon"])}]
    assert "WARNING: 1 stored figure(s) differ" in render_ledger(summary)
    assert PrivacyLedger(tmp_path / "ledger.json").accountant(DATASET, "rdp").epsilon(1e-5) == data["epsilon"]


def test_a_changed_dataset_keeps_composing_with_a_warning_in_the_site_log(tiny_config, tmp_path, capsys):
    config = tiny_config("privacy.site_budget_epsilon=30", "privacy.accountant=rdp")
    data = tmp_path / "bank" / DATASET
    data.parent.mkdir()
    rows = site_context(config, {"partition-id": 0}).data.train[["text", "label"]]
    rows.to_csv(data, index=False)
    node = {"site-id": 0, "data-path": str(data), "ledger-path": str(tmp_path / "bank" / "ledger.json"),
            "site-dir": str(tmp_path / "bank")}
    site = site_context(config, node)
    first = train_round(site, _initial(site), server_round=1, accountant_state=None, run_id="run-a")

    one_more = rows.iloc[:1].assign(text="one more loan application")
    pd.concat([rows, one_more]).to_csv(data, index=False)  # one record added
    _site_context.cache_clear()  # a new process would read the file afresh
    changed = site_context(config, node)
    assert changed.fingerprint != site.fingerprint and changed.policy.dataset == DATASET
    second = train_round(changed, _initial(changed), server_round=1, accountant_state=None, run_id="run-b")

    ledger = PrivacyLedger(tmp_path / "bank" / "ledger.json", head_dir=tmp_path / "bank")
    accountant = ledger.accountant(DATASET, "rdp")
    assert second.metrics["epsilon"] > first.metrics["epsilon"]  # continued, not reset
    assert second.metrics["epsilon"] == pytest.approx(accountant.epsilon(1e-5))
    assert [e.dataset_fingerprint for e in ledger.entries] == [site.fingerprint, changed.fingerprint]
    log = (tmp_path / "bank" / "site.log").read_text()
    assert f"dataset '{DATASET}' changed since its last recorded round" in log
    captured = capsys.readouterr()
    assert "changed since" not in captured.out + captured.err  # the site's log only
    assert "its content changed 1 time(s); spend kept composing" in render_ledger(
        ledger_summary(tmp_path / "bank" / "ledger.json"))


@pytest.fixture
def open_umask():
    """A umask that would leave new files world-readable: the ledger must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_a_fresh_site_starts_normally_and_writes_ledger_and_head_0600(tiny_config, tmp_path, open_umask):
    config = tiny_config(f"privacy.ledger_dir={tmp_path / 'ledgers'}", "privacy.site_budget_epsilon=30",
                         "privacy.accountant=rdp")
    site = site_context(config, {"partition-id": 1})
    assert site.policy.dataset == "synthetic/site-1"
    update = train_round(site, _initial(site), server_round=1, accountant_state=None, run_id="run-a")
    ledger_file = tmp_path / "ledgers" / "site-1.json"
    head_file = Path(site.policy.folder) / HEAD_FILE
    assert _mode(ledger_file) == 0o600 and _mode(head_file) == 0o600
    assert ChainHead(site.policy.folder).get(ledger_file)["records"] == 2  # genesis and round 1
    payload = json.loads(ledger_file.read_text())
    assert [e["kind"] for e in payload["events"]] == ["genesis"] and [e["round"] for e in payload["entries"]] == [1]
    assert update.metrics["epsilon"] == pytest.approx(
        PrivacyLedger(ledger_file, head_dir=site.policy.folder).accountant("synthetic/site-1", "rdp").epsilon(1e-5))


def test_a_rewrite_keeps_a_widened_ledger_private(kept):
    folder, path, _ = kept
    path.chmod(0o644)
    ledger = PrivacyLedger(path, head_dir=folder)
    ledger.start_new(DATASET, "new cohort")
    assert _mode(path) == 0o600 and _mode(folder / HEAD_FILE) == 0o600


def test_an_explicit_new_ledger_is_recorded_and_reported(kept, capsys):
    folder, path, epsilon = kept
    code = main(["ledger", "new", str(path), "--reason", "records replaced by the 2027 cohort"])
    assert code == 0 and "New ledger started for dataset 'loans.csv'" in capsys.readouterr().out
    ledger = PrivacyLedger(path, head_dir=folder)
    assert ledger.accountant(DATASET, "rdp").epsilon(1e-5) == 0.0  # a fresh start for this dataset ...
    assert len(ledger.entries) == 3  # ... whose history stays on record
    assert [e["kind"] for e in ledger.events] == ["genesis", "new-ledger"]
    assert main(["report", "--ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert " UTC (records replaced by the 2027 cohort): the 3 round(s) before it (epsilon " \
           f"{epsilon:.3f}) stay recorded but no longer compose" in out and "0 round(s)" in out


def test_a_new_ledger_needs_a_reason(kept):
    folder, path, _ = kept
    with pytest.raises(PrivacyError, match="a reason"):
        PrivacyLedger(path, head_dir=folder).start_new(DATASET, " ")
    with pytest.raises(SystemExit):
        main(["ledger", "new", str(path)])  # --reason is required


def test_a_lost_head_is_recreated_and_noted_in_the_ledger(kept):
    folder, path, _ = kept
    (folder / HEAD_FILE).unlink()
    ledger = PrivacyLedger(path, head_dir=folder)
    assert ledger.head_state == "missing"
    ledger.append(new_entry(run_id="run-b", server_round=1, fingerprint="f" * 64, accountant="rdp",
                            noise_multiplier=1.0, sample_rate=0.05, steps=40, max_grad_norm=1.0, delta=1e-5,
                            epsilon_after=1.0, dataset=DATASET))
    assert [e["kind"] for e in PrivacyLedger(path, head_dir=folder).events] == ["genesis", "head-created"]
    assert "this ledger's chain head was missing; a new head was started at" in render_ledger(ledger_summary(path))


def test_a_ledger_one_write_ahead_of_its_head_is_accepted(kept, monkeypatch):
    folder, path, _ = kept
    ledger = PrivacyLedger(path, head_dir=folder)

    def crash(*args, **kwargs):
        raise OSError("power lost between the two writes")

    monkeypatch.setattr(ChainHead, "put", crash)
    with pytest.raises(OSError):
        ledger.append(new_entry(run_id="run-b", server_round=1, fingerprint="f" * 64, accountant="rdp",
                                noise_multiplier=1.0, sample_rate=0.05, steps=40, max_grad_norm=1.0,
                                delta=1e-5, epsilon_after=1.0, dataset=DATASET))
    monkeypatch.undo()
    reopened = PrivacyLedger(path, head_dir=folder)
    assert reopened.head_state == "ahead" and len(reopened.entries) == 4  # the extra round still counts


def test_a_version_1_ledger_is_chained_and_its_spend_kept(tmp_path):
    path = tmp_path / "ledger.json"
    entry = dict(run_id="old", round=1, dataset_fingerprint="x", accountant="rdp", noise_multiplier=1.0,
                 sample_rate=0.1, steps=30, max_grad_norm=1.0, delta=1e-5, epsilon_after=2.0, time=0.0)
    path.write_text(json.dumps({"version": 1, "entries": [entry]}))
    ledger = PrivacyLedger(path, head_dir=tmp_path)
    spent = ledger.accountant(DATASET, "rdp").epsilon(1e-5)
    assert spent > 0  # a version-1 ledger's spend counts for the site's dataset
    ledger.append(new_entry(run_id="new", server_round=1, fingerprint="y", accountant="rdp", noise_multiplier=1.0,
                            sample_rate=0.1, steps=30, max_grad_norm=1.0, delta=1e-5, epsilon_after=3.0,
                            dataset=DATASET))
    chained = PrivacyLedger(path, head_dir=tmp_path)
    assert [e.dataset for e in chained.entries] == [DATASET, DATASET]
    assert chained.events[0]["converted_from"] == 1
    assert chained.accountant(DATASET, "rdp").epsilon(1e-5) > spent


def test_report_finds_the_head_of_a_simulated_site_by_itself(tmp_path):
    """`finfed simulate` keeps RUN/ledgers/site-<id>.json and its head in RUN/sites/site-<id>/."""
    path, folder = tmp_path / "run" / "ledgers" / "site-0.json", tmp_path / "run" / "sites" / "site-0"
    PrivacyLedger(path, head_dir=folder).append(new_entry(
        run_id="r", server_round=1, fingerprint="f", accountant="rdp", noise_multiplier=1.0, sample_rate=0.1,
        steps=10, max_grad_norm=1.0, delta=1e-5, epsilon_after=1.0, dataset="synthetic/site-0"))
    assert ledger_summary(path)["integrity"]["head"] == f"matches ({folder / HEAD_FILE})"
    (folder / HEAD_FILE).write_text((folder / HEAD_FILE).read_text().replace('"records": 2', '"records": 3'))
    with pytest.raises(LedgerIntegrityError, match="records were deleted"):
        ledger_summary(path)


def test_report_on_a_missing_ledger_exits_non_zero(tmp_path, capsys):
    assert main(["report", "--ledger", str(tmp_path / "nowhere.json")]) != 0
    assert "no privacy ledger at" in capsys.readouterr().err


def test_site_toml_names_the_dataset_and_the_check_verifies_the_ledger(tmp_path):
    from deployment_harness import fill_site, make_consortium, site_data

    from finfed.deploy.site_config import load_site_config
    from finfed.errors import ConfigError

    consortium = make_consortium(tmp_path)
    fill_site(consortium, consortium.sites[0], site_data(tmp_path, 3, rows_per_site=40)[0])
    folder = consortium.site_dir("bank-a")
    config = load_site_config(folder)
    assert "dataset-name" not in config.node_config()  # default: the data file's name, at the site
    toml = folder / "site.toml"
    toml.write_text(toml.read_text().replace("[data]\n", '[data]\nname = "retail-loans"\n'))
    assert load_site_config(folder).node_config()["dataset-name"] == "retail-loans"

    ledger = PrivacyLedger(config.ledger_path, head_dir=folder)
    ledger.append(new_entry(run_id="r", server_round=1, fingerprint="f", accountant="rdp", noise_multiplier=1.0,
                            sample_rate=0.1, steps=10, max_grad_norm=1.0, delta=1e-5, epsilon_after=1.0,
                            dataset="retail-loans"))
    config.ledger_path.unlink()
    with pytest.raises(ConfigError, match=r"\[privacy\] ledger_path: privacy ledger .* is missing, but its chain"):
        load_site_config(folder)


def test_overwriting_a_simulated_run_clears_its_ledgers_with_their_heads(tmp_path):
    from finfed.runs.outputs import prepare_run_dir

    run = tmp_path / "run"
    path, folder = run / "ledgers" / "site-0.json", run / "sites" / "site-0"
    PrivacyLedger(path, head_dir=folder).start_new("synthetic/site-0", "first run")
    prepare_run_dir(run, overwrite=True)
    assert PrivacyLedger(path, head_dir=folder).head_state == "new"  # not "deleted ledger, head exists"
