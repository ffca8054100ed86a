"""Mixed precision (`train.precision`) that keeps DP-SGD's arithmetic in fp32, and DP on any device.

The forward and backward passes run under ``torch.autocast`` in bf16 or fp16. Under DP-SGD
Opacus computes each record's gradient from a layer's captured activations and output
gradients, which autocast leaves in half precision: :class:`Fp32GradSampleModule` upcasts
both to fp32 before the per-sample gradient is formed (and divides out fp16's loss scale), so
per-sample gradients, their norms, clipping and the noise are all fp32, as are the trainable
tensors themselves. fp16 without DP uses PyTorch's ``GradScaler``; under DP a step whose
scaled per-sample gradients overflow is recomputed at half the scale (the same records, the same
one noisy release: no extra privacy cost).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from finfed.compat import add_noise_on_cpu
from finfed.errors import ConfigError, PrivacyError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
INITIAL_DP_LOSS_SCALE = 2.0 ** 12
MAX_SCALE_RETRIES = 24


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError if ``device`` cannot train in ``precision`` (asked before training starts)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"`train.precision` is 'bf16' but {torch.cuda.get_device_name(device)} does not support "
                          "bfloat16; use 'fp16' or 'fp32'")


def autocast(precision: str, device: torch.device):
    """The forward pass's context: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def _fp32_sampler(sampler: Callable, module_wrapper: "Fp32GradSampleModule") -> Callable:
    def compute(layer: nn.Module, activations: list, backprops: torch.Tensor) -> dict:
        activations = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in activations]
        samples = sampler(layer, activations, backprops.float())
        scale = module_wrapper.loss_scale
        return {param: (sample.float() / scale if scale != 1.0 else sample.float())
                for param, sample in samples.items()}
    return compute


class Fp32GradSampleModule(GradSampleModule):
    """Opacus' GradSampleModule whose per-sample gradients are formed in fp32 and unscaled (``loss_scale``)."""

    def __init__(self, module: nn.Module, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.loss_scale = 1.0
        # an instance table shadowing the class one: same samplers, each wrapped to work in fp32
        self.GRAD_SAMPLERS = {kind: _fp32_sampler(fn, self) for kind, fn in GradSampleModule.GRAD_SAMPLERS.items()}


class DeviceDPOptimizer(DPOptimizer):
    """DPOptimizer whose noise comes from finfed's CPU generator, whatever device the model is on.

    ``record_clip_scales``, when the training loop sets it for the physical batch about to be clipped, holds
    one factor in (0, 1] per record: each record's gradient is clipped to ``max_grad_norm`` times its factor
    (a classifier's per-label clipping norms, `train.class_weights`). No record can move a step by more than
    ``max_grad_norm``, so the noise (``noise_multiplier * max_grad_norm``) and the accounting are unchanged.
    """

    record_clip_scales: torch.Tensor | None = None

    def clip_and_accumulate(self) -> None:
        scales = self.record_clip_scales
        if scales is None or len(self.grad_samples[0]) == 0:
            super().clip_and_accumulate()
            return
        if scales.shape != (len(self.grad_samples[0]),) or not bool(((scales > 0) & (scales <= 1)).all()):
            raise PrivacyError(f"per-record clipping scales must be one per record of the batch "
                               f"({len(self.grad_samples[0])}), each in (0, 1]; got shape {tuple(scales.shape)}")
        norm = self.max_grad_norm
        # Opacus' clip factor is max_grad_norm / each record's norm: a per-record tensor broadcasts over them
        self.max_grad_norm = norm * scales.to(self.grad_samples[0].device, torch.float32)
        try:
            super().clip_and_accumulate()
        finally:
            self.max_grad_norm = norm

    def add_noise(self) -> None:
        add_noise_on_cpu(self)


def unsupported_per_sample_layers(model: nn.Module) -> list[str]:
    """``name (type)`` of each layer with trainable tensors of its own Opacus has no per-sample rule for."""
    found = []
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)) and \
                type(module) not in GradSampleModule.GRAD_SAMPLERS:
            found.append(f"{name or '(model)'} ({type(module).__module__}.{type(module).__name__})")
    return found


def check_per_sample_gradients(model: nn.Module) -> None:
    """PrivacyError naming every trainable layer DP-SGD cannot give per-sample gradients (before training)."""
    layers = unsupported_per_sample_layers(model)
    if layers:
        raise PrivacyError(f"DP-SGD cannot compute per-sample gradients for trainable layer(s) {', '.join(layers[:5])}"
                           f"{' ...' if len(layers) > 5 else ''}: Opacus has no per-sample gradient rule for their "
                           "type. Put the adapters elsewhere (`lora.target_modules`, e.g. the attention's linear "
                           "projections) or train without DP")


def per_sample_gradients_finite(model: nn.Module) -> bool:
    """Whether every per-sample gradient of this backward pass is finite (fp16 overflow check)."""
    for param in model.parameters():
        sample = getattr(param, "grad_sample", None)
        if param.requires_grad and torch.is_tensor(sample) and not torch.isfinite(sample).all():
            return False
    return True


def clear_per_sample_gradients(model: nn.Module) -> None:
    """Drop this backward pass's per-sample (and ordinary) gradients, keeping earlier clipped sums."""
    for param in model.parameters():
        if param.requires_grad:
            param.grad_sample = None
            param.grad = None
