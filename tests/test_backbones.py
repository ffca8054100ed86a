"""Every supported architecture, built tiny and random from its config: one DP round, evaluation, save and
reload, and `finfed export` loaded back by ``transformers.pipeline``; extractive QA on every encoder."""

from __future__ import annotations

import pytest
import torch
from tiny_backbones import DECODERS, ENCODERS, write_tiny_backbone
from transformers import pipeline

from finfed import constants as keys
from finfed.config import load_config
from finfed.coordinator.run import FederatedRun
from finfed.inference.export import export_run
from finfed.models.architectures import backbone_type
from finfed.runs.model_store import load_run_model
from finfed.site.rounds import evaluate_round, site_context, train_round

ARCHITECTURES = [*ENCODERS, *DECODERS]
#: the fast tier runs one encoder and one decoder (left padding, last-token pooling); every other architecture
#: repeats the same checks and runs with the slow tier (pytest -m "not slow" stays a few minutes)
FAST = {"bert", "llama"}


def _tiered(model_types) -> list:
    return [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in model_types]
TEXT = "Cedar Foods raised its outlook for the full year."


def _one_dp_round(backbone, run_dir, *overrides: str) -> FederatedRun:
    """Coordinator and one site, in this process: a DP round, the site's and the central evaluation, the model
    saved as a finished run."""
    config = load_config(None, [f"model.backbone={backbone}", f"run_dir={run_dir}", "federation.num_sites=1",
                                "federation.rounds=1", "data.synthetic_size=120", "train.batch_size=16", "lora.r=2",
                                "data.max_length=40",
                                "privacy.membership_audit=false", "privacy.reproducible=true",
                                "privacy.target_epsilon=50", "train.physical_batch_size=8", *overrides])
    run = FederatedRun(config)
    run.start()
    site = site_context(config, {keys.NODE_PARTITION_ID: 0})
    update = train_round(site, run.initial_arrays(), server_round=1, accountant_state=None,
                         expected_fingerprint=run.fingerprint)
    assert update.metrics[keys.EPSILON] > 0
    run.record_training(1, [update.metrics], [])
    run.record_evaluation(1, [evaluate_round(site, update.arrays)])
    metrics = run.central_evaluate(1, update.arrays)
    assert all(value == value for value in metrics.values())  # no NaN
    run.finish(update.arrays)
    return run


def _reloaded_matches(run: FederatedRun, inputs: dict) -> None:
    task, model, _ = load_run_model(run.config.resolved_run_dir)
    run.model.eval()
    with torch.no_grad():
        before, after = task.logits(run.model, inputs), task.logits(model, inputs)
    pairs = zip(before, after) if isinstance(before, tuple) else [(before, after)]
    for a, b in pairs:
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("model_type", _tiered(ARCHITECTURES))
def test_classification_on_every_architecture(model_type, tmp_path):
    backbone = write_tiny_backbone(tmp_path / model_type, model_type)
    run = _one_dp_round(backbone, tmp_path / "run")
    assert backbone_type(run.model) == model_type
    pooling = run.model.get_base_model().config.pooling
    assert pooling == ("last" if model_type in DECODERS else "mean")
    tokenizer = load_run_model(run.config.resolved_run_dir)[2]
    encoded = tokenizer([TEXT, "Orion cut its dividend."], padding=True, return_tensors="pt")
    _reloaded_matches(run, {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    out = tmp_path / "export"
    export_run(run.config.resolved_run_dir, out, merge=True)
    pipe = pipeline("text-classification", model=str(out), trust_remote_code=True, top_k=None)
    expected = run.task.label_texts(run.model, tokenizer, [TEXT])[0]["probabilities"]
    for results in (pipe([TEXT], truncation=True),  # one text, then a padded batch of two
                    pipe([TEXT, "Orion cut its dividend after a weak quarter."], truncation=True, batch_size=2)):
        assert {item["label"]: item["score"] for item in results[0]} == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("model_type", _tiered(ENCODERS))
def test_extractive_qa_on_every_encoder(model_type, tmp_path):
    backbone = write_tiny_backbone(tmp_path / model_type, model_type)
    run = _one_dp_round(backbone, tmp_path / "run", "task=qa", "data.partitioner=iid",
                        "qa.doc_stride=16", "qa.max_answer_tokens=6")
    head = run.task.head_of(run.model.get_base_model())
    assert any(f"{head}.modules_to_save" in name for name, p in run.model.named_parameters() if p.requires_grad)
    examples = run.test_examples[:3]
    _reloaded_matches(run, run.task.collate(examples))
    out = tmp_path / "export"
    export_run(run.config.resolved_run_dir, out, merge=True)
    pipe = pipeline("question-answering", model=str(out), trust_remote_code=True)
    context = "Cedar Foods raised its outlook for the full year."
    answer = pipe(question="Who raised its outlook?", context=context)
    assert answer["answer"] == context[answer["start"]:answer["end"]]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_lora_targets_are_checked_before_a_run_from_the_backbones_config_alone(model_type, tmp_path):
    """`auto` resolves for every supported architecture, and a name no module has is refused, naming the
    backbone's linear layers: before the engine starts (finfed.runtime.preflight), with no weights loaded."""
    from finfed.errors import ConfigError
    from finfed.models.backbone import check_adapter_targets

    backbone = str(write_tiny_backbone(tmp_path, model_type))
    (tmp_path / "model.safetensors").unlink()  # the check reads the config only
    check_adapter_targets(backbone, ("auto",))
    with pytest.raises(ConfigError, match=r"names \['no_such_module'\].*its linear layers are named: "):
        check_adapter_targets(backbone, ("no_such_module",))


def test_auto_lora_targets_on_an_architecture_peft_has_no_default_for_are_refused(tmp_path, monkeypatch):
    from finfed.errors import ConfigError
    from finfed.models import architectures
    from finfed.models.backbone import check_adapter_targets

    backbone = str(write_tiny_backbone(tmp_path, "bert"))
    monkeypatch.setattr(architectures, "default_lora_targets", lambda model_type: None)
    with pytest.raises(ConfigError, match="peft knows no default targets for backbone type 'bert'; name them"):
        check_adapter_targets(backbone, ("auto",))
