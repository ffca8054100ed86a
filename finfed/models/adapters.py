"""LoRA and FFA-LoRA adapters, and the tensors that cross the wire.

FFA-LoRA freezes every site's LoRA ``A`` at the same seeded random value and
trains only ``B`` (plus the head). Because the update ``B @ A`` is then linear in
what is trained, FedAvg of ``B`` is exactly FedAvg of the adapters, the upload
halves, and DP noise is spread over half the parameters.

``lora.method: head`` trains only the task head. The adapters stay at the values the coordinator
sends (zero from scratch, a warm start's otherwise): they cross the wire, so every site holds the
coordinator's, but no site trains them, so no DP noise and no clipping budget is spent on them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Callable

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from finfed.config import LoraSettings
from finfed.errors import TrainingError
from finfed.models.architectures import lora_targets

FIXED_TENSORS = "finfed_fixed_tensors"  # attribute of a `head` model: the names of its fixed, exchanged tensors


def add_adapters(model: nn.Module, settings: LoraSettings, head: str) -> PeftModel:
    """Wrap ``model`` with LoRA on ``settings.target_modules`` (``auto``: the architecture's attention
    projections, see finfed.models.architectures); ``head`` stays fully trainable."""
    # peft ignores a `modules_to_save` name that matches nothing, which would leave the head frozen at random
    if not isinstance(getattr(model, head, None), nn.Module):
        raise TrainingError(f"{type(model).__name__} has no task head {head!r} to train beside the adapters")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=lora_targets(settings.target_modules, model), modules_to_save=[head],
                        bias="none")
    # The seed makes LoRA A identical at every site: FFA-LoRA's exactness depends on it.
    with torch.random.fork_rng():
        torch.manual_seed(settings.init_seed)
        peft_model = get_peft_model(model, config)
    frozen = {"ffa": ("lora_A",), "head": ("lora_A", "lora_B"), "lora": ()}[settings.method]
    for name, param in peft_model.named_parameters():
        if any(part in name for part in frozen):
            param.requires_grad_(False)
    if settings.method == "head":
        setattr(peft_model, FIXED_TENSORS, frozenset(n for n, _ in peft_model.named_parameters() if "lora_B" in n))
    return peft_model


def fixed_tensors(model: nn.Module) -> frozenset[str]:
    """Frozen tensors that still cross the wire: under ``lora.method: head`` the adapters' B, which the
    coordinator sets (a warm start's values) and no site trains."""
    return getattr(model, FIXED_TENSORS, frozenset())


def exchanged_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that cross the wire (by name): the trained ones and the fixed ones."""
    fixed = fixed_tensors(model)
    return {name: p for name, p in model.named_parameters() if p.requires_grad or name in fixed}


def exchanged_state(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The tensors the coordinator sends and a site sends back: the trained ones and the fixed ones, nothing else."""
    return OrderedDict((name, param.detach().cpu().clone()) for name, param in exchanged_parameters(model).items())


def load_exchanged_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load exactly the exchanged tensors; any missing, extra or misshapen one is an error."""
    params = exchanged_parameters(model)
    missing, unexpected = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise TrainingError(f"adapter tensors do not match this model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]} (are all sites on the same lora/model settings?)")
    with torch.no_grad():
        for name, param in params.items():
            value = torch.as_tensor(np.asarray(arrays[name]))
            if tuple(value.shape) != tuple(param.shape):
                raise TrainingError(f"adapter tensor {name} has shape {tuple(value.shape)}, "
                                    f"expected {tuple(param.shape)}")
            param.copy_(value.to(param.dtype))


def tensors_digest(model: nn.Module, include: Callable[[str, nn.Parameter], bool]) -> str:
    """SHA-256 of the names and values of the parameters ``include`` selects, in the model's order."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if include(name, param):
            digest.update(name.encode())
            digest.update(param.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def frozen_adapter_fingerprint(model: nn.Module) -> str:
    """Hash of the frozen LoRA A matrices: equal at every site, or FFA-LoRA is not exact."""
    return tensors_digest(model, lambda name, param: "lora_A" in name and not param.requires_grad)[:16]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
