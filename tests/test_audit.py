"""Each site's outbound audit log: every message it sent, what left in it, epsilon after the round."""

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from inprocess_grid import InProcessGrid, serve

from finfed.errors import PrivacyError
from finfed.flower_app.client import app as client_app
from finfed.models.adapters import exchanged_state
from finfed.runs.outputs import read_metrics, read_privacy
from finfed.runtime.app_log import parse_app_record
from finfed.site.audit import audit_mod
from finfed.tasks import get_task

SECAGG_STAGES = ["setup", "share_keys", "collect_masked_vectors", "unmask"]


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_each_site_logs_every_message_and_what_left(tiny_config, tmp_path, secure, capsys):
    config = tiny_config("federation.rounds=1", "privacy.membership_audit=false",
                         f"federation.secure_aggregation={str(secure).lower()}")
    logs = [tmp_path / f"audit-{site}.jsonl" for site in (0, 1)]
    serve(config, InProcessGrid(client_app.app, config, [{"audit-log": str(path)} for path in logs]))
    model = get_task(config, ["negative", "neutral", "positive"]).build_model()
    shapes = {name: list(tensor.shape) for name, tensor in exchanged_state(model).items()}
    sites = {s["site"]: s for s in read_metrics(config.resolved_run_dir)[1]["sites"]}
    privacy = read_privacy(config.resolved_run_dir)["sites"]
    progress = [r.getMessage() for r in map(parse_app_record, capsys.readouterr().out.splitlines()) if r]
    assert "sites: 0 = institution-0, 1 = institution-1" in progress  # the progress lines name the sites
    assert any(line.startswith("round 1: ") and "(site " in line and "(institution-" in line for line in progress)

    for site, path in enumerate(logs):
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        assert all(e["round"] == 1 and not e["has_error"] for e in entries)
        assert all(e["node_config"]["audit-log"] == str(path) for e in entries)
        train = [e for e in entries if e["message_type"] == "train"]
        assert [e["secagg_stage"] for e in train] == (SECAGG_STAGES if secure else [None])
        update = train[2] if secure else train[0]
        names = [t["name"] for t in update["sent_tensors"]]
        assert names == ([f"masked:{n}" for n in ["weight", *shapes]] if secure else list(shapes))
        for tensor in update["sent_tensors"][1 if secure else 0:]:
            assert tensor["shape"] == shapes[tensor["name"].removeprefix("masked:")]
            assert tensor["masked"] is secure
        assert update["epsilon"] == pytest.approx(sites[site]["epsilon"]) and update["epsilon"] > 0
        assert update["bytes_total"] >= sum(t["bytes"] for t in update["sent_tensors"]) > 0
        for entry in train:
            for record in entry["records"].values():
                if record["kind"] == "arrays":  # under SecAgg+ the plain tensors are emptied before leaving
                    assert (record["tensors"] == []) is secure
        if secure:  # key material is logged by size, never by value
            assert train[0]["records"]["secaggplus_configs"]["values"]["pk1"]["type"] == "bytes"
            assert train[1]["records"]["secaggplus_configs"]["values"]["ctxts"]["type"] == "bytes[]"
        evaluate = [e for e in entries if e["message_type"] == "evaluate"]
        assert len(evaluate) == 1 and evaluate[0]["sent_tensors"] == [] and evaluate[0]["epsilon"] is None
        # metrics left: their keys and 8-byte numbers are counted (finfed/site/audit.py)
        values = evaluate[0]["records"]["metrics"]["values"]
        # ... and the one text a reply carries: the site's name (its partition column's value), logged as sent
        name = f"institution-{site}"
        assert evaluate[0]["records"]["site"]["values"] == {"site-name": name}
        assert evaluate[0]["bytes_total"] == sum(len(k) + 8 for k in values) + len("site-name") + len(name)
        assert sites[site]["site-name"] == name  # also under SecAgg+, where it travels among the FitRes metrics
        assert privacy[str(site)]["site-name"] == name
        assert all(e["run_id"] == 42 for e in entries)
        opted_in = " (with train-loss: the site opted in)"  # simulation's default, privacy.share_train_loss
        assert [e["allowed_by"] for e in train] == (
            [f"train/secagg+:{s}" + (opted_in if s == "collect_masked_vectors" else "") for s in SECAGG_STAGES]
            if secure else ["train" + opted_in])
        # simulation's default, privacy.share_label_shares: each label's predicted minus true validation share
        assert evaluate[0]["allowed_by"] == "evaluate (with label share gaps: the site opted in)"
        assert {k for k in values if k.startswith("eval-share-gap-")} == {"eval-share-gap-0", "eval-share-gap-1",
                                                                           "eval-share-gap-2"}


def test_label_share_gaps_leave_only_the_sites_that_opted_in(tiny_config, tmp_path):
    """Site 0 says no in its own node config; site 1 follows the simulated run's default (on). The run goes on with
    both sites' evaluations, and only site 1's carry the gaps (and its audit log names the opt-in)."""
    config = tiny_config("federation.rounds=1", "privacy.membership_audit=false")
    logs = [tmp_path / f"audit-{site}.jsonl" for site in (0, 1)]
    nodes = [{"audit-log": str(logs[0]), "share-label-shares": False}, {"audit-log": str(logs[1])}]
    serve(config, InProcessGrid(client_app.app, config, nodes))
    evaluations = {e["site"]: e for e in read_metrics(config.resolved_run_dir)[1]["evaluation"]}
    assert set(evaluations) == {0, 1} and all("eval-accuracy" in e for e in evaluations.values())
    gaps = {site: sorted(k for k in e if k.startswith("eval-share-gap-")) for site, e in evaluations.items()}
    assert gaps == {0: [], 1: ["eval-share-gap-0", "eval-share-gap-1", "eval-share-gap-2"]}
    allowed = [next(json.loads(line)["allowed_by"] for line in path.read_text().splitlines()
                    if json.loads(line)["message_type"] == "evaluate") for path in logs]
    assert allowed == ["evaluate", "evaluate (with label share gaps: the site opted in)"]


@pytest.fixture
def message(monkeypatch):
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    content = RecordDict({"config": ConfigRecord({"server-round": 3})})
    return Message(content=content, dst_node_id=7, message_type="train")


def test_a_message_that_fails_at_the_site_is_logged_with_the_reason_that_leaves(message, tmp_path):
    path = tmp_path / "audit.jsonl"
    context = Context(run_id=1, node_id=7, node_config={"audit-log": str(path), "data-path": "/secret/data.csv"},
                      state=RecordDict(), run_config={})

    def refuse(message, context):
        raise PrivacyError("site 0: ledger /secret/ledger.json unreadable")

    reply = audit_mod(message, context, refuse)  # an error reply, never the exception's text
    entry = json.loads(path.read_text())
    assert reply.has_error() and entry["has_error"] and entry["round"] == 3 and entry["run_id"] == 1
    assert entry["error"] == reply.error.reason and entry["error"].startswith("privacy refusal: ")
    assert "secret" not in path.read_text() and entry["bytes_total"] == len(reply.error.reason)
    assert entry["sent_tensors"] == [] and "data-path" not in entry["node_config"]


def test_the_log_is_only_ever_appended_to(message, tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"earlier": "entry"}\n')
    monkeypatch.setenv("FINFED_AUDIT_LOG", str(path))
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    for _ in range(2):
        audit_mod(message, context, lambda m, c: Message(content=RecordDict(), reply_to=m))
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": "entry"}' and len(lines) == 3
    assert all(json.loads(line)["round"] == 3 for line in lines[1:])
    new = tmp_path / "new.jsonl"
    monkeypatch.setenv("FINFED_AUDIT_LOG", str(new))
    audit_mod(message, context, lambda m, c: Message(content=RecordDict(), reply_to=m))
    assert new.stat().st_mode & 0o777 == 0o600  # a site's log is for its own security team
