"""End to end through Flower's simulation engine (`finfed simulate` -> SuperLink -> `flwr run`)."""

import json
import shutil

import pandas as pd
import pytest
from peft import PeftModel
from report_runs import plot_data
from transformers import AutoTokenizer

from finfed.cli.main import main
from finfed.inference.predict import predict_texts
from finfed.models.adapters import exchanged_state
from finfed.runs.outputs import read_metrics, read_privacy, read_status
from finfed.tasks import get_task

RUN_FILES = ["config.yaml", "metrics.jsonl", "privacy.json", "report.md", "status.json", "flower.log",
             "model/adapter_config.json", "model/adapter_model.safetensors", "model/finfed_model.json",
             "model/tokenizer.json"]


@pytest.mark.slow  # the shared Flower simulation (tiny_simulated_run: ~45 s on 2 cores, once per session)
def test_tiny_dp_simulation_leaves_a_complete_run_and_sends_only_adapter_tensors(tiny_simulated_run):
    run_dir, audit, config = tiny_simulated_run
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    status = read_status(run_dir)
    assert status["state"] == "complete"
    assert 0.0 <= status["membership_audit"]["auc"] <= 1.0 and status["membership_audit"]["members"] > 0
    assert "loss-threshold attack AUC" in (run_dir / "report.md").read_text()

    rounds = read_metrics(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    # Each site's name (the synthetic data's `institution`) beside its id: metrics, privacy.json, report, console.
    names = {0: "institution-0", 1: "institution-1"}
    assert all({s["site"]: s["site-name"] for s in r["sites"]} == names for r in rounds[1:])
    assert "[finfed] sites: 0 = institution-0, 1 = institution-1" in (run_dir.parent / "console.err").read_text()
    assert all({"accuracy", "macro_f1", "loss"} <= set(r["central"]) for r in rounds)
    assert all(len(r["sites"]) == 2 and "eval-accuracy" in r["sites"][0] for r in rounds[1:])

    privacy = read_privacy(run_dir)
    assert set(privacy["sites"]) == {"0", "1"}
    assert {int(i): site["site-name"] for i, site in privacy["sites"].items()} == names
    assert all(f"| site {i} ({name}) |" in (run_dir / "report.md").read_text() for i, name in names.items())
    for site in privacy["sites"].values():
        assert list(site["epsilon_by_round"]) == ["1", "2"]
        assert site["epsilon_by_round"]["1"] < site["epsilon_by_round"]["2"] <= config.privacy.target_epsilon
        assert site["noise_multiplier"] > 0 and site["accountant"] == "prv"

    # What left each site: only the trained tensors (FFA: LoRA B + head) and numbers.
    task = get_task(config, ["negative", "neutral", "positive"])
    trained = set(exchanged_state(task.build_model()))
    assert all("lora_B" in n or "classifier" in n for n in trained)
    sent = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(sent) == 2 * 2 * 2  # 2 sites x 2 rounds x (train + evaluate)
    for message in sent:
        assert not message["has_error"]
        for record_name, record in message["records"].items():
            assert record["kind"] in ("arrays", "metrics", "config"), record
            if record["kind"] == "arrays":
                assert {t["name"] for t in record["tensors"]} == trained
                assert all(t["dtype"] == "float32" for t in record["tensors"])
            elif record["kind"] == "config":  # the one text: the site's name (its partition column's value)
                site = message["node_config"]["partition-id"]
                assert record_name == "site" and record["values"] == {"site-name": names[site]}
            else:
                assert all(isinstance(v, (int, float)) for v in record["values"].values())

    # The saved global model loads with plain PEFT and answers like `finfed predict`.
    info = json.loads((run_dir / "model/finfed_model.json").read_text())
    model = PeftModel.from_pretrained(task.build_base_model(), str(run_dir / "model")).eval()
    assert info["labels"] == ["negative", "neutral", "positive"]
    text = "Cedar Foods raised its outlook for the full year."
    prediction = predict_texts(run_dir, [text])[0]
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir / "model"))
    encoded = task.encode(pd.DataFrame({"text": [text], "label": ["neutral"]}), tokenizer)
    probs = task.probabilities(model, encoded)[0].tolist()
    assert list(prediction["probabilities"].values()) == pytest.approx(probs, abs=1e-6)
    assert prediction["label"] == info["labels"][max(range(3), key=probs.__getitem__)]
    assert main(["predict", str(run_dir), "Cedar Foods suspended its dividend"]) == 0

    # The privacy report agrees with privacy.json and cross-checks epsilon with a second accountant.
    assert main(["report", str(run_dir)]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    for site_id, site in privacy["sites"].items():
        check = report["sites"][site_id]["cross_check"]
        assert check["prv"] == pytest.approx(site["epsilon"], rel=1e-6)
        assert site["epsilon"] <= check["rdp"] <= 1.5 * site["epsilon"]  # RDP is looser, not wildly so
        assert f"{site['epsilon']:.3f}" in (run_dir / "report.md").read_text()
    assert "MISMATCH" not in (run_dir / "report.md").read_text()
    page = (run_dir / "report.html").read_text()
    # Three plots (epsilon, utility, per-site fairness), all embedded: nothing fetched from a network.
    assert page.count("data:image/png;base64,") == 3 and "http" not in page.split("<body>")[1]
    # The real run's verdict card and drawn budget (the report's own tests cover them in depth).
    assert report["verdict"]["status"] == "pass" and report["verdict"]["within_budget"] is True
    assert '<section id="verdict" class="verdict verdict-pass"' in page
    assert {"target", "budget"} <= {line["kind"] for line in plot_data(page, "epsilon-plot")["lines"]}


@pytest.mark.slow  # Flower's engine starts, then the ServerApp fails (~25 s on 2 cores)
def test_a_run_that_fails_inside_flower_exits_non_zero(tiny_simulate, tiny_backbone, tmp_path, capsys):
    # Valid for preflight (it reads the backbone's config and tokenizer, not its weights), but the weights file is
    # damaged: the ServerApp raises inside Flower when it loads the model.
    damaged = tmp_path / "damaged-backbone"
    shutil.copytree(tiny_backbone, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code = tiny_simulate(f"model.backbone={damaged}", "federation.rounds=1")
    assert code == 1
    assert "FAILED" in capsys.readouterr().err
    assert read_status(tmp_path / "run")["state"] != "complete"


def test_existing_run_directory_is_not_overwritten(tiny_simulate, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    code = tiny_simulate()
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_bad_input_fails_before_any_output(tiny_simulate, tmp_path, capsys):
    code = tiny_simulate("data.source=file", f"data.path={tmp_path / 'missing.csv'}")
    assert code == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["simulate", "--set", "privacy.target_epsilon=-2"]) == 2
    assert "`privacy.target_epsilon` must be > 0.0" in capsys.readouterr().err
    assert tiny_simulate("lora.target_modules=no_such_module") == 2  # before the engine, from the backbone's config
    assert "names ['no_such_module'], which backbone" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bundled_minilm_federation_beats_the_majority_class(tmp_path):
    run_dir = tmp_path / "minilm"
    code = main(["simulate", "--set", f"run_dir={run_dir}", "--set", "federation.num_sites=2",
                 "--set", "federation.rounds=2", "--set", "data.synthetic_size=1200"])
    assert code == 0
    final = read_metrics(run_dir)[-1]["central"]
    baseline = read_status(run_dir)["baseline"]
    assert final["accuracy"] > baseline["accuracy"] + 0.05
    assert final["macro_f1"] > baseline["macro_f1"] + 0.1
    assert max(s["epsilon"] for s in read_privacy(run_dir)["sites"].values()) <= 8.0
