"""Flower ServerApp: FedAvg over the trained adapter tensors, central evaluation each round.

The same app serves ``finfed simulate``, ``flwr run`` on a simulation federation, and a
deployed SuperLink, in both aggregation modes: plain FedAvg (named tensors over Flower's
Message API) or SecAgg+ (``federation.secure_aggregation``: Flower's legacy workflow, see
``server/secure.py``). With ``resume_from`` it continues a stopped run from its checkpoint.
"""

from __future__ import annotations

from flwr.app import Context, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy)

from finfed import constants as keys
from finfed.checkpoint import resume_point
from finfed.config import from_run_config, to_run_config
from finfed.errors import RunInterrupted
from finfed.federation import FederatedRun
from finfed.stop import stop_requested
from server.rounds import Coordinator, PlainTraining
from server.sampling import SiteNames, SiteSampler
from server.secure import SecureTraining

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg weighted by example counts, asking the sites ``SiteSampler`` finds online."""

    def __init__(self, sampler: SiteSampler, **kwargs) -> None:
        super().__init__(weighted_by_key=keys.NUM_EXAMPLES, arrayrecord_key=keys.ARRAYS,
                         configrecord_key=keys.CONFIG, min_available_nodes=1, **kwargs)
        self.sampler = sampler

    def _ask(self, nodes: list[int], arrays, config, server_round: int, message_type: str):
        config["server-round"] = server_round
        return self._construct_messages(RecordDict({keys.ARRAYS: arrays, keys.CONFIG: config}), nodes,
                                        message_type)

    def configure_train(self, server_round, arrays, config, grid):
        return self._ask(self.sampler.train_nodes(grid), arrays, config, server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round, arrays, config, grid):
        # Every site online evaluates; a dead one is not waited for.
        return self._ask(sorted(grid.get_node_ids()), arrays, config, server_round, MessageType.EVALUATE)


def with_client_dp(strategy: Strategy, run: FederatedRun) -> Strategy:
    """Wrap FedAvg in Flower's server-side client-level DP, if configured."""
    settings, sampled = run.config.client_dp, run.sites_per_round
    if settings.mode == "fixed":
        return DifferentialPrivacyServerSideFixedClipping(
            strategy, noise_multiplier=settings.noise_multiplier, clipping_norm=settings.clipping_norm,
            num_sampled_clients=sampled)
    if settings.mode == "adaptive":
        # The noisy count of clipped updates must be noisier than sigma / 2 for the update noise to
        # compensate (Andrew et al., 2021); sigma itself keeps the combined mechanism at sigma.
        return DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, noise_multiplier=settings.noise_multiplier, num_sampled_clients=sampled,
            initial_clipping_norm=settings.clipping_norm, target_clipped_quantile=settings.target_quantile,
            clipped_count_stddev=max(sampled / 20, settings.noise_multiplier))
    return strategy


def build_coordinator(run: FederatedRun, grid: Grid, context: Context, site_names: dict | None = None):
    """The round loop with the training step the configuration asks for."""
    federation = run.config.federation
    secure = federation.secure_aggregation
    sampler = SiteSampler(federation, minimum=2 if secure else 1)
    names = SiteNames(site_names)
    fedavg = RecordingFedAvg(sampler, fraction_train=federation.fraction_train, fraction_evaluate=1.0,
                             min_train_nodes=sampler.needed, min_evaluate_nodes=1)
    if secure:
        training = SecureTraining(context, grid, federation, sampler, names)
    else:
        training = PlainTraining(with_client_dp(fedavg, run), grid, names, federation.round_timeout)
    return Coordinator(run, grid, training, fedavg, names, federation.round_timeout)


@app.main()
def main(grid: Grid, context: Context) -> None:
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
