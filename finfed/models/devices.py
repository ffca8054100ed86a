"""Which device a model runs on (`model.device`), checked before anything starts.

``auto`` picks CUDA if PyTorch sees a GPU, then Apple's MPS, else the CPU. An explicit
``cuda``/``cuda:N``/``mps`` on a machine without it is a :class:`~finfed.errors.ConfigError`
from :func:`check_device`, which the CLI's pre-run checks call: nothing is built first.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from finfed.config import DEVICE_PATTERN
from finfed.errors import ConfigError


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_device(setting: str, where: str = "`model.device`") -> None:
    """ConfigError if ``setting`` names a device this machine lacks (cheap: no model is built)."""
    if not DEVICE_PATTERN.fullmatch(setting):
        raise ConfigError(f"{where} must be auto, cpu, cuda, cuda:N or mps, got {setting!r}")
    if setting in ("auto", "cpu"):
        return
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} is {setting!r} but PyTorch sees no CUDA GPU on this machine "
                              f"(torch {torch.__version__}); use `auto` or `cpu`")
        index = int(setting.split(":")[1]) if ":" in setting else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"{where} is {setting!r} but this machine has {count} CUDA GPU(s) "
                              f"(cuda:0 to cuda:{count - 1})")
        return
    if setting == "mps" and not _mps_available():
        raise ConfigError(f"{where} is 'mps' but Apple's MPS backend is not available here; use `auto` or `cpu`")


def check_compute(device: str, precision: str, gpus_per_site: float = 0.0) -> torch.device:
    """The device `model.device` means here, after refusing what this machine cannot do (config only, no model).

    The CLI's pre-run checks call it, so `device: cuda` on a machine without CUDA stops before anything starts.
    """
    resolved = resolve_device(device)
    if precision == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"`train.precision` is 'bf16' but {torch.cuda.get_device_name(resolved)} does not "
                          "support bfloat16; use 'fp16' or 'fp32'")
    if gpus_per_site > 0 and not torch.cuda.is_available():
        raise ConfigError(f"`simulation.gpus_per_site` is {gpus_per_site:g} but PyTorch sees no CUDA GPU on this "
                          "machine: Ray would wait forever for one; set it to 0")
    return resolved


def resolve_device(setting: str, where: str = "`model.device`") -> torch.device:
    """The device ``setting`` means on this machine (``auto``: CUDA, then MPS, else CPU)."""
    check_device(setting, where)
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    return torch.device(setting)


def device_name(device: torch.device) -> str:
    """What reports say: ``cpu``, ``cuda:0 (NVIDIA H100 80GB HBM3)``, ``mps``."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def on_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor moved to ``device`` (other values as they are)."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}


def on_model_device(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` on the device of ``model``: tasks call it, so a batch follows its model wherever it is."""
    device = model_device(model)
    if all(not isinstance(v, torch.Tensor) or v.device == device for v in batch.values()):
        return dict(batch)
    return on_device(batch, device)
