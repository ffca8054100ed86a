"""The guarantee text: what it covers, names and excludes, and that every report says the same."""

import json

from report_runs import page_text

from finfed import constants as keys
from finfed.config import load_config, save_config
from finfed.privacy.guarantee import guarantee_text
from finfed.reporting.render import write_reports

SITE = {"target_epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 0.7, "max_grad_norm": 1.0, "sample_rate": 0.1,
        "records": 600, "accountant": "prv", "steps": 30, "epsilon_by_round": {"1": 5.5}, "epsilon": 5.5}


def _privacy(**sites):
    return {"dp_enabled": True, "unit": "record", "sites": sites or {"0": SITE, "1": SITE}}


def test_guarantee_states_scope_accountant_delta_disclosures_and_trust():
    text = guarantee_text(_privacy())
    for phrase in ("Record-level (ε, δ)-differential privacy, per site", "training split only",
                   "the PRV accountant at δ = 1e-05",
                   # what the coordinator sees that DP does not cover
                   "record counts", "the label set", "took part or refused a round", "validation metrics",
                   "validation records, which DP does not protect", "error categories",
                   # the trust assumptions
                   "secure random source the coordinator can neither seed nor predict",
                   "runs finfed's code as published", "reproducible test mode"):
        assert phrase in text, phrase
    # The old over-claim is gone: the site sends more than its DP updates.
    assert "anyone who sees everything" not in text and "bounded amount" not in text
    assert "training losses" not in text and "NOT hold" not in text


def test_guarantee_names_sites_that_sent_their_training_loss_and_the_reproducible_mode():
    text = guarantee_text(_privacy(), train_loss_sites=[1, 0, 1], reproducible=True)
    assert "the training losses that site(s) 0, 1 sent" in text
    assert "does NOT hold against the coordinator" in text and "not private against the coordinator" in text


def test_guarantee_names_each_sites_own_accountant_and_delta_where_they_differ():
    text = guarantee_text(_privacy(**{"0": SITE, "1": {**SITE, "delta": 1e-6, "accountant": "rdp"}}))
    assert "each site's own accountant and δ (site 0: PRV, δ = 1e-05, site 1: RDP, δ = 1e-06)" in text


def test_no_dp_means_no_guarantee():
    text = guarantee_text({"dp_enabled": False, "sites": {"0": {"epsilon": None, "delta": None}}})
    assert text.startswith("None: differential privacy was off")


def test_report_md_json_and_html_state_the_same_guarantee_as_privacy_json(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(load_config(None, ["name=guarantee-check"]), run_dir / "config.yaml")
    rounds = [{"round": 0, "central": {"accuracy": 0.4}, "sites": []},
              {"round": 1, "central": {"accuracy": 0.6},
               "sites": [{"site": 0, keys.TRAIN_LOSS: 0.9}, {"site": 1, keys.EPSILON: 5.5}]}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rounds) + "\n")
    privacy = _privacy()
    privacy["guarantee"] = guarantee_text(privacy, train_loss_sites=[0])  # what finfed.coordinator.run writes
    (run_dir / "privacy.json").write_text(json.dumps(privacy))
    (run_dir / "status.json").write_text(json.dumps({"state": "complete", "baseline": {"accuracy": 0.38}}))

    paths = write_reports(run_dir)
    report = json.loads(paths["json"].read_text())
    assert report["guarantee"] == privacy["guarantee"]
    assert "site(s) 0 sent" in report["guarantee"]
    assert privacy["guarantee"] in report["explanation"]
    assert privacy["guarantee"] in paths["md"].read_text()
    # The page renders the wording's inline code (`privacy.reproducible`) as code: the same words, no backticks.
    assert privacy["guarantee"].replace("`", "") in page_text(paths["html"].read_text())
