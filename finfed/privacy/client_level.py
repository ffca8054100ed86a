"""Client-level DP on the coordinator: DP-FedAvg over Poisson-sampled sites, and its accounting.

The mechanism (DP-FedAvg with the fixed-denominator estimator, McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models"). Each round:

1. every configured site (``federation.num_sites`` = N) is sampled independently with
   probability q = ``federation.fraction_train``;
2. each sampled site's update u_i (its returned arrays minus the round's global arrays, all
   arrays together as one vector) is clipped to L2 norm C;
3. the coordinator adds N(0, sigma^2 C^2) to every coordinate of the SUM of the clipped updates
   and divides by the EXPECTED number of sampled sites, qN, fixed before the run:

       global += (sum_{i sampled} clip_C(u_i) + N(0, sigma^2 C^2 I)) / (q N)

Why unweighted, with a fixed denominator. Under add/remove-one-site adjacency the sum moves by
at most C whatever the sites' sizes, so noise sigma*C on the sum is a Gaussian mechanism of
multiplier exactly sigma, and dividing by the data-independent qN is post-processing. FedAvg
weighted by example counts (what Flower's wrappers average, adding sigma*C/n as if every weight
were 1/n) gives the largest site a share w_max / sum(w) > 1/n of the average, so its effective
multiplier is sigma * (1/n) / (w_max / sum(w)), below the stated sigma. Calibrating the noise to the
largest weight instead would need a public bound on every site's reported size and a total
weight independent of who took part; the realised denominator (the number or total weight of
the sites that replied) changes with the added or removed site itself. Equal weights and qN
need neither assumption, which is why they are used here (and why Flower's own accountant
refuses weighted FedAvg).

Sampling as accounted. A site that was sampled but is offline, fails, or refuses contributes
nothing: a zero update, within the clipping bound. Flipping the coins only for the sites online
therefore yields the same output distribution as flipping them for all N configured sites, and
an offline site's inclusion probability (0) is below q. A round releases its noisy estimate
even when no site was sampled (the release is then pure noise): skipping it would reveal that
the sample was empty. The accountant composes one Poisson-subsampled Gaussian (q, sigma) per
released round with RDP at the integer orders ``ORDERS``, at which Opacus' analysis and Google's
``dp-accounting`` are both exact and agree to rounding (``tests/test_client_level_dp.py``); this is
slightly more conservative than fractional orders or a PLD accountant.

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping"). C moves geometrically towards the ``target_quantile`` of update norms, driven by a
noisy share of unclipped updates released in the same round with the same denominator:
b = (sum_i (1[|u_i| <= C] - 1/2) + N(0, sigma_b^2)) / (qN) + 1/2, then C <- C exp(-eta (b - gamma)).
One site moves the centred count by exactly 1/2 and the update sum by at most C, so the pair is
a single Gaussian mechanism of multiplier sigma with sigma^-2 = sigma_u^-2 + (2 sigma_b)^-2. The
coordinator therefore adds sigma_u * C to the sum, sigma_u = (sigma^-2 - (2 sigma_b)^-2)^-1/2, and
the stated sigma (the one accounted) covers both releases; the next C is post-processing.

What it protects: the sequence of global models (and clipping norms) released, about whether any
one site took part. The coordinator itself sees every site's update and who was sampled: it is
trusted with them (central DP), and the noise must be secret from everyone else, so it is drawn
from a generator seeded by the operating system's secure source (``secrets``).
"""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from finfed.errors import ConfigError, PrivacyError

Arrays = dict[str, np.ndarray]

# RDP orders of the client-level accountant: integers, where the subsampled Gaussian's RDP has
# an exact closed form in both Opacus and dp-accounting (their fractional-order series differ).
ORDERS = tuple(range(2, 257))
ACCOUNTANT = "rdp (Poisson-subsampled Gaussian, integer orders 2-256)"
CLIP_NORM_LEARNING_RATE = 0.2  # eta of Andrew et al.'s geometric update (their recommended value)


def client_level_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """RDP epsilon of ``rounds`` releases of the Poisson-subsampled Gaussian (rate ``sample_rate``).

    With every site sampled (rate 1) there is no amplification by sampling.
    """
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    rdp = compute_rdp(q=min(sample_rate, 1.0), noise_multiplier=noise_multiplier, steps=rounds, orders=ORDERS)
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": the bound is still valid
        warnings.simplefilter("ignore")
        epsilon, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


def default_count_stddev(noise_multiplier: float, expected_sites: float) -> float:
    """Andrew et al.'s expected-sites / 20, raised to sigma where that would be too small.

    The count must be noisier than sigma / 2; at sigma_b = sigma the update noise grows by 2/sqrt(3).
    """
    return max(expected_sites / 20, noise_multiplier)


def update_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """sigma_u such that the update sum (sigma_u) and the unclipped count (sigma_b) together are sigma."""
    if noise_multiplier <= 0:
        return 0.0
    if 2 * count_stddev <= noise_multiplier:
        raise ConfigError(f"`client_dp.count_stddev` ({count_stddev:g}) must exceed half of "
                          f"`client_dp.noise_multiplier` ({noise_multiplier:g}): the noisy count of unclipped "
                          "sites alone would already spend more than the whole stated noise multiplier")
    return (noise_multiplier ** -2 - (2 * count_stddev) ** -2) ** -0.5


def secure_generator() -> np.random.Generator:
    """A NumPy generator seeded from the OS's secure source: unpredictable to anyone, the coordinator's
    operators included (a test may pass its own seeded generator instead)."""
    return np.random.default_rng(secrets.randbits(128))


@dataclass
class ClientLevelMechanism:
    """The coordinator's per-round release: clip, sum, add noise, divide by the expected count."""

    noise_multiplier: float  # sigma: the multiplier accounted (for adaptive, of both releases together)
    clipping_norm: float  # C (adaptive: the current norm)
    expected_sites: float  # q N, the fixed denominator
    adaptive: bool = False
    target_quantile: float = 0.5
    count_stddev: float = 0.0
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.expected_sites <= 0:
            raise ConfigError("client-level DP needs a positive expected number of sites per round "
                              "(`federation.num_sites` x `federation.fraction_train`)")
        self.rng = self.rng if self.rng is not None else secure_generator()
        self.update_sigma = (update_noise_multiplier(self.noise_multiplier, self.count_stddev)
                             if self.adaptive else self.noise_multiplier)

    @property
    def update_noise_std(self) -> float:
        """Standard deviation of the noise on each coordinate of the released average."""
        return self.update_sigma * self.clipping_norm / self.expected_sites

    def release(self, current: Mapping[str, np.ndarray], replies: Sequence[Mapping[str, np.ndarray]]) -> Arrays:
        """New global arrays from the sampled sites' returned arrays (``replies``; may be empty)."""
        clipped, unclipped = [], 0
        for reply in replies:
            update, norm = _difference(reply, current)
            unclipped += int(norm <= self.clipping_norm)
            clipped.append(_scaled(update, min(1.0, self.clipping_norm / norm) if norm > 0 else 1.0))
        noise_std = self.update_sigma * self.clipping_norm
        released = {}
        for name, base in current.items():
            total = sum((u[name] for u in clipped), np.zeros(base.shape, dtype=np.float64))
            noisy = total + self.rng.normal(0.0, noise_std, size=base.shape)
            released[name] = (base.astype(np.float64) + noisy / self.expected_sites).astype(base.dtype)
        if self.adaptive:
            self._adapt(unclipped, len(replies))
        return released

    def _adapt(self, unclipped: int, sampled: int) -> None:
        centred = unclipped - sampled / 2 + self.rng.normal(0.0, self.count_stddev)
        share_unclipped = centred / self.expected_sites + 0.5
        self.clipping_norm *= math.exp(-CLIP_NORM_LEARNING_RATE * (share_unclipped - self.target_quantile))


def _difference(reply: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> tuple[Arrays, float]:
    if set(reply) != set(current):
        raise PrivacyError(f"a site's update names arrays {sorted(set(reply) ^ set(current))} that the global "
                           "model does not have (or lacks some): it cannot be clipped as a whole")
    update = {name: np.asarray(reply[name], dtype=np.float64) - np.asarray(current[name], dtype=np.float64)
              for name in current}
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in update.values()))
    if not math.isfinite(norm):
        raise PrivacyError("a site's update is not finite (NaN or infinity): it cannot be clipped")
    return update, norm


def _scaled(update: Arrays, factor: float) -> Arrays:
    return {name: u * factor for name, u in update.items()}
