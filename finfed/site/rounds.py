"""One institution's side of a round, free of Flower types.

``client/app.py`` turns Flower messages into these calls and back; tests call
them directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from finfed import constants as keys
from finfed.config import ExperimentConfig
from finfed.data.partition import (
    SiteData,
    local_site,
    simulated_site,
)
from finfed.errors import (
    ConfigError,
    PrivacyError,
    RunInterrupted,
    TrainingError,
)
from finfed.models.adapters import (
    frozen_adapter_fingerprint,
    load_trainable_state,
    trainable_state,
)
from finfed.models.backbone import load_tokenizer, quiet_transformers
from finfed.privacy.calibration import PrivacyPlan, steps_per_round
from finfed.privacy.membership_audit import audit_holdout_fraction
from finfed.privacy.randomness import warn_if_reproducible
from finfed.privacy.site_budget import SiteBudget, SitePolicy
from finfed.runs.stop import stop_path
from finfed.site.log import site_log
from finfed.site.node_settings import site_folder  # noqa: F401  (re-exported: it lived here)
from finfed.tasks import Task, federation_labels, get_task, task_class
from finfed.training.local import train_locally


@dataclass(frozen=True)
class SiteContext:
    """Everything a site needs to train, built once per process."""

    config: ExperimentConfig
    task: Task
    data: SiteData
    train_examples: list
    validation_examples: list
    fingerprint: str
    policy: SitePolicy
    # Simulation only: the coordinator's RUN/.stop, which a simulated site can see (finfed.runs.stop).
    stop_request: str = ""


@dataclass(frozen=True)
class SiteUpdate:
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    accountant_state: dict[str, Any] | None
    plan: PrivacyPlan | None


def site_policy(config: ExperimentConfig, node_config: Mapping[str, Any], site_id: int) -> SitePolicy:
    """The site's own budget and ledger: node config in deployment, per-site settings in simulation."""
    privacy = config.privacy
    ledger = str(node_config.get(keys.NODE_LEDGER_PATH, ""))
    if not ledger and privacy.ledger_dir:
        ledger = str(Path(privacy.ledger_dir) / f"site-{site_id}.json")
    try:
        budget = float(node_config.get(keys.NODE_BUDGET_EPSILON, privacy.site_budget_epsilon or
                                       privacy.target_epsilon))
        delta = float(node_config.get(keys.NODE_BUDGET_DELTA, privacy.target_delta))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"node config `{keys.NODE_BUDGET_EPSILON}` / `{keys.NODE_BUDGET_DELTA}` must be "
                          f"numbers: {exc}") from None
    return SitePolicy(budget_epsilon=budget, budget_delta=delta, ledger_path=ledger,
                      folder=site_folder(config, node_config, site_id),
                      dataset=dataset_name(config, node_config, site_id), site_id=site_id)


def dataset_name(config: ExperimentConfig, node_config: Mapping[str, Any], site_id: int) -> str:
    """What the site's ledger composes spend under: node config `dataset-name` (site.toml `[data] name`),
    else the data file's name (deployment) or the simulated site's partition.

    A name, not a content hash: one record added must not make a fresh dataset with zero spend.
    """
    named = str(node_config.get(keys.NODE_DATASET_NAME, "")).strip()
    if named:
        return named
    data_path = str(node_config.get(keys.NODE_DATA_PATH, ""))
    if data_path:
        return Path(data_path).name
    if config.data.source == "synthetic":
        source = task_class(config).synthetic_dataset
    else:
        source = Path(config.data.path).name if config.data.source == "file" else config.data.path
    return f"{source}/site-{site_id}"


@functools.lru_cache(maxsize=2)
def _site_context(config: ExperimentConfig, site_id: int, data_path: str, policy: SitePolicy) -> SiteContext:
    quiet_transformers()
    warn_if_reproducible(config.privacy.reproducible and config.privacy.enabled, f"site {site_id}")
    labels = federation_labels(config)
    task = get_task(config, labels)
    if data_path:
        data = local_site(config.data, data_path, labels, site_id, task.records)
    else:
        data = simulated_site(config.data, site_id, config.federation.num_sites, task.records,
                              audit_holdout=audit_holdout_fraction(config, site_id))
    tokenizer = load_tokenizer(config.model.backbone)
    return SiteContext(config=config, task=task, data=data,
                       train_examples=task.encode(data.train, tokenizer),
                       validation_examples=task.encode_for_evaluation(data.validation, tokenizer),
                       fingerprint=task.fingerprint(data.train), policy=policy)


def site_context(config: ExperimentConfig, node_config: Mapping[str, Any]) -> SiteContext:
    """Resolve a site from Flower's node config (partition id in simulation, data path in deployment)."""
    site_id = int(node_config.get(keys.NODE_PARTITION_ID, node_config.get(keys.NODE_SITE_ID, 0)))
    refuse_reproducible_when_deployed(config, node_config, site_id)
    data_path = str(node_config.get(keys.NODE_DATA_PATH, ""))
    site = _site_context(with_site_columns(config, node_config), site_id, data_path,
                         site_policy(config, node_config, site_id))
    if keys.NODE_PARTITION_ID in node_config:  # Flower sets it in simulation only
        site = replace(site, stop_request=str(stop_path(config.resolved_run_dir)))
    return site


def is_deployed(node_config: Mapping[str, Any]) -> bool:
    """A site with its own data (`data-path`, as `finfed deploy` sets), or any node without the
    `partition-id` Flower's simulation gives every simulated site. A SuperNode started by hand with
    a `partition-id` and no `data-path` trains on the run's own dataset, held by the coordinator too."""
    return keys.NODE_DATA_PATH in node_config or keys.NODE_PARTITION_ID not in node_config


def refuse_reproducible_when_deployed(config: ExperimentConfig, node_config: Mapping[str, Any],
                                      site_id: int) -> None:
    """The coordinator writes the run config: a deployed site must not let it choose known DP randomness."""
    if config.privacy.reproducible and is_deployed(node_config):
        raise PrivacyError(f"site {site_id}: the run sets `privacy.reproducible`, which derives DP sampling and "
                           "noise from the run's seed, known to the coordinator, so the site's epsilon would not "
                           "hold against it; a deployed site refuses such a run (test/benchmark use only)")


def with_site_columns(config: ExperimentConfig, node_config: Mapping[str, Any]) -> ExperimentConfig:
    """A deployed site may name its own file's columns (node config); the run's names otherwise."""
    columns = {field: str(node_config[key]) for field, key in (("text_column", keys.NODE_TEXT_COLUMN),
                                                              ("label_column", keys.NODE_LABEL_COLUMN))
               if node_config.get(key)}
    return replace(config, data=replace(config.data, **columns)) if columns else config


def site_budget(site: SiteContext, accountant_state: Mapping[str, Any] | None,
                resumed_at_round: int = 0) -> SiteBudget | None:
    """The site's privacy flow for this round (finfed/privacy/site_budget.py), or None without DP."""
    if not site.config.privacy.enabled:
        return None
    return SiteBudget.open(site.policy, site.config.privacy, fingerprint=site.fingerprint,
                           stored_state=accountant_state, resumed_at_round=resumed_at_round,
                           log=site_log(site.policy.folder))


def _round_shape(site: SiteContext) -> dict[str, Any]:
    """What the noise is calibrated for: the site's record count, its training settings, the run's rounds."""
    return {"num_records": len(site.train_examples), "train": site.config.train,
            "rounds": site.config.federation.rounds}


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


def budget_refusal(site: SiteContext, accountant_state: Mapping[str, Any] | None) -> str | None:
    """Why this site would refuse the next round for its budget, or None: asked before SecAgg+ key sharing,
    so that a refusing site sends nothing at all (the same check train_round makes)."""
    budget = site_budget(site, accountant_state)
    return budget.refusal(**_round_shape(site)) if budget else None


def train_round(site: SiteContext, arrays: Mapping[str, np.ndarray], *, server_round: int,
                accountant_state: Mapping[str, Any] | None, expected_fingerprint: str = "",
                run_id: str = "local", progress=None, resumed_at_round: int = 0) -> SiteUpdate:
    """Train the global adapter on this site's data for one round (or refuse, over budget).

    ``resumed_at_round`` > 0: the coordinator restarted from that round's checkpoint (the site's
    ``accountant_state`` is then gone unless it keeps a ledger)."""
    config = site.config
    budget = site_budget(site, accountant_state, resumed_at_round)
    plan = budget.admit(**_round_shape(site)) if budget else None
    model = _model_with(site, arrays, expected_fingerprint)
    steps = plan.steps_per_round if plan else steps_per_round(len(site.train_examples), config.train)
    should_stop = Path(site.stop_request).exists if site.stop_request else None
    outcome = train_locally(
        model, site.train_examples, site.task.collate, site.task.loss,
        loss_reduction=site.task.loss_reduction, settings=config.train, steps=steps,
        seed=config.seed * 100_003 + server_round * 1_009 + site.data.site_id,
        plan=plan, accountant=budget.accountant if budget else None, progress=progress, should_stop=should_stop,
        reproducible_dp=config.privacy.reproducible)
    if should_stop is not None and should_stop():  # the stop came after the last step: still nothing recorded
        raise RunInterrupted(f"site {site.data.site_id}: the run was asked to stop; round {server_round} abandoned")
    metrics = {keys.SITE_ID: site.data.site_id, keys.NUM_EXAMPLES: len(site.train_examples),
               keys.TRAIN_LOSS: outcome.mean_loss, keys.STEPS: outcome.steps}
    if budget is not None:
        metrics.update(budget.commit(run_id=run_id, server_round=server_round, steps=outcome.steps).metrics())
    new_arrays = {name: tensor.numpy() for name, tensor in trainable_state(model).items()}
    return SiteUpdate(arrays=new_arrays, metrics=metrics,
                      accountant_state=budget.state() if budget else None, plan=plan)


def evaluate_round(site: SiteContext, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The global model's metrics on this site's local validation split, with each label's recall
    (``eval-recall-<index>``: a disclosed, non-private statistic, allow-listed in finfed/privacy/disclosure.py)."""
    model = _model_with(site, arrays, "")
    metrics = site.task.evaluate(model, site.validation_examples, per_label=True)
    out = {f"eval-{name.replace('_', '-')}": float(value) for name, value in metrics.items()}
    out.update({keys.SITE_ID: site.data.site_id, keys.NUM_EXAMPLES: len(site.validation_examples)})
    return out
