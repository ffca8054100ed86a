"""`finfed export`: exported models load through `transformers.pipeline` and answer as finfed does.

Runs are faked with the real writers (`save_model`, `RunOutputs`) around a tiny
random BERT whose adapters and head are randomised, so that a lost adapter or
head changes the answers.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from transformers import pipeline

from finfed.cli.main import main
from finfed.errors import RunError
from finfed.inference.export import EXPORT_INFO, export_run
from finfed.inference.predict import answer_question, predict_texts
from finfed.models import hf_pooled_classifier, hf_qa_pipeline
from finfed.runs.model_store import save_model
from finfed.runs.outputs import MODEL, RunOutputs
from finfed.tasks import get_task

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["cedar foods raised its outlook for the full year .", "orion logistics cut its dividend .",
         "the board meets on tuesday ."]
PRIVACY = {"dp_enabled": True, "unit": "record", "guarantee": "record-level (epsilon, delta)-DP",
           "client_level": None,
           "sites": {"0": {"target_epsilon": 2.0, "epsilon": 1.93, "delta": 1e-5, "noise_multiplier": 1.1,
                           "max_grad_norm": 1.0, "accountant": "prv"},
                     "1": {"target_epsilon": 2.0, "epsilon": 1.97, "delta": 1e-5, "noise_multiplier": 1.2,
                           "max_grad_norm": 1.0, "accountant": "prv"}}}
QA = [("who raised its outlook ?", "cedar foods raised its outlook for the full year ."),
      ("what did orion logistics cut ?", "orion logistics cut its dividend after a weak quarter ."),
      ("when does the board meet ?", "the board of cedar foods meets on tuesday to discuss the merger . " * 4)]


def fake_run(config, labels: list[str], *, state: str = "complete") -> Path:
    """A run directory as `finfed simulate` leaves it, with a randomised (not zero) adapter and head."""
    outputs = RunOutputs(config)
    outputs.start()
    model = get_task(config, labels).build_model()
    with torch.random.fork_rng():
        torch.manual_seed(7)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.normal_(0.0, 0.5)
    save_model(model, config, labels, outputs.run_dir / MODEL)
    outputs.write_privacy(PRIVACY)
    outputs.set_status(state)
    return outputs.run_dir


@pytest.fixture
def classification_run(tiny_config) -> Path:
    return fake_run(tiny_config(), LABELS)


@pytest.fixture
def qa_run(tiny_config, tmp_path) -> Path:
    config = tiny_config(f"run_dir={tmp_path / 'qa-run'}", "task=qa", "data.partitioner=iid",
                         "data.max_length=48", "qa.doc_stride=16", "qa.max_answer_tokens=6")
    return fake_run(config, [])


def classify(folder: Path) -> list[dict[str, float]]:
    pipe = pipeline("text-classification", model=str(folder), trust_remote_code=True, top_k=None)
    return [{item["label"]: item["score"] for item in result} for result in pipe(TEXTS, truncation=True)]


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_classifier_export_loads_in_pipeline_with_finfed_labels_and_probabilities(
        classification_run, tmp_path, merge):
    export_run(classification_run, tmp_path / "export", merge=merge)
    out = (tmp_path / "export").rename(tmp_path / "moved")  # the folder is self-contained
    expected = predict_texts(classification_run, TEXTS)
    for want, got in zip(expected, classify(out)):
        assert max(got, key=got.get) == want["label"]
        assert got == pytest.approx(want["probabilities"], abs=1e-5)
    assert (out / "adapter_config.json").is_file() != merge
    id2label = json.loads((out / "config.json").read_text())["id2label"]
    assert id2label == {str(i): label for i, label in enumerate(LABELS)}


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_qa_export_loads_in_pipeline_with_finfed_answers(qa_run, tmp_path, merge):
    export_run(qa_run, tmp_path / "export", merge=merge)
    out = (tmp_path / "export").rename(tmp_path / "moved")  # the folder is self-contained
    pipe = pipeline("question-answering", model=str(out), trust_remote_code=True)
    assert len(pipe.tokenizer(*QA[2])["input_ids"]) > 48  # the last context spans several windows
    # without options the pipeline uses the run's settings; with one, the same limit as finfed's
    for limit, options in ((None, {}), (2, {"max_answer_len": 2})):
        got = [pipe(question=q, context=c, **options) for q, c in QA]
        want = [answer_question(qa_run, q, c, max_answer_tokens=limit) for q, c in QA]
        assert [(g["answer"], g["start"], g["end"]) for g in got] == [(w["answer"], w["start"], w["end"])
                                                                      for w in want]
        assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)
        assert all(g["answer"] for g in got)
    assert all(len(g["answer"].split()) <= 2 for g in got)


def test_export_carries_the_privacy_record_and_readme(classification_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(classification_run), str(out), "--merge"]) == 0
    manifest = json.loads((out / EXPORT_INFO).read_text())
    assert manifest["task"] == "classification" and manifest["labels"] == LABELS
    assert manifest["form"] == "merged" and manifest["synthetic_data"] is True
    privacy = manifest["privacy"]
    assert privacy["dp_enabled"] is True and privacy["delta"] == 1e-5 and privacy["max_epsilon"] == 1.97
    assert {sid: site["epsilon"] for sid, site in privacy["sites"].items()} == {"0": 1.93, "1": 1.97}
    readme = (out / "README.md").read_text()
    assert 'pipeline("text-classification", model=".", trust_remote_code=True' in readme
    assert "ε=1.930" in readme and "ε=1.970" in readme


def test_shipped_code_is_the_finfed_template_and_imports_no_finfed(classification_run, qa_run, tmp_path):
    export_run(classification_run, tmp_path / "cls", merge=True)
    export_run(qa_run, tmp_path / "qa", merge=True)
    for module, folder in ((hf_pooled_classifier, "cls"), (hf_qa_pipeline, "qa")):
        source = Path(module.__file__)
        shipped = tmp_path / folder / source.name
        assert shipped.read_text() == source.read_text()
        imported = {node.module if isinstance(node, ast.ImportFrom) else alias.name
                    for node in ast.walk(ast.parse(source.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        assert imported and not any(name.startswith("finfed") for name in imported)


def test_export_refuses_a_non_empty_folder_and_replaces_only_an_export(classification_run, tmp_path, capsys):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(classification_run), str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    with pytest.raises(RunError, match="not a finfed export"):
        export_run(classification_run, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    export_run(classification_run, out)  # empty folder: fine
    export_run(classification_run, out, merge=True, overwrite=True)  # an earlier export: replaced
    assert json.loads((out / EXPORT_INFO).read_text())["form"] == "merged"
    assert not (out / "adapter_config.json").exists()
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(RunError, match="holds the run"):
        export_run(classification_run, classification_run.parent, overwrite=True)


def test_export_refuses_an_incomplete_run(tiny_config, tmp_path):
    run_dir = fake_run(tiny_config(), LABELS, state="running")
    with pytest.raises(RunError, match="not a completed run"):
        export_run(run_dir, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.slow
def test_simulated_run_exports_through_the_cli(tiny_simulated_run, tmp_path):
    run_dir, out = tiny_simulated_run[0], tmp_path / "export"
    assert main(["export", str(run_dir), str(out), "--merge"]) == 0
    expected = predict_texts(run_dir, TEXTS)
    for want, got in zip(expected, classify(out)):
        assert got == pytest.approx(want["probabilities"], abs=1e-5)
    sites = json.loads((out / EXPORT_INFO).read_text())["privacy"]["sites"]
    assert len(sites) == 2 and all(0 < site["epsilon"] <= site["target_epsilon"] for site in sites.values())
