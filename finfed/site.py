"""One institution's side of a round, free of Flower types.

``client/app.py`` turns Flower messages into these calls and back; tests call
them directly.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch

from finfed import constants as keys
from finfed.config import ExperimentConfig
from finfed.data.partition import SiteData, load_federated_data, local_site, simulated_site
from finfed.errors import ConfigError, TrainingError
from finfed.models.adapters import frozen_adapter_fingerprint, load_trainable_state, trainable_state
from finfed.models.backbone import load_tokenizer, quiet_transformers
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.calibration import PrivacyPlan, plan_privacy, steps_per_round
from finfed.tasks import Task, get_task
from finfed.training import train_locally


@dataclass(frozen=True)
class SiteContext:
    """Everything a site needs to train, built once per process."""

    config: ExperimentConfig
    task: Task
    data: SiteData
    train_examples: list
    validation_examples: list


@dataclass(frozen=True)
class SiteUpdate:
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    accountant_state: dict[str, Any] | None
    plan: PrivacyPlan | None


def federation_labels(config: ExperimentConfig) -> list[str]:
    """The label list every participant uses: configured, or inferred from the simulated dataset."""
    if config.data.labels:
        return list(config.data.labels)
    if config.data.source == "synthetic" or config.data.path:
        return load_federated_data(config.data, config.federation.num_sites).labels
    raise ConfigError("`data.labels` must list the labels when sites hold their own data")


@functools.lru_cache(maxsize=2)
def _site_context(config: ExperimentConfig, site_id: int, data_path: str) -> SiteContext:
    quiet_transformers()
    labels = federation_labels(config)
    task = get_task(config, labels)
    if data_path:
        data = local_site(config.data, data_path, labels, site_id)
    else:
        data = simulated_site(config.data, site_id, config.federation.num_sites)
    tokenizer = load_tokenizer(config.model.backbone)
    return SiteContext(config=config, task=task, data=data,
                       train_examples=task.encode(data.train, tokenizer),
                       validation_examples=task.encode(data.validation, tokenizer))


def site_context(config: ExperimentConfig, node_config: Mapping[str, Any]) -> SiteContext:
    """Resolve a site from Flower's node config (partition id in simulation, data path in deployment)."""
    site_id = int(node_config.get(keys.NODE_PARTITION_ID, node_config.get("site-id", 0)))
    data_path = str(node_config.get(keys.NODE_DATA_PATH, ""))
    return _site_context(config, site_id, data_path)


def site_plan(site: SiteContext) -> PrivacyPlan | None:
    config = site.config
    if not config.privacy.enabled:
        return None
    return plan_privacy(num_records=len(site.train_examples), train=config.train, privacy=config.privacy,
                        rounds=config.federation.rounds, site=f"site {site.data.site_id}")


def _model_with(site: SiteContext, arrays: Mapping[str, np.ndarray], expected_fingerprint: str):
    if site.config.train.num_threads:
        torch.set_num_threads(site.config.train.num_threads)
    model = site.task.build_model()
    fingerprint = frozen_adapter_fingerprint(model)
    if expected_fingerprint and fingerprint != expected_fingerprint:
        raise TrainingError(f"site {site.data.site_id}: frozen LoRA A differs from the server's "
                            f"({fingerprint} != {expected_fingerprint}); check `lora.init_seed` and the backbone")
    load_trainable_state(model, arrays)
    return model


def train_round(site: SiteContext, arrays: Mapping[str, np.ndarray], *, server_round: int,
                accountant_state: Mapping[str, Any] | None, expected_fingerprint: str = "",
                progress=None) -> SiteUpdate:
    """Train the global adapter on this site's data for one round."""
    config = site.config
    model = _model_with(site, arrays, expected_fingerprint)
    plan = site_plan(site)
    accountant = SiteAccountant.from_plain(accountant_state, config.privacy.accountant) if plan else None
    steps = plan.steps_per_round if plan else steps_per_round(len(site.train_examples), config.train)
    outcome = train_locally(
        model, site.train_examples, site.task.collate, site.task.loss,
        loss_reduction=site.task.loss_reduction, settings=config.train, steps=steps,
        seed=config.seed * 100_003 + server_round * 1_009 + site.data.site_id,
        plan=plan, accountant=accountant, progress=progress)
    metrics = {keys.SITE_ID: site.data.site_id, keys.NUM_EXAMPLES: len(site.train_examples),
               keys.TRAIN_LOSS: outcome.mean_loss, keys.STEPS: outcome.steps}
    if plan is not None:
        metrics.update({keys.EPSILON: accountant.epsilon(plan.target_delta),
                        keys.NOISE_MULTIPLIER: plan.noise_multiplier, keys.SAMPLE_RATE: plan.sample_rate})
    new_arrays = {name: tensor.numpy() for name, tensor in trainable_state(model).items()}
    return SiteUpdate(arrays=new_arrays, metrics=metrics,
                      accountant_state=accountant.to_plain() if accountant else None, plan=plan)


def evaluate_round(site: SiteContext, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The global model's metrics on this site's local validation split."""
    model = _model_with(site, arrays, "")
    metrics = site.task.evaluate(model, site.validation_examples)
    out = {f"eval-{name.replace('_', '-')}": float(value) for name, value in metrics.items()}
    out.update({keys.SITE_ID: site.data.site_id, keys.NUM_EXAMPLES: len(site.validation_examples)})
    return out


def plan_as_dict(plan: PrivacyPlan | None) -> dict[str, Any]:
    return asdict(plan) if plan else {}
