"""Local training at one site: plain SGD/AdamW, or DP-SGD through Opacus.

DP-SGD here composes Opacus' parts (per-sample gradients, clipping and noise,
accountant hook) with finfed's own Poisson sampler, so that an empty Poisson
batch becomes an explicit noise-only step instead of a fabricated sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from finfed.compat import empty_per_sample_gradients, is_missing_per_sample_gradient
from finfed.config import TrainSettings
from finfed.errors import PrivacyError, RunInterrupted, TrainingError
from finfed.models.adapters import exchanged_state, fixed_tensors
from finfed.models.devices import model_device
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import PrivacyPlan
from finfed.privacy.randomness import dp_randomness
from finfed.training.precision import (
    INITIAL_DP_LOSS_SCALE,
    MAX_SCALE_RETRIES,
    DeviceDPOptimizer,
    Fp32GradSampleModule,
    autocast,
    check_per_sample_gradients,
    check_precision,
    clear_per_sample_gradients,
    per_sample_gradients_finite,
)

# Opacus rescales per-sample gradients assuming this reduction; the task's loss must match.
LOSS_REDUCTION = "mean"

LossFn = Callable[[nn.Module, dict], torch.Tensor]
Collate = Callable[[Sequence[dict]], dict]


@dataclass
class Arithmetic:
    """How a step computes: ``train.precision`` on ``device``; fp16's loss scaling (GradScaler, or under DP
    the per-sample gradients' own scale, see finfed.training.precision)."""

    precision: str
    device: torch.device
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        return autocast(self.precision, self.device)


@dataclass(frozen=True)
class TrainOutcome:
    mean_loss: float
    steps: int
    empty_batches: int
    examples_seen: int


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """One parameter group for adapters, one for the head (which may learn faster).

    Under DP the head's few hundred values carry most of the signal, while noise
    reaches every adapter value: a separate head rate lets the head move without
    letting noise random-walk the adapters.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("the model has no trainable parameters")
    head_lr = settings.head_learning_rate or settings.learning_rate
    # peft keeps the fully trained task head under `modules_to_save`
    groups = [{"params": [p for n, p in trainable if "modules_to_save" not in n], "lr": settings.learning_rate},
              {"params": [p for n, p in trainable if "modules_to_save" in n], "lr": head_lr}]
    groups = [g for g in groups if g["params"]]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.learning_rate, momentum=0.9)
    return torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def poisson_batches(num_records: int, sample_rate: float, steps: int,
                    generator: torch.Generator):
    """Each record joins each batch independently with probability ``sample_rate``."""
    for _ in range(steps):
        mask = torch.rand(num_records, generator=generator) < sample_rate
        yield mask.nonzero().flatten().tolist()


def shuffled_batches(num_records: int, batch_size: int, steps: int, generator: torch.Generator):
    """Ordinary shuffled mini-batches (the non-private baseline)."""
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(num_records, generator=generator).tolist()
        batch, order = order[:batch_size], order[batch_size:]
        yield batch


def _fixed_backbone_as_at_inference(model: nn.Module) -> None:
    """With no adapter trained (``lora.method: head``) the backbone is a fixed feature extractor: its
    modules run as at inference (no dropout), so the head learns on the features it will be used on
    rather than on randomly thinned ones. The head and the dropout before it keep training."""
    if not fixed_tensors(model):  # the mark add_adapters leaves on a `head` model: adapters train otherwise
        return
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def _check_private_setup(model: nn.Module, loss_reduction: str) -> None:
    """Catch the set-ups under which Opacus trains silently without valid per-sample gradients."""
    if not all(module.training for module in model.modules()
               if any(p.requires_grad for p in module.parameters(recurse=False))):
        raise PrivacyError("every module with a trainable tensor must be in train mode before DP wrapping: "
                           "Opacus only captures activations of modules in train mode, so gradients would go "
                           "unclipped")
    if loss_reduction != LOSS_REDUCTION:
        raise PrivacyError(f"the task's loss uses reduction {loss_reduction!r} but DP-SGD is set up for "
                           f"{LOSS_REDUCTION!r}; per-sample gradients would be mis-scaled")


def _noise_only_step(optimizer: DPOptimizer) -> None:
    """An empty Poisson batch still takes a step: zero clipped gradients plus Gaussian noise."""
    empty_per_sample_gradients(optimizer)
    optimizer.step()


def train_locally(model: nn.Module, dataset: Sequence[dict], collate: Collate, loss_fn: LossFn, *,
                  loss_reduction: str, settings: TrainSettings, steps: int, seed: int,
                  plan: PrivacyPlan | None = None, accountant: SiteAccountant | None = None,
                  progress: Callable[[int, int, float], None] | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  reproducible_dp: bool = False,
                  clip_scales: Callable[[dict], torch.Tensor] | None = None) -> TrainOutcome:
    """Train ``model`` in place for ``steps`` steps; with ``plan``, under DP-SGD.

    ``seed`` drives only non-private randomness (dropout, the baseline's shuffling). DP sampling
    and noise are secret unless ``reproducible_dp`` (tests and benchmarks: see finfed.privacy.randomness).
    ``should_stop`` is asked before every step; once it says yes, RunInterrupted is raised and
    the round is abandoned (the caller records no spend and sends nothing). ``clip_scales`` (DP only):
    each record's clipping norm as a share of the plan's, from its collated batch (DeviceDPOptimizer).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    before = exchanged_state(model)
    model.train()
    _fixed_backbone_as_at_inference(model)
    arithmetic = Arithmetic(settings.precision, model_device(model))
    check_precision(arithmetic.precision, arithmetic.device)
    optimizer = make_optimizer(model, settings)
    if plan is not None:
        if accountant is None:
            raise PrivacyError("DP training needs an accountant: every step must be accounted for")
        _check_private_setup(model, loss_reduction)
        check_per_sample_gradients(model)
        module = Fp32GradSampleModule(model, batch_first=True, loss_reduction=LOSS_REDUCTION, strict=True)
        if arithmetic.precision == "fp16":
            module.loss_scale = INITIAL_DP_LOSS_SCALE
        randomness = dp_randomness(seed, reproducible=reproducible_dp)
        # secure_mode: noise as the sum of four Gaussians (Opacus' defence against floating-point attacks
        # on the noise's low bits); it needs no extra package in DPOptimizer, only in PrivacyEngine.
        # DeviceDPOptimizer draws it from the CPU generator whatever the model's device.
        optimizer = DeviceDPOptimizer(optimizer, noise_multiplier=plan.noise_multiplier,
                                max_grad_norm=plan.max_grad_norm,
                                expected_batch_size=plan.expected_batch_size,
                                loss_reduction=LOSS_REDUCTION, generator=randomness.noise, secure_mode=True)
        optimizer.attach_step_hook(accountant.accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
        batches = poisson_batches(len(dataset), plan.sample_rate, steps, randomness.sampling)
    else:
        module = model
        batches = shuffled_batches(len(dataset), settings.batch_size, steps, generator)
        if arithmetic.precision == "fp16":
            arithmetic.scaler = torch.amp.GradScaler(arithmetic.device.type)
    try:
        outcome = _run_steps(module, optimizer, batches, dataset, collate, loss_fn, steps, progress,
                             settings.physical_batch_size, should_stop, arithmetic, clip_scales)
    finally:
        if isinstance(module, GradSampleModule):
            module.remove_hooks()
            module.cleanup()
    _check_changed(before, model)
    return outcome


def _run_steps(module, optimizer, batches, dataset, collate, loss_fn, steps, progress,
               physical_batch_size: int = 0, should_stop: Callable[[], bool] | None = None,
               arithmetic: Arithmetic | None = None,
               clip_scales: Callable[[dict], torch.Tensor] | None = None) -> TrainOutcome:
    arithmetic = arithmetic or Arithmetic("fp32", model_device(module))
    total_loss, seen, empty = 0.0, 0, 0
    for step, indices in enumerate(batches, start=1):
        if should_stop is not None and should_stop():
            raise RunInterrupted(f"the run was asked to stop before step {step} of {steps}: round abandoned")
        optimizer.zero_grad(set_to_none=True)
        if not indices:
            empty += 1
            _noise_only_step(optimizer)
            continue
        loss = _logical_step(module, optimizer, [dataset[i] for i in indices], collate, loss_fn,
                             physical_batch_size or len(indices), step, arithmetic, clip_scales)
        total_loss += loss * len(indices)
        seen += len(indices)
        if progress is not None:
            progress(step, steps, loss)
    return TrainOutcome(mean_loss=total_loss / max(seen, 1), steps=steps, empty_batches=empty,
                        examples_seen=seen)


def _logical_step(module, optimizer, items: list, collate, loss_fn, chunk: int, step: int,
                  arithmetic: Arithmetic, clip_scales: Callable[[dict], torch.Tensor] | None = None) -> float:
    """One optimizer step over ``items``, computed in physical batches of ``chunk`` to bound memory.

    Under DP-SGD each physical batch's per-sample gradients are clipped and summed
    (Opacus' skipped steps); noise is added once, on the last, so the logical
    (Poisson) batch is still one accounted step. Without DP the gradients of the
    chunks are accumulated with weights that make them the batch mean.
    """
    private = isinstance(optimizer, DPOptimizer)
    total = 0.0
    if len(items) > chunk:
        # Records of like length share a physical batch, so each is padded to less: 25 % faster steps on the
        # default run (docs/speed.md). The sum of clipped gradients and the noise do not depend on the order.
        items = sorted(items, key=_token_count)
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        last = start + chunk >= len(items)
        batch = collate(part)
        loss = _backward(module, batch, loss_fn, len(part) / len(items), private, step, arithmetic)
        total += loss * len(part)
        if private:
            optimizer.signal_skip_step(do_skip=not last)
            optimizer.record_clip_scales = clip_scales(batch) if clip_scales is not None else None
            try:
                _step(optimizer)
            finally:
                optimizer.record_clip_scales = None  # this part's records only
            if not last:
                optimizer.zero_grad(set_to_none=True)  # keeps the clipped sums of skipped steps
    if not private and arithmetic.scaler is not None:
        arithmetic.scaler.step(optimizer)  # skips the step if the scaled gradients overflowed
        arithmetic.scaler.update()
    elif not private:
        _step(optimizer)
    return total / len(items)


def _token_count(item: dict) -> int:
    """A record's length before padding (0 for a record without a token list)."""
    return len(item.get("input_ids", ()))


def _backward(module, batch: dict, loss_fn, weight: float, private: bool, step: int,
              arithmetic: Arithmetic) -> float:
    """Forward (under autocast) and backward of one physical batch; its mean loss.

    Without DP the loss is weighted by the part's share of the logical batch. Under DP with fp16 the
    loss is multiplied by the module's loss scale (the per-sample gradients divide it out in fp32);
    if any per-sample gradient overflowed, the same batch is recomputed at half the scale.
    """
    scaled_dp = private and arithmetic.precision == "fp16"
    for _ in range(MAX_SCALE_RETRIES):
        with arithmetic.autocast():
            loss = loss_fn(module, batch)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"training loss became {value} at step {step}; lower the learning rate")
        if private:
            (loss * module.loss_scale if scaled_dp else loss).backward()
        else:
            weighted = loss * weight
            (arithmetic.scaler.scale(weighted) if arithmetic.scaler is not None else weighted).backward()
        if not scaled_dp or per_sample_gradients_finite(module):
            return value
        clear_per_sample_gradients(module)
        module.loss_scale /= 2
    raise TrainingError(f"fp16 per-sample gradients overflowed at step {step} even at loss scale "
                        f"{module.loss_scale:g}; use `train.precision: bf16` or `fp32`")


def _step(optimizer) -> None:
    try:
        optimizer.step()
    except ValueError as error:
        if not is_missing_per_sample_gradient(error):
            raise
        # Opacus needs a gradient for every trainable tensor; one that never reaches the loss has none.
        raise TrainingError("a trainable tensor received no gradient under DP-SGD: an adapter sits on a "
                            "module the loss does not use (for example BERT's `pooler.dense`, matched by "
                            "`dense`); narrow `lora.target_modules`") from error


def _check_changed(before: dict[str, torch.Tensor], model: nn.Module) -> None:
    after = exchanged_state(model)
    if all(torch.equal(before[name], after[name]) for name in before):
        raise TrainingError("no trainable tensor changed during the round: the update would be empty "
                            "(check the learning rate and that adapters are attached)")
