"""Saving and loading the global model in Hugging Face PEFT format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import AutoTokenizer

from finfed.config import ExperimentConfig
from finfed.errors import RunError
from finfed.models.architectures import prepare_tokenizer
from finfed.models.backbone import load_tokenizer, quiet_transformers, resolve_backbone
from finfed.models.devices import resolve_device
from finfed.runs.outputs import ADAPTER_WEIGHTS, MODEL, MODEL_INFO, check_run_model
from finfed.tasks import get_task, task_class


def save_model(model: PeftModel, config: ExperimentConfig, labels: list[str], folder: Path) -> None:
    """Adapter + head (PEFT), tokenizer, and what finfed needs to rebuild the model."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    load_tokenizer(config.model.backbone).save_pretrained(str(folder))
    info = {"task": config.task, "labels": labels, "backbone": config.model.backbone,
            "backbone_path": resolve_backbone(config.model.backbone),
            "pooling": getattr(model.get_base_model().config, "pooling", config.model.pooling),
            "max_length": task_class(config).max_length_for(config), "lora_method": config.lora.method,
            "synthetic_data": config.data.source == "synthetic"}
    (folder / MODEL_INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")


def load_run_model(run_dir: str | Path, device: str | None = None) -> tuple[Any, PeftModel, Any]:
    """(task, model, tokenizer) of a completed run's global model, on ``device`` (default: the run's
    `model.device` resolved on this machine: `auto` finds this machine's GPU, or the CPU)."""
    quiet_transformers()
    run_dir = Path(run_dir)
    config, info = check_run_model(run_dir)
    folder = run_dir / MODEL
    task = get_task(config, info["labels"])
    try:
        model = PeftModel.from_pretrained(task.build_base_model(), str(folder))
    except Exception as exc:  # safetensors', torch's and peft's errors all mean an unreadable adapter
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise RunError(f"{folder / ADAPTER_WEIGHTS} could not be loaded ({type(exc).__name__}: {first_line}); "
                       "the file is corrupt or not this run's adapter: restore it or rerun the run") from None
    model.to(resolve_device(device or config.model.device)).eval()
    return task, model, prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder), local_files_only=True))
