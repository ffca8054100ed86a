"""The central non-private baseline: the federation's training records on one machine, no Flower.

It trains on exactly the records the federated run's sites train on (each site's training
split, after its validation split and any audit hold-out), with finfed's own local training
loop (``finfed.training.local.train_locally``, non-private), for as many epochs per "round" as
each site runs, and evaluates the model on the same central test split after every round.
The gap between it and the non-private federation is the price of federating.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from benchmarks.measure import central_test_examples, label_shares, rounded
from finfed.config import ExperimentConfig
from finfed.data.partition import simulated_site
from finfed.models.adapters import exchanged_state
from finfed.models.backbone import load_tokenizer, quiet_transformers
from finfed.privacy.calibration import steps_per_round
from finfed.privacy.membership_audit import audit_holdout_fraction
from finfed.tasks import federation_labels, get_task
from finfed.training.local import train_locally


def federation_training_records(config: ExperimentConfig, records) -> pd.DataFrame:
    """Every site's training split, as the simulated sites see them."""
    sites = config.federation.num_sites
    return pd.concat([simulated_site(config.data, site, sites, records,
                                     audit_holdout=audit_holdout_fraction(config, site)).train
                      for site in range(sites)], ignore_index=True)


def train_central(config: ExperimentConfig) -> dict[str, Any]:
    """Train and evaluate round by round; the result in the suite's format (no epsilon, nothing uploaded)."""
    quiet_transformers()
    config = dataclasses.replace(config, privacy=dataclasses.replace(config.privacy, enabled=False))
    task = get_task(config, federation_labels(config))
    model = task.build_model()
    train = task.encode(federation_training_records(config, task.records), load_tokenizer(config.model.backbone))
    test = central_test_examples(config, task)
    rounds = [{"round": 0, **rounded(task.evaluate(model, test))}]
    steps = steps_per_round(len(train), config.train)
    for server_round in range(1, config.federation.rounds + 1):
        train_locally(model, train, task.collate, task.loss, loss_reduction=task.loss_reduction,
                      settings=config.train, steps=steps, seed=config.seed * 100_003 + server_round * 1_009)
        rounds.append({"round": server_round, **rounded(task.evaluate(model, test))})
    result: dict[str, Any] = {
        "state": "complete", "rounds": rounds, "final": {k: v for k, v in rounds[-1].items() if k != "round"},
        "baseline": rounded(task.baseline(test)), "baseline_description": task.baseline_description,
        "dp": False, "epsilon_per_site": {}, "target_epsilon": None, "upload_bytes_per_site_round": None,
        "training_records": len(train), "steps_per_round": steps,
        "trained_tensors": len(exchanged_state(model))}
    if config.task == "classification":
        result["label_share"] = label_shares(task, model, test)
    return result
