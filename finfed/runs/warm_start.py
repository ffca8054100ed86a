"""``model.init_from``: a federation that starts from an earlier model's adapters and head.

The source is a finished run directory (its ``model/`` folder) or a ``finfed export`` folder in
adapter form. Typical use: a non-private run on public text, then the private federation
starts from it (simulations/twitter_public.yaml). Only the tensors the federation exchanges are
taken over: the ones it trains, and under ``lora.method: head`` the adapters too, which the
coordinator then sends unchanged every round. Anything the federation keeps frozen and never sends
(FFA-LoRA's ``A``) must already be equal, because every site rebuilds it from ``lora.init_seed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from finfed.config import ExperimentConfig
from finfed.errors import ConfigError
from finfed.models.adapters import exchanged_parameters
from finfed.models.backbone import BUNDLED, resolve_backbone
from finfed.runs.outputs import CONFIG, MODEL, MODEL_INFO, read_privacy, require_finished
from finfed.tasks import task_class, task_named

EXPORT_INFO = "finfed_export.json"  # written by finfed.inference.export (a layer above)
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
KEY = "`model.init_from`"


def _source(path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(adapter folder, what the model is, its source's description) of a run or export folder."""
    if (path / MODEL / MODEL_INFO).is_file():
        require_finished(path)
        info = json.loads((path / MODEL / MODEL_INFO).read_text(encoding="utf-8"))
        privacy = read_privacy(path)
        run_name = _run_name(path)
        return path / MODEL, info, {"kind": "run directory", "run": run_name,
                                    "source_dp": bool(privacy.get("dp_enabled")),
                                    "source_synthetic_data": bool(info.get("synthetic_data"))}
    if (path / EXPORT_INFO).is_file():
        manifest = json.loads((path / EXPORT_INFO).read_text(encoding="utf-8"))
        if manifest.get("form") != "adapter":
            raise ConfigError(f"{KEY} {path} is a merged export: its adapters are folded into the weights and "
                              "cannot be separated; export the run again without --merge, or give the run directory")
        return path, manifest, {"kind": "finfed export", "run": (manifest.get("run") or {}).get("name"),
                                "source_dp": bool((manifest.get("privacy") or {}).get("dp_enabled")),
                                "source_synthetic_data": bool(manifest.get("synthetic_data"))}
    raise ConfigError(f"{KEY} {path} is neither a finished run directory (with {MODEL}/{MODEL_INFO}) nor a "
                      f"`finfed export` folder (with {EXPORT_INFO})")


def _run_name(run_dir: Path) -> str:
    import yaml

    try:
        return str((yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8")) or {}).get("name", run_dir.name))
    except (OSError, yaml.YAMLError):
        return run_dir.name


def _refuse_same_data(path: Path, info: dict[str, Any], config: ExperimentConfig) -> None:
    """A source trained on this federation's own data file would carry its records past the sites' epsilon."""
    source_config = path / CONFIG if (path / CONFIG).is_file() else Path(str((info.get("run") or {}).get("config", "")))
    if config.data.source != "file" or not source_config.is_file():
        return
    import yaml

    data = (yaml.safe_load(source_config.read_text(encoding="utf-8")) or {}).get("data") or {}
    used = {str(Path(p).resolve()) for p in (data.get("path"), data.get("test_path"))
            if p and data.get("source") == "file"}
    if str(Path(config.data.path).resolve()) in used:
        raise ConfigError(f"{KEY} {path} was trained on this run's own data file ({Path(config.data.path).name}): "
                          "a warm start must come from other (public) data, or the sites' records would reach "
                          "the model outside their epsilon")


def _same_backbone(info: dict[str, Any], backbone: str) -> bool:
    """The source's backbone is this run's: the bundled MiniLM wherever each install keeps it, else the same
    folder or hub id."""
    if info.get("backbone") == BUNDLED and backbone == BUNDLED:
        return True  # another install (another virtual environment) keeps the same model at another path
    source = info.get("backbone_path") or resolve_backbone(str(info.get("backbone")))
    return source == resolve_backbone(backbone)


def check_compatible(info: dict[str, Any], config: ExperimentConfig, labels: list[str], path: Path,
                     pooling: str | None = None) -> None:
    """Same task, labels (in order), backbone and pooling (``pooling``: this run's, resolved from
    ``model.pooling: auto`` by the built model), or a clear refusal."""
    if task_named(str(info.get("task"))) is not task_class(config):
        raise ConfigError(f"{KEY} {path} holds a {info.get('task')} model; this run's task is {config.task}")
    if list(info.get("labels") or []) != list(labels):
        raise ConfigError(f"{KEY} {path} was trained with labels {info.get('labels')}; this run's labels are "
                          f"{list(labels)} (same names in the same order required; set `data.labels`)")
    if not _same_backbone(info, config.model.backbone):
        raise ConfigError(f"{KEY} {path} was trained on backbone {info.get('backbone')!r}; this run's "
                          f"`model.backbone` is {config.model.backbone!r}: adapters only fit the model they were "
                          "trained on")
    pooling = pooling or config.model.pooling
    if "pooling" in info and info["pooling"] != pooling:
        raise ConfigError(f"{KEY} {path} was trained with `model.pooling` {info['pooling']!r}; this run has "
                          f"{pooling!r}")


def _check_scaling(folder: Path, model: PeftModel, path: Path) -> None:
    """The source's LoRA rank and alpha equal this run's: the tensors would load under another alpha, but
    every update would be scaled by alpha / r differently and the run would not start from the source's model."""
    if not (folder / ADAPTER_CONFIG).is_file():
        return
    source = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    ours = model.peft_config["default"]
    for key, setting in (("lora_alpha", "lora.alpha"), ("r", "lora.r")):
        if key in source and float(source[key]) != float(getattr(ours, key)):
            raise ConfigError(f"{KEY} {path} was trained with `{setting}` {source[key]:g}; this run has "
                              f"{getattr(ours, key):g}: LoRA scales its adapters by alpha / r, so the warm start "
                              f"would not be the source's model; set `{setting}: {source[key]:g}`")


def warm_start(model: PeftModel, config: ExperimentConfig, labels: list[str]) -> dict[str, Any]:
    """Load the source's trained tensors into ``model`` (in place); the record privacy.json keeps."""
    path = Path(config.model.init_from).expanduser()
    folder, info, described = _source(path)
    check_compatible(info, config, labels, path,
                     getattr(model.get_base_model().config, "pooling", None))  # `auto` resolved, as saved
    _refuse_same_data(path, info, config)
    if not (folder / ADAPTER_FILE).is_file():
        raise ConfigError(f"{KEY} {path}: {folder / ADAPTER_FILE} is missing")
    _check_scaling(folder, model, path)
    trained = set(exchanged_parameters(model))  # with `lora.method: head` the fixed adapters too
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if name not in trained and ("lora_" in name or "modules_to_save" in name)}
    try:
        loaded = set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_FILE)))
    except RuntimeError as error:  # a tensor of another shape: another rank, head size or backbone width
        raise ConfigError(f"{KEY} {path}: its adapters do not fit this model ({str(error).splitlines()[-1].strip()});"
                          " use the source's `lora.r` and `lora.target_modules`") from None
    missing = sorted(trained & set(loaded.missing_keys))
    if missing:
        raise ConfigError(f"{KEY} {path} has no values for {len(missing)} tensor(s) this run trains (e.g. "
                          f"{missing[0]}); use the source's `lora.target_modules` and `lora.method`")
    changed = [name for name, value in frozen.items()
               if not torch.equal(value, dict(model.named_parameters())[name].detach())]
    if changed:
        raise ConfigError(f"{KEY} {path}: its values for tensor(s) this run keeps frozen differ from this run's "
                          f"(e.g. {changed[0]}); with `lora.method: ffa` or `head` the source must use the same "
                          "`lora.init_seed`, `lora.r` and `lora.target_modules` and have been trained with ffa, "
                          "or set `lora.method: lora`")
    return {"source": str(path.resolve()), **described, "task": info.get("task"), "labels": list(labels),
            "backbone": info.get("backbone"), "tensors": len(trained), "used_site_data": False,
            "statement": ("the federation started from the adapters and head of "
                          f"{described['kind']} `{described['run']}`, trained before this run without any of "
                          "this federation's site data; its sites' epsilon covers only what they trained here")}
