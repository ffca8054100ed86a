"""Noise calibration: one noise multiplier for a site's whole run, never per round."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from opacus.accountants.utils import get_noise_multiplier

from finfed.config import PrivacySettings, TrainSettings
from finfed.errors import DataError


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

    Cached: PRV calibration takes seconds and every round of a site asks again.
    """
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                      sample_rate=sample_rate, steps=steps, accountant=accountant,
                                      epsilon_tolerance=0.01))
