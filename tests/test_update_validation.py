"""Site updates are validated before aggregation: a NaN, a wrong shape or name, or a huge-norm update is
rejected and recorded (its category, never a value), and the round completes with the others; robust
aggregation rules are a configuration switch, refused where SecAgg+ or client-level DP make them impossible."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from inprocess_grid import InProcessGrid, serve

from finfed import constants as keys
from finfed.config import config_from_dict, load_config
from finfed.coordinator.rounds import PlainTraining
from finfed.coordinator.sampling import SiteNames, SiteSampler
from finfed.coordinator.validation import (
    NAMES,
    NON_FINITE,
    NORM,
    SHAPES,
    UpdateValidator,
    adam_step_sum,
    derived_norm_bound,
    update_problem,
)
from finfed.errors import ConfigError
from finfed.flower_app.client import app as client_app
from finfed.flower_app.server.app import aggregation_strategy
from finfed.records import from_array_record, to_array_record
from finfed.runs.outputs import read_metrics, read_status

SHAPES_OF = {"lora.B": (16, 4), "base_model.modules_to_save.head.weight": (3, 16)}


def zeros() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES_OF.items()}


def small(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(0, 0.01, shape).astype(np.float32) for name, shape in SHAPES_OF.items()}


# --------------------------------------------------------------------------- the checks themselves

def test_each_kind_of_bad_update_is_named_by_its_category():
    good = small(0)
    assert update_problem(zeros(), good, bound=1.0) is None
    assert update_problem(zeros(), {"lora.B": good["lora.B"]}, bound=1.0) == NAMES
    assert update_problem(zeros(), {**good, "extra": np.zeros(2)}, bound=1.0) == NAMES
    assert update_problem(zeros(), {**good, "lora.B": np.zeros((4, 16))}, bound=1.0) == SHAPES
    nan = {**good, "lora.B": good["lora.B"].copy()}
    nan["lora.B"][3, 1] = np.nan
    assert update_problem(zeros(), nan, bound=None) == NON_FINITE
    assert update_problem(zeros(), {**good, "lora.B": np.full((16, 4), np.inf)}, bound=None) == NON_FINITE
    huge = {**good, "lora.B": np.full((16, 4), 1e30, np.float32)}
    assert update_problem(zeros(), huge, bound=1.0) == NORM
    assert update_problem(zeros(), huge, bound=None) is None  # no bound: only names, shapes, finiteness


def test_the_adam_bound_holds_for_adversarial_gradients():
    """The bound is a worst case of the optimiser, whatever the gradients: tried on gradients that switch
    from tiny to huge, alternate in sign, or stay constant (where Adam moves fastest)."""
    steps, lr = 40, 0.01
    per_coordinate = lr * adam_step_sum(steps)
    assert adam_step_sum(1) == pytest.approx(1.0)  # Adam's first step moves each coordinate by lr at most
    rng = np.random.default_rng(0)
    patterns = [lambda t: np.ones(64), lambda t: (-1.0) ** t * np.ones(64),
                lambda t: np.full(64, 1e-8 if t < steps - 3 else 1e4),
                lambda t: rng.normal(0, 10.0 ** rng.integers(-6, 6), 64),
                lambda t: np.full(64, 1e4 if t == 0 else 1e-8)]
    for pattern in patterns:
        weights = torch.zeros(64, requires_grad=True)
        optimizer = torch.optim.AdamW([weights], lr=lr, weight_decay=0.0)
        for t in range(steps):
            weights.grad = torch.tensor(pattern(t), dtype=torch.float32)
            optimizer.step()
        assert weights.detach().abs().max().item() <= per_coordinate * (1 + 1e-5)


def test_the_sgd_bound_covers_dp_sgd_and_none_follows_without_dp():
    config = load_config(None, ["train.optimizer=sgd", "train.batch_size=8"])
    metrics = {keys.NUM_EXAMPLES: 80, keys.NOISE_MULTIPLIER: 1.0}
    bound = derived_norm_bound(config, zeros(), metrics)
    steps, lr, clip = 10, config.train.head_learning_rate, config.privacy.max_grad_norm
    d = sum(int(np.prod(s)) for s in SHAPES_OF.values())
    # Every gradient at its largest: all 80 records in the batch, clipped to C, plus noise at its tail bound.
    gradient = clip * (80 + 1.0 * (np.sqrt(d) + 10)) / 8
    assert bound == pytest.approx(steps * lr * gradient / (1 - 0.9))
    assert derived_norm_bound(load_config(None, ["train.optimizer=sgd", "privacy.enabled=false"]), zeros(),
                              metrics) is None
    fixed = load_config(None, ["federation.update_norm_bound=2.5"])
    assert UpdateValidator(fixed).problem(zeros(), {n: a + 1.0 for n, a in zeros().items()}, metrics) == NORM


# --------------------------------------------------------------------------- one round with bad sites

GOOD = {0: small(0), 1: small(1), 2: small(2)}


def faulty_site_app(bad: dict[int, str]):
    """Sites 0-2 send global + a small update; a site in ``bad`` sends NaN, wrong shapes or a huge update."""
    def app(message: Message, context) -> Message:
        site = int(context.node_config["partition-id"])
        current = from_array_record(message.content[keys.ARRAYS])
        arrays = {name: current[name] + GOOD.get(site, small(site))[name] for name in current}
        kind = bad.get(site)
        if kind == "nan":
            arrays["lora.B"][0, 0] = np.nan
        elif kind == "shape":
            arrays["lora.B"] = np.zeros((4, 16), np.float32)
        elif kind == "huge":
            arrays = {name: value + 1e6 for name, value in arrays.items()}
        metrics = MetricRecord({keys.SITE_ID: site, keys.NUM_EXAMPLES: 100, keys.STEPS: 2})
        return Message(RecordDict({keys.ARRAYS: to_array_record(arrays), keys.METRICS: metrics}), reply_to=message)
    return app


def round_with(aggregation: str, bad: dict[int, str], num_sites: int = 6):
    cfg = config_from_dict({"federation": {"num_sites": num_sites, "aggregation": aggregation}})
    ticks = itertools.count(0.0, 10_000.0)
    sampler = SiteSampler(cfg.federation, poll_s=0.0, clock=lambda: next(ticks), sleep=lambda s: None)
    grid = InProcessGrid(faulty_site_app(bad), cfg)
    training = PlainTraining(aggregation_strategy(cfg.federation, sampler), grid, SiteNames(), 5.0,
                             UpdateValidator(cfg))
    return training.train(1, zeros(), {})


def test_nan_wrong_shape_and_huge_updates_are_rejected_and_fedavg_averages_the_others():
    outcome = round_with("fedavg", {3: "nan", 4: "shape", 5: "huge"})
    assert sorted(m[keys.SITE_ID] for m in outcome.updates) == [0, 1, 2]
    assert outcome.rejections == [{"site": 3, "reason": NON_FINITE}, {"site": 4, "reason": SHAPES},
                                  {"site": 5, "reason": NORM}]
    assert [m[keys.UPDATE_REJECTED] for m in outcome.rejected] == [NON_FINITE, SHAPES, NORM]
    expected = {name: np.mean([GOOD[s][name] for s in range(3)], axis=0) for name in SHAPES_OF}
    for name in SHAPES_OF:
        np.testing.assert_allclose(outcome.arrays[name], expected[name], atol=1e-6)
    assert "nan" not in json.dumps(outcome.rejections).lower()  # categories only, no value of an update


@pytest.mark.parametrize("aggregation", ["median", "trimmed_mean", "krum"])
def test_robust_rules_aggregate_only_the_valid_updates(aggregation):
    outcome = round_with(aggregation, {4: "nan", 5: "huge"})
    assert [r["site"] for r in outcome.rejections] == [4, 5]
    stacked = {name: np.stack([GOOD.get(s, small(s))[name] for s in range(4)]) for name in SHAPES_OF}
    for name in SHAPES_OF:
        if aggregation == "median":
            np.testing.assert_allclose(outcome.arrays[name], np.median(stacked[name], axis=0), atol=1e-6)
        elif aggregation == "krum":  # one of the valid updates, unchanged
            assert any(np.allclose(outcome.arrays[name], layer) for layer in stacked[name])
        assert np.abs(outcome.arrays[name]).max() < 0.1


def test_a_rejected_update_never_reaches_the_model_even_if_every_site_is_bad():
    outcome = round_with("fedavg", dict.fromkeys(range(6), "nan"))
    assert outcome.arrays is None and outcome.updates == [] and len(outcome.rejections) == 6


# --------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("overrides,words", [
    (["federation.aggregation=median", "federation.secure_aggregation=true"], "reveals only the weighted sum"),
    (["federation.aggregation=krum", "federation.secure_aggregation=true"], "reveals only the weighted sum"),
    (["federation.aggregation=trimmed_mean", "client_dp.mode=fixed"], "sensitivity of a sum"),
    (["federation.aggregation=krum", "federation.krum_byzantine_sites=1"], "at least 5 sites"),
    (["federation.aggregation=trimmed_mean", "federation.trim_fraction=0.5"], "trim_fraction"),
])
def test_impossible_combinations_are_refused_at_load(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


# --------------------------------------------------------------------------- a whole run, in process

def tampering(app, site: int, kind: str):
    """The real ClientApp; ``site``'s train reply is replaced by a NaN (or huge) update before it leaves."""
    def tampered(message: Message, context) -> Message:
        reply = app(message, context)
        if int(context.node_config["partition-id"]) == site and not reply.has_error() \
                and keys.ARRAYS in reply.content:
            arrays = from_array_record(reply.content[keys.ARRAYS])
            first = next(iter(arrays))
            arrays[first] = np.full_like(arrays[first], np.nan) if kind == "nan" else arrays[first] + 1e6
            reply.content[keys.ARRAYS] = to_array_record(arrays)
        return reply
    return tampered


@pytest.mark.parametrize("aggregation,kind", [("fedavg", "nan"), ("median", "huge")])
def test_in_a_run_the_bad_site_is_rejected_every_round_and_the_run_completes(tiny_config, aggregation, kind):
    config = tiny_config("federation.num_sites=3", "federation.rounds=2", f"federation.aggregation={aggregation}",
                         "privacy.membership_audit=false")
    grid = InProcessGrid(tampering(client_app.app, 2, kind), config)
    serve(config, grid)
    run_dir = config.resolved_run_dir
    status = read_status(run_dir)
    assert status["state"] == "complete" and status["trained_rounds"] == 2
    reason = NON_FINITE if kind == "nan" else NORM
    assert status["site_rejections"] == {"1": [{"site": 2, "reason": reason}], "2": [{"site": 2, "reason": reason}]}
    for record in read_metrics(run_dir)[1:]:
        assert record["rejections"] == [{"site": 2, "reason": reason}]
        assert [s.get(keys.UPDATE_REJECTED) for s in record["sites"]] == [None, None, reason]
        assert np.isfinite(record["central"]["loss"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["rejections"]["count"] == 2
    assert "rejected" in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_a_robust_rule_runs_end_to_end_in_flower_simulation(median_run_with_a_failing_site):
    """Through Flower's simulation engine: `federation.aggregation: median` trains, evaluates and reports (the
    shared run in tests/conftest.py, whose site 2 fails every round: a failure, never a rejection)."""
    run_dir, _ = median_run_with_a_failing_site
    status = read_status(run_dir)
    assert status["state"] == "complete" and status["trained_rounds"] == status["rounds"]
    assert status["site_rejections"] == {}
    rounds = read_metrics(run_dir)
    assert all(np.isfinite(r["central"]["loss"]) and r["rejections"] == [] for r in rounds)
    report = json.loads((run_dir / "report.json").read_text())
    assert "coordinate-wise median" in report["aggregation"] and report["rejections"]["count"] == 0


def test_under_secagg_only_the_average_is_checked_and_a_bad_one_is_rejected_as_a_whole():
    from finfed.coordinator.rounds import RoundOutcome
    from finfed.coordinator.secure import SecureTraining
    from finfed.coordinator.validation import AGGREGATE

    training = SecureTraining.__new__(SecureTraining)  # only its check of the unmasked average is exercised
    training.validator = UpdateValidator(load_config(None, []))
    sites = [{keys.SITE_ID: s, keys.NUM_EXAMPLES: 100, keys.STEPS: 2} for s in (0, 1)]
    fine = training._checked(RoundOutcome(arrays=small(0), updates=list(sites)), zeros())
    assert fine.arrays is not None and fine.rejections == []
    poisoned = {**small(0), "lora.B": np.full((16, 4), np.nan, np.float32)}
    outcome = training._checked(RoundOutcome(arrays=poisoned, updates=list(sites)), zeros())
    assert outcome.arrays is None and outcome.updates == []
    assert outcome.rejections == [{"site": AGGREGATE, "reason": NON_FINITE}]
    assert [m[keys.UPDATE_REJECTED] for m in outcome.rejected] == [f"{AGGREGATE}: {NON_FINITE}"] * 2
