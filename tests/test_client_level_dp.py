"""Client-level DP: the noise matches each site's sensitivity whatever its size, the sampling is the
Poisson sampling accounted, and the stated epsilon equals Google's dp-accounting for that mechanism."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from inprocess_grid import NODE_BASE, InProcessGrid

from finfed import constants as keys
from finfed.config import ExperimentConfig, config_from_dict
from finfed.coordinator.rounds import PlainTraining
from finfed.coordinator.run import FederatedRun
from finfed.coordinator.sampling import SiteNames, SiteSampler
from finfed.errors import ConfigError, RunError
from finfed.flower_app.server.app import RecordingFedAvg, with_client_dp
from finfed.privacy.client_level import (
    ORDERS,
    ClientLevelMechanism,
    client_level_epsilon,
    update_noise_multiplier,
)
from finfed.records import from_array_record, to_array_record
from finfed.reporting.privacy_report import client_level_text

SHAPES = {"lora.B": (64, 8), "head.weight": (3, 64)}
SIZES = [10, 200, 3000, 40000]  # example counts per site: the largest is 4000x the smallest


def dp_accounting_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float,
                          accountant: str = "rdp") -> float:
    """The same mechanism described to Google's dp-accounting: Poisson(q) of Gaussian(sigma), `rounds` times."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    event = gaussian if sample_rate >= 1 else dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)
    if accountant == "rdp":
        acc = rdp.RdpAccountant(orders=[float(order) for order in ORDERS])
    else:
        acc = pld.PLDAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sigma,rate,rounds", [(1.0, 1.0, 4), (1.2, 0.5, 10), (0.8, 0.4, 50), (5.0, 0.1, 3),
                                               (3.0, 0.75, 200)])
def test_epsilon_equals_dp_accounting_rdp_and_is_above_its_pld(sigma, rate, rounds):
    ours = client_level_epsilon(noise_multiplier=sigma, sample_rate=rate, rounds=rounds, delta=1e-5)
    assert ours == pytest.approx(dp_accounting_epsilon(sigma, rate, rounds, 1e-5), rel=1e-9)
    # PLD is tighter than RDP for the same mechanism, never looser: a sanity check of what is compared.
    assert dp_accounting_epsilon(sigma, rate, rounds, 1e-5, "pld") <= ours


# --------------------------------------------------------------------------- a federation without models

def config(**client_dp) -> ExperimentConfig:
    values = {"federation": {"num_sites": len(SIZES), "fraction_train": 0.5, "rounds": 3},
              "client_dp": {"mode": "fixed", "noise_multiplier": 1.1, "clipping_norm": 0.5, **client_dp}}
    return config_from_dict(values)


def updates_for(seed: int, scale: float = 1.0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {site: {name: (rng.normal(0, scale, shape)).astype(np.float32) for name, shape in SHAPES.items()}
            for site in range(len(SIZES))}


def fake_site_app(updates: dict[int, dict[str, np.ndarray]]):
    """A ClientApp that returns global + its site's fixed update, weighted by very unequal example counts."""
    def app(message: Message, context) -> Message:
        site = int(context.node_config["partition-id"])
        current = from_array_record(message.content[keys.ARRAYS])
        arrays = {name: current[name] + updates[site][name] for name in current}
        metrics = MetricRecord({keys.SITE_ID: site, keys.NUM_EXAMPLES: SIZES[site]})
        return Message(RecordDict({keys.ARRAYS: to_array_record(arrays), keys.METRICS: metrics}), reply_to=message)
    return app


def strategy_for(cfg: ExperimentConfig, rng: np.random.Generator | None = None):
    run = SimpleNamespace(config=cfg)
    ticks = itertools.count(0.0, 10_000.0)  # each look at the clock passes the wait: offline sites are not awaited
    sampler = SiteSampler(cfg.federation, poll_s=0.0, clock=lambda: next(ticks), sleep=lambda s: None,
                          needed=1)  # as build_coordinator makes it with client-level DP
    fedavg = RecordingFedAvg(sampler, fraction_train=cfg.federation.fraction_train, fraction_evaluate=1.0,
                             min_train_nodes=1, min_evaluate_nodes=1)
    strategy = with_client_dp(fedavg, run)
    if rng is not None:
        strategy.mechanism.rng = rng
    return strategy


def zeros() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def one_round(strategy, grid, server_round: int = 1, arrays=None):
    training = PlainTraining(strategy, grid, SiteNames(), timeout=5.0)
    return training.train(server_round, arrays if arrays is not None else zeros(), {})


def summary_of(cfg: ExperimentConfig, released_rounds: list[int]) -> dict:
    """FederatedRun's client-level summary; it reads only the config and the rounds released."""
    return FederatedRun.client_level_summary(SimpleNamespace(config=cfg, client_level_rounds=released_rounds))


def flat(arrays) -> np.ndarray:
    return np.concatenate([np.ravel(arrays[name]) for name in sorted(arrays)]).astype(np.float64)


def test_with_one_site_offline_sampling_is_poisson_at_the_stated_rate_and_epsilon_matches_dp_accounting():
    cfg = config()
    grid = InProcessGrid(fake_site_app(updates_for(0)), cfg)
    grid.gone.add(NODE_BASE + 3)  # the largest site is offline for the whole run
    strategy = strategy_for(cfg, np.random.default_rng(1))
    rounds = 400
    asked = [sorted(m.metadata.dst_node_id for m in strategy.configure_train(r, ArrayRecord(), ConfigRecord(), grid))
             for r in range(1, rounds + 1)]
    sizes = [len(a) for a in asked]
    assert NODE_BASE + 3 not in {node for a in asked for node in a}
    for node in (NODE_BASE, NODE_BASE + 1, NODE_BASE + 2):  # each online site: its own coin, probability q
        share = sum(node in a for a in asked) / rounds
        assert abs(share - 0.5) < 4 * math.sqrt(0.25 / rounds)
    assert min(sizes) == 0 and max(sizes) == 3  # not a fixed-size draw: the count varies, empty rounds included

    summary = summary_of(cfg, list(range(1, 11)))
    assert summary["sample_rate"] == 0.5 and summary["rounds"] == 10 and summary["noise_multiplier"] == 1.1
    assert summary["expected_sites_per_round"] == 2.0 and summary["num_sites"] == 4
    assert summary["epsilon"] == pytest.approx(dp_accounting_epsilon(1.1, 0.5, 10, 1e-5), rel=1e-9)
    text = client_level_text(summary)
    for phrase in ("Poisson", "unweighted", "divided by 2", "epsilon", "delta 1e-05", "integer orders"):
        assert phrase in text


def test_each_sites_influence_is_at_most_clipping_norm_over_expected_count_whatever_its_size():
    cfg = config(noise_multiplier=0.0, clipping_norm=0.5)  # no noise: the sensitivity is measured exactly
    cfg = config_from_dict({**_values(cfg), "federation": {"num_sites": 4, "fraction_train": 1.0, "rounds": 1}})
    big = updates_for(3, scale=1.0)  # norms ~ 30, far above C: every update is clipped
    with_all = one_round(strategy_for(cfg), InProcessGrid(fake_site_app(big), cfg)).arrays
    denominator = cfg.federation.num_sites * cfg.federation.fraction_train
    for site in range(len(SIZES)):
        grid = InProcessGrid(fake_site_app(big), cfg)
        grid.gone.add(NODE_BASE + site)  # the neighbouring federation: this site removed
        without = one_round(strategy_for(cfg), grid).arrays
        influence = np.linalg.norm(flat(with_all) - flat(without))
        assert influence == pytest.approx(0.5 / denominator, rel=1e-5)  # the largest site too (40000 examples)
    small = updates_for(4, scale=1e-4)  # norms ~ 3e-3, below C: kept as they are, and averaged unweighted
    released = one_round(strategy_for(cfg), InProcessGrid(fake_site_app(small), cfg)).arrays
    expected = sum(flat(small[s]) for s in range(4)) / denominator
    np.testing.assert_allclose(flat(released), expected, rtol=1e-5, atol=1e-9)


def _values(cfg: ExperimentConfig) -> dict:
    from finfed.config import config_to_dict
    return config_to_dict(cfg)


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_noise_std_is_sigma_times_clipping_norm_over_expected_count(mode):
    cfg = config(mode=mode, noise_multiplier=1.1, clipping_norm=0.5)
    no_update = {site: {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()} for site in range(4)}
    strategy = strategy_for(cfg, np.random.default_rng(7))
    noise_per_unit_norm = []  # adaptive: C changes each round, so each round's noise is divided by its own C
    for server_round in range(1, 41):
        norm = strategy.clipping_norm
        released = one_round(strategy, InProcessGrid(fake_site_app(no_update), cfg), server_round).arrays
        noise_per_unit_norm.append(flat(released) / norm)
    noise = np.concatenate(noise_per_unit_norm)
    sigma_u = 1.1 if mode == "fixed" else update_noise_multiplier(1.1, max(2 / 20, 1.1))
    assert np.std(noise) == pytest.approx(sigma_u / 2.0, rel=0.02)  # sigma_u C / (q N), q N = 2
    assert abs(np.mean(noise)) < 0.02
    if mode == "adaptive":  # the two releases together are one Gaussian of the stated multiplier
        assert sigma_u ** -2 + (2 * 1.1) ** -2 == pytest.approx(1.1 ** -2)


def test_a_round_with_no_site_sampled_still_releases_noise():
    cfg = config_from_dict({**_values(config()), "federation": {"num_sites": 4, "fraction_train": 0.01}})
    strategy = strategy_for(cfg, np.random.default_rng(3))
    outcome = one_round(strategy, InProcessGrid(fake_site_app(updates_for(0)), cfg))
    assert not outcome.updates and outcome.private_release
    assert np.std(flat(outcome.arrays)) > 0  # pure noise, applied: an empty sample is not revealed


def test_adaptive_clipping_norm_moves_towards_the_target_quantile():
    cfg = config(mode="adaptive", noise_multiplier=0.1, count_stddev=0.06, clipping_norm=0.5, target_quantile=0.5)
    cfg = config_from_dict({**_values(cfg), "federation": {"num_sites": 4, "fraction_train": 1.0}})
    for scale, direction in ((1e-4, -1), (1.0, +1)):  # all unclipped: C shrinks; all clipped: C grows
        strategy = strategy_for(cfg, np.random.default_rng(5))
        one_round(strategy, InProcessGrid(fake_site_app(updates_for(1, scale)), cfg))
        assert np.sign(strategy.clipping_norm - 0.5) == direction


def test_default_noise_comes_from_an_unseeded_secure_source():
    first, second = (ClientLevelMechanism(noise_multiplier=1.0, clipping_norm=1.0, expected_sites=2.0)
                     for _ in range(2))
    current = zeros()
    assert not np.array_equal(flat(first.release(current, [])), flat(second.release(current, [])))


def test_one_site_answering_through_two_nodes_is_refused():
    cfg = config_from_dict({**_values(config()), "federation": {"num_sites": 4, "fraction_train": 1.0}})
    grid = InProcessGrid(fake_site_app(updates_for(0)), cfg)
    grid.contexts[NODE_BASE + 1].node_config["partition-id"] = 0
    with pytest.raises(RunError, match=r"site\(s\) \[0\] sent more than one update"):
        one_round(strategy_for(cfg), grid)


def test_more_nodes_online_than_configured_sites_is_refused():
    cfg = config()
    grid = InProcessGrid(fake_site_app(updates_for(0)), cfg, node_configs=[{} for _ in range(5)])
    with pytest.raises(RunError, match="5 SuperNodes are online but `federation.num_sites` is 4"):
        one_round(strategy_for(cfg), grid)


@pytest.mark.parametrize("override,message", [
    ({"federation": {"min_sites": 2}}, "`federation.min_sites` must be 0 with `client_dp.mode` on"),
    ({"client_dp": {"mode": "adaptive", "noise_multiplier": 1.0, "count_stddev": 0.4}},
     "`client_dp.count_stddev` \\(0.4\\) must exceed half"),
])
def test_settings_the_mechanism_cannot_honour_are_refused(override, message):
    values = {"client_dp": {"mode": "fixed"}, **override}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_a_report_of_a_run_from_the_old_weighted_mechanism_claims_no_client_level_epsilon():
    old = {"mode": "server-side fixed clipping (Flower)", "noise_multiplier": 1.0, "clipping_norm": 1.0,
           "sites_per_round": 3, "sample_rate": 1.0, "rounds": 4, "delta": 1e-5, "accountant": "rdp",
           "epsilon": 13.8, "guarantee": "client-level (epsilon, delta)-DP"}
    text = client_level_text(old)
    assert "does not hold" in text and "none is claimed" in text


def test_a_resumed_run_continues_from_the_adaptive_clipping_norm_it_had_reached():
    cfg = config(mode="adaptive", noise_multiplier=0.1, count_stddev=0.06, clipping_norm=0.5, target_quantile=0.5)
    cfg = config_from_dict({**_values(cfg), "federation": {"num_sites": 4, "fraction_train": 1.0}})
    grid = InProcessGrid(fake_site_app(updates_for(1, 1e-4)), cfg)
    trained = PlainTraining(strategy_for(cfg, np.random.default_rng(5)), grid, SiteNames(), timeout=5.0)
    trained.train(1, zeros(), {})
    saved = trained.state()
    assert saved == {"clipping_norm": trained.strategy.clipping_norm} and saved["clipping_norm"] < 0.5
    resumed = PlainTraining(strategy_for(cfg), grid, SiteNames(), timeout=5.0)
    resumed.restore(saved)
    assert resumed.strategy.clipping_norm == saved["clipping_norm"]
    # Plain FedAvg checkpoints nothing, whatever attributes a strategy happens to have.
    plain = PlainTraining(SimpleNamespace(clipping_norm=1.0), grid, SiteNames(), timeout=5.0)
    assert plain.state() == {}
    plain.restore(saved)
    assert plain.strategy.clipping_norm == 1.0
