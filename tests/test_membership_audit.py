"""Membership-inference audit: the AUC maths, and that DP really lowers the attack's success."""

import random

import pytest

from finfed.data.partition import load_federated_data, simulated_site
from finfed.membership_audit import loss_threshold_auc, roc_auc
from finfed.models.backbone import load_tokenizer
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import plan_privacy
from finfed.tasks import get_task
from finfed.training import train_locally


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
               task.encode(simulated_site(config.data, 0, 2).train.head(32), tokenizer)]
    non_members = [{**e, "label": rng.randrange(3)} for e in
                   task.encode(load_federated_data(config.data, 2).test.head(32), tokenizer)]

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
