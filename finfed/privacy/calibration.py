"""Noise calibration: one noise multiplier for a site's whole run, never per round."""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from opacus.accountants.utils import get_noise_multiplier

from finfed.atomic import write_bytes_atomic
from finfed.config import PrivacySettings, TrainSettings
from finfed.constants import CALIBRATION_CACHE_ENV
from finfed.errors import DataError
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
    noise = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                       sample_rate=sample_rate, steps=steps, accountant=accountant,
                                       epsilon_tolerance=0.01))
    _share_calibration(key, noise)
    return noise


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
