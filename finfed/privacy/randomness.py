"""Where a site's DP-SGD randomness (Poisson sampling, Gaussian noise) comes from.

The (epsilon, delta) guarantee holds against the coordinator only if the coordinator cannot
know or predict which records were sampled and what noise was added: with a seed it knows,
it could subtract the noise and read the clipped gradient sum. So by default both come from
the site's operating system entropy (``os.urandom``), drawn afresh for every round; nothing
the coordinator sends (seed, round, site id) enters them.

``privacy.reproducible`` derives them from the run's ``seed`` instead, so tests and benchmarks
can repeat a run bit for bit. That mode is NOT private against the coordinator: it is labelled
in every report and export of the run, and ``finfed deploy`` and deployed sites refuse it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from finfed.compat import generator_from_words

logger = logging.getLogger(__name__)

REPRODUCIBLE_LABEL = ("reproducible DP randomness: NOT private against the coordinator, "
                      "test/benchmark use only")
SECRET_LABEL = ("secret DP randomness: each site draws its Poisson sampling and Gaussian noise from its own "
                "operating-system entropy (os.urandom) every round; the coordinator can neither seed nor "
                "predict them")

# Offsets that keep the two reproducible streams apart (and apart from the dropout seed).
_SAMPLING_STREAM, _NOISE_STREAM = 0x5A3D_0001, 0x5A3D_0002


@dataclass(frozen=True)
class DPRandomness:
    """The two generators of one round of DP-SGD: which records join each batch, and the noise."""

    sampling: torch.Generator
    noise: torch.Generator
    reproducible: bool


def secret_generator() -> torch.Generator:
    """A CPU generator with its whole MT19937 state (19968 bits) from ``os.urandom``.

    Opacus' DPOptimizer needs a ``torch.Generator``; PyTorch's CPU one is MT19937, not a
    cryptographic generator. Its state is unknown to the coordinator, which sees the outputs
    only mixed with gradients and averaged over many steps, never as raw draws. Opacus' own
    cryptographic option (``PrivacyEngine(secure_mode=True)``) needs ``torchcsprng``, whose last
    release (0.2.1, 2021) builds only against PyTorch 1.8.
    """
    words = np.frombuffer(os.urandom(4 * 624), dtype="<u4")
    return generator_from_words(words)


def dp_randomness(seed: int, *, reproducible: bool) -> DPRandomness:
    """Fresh secret generators, or (``reproducible``) generators derived from ``seed``."""
    if not reproducible:
        return DPRandomness(sampling=secret_generator(), noise=secret_generator(), reproducible=False)
    return DPRandomness(sampling=torch.Generator().manual_seed(seed + _SAMPLING_STREAM),
                        noise=torch.Generator().manual_seed(seed + _NOISE_STREAM), reproducible=True)


def warn_if_reproducible(reproducible: bool, who: str) -> None:
    """Logged once where a run or a site starts: the mode must never pass unnoticed."""
    if reproducible:
        logger.warning("%s: %s (privacy.reproducible is true)", who, REPRODUCIBLE_LABEL)


def randomness_record(dp_enabled: bool, reproducible: bool) -> dict[str, Any]:
    """The top-level fields of privacy.json (and the export) that say where the DP randomness came from."""
    if not dp_enabled:
        return {"reproducible_dp": False, "dp_randomness": None}
    return {"reproducible_dp": reproducible, "dp_randomness": REPRODUCIBLE_LABEL if reproducible else SECRET_LABEL}


def randomness_warning(privacy: dict[str, Any]) -> str:
    """The loud line a report or export prints for a run with reproducible DP randomness; else empty."""
    return f"**WARNING: {REPRODUCIBLE_LABEL}.**" if privacy.get("reproducible_dp") else ""
