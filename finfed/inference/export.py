"""`finfed export`: a finished run's global model as a folder ``transformers.pipeline`` loads.

Two forms, both loaded with ``pipeline(TASK, model=OUT, trust_remote_code=True)``:

- ``merge=True``: the adapters merged into the weights, one plain ``transformers`` model.
- ``merge=False``: the PEFT adapter (``adapter_config.json``, ``adapter_model.safetensors``)
  beside the untouched base model it was trained on. Because the folder holds a
  ``config.json`` and base weights, transformers' PEFT integration loads the base
  from the folder itself and applies the adapter, so the folder can be moved.

Code that is not stock ``transformers`` travels as files copied from one source
in finfed, never as strings: the mean-pooling classifier
(:mod:`finfed.models.hf_pooled_classifier`, named in ``auto_map``: finfed trains
this very class) and, because transformers 5 removed its ``question-answering``
pipeline, an extractive QA pipeline (:mod:`finfed.models.hf_qa_pipeline`, named in
``custom_pipelines``; finfed decodes with its decoder). The task says which
(:meth:`finfed.tasks.Task.ship_export_code`).

``quantize="int8"`` (`finfed export --quantize int8`) writes the merged form with every
``Linear`` layer quantized by torchao (int8 weights per output channel, int8 dynamic
activations) through transformers' ``TorchAoConfig``: ``config.json`` records the
quantization, so the same ``pipeline(...)`` call loads it (torchao installed: the ``int8``
extra). Embeddings and LayerNorms stay fp32. Size, CPU latency and agreement with the fp32
export: benchmarks/int8_export.py.

Every export carries ``finfed_export.json`` with the run's privacy record, so a
model never travels without its privacy parameters.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from finfed.errors import RunError
from finfed.privacy.randomness import REPRODUCIBLE_LABEL
from finfed.runs.model_store import check_run_model, load_run_model
from finfed.runs.outputs import CONFIG, read_model_info, read_privacy, require_model
from finfed.tasks import Task, task_named

EXPORT_INFO = "finfed_export.json"
EXPORT_FORMAT = "finfed-export/1"
QUANTIZATIONS = ("int8",)
INT8_SCHEME = ("torchao int8: every Linear layer's weights int8 per output channel, activations quantized to int8 "
               "dynamically; embeddings and LayerNorms fp32")


@dataclass(frozen=True)
class ExportSpec:
    """What the exported folder must know about the model, beyond its weights."""

    task: Task
    labels: tuple[str, ...]
    max_length: int
    pipeline_settings: dict[str, int] | None = None  # e.g. QA's pipeline defaults (Task.export_settings)

    @property
    def pipeline_task(self) -> str:
        return self.task.pipeline_task


def export_run(run_dir: str | Path, out: str | Path, *, merge: bool = False,
               overwrite: bool = False, quantize: str | None = None) -> dict[str, Any]:
    """Write the run's global model to ``out``; returns the ``finfed_export.json`` contents.

    ``quantize="int8"``: the merged form (implied), its ``Linear`` layers quantized (torchao, the ``int8`` extra).
    """
    run_dir, out = Path(run_dir), Path(out)
    if quantize is not None:
        if quantize not in QUANTIZATIONS:
            raise RunError(f"--quantize {quantize!r} is not supported; choose one of {', '.join(QUANTIZATIONS)}")
        torchao_version()  # refuse before any work when torchao is missing
        merge = True  # quantization applies to the merged weights
    status = require_model(run_dir)
    privacy = read_privacy(run_dir)
    if not privacy:
        raise RunError(f"run directory {run_dir} has no privacy record (privacy.json); a model is never "
                       "exported without its privacy parameters")
    check_destination(run_dir, out, overwrite=overwrite)
    check_run_model(run_dir)  # a missing model description or adapter file fails before any model is built
    task, model, tokenizer = load_run_model(run_dir)
    info = read_model_info(run_dir)
    spec = spec_for(task, info)
    manifest = export_manifest(run_dir, task.config.name, info, spec, privacy, merged=merge)
    manifest["training"] = {key: status.get(key) for key in ("state", "rounds", "trained_rounds", "model_round",
                                                             "budget_exhausted_at_round")}
    if quantize is not None:
        manifest["quantization"] = {"method": quantize, "scheme": INT8_SCHEME,
                                    "library": f"torchao {torchao_version()}"}
    staging = out.parent / f".{out.name}.partial"
    unquantized = out.parent / f".{out.name}.fp32.partial"
    for folder in (staging, unquantized):
        _remove_tree(folder)  # a crashed earlier export of the same name
    try:
        if quantize is not None:
            write_merged(model, tokenizer, spec, unquantized)
            write_int8(unquantized, spec, staging)
        elif merge:
            write_merged(model, tokenizer, spec, staging)
        else:
            write_adapter(model, task.build_base_model(), tokenizer, spec, staging)
        write_export_info(staging, manifest)
        _replace(out, staging)
    finally:
        _remove_tree(staging)
        _remove_tree(unquantized)
    return manifest


def spec_for(task: Task, info: dict[str, Any]) -> ExportSpec:
    max_length = int(info["max_length"])
    return ExportSpec(task=task, labels=tuple(info["labels"]), max_length=max_length,
                      pipeline_settings=task.export_settings(max_length))


# --------------------------------------------------------------------------- destination

def check_destination(run_dir: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse to replace anything but an earlier finfed export, and only when asked."""
    target, run = out.resolve(), run_dir.resolve()
    if target == run or target in run.parents:
        raise RunError(f"export folder {out} holds the run {run_dir}; choose another folder")
    if out.exists() and not out.is_dir():
        raise RunError(f"export folder {out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise RunError(f"export folder {out} already exists and is not empty; choose another folder "
                       "or pass --overwrite to replace an earlier export")
    if not (out / EXPORT_INFO).is_file():
        raise RunError(f"export folder {out} is not a finfed export (no {EXPORT_INFO}); "
                       "refusing to replace it even with --overwrite")


def _replace(out: Path, staging: Path) -> None:
    # Written beside the destination and renamed last, so a failed export never leaves a half folder at OUT.
    _remove_tree(out)
    staging.rename(out)


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)


# --------------------------------------------------------------------------- writing

def write_merged(model: PeftModel, tokenizer: Any, spec: ExportSpec, folder: Path) -> None:
    """Adapters merged into the weights: one ``transformers`` model."""
    save_transformers(model.merge_and_unload(), tokenizer, spec, folder)


def write_adapter(model: PeftModel, base: nn.Module, tokenizer: Any, spec: ExportSpec, folder: Path) -> None:
    """The PEFT adapter beside the untouched base it applies to (``base``: the task's base model)."""
    save_transformers(base, tokenizer, spec, folder)
    model.save_pretrained(str(folder))


def save_transformers(module: nn.Module, tokenizer: Any, spec: ExportSpec, folder: Path) -> None:
    """``module`` as a ``transformers`` model folder with its tokenizer and any code it needs."""
    if not isinstance(module, PreTrainedModel):
        raise RunError(f"cannot export a {type(module).__name__}: finfed exports transformers models")
    spec.task.ship_export_code(module, spec.pipeline_settings, folder)
    folder.mkdir(parents=True, exist_ok=True)
    module.save_pretrained(str(folder))  # a custom class (auto_map) copies its own module file here
    tokenizer.model_max_length = spec.max_length  # pipeline(..., truncation=True) cuts where finfed did
    tokenizer.save_pretrained(str(folder))


def write_int8(merged: Path, spec: ExportSpec, folder: Path) -> None:
    """The merged export in ``merged``, loaded through its own pipeline with torchao's int8 quantization and
    saved to ``folder``: ``config.json`` then names the quantization, so a plain ``pipeline(...)`` loads it."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from transformers import TorchAoConfig, pipeline

    quantization = TorchAoConfig(Int8DynamicActivationInt8WeightConfig())
    pipe = pipeline(spec.pipeline_task, model=str(merged), trust_remote_code=True,
                    model_kwargs={"quantization_config": quantization})
    shutil.copytree(merged, folder, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    pipe.model.save_pretrained(str(folder))


def torchao_version() -> str:
    """The installed torchao's version; RunError when it is missing (`pip install 'finfed[int8]'`)."""
    from importlib.metadata import PackageNotFoundError, version

    from finfed.lean_imports import WITHOUT_INT8_ENV, int8_library_left_out

    try:
        installed = version("torchao")
    except PackageNotFoundError:
        raise RunError("--quantize int8 needs torchao: pip install 'finfed[int8]' (or: pip install torchao)") from None
    if int8_library_left_out():
        variable = ", ".join(f"{key}={value}" for key, value in WITHOUT_INT8_ENV.items())
        raise RunError(f"torchao is installed but left out of this process: its environment has {variable}, "
                       "meant only for the Flower apps' processes; quantize where it is not set")
    return installed


# --------------------------------------------------------------------------- metadata

def export_manifest(run_dir: Path, name: str, info: dict[str, Any], spec: ExportSpec,
                    privacy: dict[str, Any], *, merged: bool) -> dict[str, Any]:
    """``finfed_export.json``: where the model came from, how to load it, and its privacy record."""
    warning = {"warning": REPRODUCIBLE_LABEL} if privacy.get("reproducible_dp") else {}
    return {
        "format": EXPORT_FORMAT,
        **warning,
        "run": {"name": name, "dir": str(run_dir.resolve()), "config": str((run_dir / CONFIG).resolve())},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": spec.task.name,
        "labels": list(spec.labels),
        "form": "merged" if merged else "adapter",
        "backbone": info.get("backbone"),
        "max_length": spec.max_length,
        "pipeline": {"task": spec.pipeline_task, "trust_remote_code": True},
        "synthetic_data": bool(info.get("synthetic_data")),
        "privacy": privacy_summary(privacy),
    }


def privacy_summary(privacy: dict[str, Any]) -> dict[str, Any]:
    """The run's privacy parameters, per site: what anyone using the model must know.

    Each site's ``delta`` is the one its epsilon was computed at (its own budget's, which may
    differ from the run's ``run_delta``); the top-level ``delta`` is that of ``max_epsilon``.
    """
    sites = {site_id: {key: site.get(key) for key in
                       ("epsilon", "target_epsilon", "delta", "noise_multiplier", "max_grad_norm", "accountant")}
             for site_id, site in sorted(privacy.get("sites", {}).items(), key=lambda item: int(item[0]))}
    spent = [site for site in sites.values() if site["epsilon"] is not None]
    worst = max(spent, key=lambda site: site["epsilon"], default=None)
    return {"dp_enabled": bool(privacy.get("dp_enabled")), "unit": privacy.get("unit"),
            "guarantee": privacy.get("guarantee"), "max_epsilon": worst["epsilon"] if worst else None,
            "delta": worst["delta"] if worst else None, "run_delta": privacy.get("run_delta"),
            "reproducible_dp": privacy.get("reproducible_dp"), "dp_randomness": privacy.get("dp_randomness"),
            "sites": sites, "client_level": privacy.get("client_level")}


def write_export_info(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / EXPORT_INFO).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    (folder / "README.md").write_text(export_readme(manifest), encoding="utf-8")


def load_snippet(manifest: dict[str, Any], folder: str = "OUT") -> str:
    """The exact Python that loads and uses the exported folder."""
    task, pipeline_task = task_named(manifest["task"]), manifest["pipeline"]["task"]
    return (f'from transformers import pipeline\n\npipe = pipeline("{pipeline_task}", model="{folder}", '
            f"trust_remote_code=True{task.pipeline_arguments})\n{task.pipeline_example}")


def privacy_line(manifest: dict[str, Any]) -> str:
    privacy = manifest["privacy"]
    if not privacy["dp_enabled"]:
        return "Differential privacy was OFF for this run: no privacy guarantee."
    run_delta = privacy.get("run_delta")
    deltas = {site["delta"] for site in privacy["sites"].values() if site["epsilon"] is not None}
    mixed = len(deltas) > 1 or (run_delta is not None and bool(deltas) and deltas != {run_delta})

    def site_text(site_id: str, site: dict[str, Any]) -> str:
        if site["epsilon"] is None:
            return f"site {site_id} did not train"
        return f"site {site_id} ε={site['epsilon']:.3f}" + (f" at δ={site['delta']:g}" if mixed else "")

    if mixed:
        label = "each ε at its site's own δ" + (f" (the run's δ={run_delta:g})" if run_delta is not None else "")
    else:
        delta = next(iter(deltas), run_delta)
        label = f"δ={delta:g}" if delta is not None else "δ not recorded"
    sites = ", ".join(site_text(sid, site) for sid, site in privacy["sites"].items())
    warning = f"WARNING: {REPRODUCIBLE_LABEL}. " if privacy.get("reproducible_dp") else ""
    # the guarantee text names each site's accountant and δ (finfed.privacy.guarantee)
    return f"{warning}{label}: {sites}. {privacy['guarantee']}"


def training_note(manifest: dict[str, Any]) -> str:
    """Said wherever the model goes when the sites' budgets ended its run early; empty otherwise."""
    training = manifest.get("training") or {}
    if training.get("state") != "budget-exhausted":
        return ""
    return (f"The run ended early: every site refused round {training['budget_exhausted_at_round']} (privacy budget "
            f"reached); this model is the one after round {training['model_round']} ({training['trained_rounds']} "
            f"of {training['rounds']} rounds trained).")


def export_readme(manifest: dict[str, Any]) -> str:
    run, form = manifest["run"], manifest["form"]
    data = "synthetic data generated by finfed" if manifest["synthetic_data"] else "the sites' own data"
    what = ("the LoRA adapters merged into the weights" if form == "merged" else
            "the PEFT adapter (`adapter_config.json`, `adapter_model.safetensors`) beside the untouched base "
            "model (`config.json`, `model.safetensors`); transformers' PEFT integration applies it on load")
    code = task_named(manifest["task"]).export_code
    peft = "" if form == "merged" else " Loading the adapter form needs the `peft` package."
    if manifest.get("quantization"):
        what += f"; quantized ({manifest['quantization']['scheme']})"
        peft += (f" Loading it needs torchao ({manifest['quantization']['library']} wrote it); `config.json`'s "
                 "`quantization_config` tells transformers how.")
    return f"""# finfed export: run `{run['name']}` ({manifest['task']}, {form})

Federated model trained by finfed on {data}: {what}. Backbone: `{manifest['backbone']}`.

**Privacy:** {privacy_line(manifest)} Full record: `finfed_export.json`. {training_note(manifest)}

## Load

```python
{load_snippet(manifest, ".")}
```

`trust_remote_code=True` runs {code}, shipped in this folder; read it first.{peft}
"""
