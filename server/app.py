"""Flower ServerApp: FedAvg (or a robust rule) over the trained adapter tensors, central evaluation each round.

The same app serves ``finfed simulate``, ``flwr run`` on a simulation federation, and a
deployed SuperLink, in both aggregation modes: plain FedAvg (named tensors over Flower's
Message API) or SecAgg+ (``federation.secure_aggregation``: Flower's legacy workflow, see
``finfed/coordinator/secure.py``). With ``resume_from`` it continues a stopped run from its checkpoint.
Every site update is validated before aggregation (``finfed/coordinator/validation.py``); plain
rounds may aggregate with Flower's FedMedian, FedTrimmedAvg or Krum (``federation.aggregation``).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from finfed import constants as keys
from finfed.config import from_run_config, to_run_config
from finfed.coordinator.client_dp import ClientLevelDP
from finfed.coordinator.rounds import Coordinator, PlainTraining
from finfed.coordinator.run import FederatedRun
from finfed.coordinator.sampling import SiteNames, SiteSampler
from finfed.coordinator.secure import SecureTraining
from finfed.coordinator.validation import UpdateValidator
from finfed.errors import RunInterrupted
from finfed.privacy.client_level import ClientLevelMechanism, default_count_stddev
from finfed.runs.checkpoint import resume_point
from finfed.runs.stop import stop_requested
from finfed.runtime.app_log import configure_app_logging

app = ServerApp()


class AsksSampledSites:
    """A Flower strategy's messaging, asking the sites ``SiteSampler`` finds online; its own aggregation."""

    def __init__(self, sampler: SiteSampler, **kwargs) -> None:
        super().__init__(weighted_by_key=keys.NUM_EXAMPLES, arrayrecord_key=keys.ARRAYS,
                         configrecord_key=keys.CONFIG, min_available_nodes=1, **kwargs)
        self.sampler = sampler

    def ask(self, nodes: list[int], arrays, config, server_round: int, message_type: str) -> list[Message]:
        """One message per node, all carrying the same records (what FedAvg's own configure_* sends)."""
        config["server-round"] = server_round
        content = RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config})
        return [Message(content=content, message_type=message_type, dst_node_id=node) for node in nodes]

    def configure_train(self, server_round, arrays, config, grid):
        return self.ask(self.sampler.train_nodes(grid), arrays, config, server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round, arrays, config, grid):
        # A `fraction_evaluate` share of the sites online evaluates; a dead one is not waited for.
        return self.ask(self.sampler.evaluate_nodes(grid), arrays, config, server_round, MessageType.EVALUATE)


class RecordingFedAvg(AsksSampledSites, FedAvg):
    """FedAvg weighted by example counts."""


class RecordingMedian(AsksSampledSites, FedMedian):
    """Coordinate-wise median of the updates (unweighted)."""


class RecordingTrimmedMean(AsksSampledSites, FedTrimmedAvg):
    """Coordinate-wise mean without the largest and smallest ``beta`` share (unweighted)."""


class RecordingKrum(AsksSampledSites, Krum):
    """The one update with the smallest summed distance to its n - f - 2 nearest others."""


def aggregation_strategy(federation, sampler: SiteSampler) -> AsksSampledSites:
    """``federation.aggregation`` as a Flower strategy (the config refuses robust rules with SecAgg+ or client DP)."""
    kwargs = dict(fraction_train=federation.fraction_train, fraction_evaluate=federation.fraction_evaluate,
                  min_train_nodes=sampler.needed, min_evaluate_nodes=1)
    if federation.aggregation == "median":
        return RecordingMedian(sampler, **kwargs)
    if federation.aggregation == "trimmed_mean":
        return RecordingTrimmedMean(sampler, beta=federation.trim_fraction, **kwargs)
    if federation.aggregation == "krum":
        return RecordingKrum(sampler, num_malicious_nodes=federation.krum_byzantine_sites, **kwargs)
    return RecordingFedAvg(sampler, **kwargs)


def with_client_dp(strategy: AsksSampledSites, run: FederatedRun) -> Strategy:
    """Client-level DP (``finfed.privacy.client_level``) around FedAvg's messaging, if configured.

    The update noise and the site sampling come from one generator seeded by ``secrets``, or by
    ``seed`` in the labelled test-only mode ``privacy.reproducible``.
    """
    settings, federation = run.config.client_dp, run.config.federation
    if settings.mode == "off":
        return strategy
    rate = federation.fraction_train
    expected = rate * federation.num_sites
    mechanism = ClientLevelMechanism(
        noise_multiplier=settings.noise_multiplier, clipping_norm=settings.clipping_norm, expected_sites=expected,
        adaptive=settings.mode == "adaptive", target_quantile=settings.target_quantile,
        count_stddev=settings.count_stddev or default_count_stddev(settings.noise_multiplier, expected),
        rng=np.random.default_rng(run.config.seed) if run.config.privacy.reproducible else None)
    return ClientLevelDP(strategy, strategy.sampler, mechanism, rate)


def build_coordinator(run: FederatedRun, grid: Grid, context: Context, site_names: dict | None = None):
    """The round loop with the training step the configuration asks for."""
    federation = run.config.federation
    secure = federation.secure_aggregation
    # Client-level DP goes on with any site online: an offline site is one that contributes nothing.
    sampler = SiteSampler(federation, minimum=2 if secure else 1,
                          needed=1 if run.config.client_dp.mode != "off" else None)
    names = SiteNames(site_names)
    strategy = aggregation_strategy(federation, sampler)
    validator = UpdateValidator(run.config)
    if secure:
        training = SecureTraining(context, grid, federation, sampler, names, validator)
    else:
        training = PlainTraining(with_client_dp(strategy, run), grid, names, federation.round_timeout, validator)
    return Coordinator(run, grid, training, strategy, names, federation.round_timeout)


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_app_logging()  # progress reaches the `finfed` command as record lines (finfed/runtime/app_log.py)
    config = from_run_config(context.run_config)
    # A bad resume target is refused before anything is written into it.
    checkpoint = resume_point(config.resume_from, to_run_config(config)) if config.resume_from else None
    run = FederatedRun(config)
    coordinator = None
    try:
        if checkpoint is None:
            run.start()
        else:
            run.resume(checkpoint.run_state, checkpoint.round)
        coordinator = build_coordinator(run, grid, context,
                                        checkpoint.strategy_state.get("site_names") if checkpoint else None)
        run.finish(coordinator.run_rounds(checkpoint))
    except BaseException as error:
        # Asked to stop, or stopped by a signal (Flower turns SIGTERM into SystemExit): interrupted, not failed.
        if not (isinstance(error, (RunInterrupted, SystemExit, KeyboardInterrupt))
                or stop_requested(run.outputs.run_dir)):
            run.fail(error)
            raise
        run.interrupt(coordinator.completed_round if coordinator else checkpoint.round if checkpoint else 0)
        if not isinstance(error, RunInterrupted):
            raise
