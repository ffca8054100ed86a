"""SecAgg+ as a configuration switch: the same apps, and the coordinator sees only the sum."""

import io
import json

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from inprocess_grid import InProcessGrid, message_round, serve

from finfed.errors import ConfigError
from finfed.flower_app.client import app as client_app
from finfed.models.adapters import exchanged_state
from finfed.runs.checkpoint import read_checkpoint
from finfed.runs.outputs import read_metrics, read_privacy, read_status
from finfed.site.audit import audit_mod
from finfed.site.secure import secure_aggregation_mod
from finfed.tasks import get_task

SECURE = "federation.secure_aggregation=true"


@pytest.mark.parametrize("overrides, message", [
    ([SECURE, "federation.num_sites=1"], "needs at least 2 sites per round"),
    ([SECURE, "federation.num_sites=3", "federation.min_sites=1"], "needs at least 2 sites per round"),
    ([SECURE, "federation.secagg_num_shares=2"], "`federation.secagg_num_shares` must be a share in (0, 1]"),
    ([SECURE, "federation.secagg_reconstruction_threshold=1.5"], "must be a share in (0, 1] or a whole count"),
    ([SECURE, "federation.secagg_num_shares=3", "federation.secagg_reconstruction_threshold=3"],
     "must be below `federation.secagg_num_shares` (3)"),
    ([SECURE, "client_dp.mode=fixed"], "`client_dp.mode` must be 'off' with `federation.secure_aggregation`"),
])
def test_secure_aggregation_settings_are_checked_at_load(tiny_config, overrides, message):
    with pytest.raises(ConfigError) as caught:
        tiny_config(*overrides)
    assert message in str(caught.value)


def _train_replies(grid):
    return [m for m in grid.received if m.metadata.message_type == "train" and not m.has_error()]


def test_secagg_sum_equals_plain_fedavg_and_no_site_update_reaches_the_coordinator(tiny_config, tmp_path):
    # privacy.reproducible: both runs must draw the same DP sampling and noise for their sums to agree
    common = ["federation.num_sites=3", "federation.rounds=1", "privacy.membership_audit=false",
              "privacy.reproducible=true"]
    plain_grid = serve(tiny_config(*common, f"run_dir={tmp_path / 'plain'}"))
    secure_grid = serve(tiny_config(*common, SECURE, f"run_dir={tmp_path / 'secure'}"))

    # Plain FedAvg: each site's own update reached the coordinator; SecAgg+: only their weighted sum.
    updates = {int(m.content["metrics"]["site-id"]): (m.content["arrays"].to_numpy_ndarrays(),
                                                     m.content["metrics"]["num-examples"])
               for m in _train_replies(plain_grid)}
    assert sorted(updates) == [0, 1, 2]
    plain = read_checkpoint(tmp_path / "plain").arrays
    secure = read_checkpoint(tmp_path / "secure").arrays
    assert list(secure) == list(plain)
    total = sum(weight for _, weight in updates.values())
    by_hand = [sum(arrays[i] * weight for arrays, weight in updates.values()) / total
               for i in range(len(plain))]
    assert all(np.allclose(mine, theirs, atol=1e-6) for mine, theirs in zip(by_hand, plain.values()))
    # Quantization: each site rounds (weight / max_weight) * value to a step of 2 * 8 / 2**22.
    tolerance = 3 * (2 * 8.0 / 2**22) / (total / 10000.0)
    differences = [np.max(np.abs(secure[name] - plain[name])) for name in plain]
    assert max(differences) < tolerance
    lone = updates[0][0]  # a single site's update is far from the sum: the check can fail
    assert max(np.max(np.abs(a - b)) for a, b in zip(lone, plain.values())) > 20 * tolerance

    replies = _train_replies(secure_grid)
    assert len(replies) == 4 * 3  # setup, share keys, masked vectors, unmask: from each of 3 sites
    blobs = []
    for reply in replies:
        assert all(len(record) == 0 for record in reply.content.values() if isinstance(record, ArrayRecord))
        for record in reply.content.config_records.values():
            for value in record.values():
                blobs += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, bytes)]
    assert not any(tensor.tobytes() in blob for arrays, _ in updates.values() for tensor in arrays for blob in blobs)
    masked = [np.load(io.BytesIO(blob)) for reply in replies
              for blob in reply.content[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS, [])]
    assert len(masked) == 3 * (1 + len(plain))  # per site: its masked weight, then one per tensor
    # Unmasked, a quantized value lies in [0, 2**22]; masked, it is spread over [0, 2**32).
    values = np.concatenate([m.ravel() for m in masked if m.size > 1])
    assert np.mean(values <= 2**22) < 0.05

    # What the coordinator does see per site, in plain text: the numbers it records.
    round_1 = read_metrics(tmp_path / "secure")[1]
    assert [s["site"] for s in round_1["sites"]] == [0, 1, 2]
    plain_sites = {s["site"]: s for s in read_metrics(tmp_path / "plain")[1]["sites"]}
    for site in round_1["sites"]:
        assert site["epsilon"] == pytest.approx(plain_sites[site["site"]]["epsilon"])
        assert site["num-examples"] == plain_sites[site["site"]]["num-examples"]


@pytest.mark.slow  # a whole Flower simulation; CI runs it
def test_dp_secagg_simulation_completes_and_sites_log_masked_updates(tiny_config, tiny_simulate, tmp_path,
                                                                    monkeypatch):
    audit = tmp_path / "audit.jsonl"
    monkeypatch.setenv("FINFED_AUDIT_LOG", str(audit))
    code = tiny_simulate("federation.num_sites=3", SECURE, "privacy.membership_audit=false")
    run_dir = tmp_path / "run"
    assert code == 0 and read_status(run_dir)["state"] == "complete"
    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(len(r["sites"]) == 3 and r["failures"] == [] for r in rounds[1:])
    privacy = read_privacy(run_dir)
    assert set(privacy["sites"]) == {"0", "1", "2"}
    for site_id, site in privacy["sites"].items():
        assert list(site["epsilon_by_round"]) == ["1", "2"] and 0 < site["epsilon"] <= 8.0
        ledger = json.loads((run_dir / "ledgers" / f"site-{site_id}.json").read_text())
        assert [e["round"] for e in ledger["entries"]] == [1, 2]

    trained = list(exchanged_state(get_task(tiny_config(), ["negative", "neutral", "positive"]).build_model()))
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    for site_id in range(3):
        mine = [e for e in entries if e["node_config"]["partition-id"] == site_id]
        for server_round in (1, 2):
            stages = [e["secagg_stage"] for e in mine if e["round"] == server_round and e["message_type"] == "train"]
            assert stages == ["setup", "share_keys", "collect_masked_vectors", "unmask"]
            collect = next(e for e in mine if e["round"] == server_round
                           and e["secagg_stage"] == "collect_masked_vectors")
            assert [t["name"] for t in collect["sent_tensors"]] == ["masked:weight"] + [f"masked:{n}" for n in trained]
            assert all(t["masked"] for t in collect["sent_tensors"])
            assert collect["epsilon"] == pytest.approx(
                privacy["sites"][str(site_id)]["epsilon_by_round"][str(server_round)])
    assert not any(t["masked"] is False for e in entries if e["message_type"] == "train" for t in e["sent_tensors"])


def _capturing_client_app(captured: list):
    """finfed's ClientApp with one more mod, inside SecAgg+: it sees each site's reply before masking."""
    def capture(message, context, call_next):
        reply = call_next(message, context)
        if "fitres.parameters" in reply.content:
            captured.append((message_round(message), reply.content["fitres.num_examples"]["num_examples"],
                             reply.content["fitres.parameters"].to_numpy_ndarrays()))
        return reply

    app = ClientApp(mods=[audit_mod, secure_aggregation_mod, capture])
    app.train()(client_app.train)
    app.evaluate()(client_app.evaluate)
    return app


def test_under_secagg_a_site_refusing_for_budget_sends_nothing(tiny_config, tmp_path):
    """A site over its budget declines at SecAgg+'s setup stage: no key, share or masked vector leaves it.
    Site 2's budget stops it after round 1, sites 0 and 1 after round 2; round 3 finds everyone refusing
    and the run ends cleanly."""
    config = tiny_config("federation.num_sites=3", "federation.rounds=3", SECURE, "privacy.membership_audit=false")
    budgets = [{"budget-epsilon": budget, "ledger-path": str(tmp_path / f"ledger-{site}.json"),
                "audit-log": str(tmp_path / f"audit-{site}.jsonl")}
               for site, budget in enumerate((7.0, 7.0, 6.5))]
    captured = []
    serve(config, InProcessGrid(_capturing_client_app(captured), config, budgets))
    status = read_status(config.resolved_run_dir)
    assert status["state"] == "budget-exhausted" and status["budget_exhausted_at_round"] == 3
    assert status["trained_rounds"] == 2 and status["model_round"] == 2
    rounds = read_metrics(config.resolved_run_dir)
    assert [s["site"] for s in rounds[2]["sites"]] == [0, 1] and rounds[2]["refusals"] == [2]
    assert rounds[3]["sites"] == [] and rounds[3]["refusals"] == [0, 1, 2]
    assert all(r["failures"] == [] for r in rounds)
    for site, budget in enumerate((7.0, 7.0, 6.5)):
        assert read_privacy(config.resolved_run_dir)["sites"][str(site)]["epsilon"] <= budget

    # What left each site per round (its audit log): a refused round is one setup reply, an error reply whose
    # only bytes are its refusal reason (no key, share or tensor); a trained round sends keys, shares and the
    # masked vector.
    def sent(site: int, server_round: int) -> list[dict]:
        entries = [json.loads(line) for line in (tmp_path / f"audit-{site}.jsonl").read_text().splitlines()]
        return [e for e in entries if e["message_type"] == "train" and e["round"] == server_round]
    for site, server_round in ((2, 2), (2, 3), (0, 3), (1, 3)):
        [refusal] = sent(site, server_round)
        assert refusal["secagg_stage"] == "setup" and refusal["has_error"] and refusal["records"] == {}
        assert refusal["sent_tensors"] == [] and refusal["error"].startswith(f"privacy refusal: site {site} ")
        assert refusal["bytes_total"] == len(refusal["error"].encode("utf-8"))
    for site in (0, 1):
        stages = [e["secagg_stage"] for e in sent(site, 2)]
        assert stages == ["setup", "share_keys", "collect_masked_vectors", "unmask"]
        assert sum(e["bytes_total"] for e in sent(site, 2)) > 0

    # Round 2's sum is sites 0 and 1's weighted average: site 2 took no part. (The final arrays are round
    # 2's: round 3 changed nothing, in particular no NaN from a zero total weight.)
    final = list(read_checkpoint(config.resolved_run_dir).arrays.values())
    sent_round_2 = [(weight, arrays) for server_round, weight, arrays in captured if server_round == 2]
    assert len(sent_round_2) == 2 and min(weight for weight, _ in sent_round_2) > 0
    total = sum(weight for weight, _ in sent_round_2)
    expected = [sum(weight * arrays[i] for weight, arrays in sent_round_2) / total for i in range(len(final))]
    tolerance = 2 * (2 * 8.0 / 2**22) / (total / 10000.0)
    assert max(np.max(np.abs(a - b)) for a, b in zip(final, expected)) < tolerance
    assert all(np.isfinite(value).all() for value in final)
    assert rounds[3]["central"] == rounds[2]["central"]
