"""Flower ServerApp: FedAvg over the trained adapter tensors, central evaluation each round.

The same app serves ``finfed simulate``, ``flwr run`` on a simulation
federation, and a deployed SuperLink.
"""

from __future__ import annotations

from typing import Iterable

from flwr.app import ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy)

from finfed import constants as keys
from finfed.config import from_run_config
from finfed.federation import FederatedRun
from finfed.records import from_array_record, to_array_record

app = ServerApp()


class RecordingFedAvg(FedAvg):
    """FedAvg weighted by example counts that also hands each site's reply to the run."""

    def __init__(self, run: FederatedRun, **kwargs) -> None:
        super().__init__(weighted_by_key=keys.NUM_EXAMPLES, arrayrecord_key=keys.ARRAYS,
                         configrecord_key=keys.CONFIG, **kwargs)
        self.run = run

    def configure_train(self, server_round, arrays, config, grid):
        # Once every site has refused for budget reasons, asking again cannot change their answer.
        return [] if self.run.exhausted else super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return [] if self.run.exhausted else super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        answered = [m for m in replies if not m.has_error()]
        refusals = [m for m in answered if keys.ARRAYS not in m.content]
        updates = [m for m in answered if keys.ARRAYS in m.content]
        self.run.record_training(server_round, [dict(m.content[keys.METRICS]) for m in updates],
                                 [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in failed],
                                 [dict(m.content[keys.METRICS]) for m in refusals])
        return super().aggregate_train(server_round, updates + failed)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self.run.record_evaluation(
            server_round, [dict(m.content[keys.METRICS]) for m in replies if not m.has_error()])
        return super().aggregate_evaluate(server_round, replies)


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


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = from_run_config(context.run_config)
    run = FederatedRun(config)
    run.start()
    try:
        federation = config.federation
        strategy = RecordingFedAvg(
            run, fraction_train=federation.fraction_train, fraction_evaluate=1.0,
            min_train_nodes=max(federation.min_sites, 1), min_evaluate_nodes=1,
            min_available_nodes=federation.num_sites)
        strategy = with_client_dp(strategy, run)
        result = strategy.start(
            grid=grid, initial_arrays=to_array_record(run.initial_arrays()), num_rounds=federation.rounds,
            timeout=federation.round_timeout, train_config=ConfigRecord(run.train_config()),
            evaluate_fn=lambda rnd, arrays: MetricRecord(run.central_evaluate(rnd, from_array_record(arrays))))
        run.finish(from_array_record(result.arrays))
    except BaseException as error:
        run.fail(error)
        raise
