"""Accounting for client-level DP (Flower's server-side clipping wrappers).

Each round the coordinator clips every sampled site's update and adds Gaussian
noise of ``noise_multiplier`` x clipping norm to their sum: a Gaussian mechanism
over sites, applied once per round. Its epsilon protects a whole site's
participation, a different and separate statement from the record-level
guarantee each site computes for its own records.
"""

from __future__ import annotations

from finfed.privacy.accounting import SiteAccountant


def client_level_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """RDP epsilon after ``rounds`` noisy aggregations; ``sample_rate`` = share of sites sampled per round.

    With every site in every round (sample rate 1) there is no amplification by sampling.
    """
    if noise_multiplier <= 0 or rounds <= 0:
        return float("inf") if rounds > 0 else 0.0
    accountant = SiteAccountant("rdp")
    accountant.record(noise_multiplier, min(sample_rate, 1.0), rounds)
    return accountant.epsilon(delta)
