"""Checks a site update must pass before the coordinator aggregates it.

An update is the site's trainable tensors after local training. It is rejected, recorded and left
out of the round (the round goes on with the others) when:

- ``tensor names``: its tensor names are not exactly the global model's trainable tensors;
- ``tensor shapes``: a tensor's shape differs from the global one;
- ``non-finite values``: a value is NaN or infinite;
- ``norm above bound``: the L2 norm of its change to the global tensors exceeds the bound below.

Only the category is recorded (metrics.jsonl, status.json, the report), never a value of the update.

**The norm bound** (``federation.update_norm_bound``; 0 = derived here, a worst case that an honest
site cannot exceed, so it never rejects one):

- *AdamW* (PyTorch defaults beta1 0.9, beta2 0.999, no amsgrad): after step t the bias-corrected
  ratio |m̂_t| / sqrt(v̂_t) of each coordinate is at most
  ``A_t = sqrt(1 - b2^t) / (1 - b1^t) * sum_{k<t} (1 - b1) b1^k / sqrt((1 - b2) b2^k)``
  (each past gradient g_k satisfies g_k^2 <= v_t / ((1 - b2) b2^k); eps only shrinks the step).
  So one coordinate moves at most ``lr * sum_t A_t`` in ``steps`` steps whatever the gradients: the
  bound holds with and without DP. Over d_a adapter values at ``learning_rate`` and d_h head
  values at ``head_learning_rate``: ``sqrt(d_a lr_a^2 + d_h lr_h^2) * sum_t A_t``. Decoupled weight
  decay moves the weights by at most ``lr * wd * ||w||`` per step, with ||w|| <= ||w_global|| + that bound.
  (A_1 = 1; A_t grows towards about 30 as t grows; per coordinate this is Kingma & Ba's bound, made exact.)
- *SGD* (momentum 0.9): the step is ``lr * v_t`` with ``||v_t|| <= 10 G`` where G bounds the norm of
  one step's gradient. Under record-level DP (Opacus) that gradient is the sum of per-record
  gradients clipped to C plus Gaussian noise of std sigma*C per coordinate, divided by the
  expected batch size B: ``G <= C (n + sigma (sqrt(d) + 10)) / B`` (a Poisson batch holds at most the
  site's n records; the noise's norm exceeds sigma*C*(sqrt(d) + 10) with probability below e^-50).
  The bound is ``steps * max(lr_a, lr_h) * 10 * G``. Without DP nothing clips the gradients, so no
  bound follows from the settings: only a configured ``update_norm_bound`` applies.

``steps`` is what the settings give for the site's reported record count (``local_epochs`` passes of
``n / batch_size`` steps), and ``n`` and sigma are the site's own reported values (``num-examples``,
``noise-multiplier``): a site that overstates them raises its own bound. Where that matters, set
``federation.update_norm_bound``, which then applies to every site.

**Under SecAgg+** the coordinator sees only the weighted average of the sites' updates, so it can
check only that: finite values, and a norm within the largest site's bound (an average of
updates each within its bound is within the largest by the triangle inequality). A failing average
shows that some site sent a bad update but not which: the round's aggregate is rejected as a whole
(the global model stays as it was). Names and shapes are fixed by the protocol (one vector, cut by
the coordinator's own tensor list); per-site NaN or norm checks are impossible, and SecAgg+'s own
``secagg_clipping_range`` (each value within [-range, range], checked by an honest site before
masking) is the only per-site limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from finfed import constants as keys
from finfed.config import ExperimentConfig
from finfed.privacy.calibration import steps_per_round

NAMES, SHAPES, NON_FINITE, NORM = "tensor names", "tensor shapes", "non-finite values", "norm above bound"
UNREADABLE = "unreadable tensors"  # the arrays record could not be read as numeric tensors at all
REASONS = (NAMES, SHAPES, NON_FINITE, NORM, UNREADABLE)
AGGREGATE = "aggregate"  # the "site" of a rejection under SecAgg+: the unmasked average as a whole

ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which finfed.training.local uses
SGD_MOMENTUM = 0.9  # finfed.training.local's SGD
NOISE_TAIL = 10.0  # ||N(0, I_d)|| > sqrt(d) + t with probability <= exp(-t^2 / 2): e^-50 for t = 10
HEAD_MARKER = "modules_to_save"  # peft's name for the fully trained task head (finfed.training.local)


def adam_step_sum(steps: int, betas: tuple[float, float] = ADAM_BETAS) -> float:
    """``sum_{t=1..steps} A_t``: the most one coordinate can move under Adam(W) in ``steps`` steps, per unit lr."""
    b1, b2 = betas
    total, inner = 0.0, 0.0
    for t in range(1, steps + 1):
        k = t - 1  # the oldest gradient in m_t is k steps back
        inner += (1 - b1) * b1 ** k / math.sqrt((1 - b2) * b2 ** k)
        total += math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * inner
    return total


def _sizes(arrays: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """Values in the adapters and in the head."""
    head = sum(int(np.size(a)) for name, a in arrays.items() if HEAD_MARKER in name)
    return sum(int(np.size(a)) for a in arrays.values()) - head, head


def derived_norm_bound(config: ExperimentConfig, global_arrays: Mapping[str, np.ndarray],
                       site_metrics: Mapping[str, Any]) -> float | None:
    """The worst-case L2 norm of one site's change in one round (module docstring); None: none follows."""
    train = config.train
    records = int(site_metrics.get(keys.NUM_EXAMPLES, 0) or 0)
    steps = steps_per_round(max(records, 1), train)
    lr_adapter, lr_head = train.learning_rate, train.head_learning_rate or train.learning_rate
    d_adapter, d_head = _sizes(global_arrays)
    if config.lora.method == "head":  # the adapters are fixed: a site sends them back as it got them
        d_adapter = 0
    if train.optimizer == "adamw":
        moved = math.sqrt(d_adapter * lr_adapter ** 2 + d_head * lr_head ** 2) * adam_step_sum(steps)
        if train.weight_decay:
            weights = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in global_arrays.values()))
            moved += steps * max(lr_adapter, lr_head) * train.weight_decay * (weights + moved)
        return moved
    if not config.privacy.enabled:
        return None
    sigma = float(site_metrics.get(keys.NOISE_MULTIPLIER, 0.0) or 0.0)
    clip = config.privacy.max_grad_norm
    gradient = clip * (records + sigma * (math.sqrt(d_adapter + d_head) + NOISE_TAIL)) / train.batch_size
    return steps * max(lr_adapter, lr_head) * gradient / (1 - SGD_MOMENTUM)


def norm_bound(config: ExperimentConfig, global_arrays: Mapping[str, np.ndarray],
               site_metrics: Mapping[str, Any]) -> float | None:
    """The configured bound, else the derived one (None: no norm check)."""
    configured = config.federation.update_norm_bound
    return configured if configured > 0 else derived_norm_bound(config, global_arrays, site_metrics)


def update_problem(global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray],
                   bound: float | None) -> str | None:
    """The first check ``update`` fails (one of ``REASONS``), or None if it may be aggregated."""
    if set(update) != set(global_arrays):
        return NAMES
    if any(np.shape(update[name]) != np.shape(value) for name, value in global_arrays.items()):
        return SHAPES
    try:
        values = {name: np.asarray(update[name], dtype=np.float64) for name in global_arrays}
    except (TypeError, ValueError):
        return NON_FINITE  # not numbers at all
    if not all(np.isfinite(v).all() for v in values.values()):
        return NON_FINITE
    if bound is not None:
        squared = sum(float(np.sum(np.square(values[name] - np.asarray(g, dtype=np.float64))))
                      for name, g in global_arrays.items())
        if not math.isfinite(squared) or math.sqrt(squared) > bound:
            return NORM
    return None


def rejection(site: int | str, reason: str) -> dict[str, Any]:
    """What is recorded of a rejected update: who, and the category; never a value."""
    return {"site": site, "reason": reason}


class UpdateValidator:
    """The checks above with a run's settings (``federation.validate_updates`` off: every update passes)."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.enabled = config.federation.validate_updates

    def problem(self, global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray],
                site_metrics: Mapping[str, Any]) -> str | None:
        if not self.enabled:
            return None
        return update_problem(global_arrays, update, norm_bound(self.config, global_arrays, site_metrics))

    def aggregate_problem(self, global_arrays: Mapping[str, np.ndarray], aggregate: Mapping[str, np.ndarray],
                          sites_metrics: list[Mapping[str, Any]]) -> str | None:
        """SecAgg+: the unmasked average, against the largest of the contributing sites' bounds."""
        if not self.enabled:
            return None
        bounds = [norm_bound(self.config, global_arrays, m) for m in sites_metrics]
        bound = None if not bounds or None in bounds else max(bounds)
        return update_problem(global_arrays, aggregate, bound)
