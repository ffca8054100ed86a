"""Noise calibration: one noise multiplier for a site's whole run, never per round."""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from finfed.atomic import write_bytes_atomic
from finfed.config import PrivacySettings, TrainSettings
from finfed.constants import CALIBRATION_CACHE_ENV
from finfed.errors import DataError, PrivacyError
from finfed.privacy.accounting import history_epsilon


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything that fixes a site's DP-SGD for the run, decided before round 1."""

    num_records: int
    expected_batch_size: int
    sample_rate: float
    steps_per_round: int
    total_steps: int
    noise_multiplier: float
    max_grad_norm: float
    target_epsilon: float
    target_delta: float
    accountant: str


def steps_per_round(num_records: int, train: TrainSettings) -> int:
    """Poisson steps per round: ``local_epochs`` expected passes over the records."""
    return train.local_epochs * max(1, round(num_records / train.batch_size))


def plan_privacy(*, num_records: int, train: TrainSettings, privacy: PrivacySettings,
                 rounds: int, site: str = "site") -> PrivacyPlan:
    """Calibrate the noise so the site's target (epsilon, delta) covers all ``rounds``."""
    if num_records < train.batch_size:
        raise DataError(f"{site} has {num_records} training examples, fewer than `train.batch_size` "
                        f"({train.batch_size}); lower the batch size or give the site more data")
    sample_rate = train.batch_size / num_records
    per_round = steps_per_round(num_records, train)
    total = rounds * per_round
    noise = privacy.noise_multiplier or calibrate_noise(
        target_epsilon=privacy.target_epsilon, target_delta=privacy.target_delta,
        sample_rate=sample_rate, steps=total, accountant=privacy.accountant)
    return PrivacyPlan(num_records=num_records, expected_batch_size=train.batch_size,
                       sample_rate=sample_rate, steps_per_round=per_round, total_steps=total,
                       noise_multiplier=float(noise), max_grad_norm=privacy.max_grad_norm,
                       target_epsilon=privacy.target_epsilon, target_delta=privacy.target_delta,
                       accountant=privacy.accountant)


@functools.lru_cache(maxsize=64)
def calibrate_noise(*, target_epsilon: float, target_delta: float, sample_rate: float, steps: int,
                    accountant: str) -> float:
    """Smallest noise multiplier (to 0.01 in epsilon) whose epsilon after ``steps`` stays within target.

    Cached: PRV calibration takes seconds and every round of a site asks again. Across the processes of
    one simulation (the CLI's preflight, each worker) through the file named by ``FINFED_CALIBRATION_CACHE``,
    if set: a value found there is used only after the accountant confirms its epsilon is within target
    (one epsilon evaluation instead of a search), so an altered file can cost utility, never privacy.
    """
    key = json.dumps([target_epsilon, target_delta, sample_rate, steps, accountant])
    shared = _shared_calibrations()
    cached = shared.get(key)
    if isinstance(cached, float) and cached > 0 and history_epsilon(
            accountant, ((cached, sample_rate, steps),), target_delta) <= target_epsilon:
        return cached
    noise = search_noise(lambda candidate: history_epsilon(accountant, ((candidate, sample_rate, steps),),
                                                            target_delta),
                         target_epsilon, EPSILON_TOLERANCE)
    _share_calibration(key, noise)
    return noise


EPSILON_TOLERANCE = 0.01
LARGEST_NOISE = 2.0 ** 20  # Opacus' own limit is about 1e6 ("the privacy budget is too low")
SMALLEST_NOISE = 2.0 ** -6  # a budget met with less noise than this gets this much


def search_noise(epsilon_at: Callable[[float], float], target: float, tolerance: float) -> float:
    """The smallest noise multiplier, to ``tolerance`` in epsilon, whose epsilon stays within ``target``:
    the answer's epsilon lies in [target - tolerance, target] (epsilon falls as the noise grows).

    The condition Opacus' ``get_noise_multiplier`` meets, in fewer evaluations (each a third of a second
    with PRV): Opacus bisects [0, 20], about a dozen; here secant steps on log-noise against log-epsilon,
    close to a straight line, aimed at the middle of the window and kept inside the bracket found so far:
    four or five.
    """
    aim = math.log(target - tolerance / 2)
    low: tuple[float, float] | None = None  # (noise, epsilon) with epsilon above target
    high: tuple[float, float] | None = None  # (noise, epsilon) with epsilon within target
    tried: list[tuple[float, float]] = []
    noise = 1.0
    while True:
        epsilon = epsilon_at(noise)
        tried.append((math.log(noise), math.log(max(epsilon, 1e-12))))
        if epsilon <= target:
            high = (noise, epsilon) if high is None or noise < high[0] else high
            if target - epsilon <= tolerance or (low is None and noise <= SMALLEST_NOISE):
                return high[0]
        else:
            low = (noise, epsilon) if low is None or noise > low[0] else low
            if noise >= LARGEST_NOISE:
                raise PrivacyError(f"no noise multiplier up to {LARGEST_NOISE:g} reaches epsilon {target}: the "
                                   "privacy budget is too small for this many steps at this sample rate")
        noise = _next_noise(tried, aim, low, high)


def _next_noise(tried: list[tuple[float, float]], aim: float, low, high) -> float:
    """The secant step through the last two tries (log-noise, log-epsilon) towards ``aim`` (the first step
    assumes epsilon falls as 1 / noise squared), kept strictly inside the bracket, or at most 8 times
    further out while one side is still missing."""
    (x1, y1) = tried[-1]
    (x0, y0) = tried[-2] if len(tried) > 1 else (x1 + 1.0, y1 - 2.0)
    x = x1 + (aim - y1) * (x1 - x0) / (y1 - y0) if y1 != y0 else x1
    if low is not None and high is not None:
        x_low, x_high = math.log(low[0]), math.log(high[0])
        margin = 0.01 * (x_high - x_low)
        return math.exp(min(max(x, x_low + margin), x_high - margin))
    if high is None:  # more noise needed
        x_low = math.log(low[0])
        return math.exp(min(max(x, x_low + 0.05), x_low + math.log(8)))
    x_high = math.log(high[0])  # less noise will do
    return max(math.exp(max(min(x, x_high - 0.05), x_high - math.log(8))), SMALLEST_NOISE)


def _shared_calibrations() -> dict:
    path = os.environ.get(CALIBRATION_CACHE_ENV)
    if not path:
        return {}
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _share_calibration(key: str, noise: float) -> None:
    path = os.environ.get(CALIBRATION_CACHE_ENV)
    if path:
        try:
            write_bytes_atomic(path, json.dumps({**_shared_calibrations(), key: noise}).encode("utf-8"))
        except OSError:
            pass  # a cache only: the next process calibrates again
