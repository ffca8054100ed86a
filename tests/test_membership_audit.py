"""Membership-inference audit: the AUC maths, its DP ceiling, where its non-members come from, and that DP
really lowers the attack's success."""

import math
import random

import numpy as np
import pandas as pd
import pytest

from finfed import constants as keys
from finfed.data.partition import (
    SiteData,
    hold_back_for_audit,
    load_federated_data,
    simulated_site,
)
from finfed.errors import DataError
from finfed.models.backbone import load_tokenizer
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import plan_privacy
from finfed.privacy.membership_audit import (
    AUDITED_SITE,
    audit_holdout_fraction,
    audit_reading,
    dp_auc_ceiling,
    dp_tpr_bound,
    loss_threshold_auc,
    roc_auc,
)
from finfed.tasks import get_task
from finfed.tasks.classification import SENTENCES
from finfed.training.local import train_locally


@pytest.mark.parametrize("positives, negatives, expected", [
    ([3, 4], [1, 2], 1.0),
    ([1, 2], [3, 4], 0.0),
    ([1, 3], [2], 0.5),
    ([2, 2], [2, 2], 0.5),        # ties count half
    # pairs (1,0)=1 (1,2)=0 (2,0)=1 (2,2)=.5 (3,0)=1 (3,2)=1
    ([1, 2, 3], [0, 2], 4.5 / 6),
])
def test_roc_auc_matches_hand_computed_cases(positives, negatives, expected):
    assert roc_auc(positives, negatives) == pytest.approx(expected)


# ------------------------------------------------------------------ the DP ceiling


@pytest.mark.parametrize("epsilon, delta, expected", [
    (0.0, 0.0, 0.5),                                # no information: chance
    (0.0, 0.01, 0.5 + 0.01 - 0.01 ** 2 / 2),         # TPR <= min(1, FPR + δ)
    (1.0, 0.0, math.exp(1) / (1 + math.exp(1))),     # pure DP: e^ε / (1 + e^ε)
    (8.0, 0.0, math.exp(8) / (1 + math.exp(8))),
    (1000.0, 1e-5, 1.0),                             # no float overflow, and never above 1
])
def test_dp_auc_ceiling_matches_closed_forms(epsilon, delta, expected):
    assert dp_auc_ceiling(epsilon, delta) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("epsilon, delta", [(0.3, 1e-5), (1.0, 0.05), (2.5, 1e-3), (8.0, 1e-5)])
def test_dp_auc_ceiling_equals_a_dense_numerical_integral_of_the_tpr_bound(epsilon, delta):
    fpr = np.linspace(0.0, 1.0, 200_001)
    tpr = np.array([dp_tpr_bound(x, epsilon, delta) for x in fpr])
    assert dp_auc_ceiling(epsilon, delta) == pytest.approx(float(np.trapezoid(tpr, fpr)), abs=1e-8)


def test_dp_auc_ceiling_grows_with_epsilon_and_delta_and_stays_a_probability():
    epsilons = [0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    for delta in (0.0, 1e-5, 0.1):
        ceilings = [dp_auc_ceiling(e, delta) for e in epsilons]
        assert all(a < b for a, b in zip(ceilings, ceilings[1:])), ceilings
        assert all(0.5 <= c <= 1.0 for c in ceilings)
    assert dp_auc_ceiling(1.0, 1e-5) > dp_auc_ceiling(1.0, 0.0)
    with pytest.raises(ValueError, match="epsilon >= 0"):
        dp_auc_ceiling(-1.0, 1e-5)


# ------------------------------------------------------------------ non-members: the audited site's own data


def _texts(frame):
    return set(frame["text"])


def test_audit_non_members_are_the_audited_sites_own_records_never_in_its_training_set(tiny_config):
    config = tiny_config("federation.num_sites=3", "privacy.audit_holdout_fraction=0.25")
    settings, sites = config.data, config.federation.num_sites
    fraction = audit_holdout_fraction(config, AUDITED_SITE)
    assert fraction == 0.25
    whole = simulated_site(settings, AUDITED_SITE, sites, SENTENCES)  # the site's training pool, nothing held back
    audited = simulated_site(settings, AUDITED_SITE, sites, SENTENCES, audit_holdout=fraction)

    # Same site: every non-member carries the audited site's own institution (column partitioning).
    assert set(audited.audit_holdout[settings.partition_column]) == set(whole.train[settings.partition_column])
    assert len(set(whole.train[settings.partition_column])) == 1
    # Never trained on: disjoint from the training set, and taken out of it (nothing else lost).
    assert not _texts(audited.audit_holdout) & _texts(audited.train)
    assert len(audited.audit_holdout) == round(len(whole.train) * fraction)
    assert len(audited.train) + len(audited.audit_holdout) == len(whole.train)
    assert _texts(audited.train) | _texts(audited.audit_holdout) == _texts(whole.train)
    assert audited.validation.equals(whole.validation)
    # Deterministic by the split seed, so the site and the coordinator hold back the same records.
    again = simulated_site(settings, AUDITED_SITE, sites, SENTENCES, audit_holdout=fraction)
    assert again.audit_holdout.equals(audited.audit_holdout)
    other_seed = simulated_site(type(settings)(**{**settings.__dict__, "split_seed": 5}), AUDITED_SITE, sites,
                                SENTENCES, audit_holdout=fraction)
    assert _texts(other_seed.audit_holdout) != _texts(audited.audit_holdout)


def test_only_the_audited_site_holds_records_back_and_only_when_the_audit_runs(tiny_config):
    config = tiny_config("federation.num_sites=3")
    assert audit_holdout_fraction(config, AUDITED_SITE) == config.privacy.audit_holdout_fraction > 0
    assert audit_holdout_fraction(config, 1) == 0.0
    assert audit_holdout_fraction(tiny_config("privacy.membership_audit=false"), AUDITED_SITE) == 0.0


def test_the_simulated_site_trains_without_its_held_back_records(tiny_config):
    from finfed.site.rounds import site_context

    config = tiny_config()
    site = site_context(config, {keys.NODE_PARTITION_ID: AUDITED_SITE})
    held = _texts(site.data.audit_holdout)
    assert held and not held & _texts(site.data.train)
    assert len(site.train_examples) == len(site.data.train)


def test_the_coordinators_audit_attacks_with_members_and_held_back_records_and_states_the_ceiling(
        tiny_config, monkeypatch):
    import finfed.coordinator.run as federation

    config = tiny_config()
    run = federation.FederatedRun(config)
    run.site_train = {1: [{keys.SITE_ID: 0, keys.NUM_EXAMPLES: 100, keys.STEPS: 10, keys.EPSILON: 2.0,
                           keys.NOISE_MULTIPLIER: 1.0, keys.SAMPLE_RATE: 0.1}]}
    seen = {}

    def spy(task, model, members, non_members, **kwargs):
        seen.update(members=members, non_members=non_members)
        return loss_threshold_auc(task, model, members, non_members, **kwargs)

    monkeypatch.setattr(federation, "loss_threshold_auc", spy)
    audit = run.membership_audit()
    site = simulated_site(config.data, AUDITED_SITE, config.federation.num_sites, SENTENCES,
                          audit_holdout=config.privacy.audit_holdout_fraction)
    tokenizer = federation.load_tokenizer(config.model.backbone)
    ids = lambda examples: {tuple(e["input_ids"]) for e in examples}  # noqa: E731
    assert ids(seen["non_members"]) == ids(run.task.encode(site.audit_holdout, tokenizer))
    assert ids(seen["members"]) == ids(run.task.encode(site.train, tokenizer))
    assert audit["members"] == audit["non_members"] == len(site.audit_holdout)
    assert audit["ceiling"] == {"auc": dp_auc_ceiling(2.0, config.privacy.target_delta), "epsilon": 2.0,
                                "delta": config.privacy.target_delta, "accountant": "prv"}
    text = audit_reading(audit)
    for phrase in (f"measured on {audit['members']} training records of site 0", "held back and never trained on",
                   "one attack", f"{audit['ceiling']['auc']:.4f}", "ε = 2.000 at δ = 1e-05 (prv)",
                   "does not cover", "loss-threshold attack AUC"):
        assert phrase in text, phrase


def test_audit_reading_without_dp_says_no_ceiling_applies():
    text = audit_reading({"site": 0, "attack": "loss-threshold", "auc": 0.61, "members": 40, "non_members": 40,
                          "chance_spread": 0.065, "ceiling": None})
    assert "no ceiling applies" in text and "0.610" in text and "0.5 ± 0.127" in text


def test_qa_hold_back_moves_whole_contexts_and_refuses_to_empty_the_training_set():
    train = pd.DataFrame({"context": ["a", "a", "b", "c", "c", "c", "d"], "question": list("1234567")})
    site = SiteData(site_id=0, train=train, validation=train.head(0))
    held = hold_back_for_audit(site, 0.4, "context")  # 3 records wanted: contexts a (2) and b (1)
    assert set(held.audit_holdout["context"]) == {"a", "b"}
    assert not set(held.audit_holdout["context"]) & set(held.train["context"])
    assert len(held.train) + len(held.audit_holdout) == len(train)
    with pytest.raises(DataError, match="site 0 has 1 training records: too few to hold back"):
        hold_back_for_audit(SiteData(site_id=0, train=train.head(1), validation=train.head(0)), 0.5)


# ------------------------------------------------------------------ DP lowers the attack's success


def _trained_model(config, members, plan=None, steps=1500):
    task = get_task(config, ["negative", "neutral", "positive"])
    model = task.build_model()
    accountant = SiteAccountant(config.privacy.accountant) if plan else None
    train_locally(model, members, task.collate, task.loss, loss_reduction="mean", settings=config.train,
                  steps=steps, seed=0, plan=plan, accountant=accountant,
                  reproducible_dp=True)  # the measured AUCs below are of this seeded run
    return task, model


@pytest.mark.slow
def test_overfit_non_private_model_is_more_exposed_than_the_dp_model(tiny_config):
    config = tiny_config("lora.method=lora", "lora.r=32", "lora.target_modules=query,key,value,intermediate.dense",
                         "train.batch_size=8", "train.learning_rate=0.003", "model.head_dropout=0",
                         "train.head_learning_rate=0.05", "privacy.target_epsilon=1")
    task = get_task(config, ["negative", "neutral", "positive"])
    tokenizer = load_tokenizer(config.model.backbone)
    # Random labels on both sides: only memorisation, not generalisation, can lower members' loss,
    # which is exactly the leak the attack looks for.
    rng = random.Random(3)
    members = [{**e, "label": rng.randrange(3)} for e in
               task.encode(simulated_site(config.data, 0, 2, SENTENCES).train.head(32), tokenizer)]
    non_members = [{**e, "label": rng.randrange(3)} for e in
                   task.encode(load_federated_data(config.data, 2, SENTENCES).test.head(32), tokenizer)]

    task, overfit = _trained_model(config, members)
    plan = plan_privacy(num_records=len(members), train=config.train, privacy=config.privacy, rounds=1)
    plan = type(plan)(**{**plan.__dict__, "steps_per_round": 1500, "total_steps": 1500})
    from finfed.privacy.calibration import calibrate_noise
    noise = calibrate_noise(target_epsilon=1.0, target_delta=1e-5, sample_rate=plan.sample_rate, steps=1500,
                            accountant="prv")
    plan = type(plan)(**{**plan.__dict__, "noise_multiplier": noise})
    _, private = _trained_model(config, members, plan=plan)

    exposed = loss_threshold_auc(task, overfit, members, non_members)["auc"]
    protected = loss_threshold_auc(task, private, members, non_members)["auc"]
    # Measured (seeded, CPU): overfit 0.725, DP (epsilon 1) 0.575; chance is 0.5 +- 0.07 at 32 vs 32.
    assert exposed > 0.7
    assert exposed > protected + 0.1
    assert protected < 0.65
