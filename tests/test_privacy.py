"""DP-SGD: calibration, cumulative accounting, and the guards against silent failure."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant
from torch import nn

from finfed.config import load_config
from finfed.errors import PrivacyError, TrainingError
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import plan_privacy
from finfed.site.rounds import site_context, train_round
from finfed.training.local import train_locally


def _rdp_epsilon(noise, rate, steps, delta):
    accountant = RDPAccountant()
    accountant.history = [(noise, rate, steps)]
    return accountant.get_epsilon(delta=delta)


def test_reported_epsilon_after_r_rounds_equals_independent_rdp_accountant(tiny_config):
    config = tiny_config("privacy.accountant=rdp", "privacy.target_epsilon=4", "federation.rounds=3")
    site = site_context(config, {"partition-id": 0})
    model = site.task.build_model()
    from finfed.models.adapters import exchanged_state
    arrays = {k: v.numpy() for k, v in exchanged_state(model).items()}
    state, epsilons = None, []
    for server_round in (1, 2, 3):
        update = train_round(site, arrays, server_round=server_round, accountant_state=state)
        state, arrays = update.accountant_state, update.arrays
        epsilons.append(update.metrics["epsilon"])
        plan = update.plan
        expected = _rdp_epsilon(plan.noise_multiplier, plan.sample_rate,
                                server_round * plan.steps_per_round, config.privacy.target_delta)
        assert update.metrics["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 4.0  # cumulative, never over the target
    assert epsilons[2] > 3.8  # and the budget is actually used, not wasted


def _check_calibration_does_not_overshoot(target, records, rounds, accountant) -> None:
    config = load_config(None, [f"privacy.target_epsilon={target}", f"privacy.accountant={accountant}",
                                "train.batch_size=64"])
    plan = plan_privacy(num_records=records, train=config.train, privacy=config.privacy, rounds=rounds)
    site = SiteAccountant(accountant)
    for _ in range(rounds):
        site.record(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    assert site.epsilon(plan.target_delta) <= target + 1e-9


@pytest.mark.parametrize("target, records, rounds, accountant", [(0.5, 5000, 10, "prv"), (20.0, 200, 1, "rdp")])
def test_calibrated_noise_does_not_overshoot_at_the_ranges_ends(target, records, rounds, accountant):
    """The fast tier's cover; the property below draws 15 cases (each calibration takes seconds: slow)."""
    _check_calibration_does_not_overshoot(target, records, rounds, accountant)


@pytest.mark.slow  # 15 calibrations (~30 s on 2 cores)
@settings(max_examples=15, deadline=None)
@given(target=st.floats(0.5, 20), records=st.integers(200, 5000), rounds=st.integers(1, 10),
       accountant=st.sampled_from(["rdp", "prv"]))
def test_calibrated_noise_never_overshoots_the_target(target, records, rounds, accountant):
    _check_calibration_does_not_overshoot(target, records, rounds, accountant)


@pytest.mark.parametrize("target, rate, steps", [(8.0, 0.0945, 44), (1.0, 0.01, 1000), (3.0, 0.2, 30),
                                                  (0.5, 0.001, 100), (100.0, 0.1, 2)])
def test_the_noise_search_meets_opacus_condition_in_fewer_evaluations(target, rate, steps):
    """Same answer as Opacus' bisection, to its tolerance: epsilon within [target - 0.01, target]."""
    from opacus.accountants.utils import get_noise_multiplier

    from finfed.privacy.calibration import search_noise

    tried = []
    noise = search_noise(lambda n: tried.append(n) or _rdp_epsilon(n, rate, steps, 1e-5), target, 0.01)
    assert target - 0.01 <= _rdp_epsilon(noise, rate, steps, 1e-5) <= target
    opacus = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=rate, steps=steps,
                                  accountant="rdp", epsilon_tolerance=0.01)
    assert noise == pytest.approx(opacus, rel=0.01)
    assert len(tried) <= 8  # Opacus: a dozen or more


def test_a_budget_no_noise_can_reach_is_refused():
    from finfed.privacy.calibration import search_noise

    with pytest.raises(PrivacyError, match="too small"):
        search_noise(lambda n: 1.0 + 1.0 / n, 0.5, 0.01)  # epsilon never falls below 1


def test_accountant_state_survives_save_and_reload():
    uninterrupted = SiteAccountant("rdp")
    resumed = SiteAccountant("rdp")
    for _ in range(3):
        uninterrupted.record(1.1, 0.05, 20)
        resumed.record(1.1, 0.05, 20)
        resumed = SiteAccountant.from_plain(resumed.to_plain(), "rdp")
    assert resumed.epsilon(1e-5) == pytest.approx(uninterrupted.epsilon(1e-5))


@pytest.mark.parametrize("state, message", [
    ({"mechanism": "rdp", "noise": [1.0]}, "lacks"),
    ({"mechanism": "prv", "noise": [1.0], "rate": [0.1], "steps": [3]}, "is for 'prv'"),
    ({"mechanism": "rdp", "noise": [1.0, 2.0], "rate": [0.1], "steps": [3]}, "different lengths"),
])
def test_damaged_accountant_state_is_refused(state, message):
    with pytest.raises(PrivacyError, match=message):
        SiteAccountant.from_plain(state, "rdp")


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x)


def _tiny_setup(rate=0.5, noise=1.0):
    config = load_config(None, ["train.batch_size=2", "train.learning_rate=0.1", "train.optimizer=sgd"])
    dataset = [{"x": torch.randn(4), "y": i % 2} for i in range(4)]
    collate = lambda items: {"x": torch.stack([i["x"] for i in items]), "y": torch.tensor([i["y"] for i in items])}
    loss = lambda model, batch: nn.functional.cross_entropy(model(batch["x"]), batch["y"])
    plan = plan_privacy(num_records=4, train=config.train, privacy=config.privacy, rounds=1)
    plan = type(plan)(**{**plan.__dict__, "sample_rate": rate, "noise_multiplier": noise})
    return config, dataset, collate, loss, plan


def test_empty_poisson_batches_take_noise_only_steps():
    config, dataset, collate, loss, plan = _tiny_setup(rate=1e-9)  # every batch is empty
    model, accountant = _Tiny(), SiteAccountant("rdp")
    before = model.linear.weight.detach().clone()
    outcome = train_locally(model, dataset, collate, loss, loss_reduction="mean", settings=config.train,
                            steps=5, seed=0, plan=plan, accountant=accountant)
    assert outcome.empty_batches == 5 and outcome.examples_seen == 0
    assert accountant.total_steps == 5  # every noise-only step is accounted
    assert not torch.equal(before, model.linear.weight)  # noise moved the weights


def test_eval_mode_model_is_refused_before_dp_wrapping():
    config, dataset, collate, loss, plan = _tiny_setup()

    class Frozen(_Tiny):
        def train(self, mode=True):  # a model that silently stays in eval mode
            return super().train(False)

    with pytest.raises(PrivacyError, match="train mode"):
        train_locally(Frozen(), dataset, collate, loss, loss_reduction="mean", settings=config.train,
                      steps=1, seed=0, plan=plan, accountant=SiteAccountant("rdp"))


def test_sum_reduction_loss_is_refused_under_dp():
    config, dataset, collate, loss, plan = _tiny_setup()
    with pytest.raises(PrivacyError, match="reduction 'sum'"):
        train_locally(_Tiny(), dataset, collate, loss, loss_reduction="sum", settings=config.train,
                      steps=1, seed=0, plan=plan, accountant=SiteAccountant("rdp"))


def test_a_round_that_changes_nothing_is_an_error():
    config, dataset, collate, loss, _ = _tiny_setup()
    model = _Tiny()
    zero_loss = lambda m, batch: (m(batch["x"]) * 0).sum()
    with pytest.raises(TrainingError, match="no trainable tensor changed"):
        train_locally(model, dataset, collate, zero_loss, loss_reduction="mean", settings=config.train,
                      steps=2, seed=0)


def test_dp_without_accountant_is_refused():
    config, dataset, collate, loss, plan = _tiny_setup()
    with pytest.raises(PrivacyError, match="accountant"):
        train_locally(_Tiny(), dataset, collate, loss, loss_reduction="mean", settings=config.train,
                      steps=1, seed=0, plan=plan)


@pytest.mark.parametrize("private", [True, False])
def test_physical_batches_give_the_same_step_as_one_batch(private):
    """Splitting a sampled batch to save memory must not change the update (nor the accounting); the parts
    group the batch's records by length (less padding)."""
    torch.manual_seed(1)
    dataset = [{"x": torch.randn(4), "y": i % 2, "input_ids": [0] * (1 + (7 * i) % 11)} for i in range(16)]
    parts: list[list[int]] = []

    def collate(items):
        parts.append([len(i["input_ids"]) for i in items])
        return {"x": torch.stack([i["x"] for i in items]), "y": torch.tensor([i["y"] for i in items])}
    loss = lambda model, batch: nn.functional.cross_entropy(model(batch["x"]), batch["y"])
    results, steps_recorded = [], []
    for physical in (0, 3):
        parts.clear()
        config = load_config(None, ["train.batch_size=8", f"train.physical_batch_size={physical}",
                                    "train.optimizer=sgd", "train.learning_rate=0.1"])
        torch.manual_seed(0)
        model = _Tiny()
        plan = accountant = None
        if private:
            plan = plan_privacy(num_records=len(dataset), train=config.train, privacy=config.privacy, rounds=1)
            plan = type(plan)(**{**plan.__dict__, "noise_multiplier": 0.0})  # no noise: sums must match exactly
            accountant = SiteAccountant("rdp")
        # reproducible_dp: both runs must sample the same Poisson batches
        train_locally(model, dataset, collate, loss, loss_reduction="mean", settings=config.train, steps=2,
                      seed=3, plan=plan, accountant=accountant, reproducible_dp=True)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        if accountant is not None:
            steps_recorded.append(accountant.total_steps)
    # parts of at most 3 records, shortest records first within each of the 2 steps: one descent at most
    assert len(parts) > 2 and all(len(part) <= 3 for part in parts)
    lengths = [n for part in parts for n in part]
    assert sum(later < earlier for earlier, later in zip(lengths, lengths[1:])) <= 1
    assert not torch.allclose(results[0], torch.cat([p.detach().flatten() for p in _fresh_tiny().parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6)
    assert steps_recorded == ([2, 2] if private else [])


def _fresh_tiny():
    torch.manual_seed(0)
    return _Tiny()
