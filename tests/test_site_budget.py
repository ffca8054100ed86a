"""The site's privacy flow without a model: plan -> admit -> account -> commit (finfed/privacy/site_budget.py),
and the accountant's state through Opacus' state_dict."""

import json

import pytest
from opacus.accountants import create_accountant

from finfed.config import load_config
from finfed.errors import BudgetExhausted, ConfigError, PrivacyError
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.disclosure import TRAIN_METRICS
from finfed.privacy.ledger import PrivacyLedger
from finfed.privacy.site_budget import SiteBudget, SitePolicy

RECORDS, ROUNDS, DATASET = 400, 3, "loans.csv"


def _config(*overrides: str):
    return load_config(None, ["privacy.accountant=rdp", "privacy.target_epsilon=4", "privacy.target_delta=0.00001",
                              "train.batch_size=16", f"federation.rounds={ROUNDS}", *overrides])


def _policy(tmp_path, *, budget=4.0, delta=1e-5, ledger=True) -> SitePolicy:
    return SitePolicy(budget_epsilon=budget, budget_delta=delta, site_id=3, dataset=DATASET,
                      ledger_path=str(tmp_path / "ledger.json") if ledger else "", folder=str(tmp_path))


def _round(budget: SiteBudget, config, server_round: int, run_id: str = "run-a"):
    """One round as the site runs it, its training replaced by the steps the DP optimizer would account."""
    plan = budget.admit(num_records=RECORDS, train=config.train, rounds=config.federation.rounds)
    budget.accountant.record(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    return plan, budget.commit(run_id=run_id, server_round=server_round, steps=plan.steps_per_round)


def _open(policy, config, state=None, **kwargs) -> SiteBudget:
    return SiteBudget.open(policy, config.privacy, fingerprint="f" * 64, stored_state=state, **kwargs)


def test_commit_appends_the_round_with_its_epsilon_delta_and_accountant(tmp_path):
    config, policy = _config(), _policy(tmp_path)
    plan, spend = _round(_open(policy, config), config, server_round=1)
    (entry,) = PrivacyLedger(policy.ledger_path, head_dir=tmp_path).entries
    independent = create_accountant("rdp")
    independent.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]
    assert spend.epsilon == pytest.approx(independent.get_epsilon(delta=1e-5), rel=1e-12)
    assert (entry.accountant, entry.delta, entry.epsilon_after) == ("rdp", 1e-5, spend.epsilon)
    assert (entry.noise_multiplier, entry.sample_rate, entry.steps) == (plan.noise_multiplier, plan.sample_rate,
                                                                        plan.steps_per_round)
    assert (entry.dataset, entry.budget_epsilon, entry.run_id, entry.round) == (DATASET, 4.0, "run-a", 1)
    assert spend.metrics() == {"epsilon": spend.epsilon, "delta": 1e-5, "noise-multiplier": plan.noise_multiplier,
                               "sample-rate": plan.sample_rate}
    assert set(spend.metrics()) <= TRAIN_METRICS  # nothing outside the disclosure allow-list


def test_a_reopened_ledger_continues_from_the_spend_of_earlier_runs(tmp_path):
    config, policy = _config(), _policy(tmp_path)
    _, first = _round(_open(policy, config), config, server_round=1, run_id="run-a")
    reopened = _open(policy, config)  # a new run: no Context.state, the ledger holds the spend
    assert reopened.accountant.epsilon(1e-5) == pytest.approx(first.epsilon, rel=1e-12)
    _, second = _round(reopened, config, server_round=1, run_id="run-b")
    assert second.epsilon > first.epsilon
    assert [e.run_id for e in PrivacyLedger(policy.ledger_path).entries] == ["run-a", "run-b"]


def test_admit_refuses_a_round_beyond_the_budget_and_spends_nothing(tmp_path):
    config, policy = _config(), _policy(tmp_path)  # noise calibrated so that 3 rounds reach epsilon 4
    for server_round in range(1, ROUNDS + 1):
        _round(_open(policy, config), config, server_round)
    budget = _open(policy, config)
    reason = budget.refusal(num_records=RECORDS, train=config.train, rounds=ROUNDS)
    assert reason is not None and reason.startswith("site 3: this round would raise epsilon from")
    with pytest.raises(BudgetExhausted, match="above the site's budget 4"):
        budget.admit(num_records=RECORDS, train=config.train, rounds=ROUNDS)
    assert len(PrivacyLedger(policy.ledger_path).entries) == ROUNDS  # the refused round recorded nothing
    with pytest.raises(PrivacyError, match="before the round was admitted"):
        budget.commit(run_id="run-a", server_round=4, steps=1)


@pytest.mark.parametrize("asked", ["privacy.target_epsilon=50", "privacy.noise_multiplier=0.05",
                                   "privacy.target_delta=0.01"])
def test_the_run_configuration_cannot_make_a_site_overspend(tmp_path, asked):
    config = _config(asked)
    budget = _open(_policy(tmp_path, budget=2.0), config)
    with pytest.raises(BudgetExhausted):
        budget.admit(num_records=RECORDS, train=config.train, rounds=ROUNDS)
    assert budget.refusal(num_records=RECORDS, train=config.train, rounds=ROUNDS) is not None


def test_commit_refuses_spend_the_admission_did_not_allow(tmp_path):
    config, policy = _config(), _policy(tmp_path, budget=4.0)
    budget = _open(policy, config)
    plan = budget.admit(num_records=RECORDS, train=config.train, rounds=ROUNDS)
    budget.accountant.record(plan.noise_multiplier, plan.sample_rate, 10 * plan.total_steps)  # far more steps
    with pytest.raises(PrivacyError, match="exceeds its budget"):
        budget.commit(run_id="run-a", server_round=1, steps=plan.steps_per_round)
    assert not PrivacyLedger(policy.ledger_path).entries


def test_without_a_ledger_the_run_state_carries_the_spend_from_round_to_round(tmp_path):
    config, policy = _config(), _policy(tmp_path, ledger=False)
    state, epsilons = None, []
    for server_round in range(1, ROUNDS + 1):
        budget = _open(policy, config, state)  # each round: a fresh process, the state from Context.state
        plan, spend = _round(budget, config, server_round)
        state = json.loads(json.dumps(budget.state()))  # as Flower's ConfigRecord stores it
        epsilons.append(spend.epsilon)
    uninterrupted = SiteAccountant("rdp")
    uninterrupted.record(plan.noise_multiplier, plan.sample_rate, ROUNDS * plan.steps_per_round)
    assert epsilons[-1] == pytest.approx(uninterrupted.epsilon(1e-5), rel=1e-12)
    assert epsilons == sorted(epsilons) and epsilons[-1] <= 4.0
    assert not (tmp_path / "ledger.json").exists()


def test_a_resumed_run_without_a_ledger_or_state_is_refused(tmp_path):
    config = _config()
    with pytest.raises(PrivacyError, match="keeps no privacy ledger") as refused:
        _open(_policy(tmp_path, ledger=False), config, resumed_at_round=2)
    assert refused.value.public_reason == str(refused.value)  # names a setting, nothing of the records
    _open(_policy(tmp_path, ledger=True), config, resumed_at_round=2)  # the ledger knows the spend


def test_a_bad_budget_is_a_config_error_naming_the_site(tmp_path):
    with pytest.raises(ConfigError, match="site 3: budget epsilon must be > 0"):
        _policy(tmp_path, budget=0)
    with pytest.raises(ConfigError, match=r"delta in \(0, 1\)"):
        _policy(tmp_path, delta=1.0)


# ---------------------------------------------------------------------- the accountant's saved state
@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_accountant_state_is_opacus_state_dict_and_continuing_matches_uninterrupted(mechanism):
    uninterrupted, resumed = SiteAccountant(mechanism), SiteAccountant(mechanism)
    for noise, rate, steps in [(1.1, 0.05, 20), (1.1, 0.05, 20), (0.9, 0.04, 7)]:
        uninterrupted.record(noise, rate, steps)
        resumed.record(noise, rate, steps)
        state = resumed.state_dict()
        assert state == dict(resumed.accountant.state_dict())  # Opacus' own format
        resumed = SiteAccountant.from_state_dict(state, mechanism)
        resumed = SiteAccountant.from_plain(json.loads(json.dumps(resumed.to_plain())), mechanism)
    assert resumed.history == [(1.1, 0.05, 40), (0.9, 0.04, 7)]
    assert resumed.epsilon(1e-5) == uninterrupted.epsilon(1e-5)


def test_steps_accounted_by_opacus_hook_survive_the_round_trip():
    hooked = SiteAccountant("rdp")
    for _ in range(5):
        hooked.accountant.step(noise_multiplier=1.3, sample_rate=0.02)  # what the DP optimizer's hook does
    restored = SiteAccountant.from_plain(hooked.to_plain(), "rdp")
    restored.record(1.3, 0.02, 5)
    assert restored.history == [(1.3, 0.02, 10)]


def test_the_legacy_column_state_is_still_read_and_the_new_one_written():
    legacy = {"mechanism": "rdp", "noise": [1.1, 0.9], "rate": [0.05, 0.04], "steps": [40, 7]}
    accountant = SiteAccountant.from_plain(legacy, "rdp")
    expected = SiteAccountant("rdp")
    expected.record(1.1, 0.05, 40)
    expected.record(0.9, 0.04, 7)
    assert accountant.epsilon(1e-5) == expected.epsilon(1e-5)
    assert accountant.to_plain() == {"mechanism": "rdp", "history": "[[1.1, 0.05, 40], [0.9, 0.04, 7]]"}


@pytest.mark.parametrize("state, message", [
    ({"mechanism": "prv", "history": "[[1.0, 0.1, 3]]"}, "is for 'prv'"),
    ({"mechanism": "rdp", "history": "[[1.0, 0.1]]"}, "not \\(noise, rate, steps\\)"),
    ({"mechanism": "rdp", "history": "not json"}, "not readable"),
])
def test_a_damaged_saved_state_is_refused_not_reset(state, message):
    with pytest.raises(PrivacyError, match=message):
        SiteAccountant.from_plain(state, "rdp")


def test_the_state_kept_in_flowers_context_continues_the_accountant():
    from flwr.app import Context, RecordDict

    from finfed.site.run_state import keep_accountant_state, stored_accountant_state

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert stored_accountant_state(context) is None  # a run's first round
    keep_accountant_state(context, None)  # without DP nothing is kept
    assert stored_accountant_state(context) is None
    accountant = SiteAccountant("prv")
    accountant.record(1.1, 0.05, 20)
    keep_accountant_state(context, accountant.to_plain())
    restored = SiteAccountant.from_plain(stored_accountant_state(context), "prv")
    assert restored.state_dict() == accountant.state_dict()
