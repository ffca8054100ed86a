"""Devices (`model.device`), mixed precision (`train.precision`) and what DP-SGD refuses, on the CPU.

CUDA paths are exercised by mocking what PyTorch reports; benchmarks/gpu_check.py runs them on a GPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from finfed.config import load_config
from finfed.errors import ConfigError, PrivacyError
from finfed.models.adapters import exchanged_state
from finfed.models.devices import check_device, on_model_device, resolve_device
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import plan_privacy
from finfed.tasks import get_task
from finfed.training.local import train_locally


def test_device_setting_is_checked_on_load():
    assert load_config(None, ["model.device=cuda:1"]).model.device == "cuda:1"
    with pytest.raises(ConfigError, match="model.device"):
        load_config(None, ["model.device=gpu0"])


def test_cuda_without_cuda_is_a_clear_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        check_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_prefers_cuda_and_an_index_must_exist(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="2 CUDA GPU"):
        check_device("cuda:2")


def test_a_batch_follows_its_model():
    model = torch.nn.Linear(2, 2)
    batch = on_model_device(model, {"x": torch.ones(1, 2), "note": "kept"})
    assert batch["x"].device == torch.device("cpu") and batch["note"] == "kept"


def test_gradient_checkpointing_is_refused_under_dp():
    with pytest.raises(ConfigError, match="gradient_checkpointing.*Opacus"):
        load_config(None, ["train.gradient_checkpointing=true"])
    assert load_config(None, ["train.gradient_checkpointing=true", "privacy.enabled=false"])


def _one_dp_step(config, precision: str, model_seed: int = 0):
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=precision))
    task = get_task(config, ["negative", "neutral", "positive"])
    from finfed.data.partition import load_federated_data
    from finfed.models.backbone import load_tokenizer

    data = load_federated_data(config.data, config.federation.num_sites, task.records)
    examples = task.encode(data.test.head(64), load_tokenizer(config.model.backbone))
    torch.manual_seed(model_seed)
    model = task.build_model()
    before = exchanged_state(model)
    plan = plan_privacy(num_records=len(examples), train=config.train, privacy=config.privacy, rounds=1)
    plan = dataclasses.replace(plan, noise_multiplier=0.5)
    train_locally(model, examples, task.collate, task.loss, loss_reduction="mean", settings=config.train, steps=1,
                  seed=5, plan=plan, accountant=SiteAccountant("rdp"), reproducible_dp=True)
    after = exchanged_state(model)
    return torch.cat([(after[n] - before[n]).flatten() for n in before]), model


def test_a_bf16_dp_update_matches_the_fp32_one(tiny_config):
    """Same batch, same noise: per-sample gradients, clipping and noise are fp32, only the forward is bf16."""
    config = tiny_config("train.optimizer=sgd", "train.learning_rate=0.1", "train.head_learning_rate=0.1",
                         "privacy.max_grad_norm=0.5")
    fp32, _ = _one_dp_step(config, "fp32")
    bf16, model = _one_dp_step(config, "bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    relative = (bf16 - fp32).norm() / fp32.norm()
    assert relative < 0.02, f"bf16 DP update differs from fp32 by {relative:.4f} (relative L2)"
    assert not torch.equal(bf16, fp32)  # bf16 really ran


def test_an_fp16_dp_update_matches_the_fp32_one(tiny_config):
    config = tiny_config("train.optimizer=sgd", "train.learning_rate=0.1", "train.head_learning_rate=0.1")
    fp32, _ = _one_dp_step(config, "fp32")
    fp16, _ = _one_dp_step(config, "fp16")
    assert (fp16 - fp32).norm() / fp32.norm() < 0.02


def test_a_layer_opacus_cannot_handle_is_refused_by_name(tiny_config):
    """LoRA on the word embeddings: peft's LoRA Embedding has no per-sample gradient rule."""
    config = tiny_config("lora.target_modules=word_embeddings,query")
    with pytest.raises(PrivacyError, match=r"word_embeddings\.lora_embedding_A \(torch"):
        _one_dp_step(config, "fp32")


def test_gradient_checkpointing_trains_without_dp(tiny_config):
    config = tiny_config("privacy.enabled=false", "train.gradient_checkpointing=true")
    task = get_task(config, ["negative", "neutral", "positive"])
    model = task.build_model()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_gpus_per_site_reach_flowers_client_resources():
    from finfed.runtime.local_engine import federation_config

    assert "client-resources-num-gpus=0.25" in federation_config(4, 2, 0.25, 16)
    assert load_config(None, ["simulation.gpus_per_site=0.5"]).simulation.gpus_per_site == 0.5


def test_gpus_per_site_without_cuda_fails_before_anything_starts(monkeypatch):
    from finfed.models.devices import check_compute

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="gpus_per_site"):
        check_compute("auto", "fp32", 0.5)
    with pytest.raises(ConfigError, match="no CUDA"):
        check_compute("cuda", "fp32")


def test_a_deployed_site_chooses_its_own_device():
    from finfed import constants as keys
    from finfed.site.node_settings import with_site_device

    config = load_config(None, ["model.device=cuda"])
    assert with_site_device(config, {keys.NODE_DATA_PATH: "x.csv"}).model.device == "auto"  # not the run's
    assert with_site_device(config, {keys.NODE_DATA_PATH: "x.csv", keys.NODE_DEVICE: "cpu"}).model.device == "cpu"
    assert with_site_device(config, {keys.NODE_PARTITION_ID: 0}).model.device == "cuda"  # simulated: the run's


def test_the_resolved_device_is_recorded(tiny_config):
    from finfed.coordinator.run import FederatedRun
    from finfed.reporting.privacy_report import compute_text
    from finfed.runs.outputs import CONFIG, read_status

    run = FederatedRun(tiny_config("model.device=cpu", "train.precision=bf16"))
    run.start()
    text = (run.config.resolved_run_dir / CONFIG).read_text(encoding="utf-8")
    assert "#   model.device: cpu (setting: cpu)" in text and "#   train.precision: bf16" in text
    assert load_config(run.config.resolved_run_dir / CONFIG).train.precision == "bf16"  # still loads
    status = read_status(run.config.resolved_run_dir)
    assert compute_text(run.config, status).startswith("device cpu (setting: cpu), precision bf16")
