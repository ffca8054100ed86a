"""Client-level DP as a Flower strategy: Poisson-sampled sites, unweighted clipped sum, fixed denominator.

Flower's ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` are not used: they add
sigma*C/n to the FedAvg average weighted by example counts and divided by the sites that
replied, which is a Gaussian mechanism of multiplier sigma only when all weights are equal and
the number of replies is fixed. The mechanism and why it is exact are in
``finfed.privacy.client_level``; this module only moves Flower messages to and from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from finfed import constants as keys
from finfed.coordinator.sampling import SiteSampler
from finfed.errors import RunError
from finfed.privacy.client_level import ClientLevelMechanism
from finfed.records import from_array_record, to_array_record

log = logging.getLogger(__name__)


class ClientLevelDP(Strategy):
    """Samples sites (Poisson, rate q), asks them through ``asker``, releases the noisy average."""

    # The coordinator applies this strategy's result even in a round without updates: the noise
    # is released every round, or an empty sample would show (see finfed.privacy.client_level).
    releases_every_round = True

    def __init__(self, asker, sampler: SiteSampler, mechanism: ClientLevelMechanism, sample_rate: float) -> None:
        super().__init__()
        self.asker, self.sampler, self.mechanism, self.sample_rate = asker, sampler, mechanism, sample_rate
        self.current: dict = {}

    @property
    def clipping_norm(self) -> float:
        return self.mechanism.clipping_norm

    @clipping_norm.setter
    def clipping_norm(self, value: float) -> None:
        self.mechanism.clipping_norm = float(value)

    def checkpoint_state(self) -> dict[str, float]:
        """Saved in checkpoints: adaptive clipping resumes from the norm it had reached."""
        return {"clipping_norm": self.clipping_norm}

    def restore_checkpoint_state(self, state: dict) -> None:
        if "clipping_norm" in state:
            self.clipping_norm = float(state["clipping_norm"])

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = from_array_record(arrays)
        nodes = self.sampler.poisson_nodes(grid, self.sample_rate, self.mechanism.rng)
        return self.asker.ask(nodes, arrays, config, server_round, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """A sampled site that errs, refuses or is silent contributes nothing; the release happens anyway."""
        usable = [m for m in replies if not m.has_error() and keys.ARRAYS in m.content]
        _refuse_duplicate_sites(server_round, usable)
        updates = [from_array_record(m.content[keys.ARRAYS]) for m in usable]
        released = self.mechanism.release(self.current, updates)
        log.debug("round %d: client-level DP release from %d site update(s), noise std %.3g per coordinate",
                 server_round, len(updates), self.mechanism.update_noise_std)
        return to_array_record(released), MetricRecord({"client-dp-clipping-norm": self.mechanism.clipping_norm})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.asker.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.asker.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.debug("client-level DP: sigma %g, clipping norm %g, sample rate %g, denominator %g",
                 self.mechanism.noise_multiplier, self.mechanism.clipping_norm, self.sample_rate,
                 self.mechanism.expected_sites)


def _refuse_duplicate_sites(server_round: int, replies: list[Message]) -> None:
    """One site answering through two nodes would count twice in the sum: its sensitivity would be 2C."""
    sites = [int(m.content[keys.METRICS][keys.SITE_ID]) for m in replies if keys.SITE_ID in m.content[keys.METRICS]]
    repeated = sorted({site for site in sites if sites.count(site) > 1})
    if repeated:
        raise RunError(f"round {server_round}: site(s) {repeated} sent more than one update (two SuperNodes "
                       "for one site); client-level DP counts each site once")
