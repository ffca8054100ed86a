"""One institution's side of a round, free of Flower types.

``client/app.py`` turns Flower messages into these calls and back; tests call
them directly.
"""

from __future__ import annotations

import functools
import os
import time
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
    site_names,
)
from finfed.errors import (
    ConfigError,
    PrivacyError,
    RunInterrupted,
    TrainingError,
)
from finfed.models.adapters import (
    exchanged_state,
    frozen_adapter_fingerprint,
    load_exchanged_state,
)
from finfed.models.backbone import load_tokenizer, quiet_transformers
from finfed.privacy.calibration import PrivacyPlan, steps_per_round
from finfed.privacy.membership_audit import audit_holdout_fraction
from finfed.privacy.randomness import warn_if_reproducible
from finfed.privacy.site_budget import SiteBudget, SitePolicy
from finfed.runs.stop import stop_path
from finfed.site.log import site_log
from finfed.site.node_settings import (
    is_deployed,
    site_folder,  # noqa: F401  (re-exported: it lived here)
    with_site_device,
)
from finfed.tasks import Task, federation_labels, get_task, task_class
from finfed.training.local import train_locally
from finfed.wire import clean_site_name


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
    # The site's name, sent beside its id: node config `site-name` (deployment), else its partition's (simulation).
    name: str = ""


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


# Every site a worker process serves stays cached: Flower's simulation runs many sites in turn on one
# ClientApp process, and a site's data, tokenised examples and fingerprint are what grows with the number
# of sites (a few MB each at most); the model is shared (_process_model).
@functools.lru_cache(maxsize=1024)
def _site_context(config: ExperimentConfig, site_id: int, data_path: str, policy: SitePolicy,
                  name: str = "") -> SiteContext:
    quiet_transformers()
    warn_if_reproducible(config.privacy.reproducible and config.privacy.enabled, f"site {site_id}")
    labels = federation_labels(config)
    task = get_task(config, labels)
    if data_path:
        data = local_site(config.data, data_path, labels, site_id, task.records)
    else:
        data = simulated_site(config.data, site_id, config.federation.num_sites, task.records,
                              audit_holdout=audit_holdout_fraction(config, site_id))
        name = name or site_names(config.data, config.federation.num_sites, task.records)[site_id]
    tokenizer = _tokenizer(config.model.backbone)
    return SiteContext(config=config, task=task, data=data,
                       train_examples=task.encode(data.train, tokenizer),
                       validation_examples=task.encode_for_evaluation(data.validation, tokenizer),
                       fingerprint=task.fingerprint(data.train), policy=policy, name=clean_site_name(name))


def site_context(config: ExperimentConfig, node_config: Mapping[str, Any]) -> SiteContext:
    """Resolve a site from Flower's node config (partition id in simulation, data path in deployment)."""
    site_id = int(node_config.get(keys.NODE_PARTITION_ID, node_config.get(keys.NODE_SITE_ID, 0)))
    refuse_reproducible_when_deployed(config, node_config, site_id)
    data_path = str(node_config.get(keys.NODE_DATA_PATH, ""))
    site = _site_context(with_site_device(with_site_columns(config, node_config), node_config), site_id, data_path,
                         site_policy(config, node_config, site_id), str(node_config.get(keys.NODE_SITE_NAME, "")))
    if keys.NODE_PARTITION_ID in node_config:  # Flower sets it in simulation only
        site = replace(site, stop_request=str(stop_path(config.resolved_run_dir)))
    return site


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


@functools.lru_cache(maxsize=2)
def _tokenizer(backbone: str):
    return load_tokenizer(backbone)


@dataclass
class _BuiltModel:
    key: tuple
    model: torch.nn.Module
    fingerprint: str


_PROCESS_MODEL: list[_BuiltModel] = []  # at most one: the model this worker process trains and evaluates
MODEL_BUILDS = [0]  # how many times this process built a model (tests and the profile count them)


def _model_key(site: SiteContext) -> tuple:
    """What the built model depends on: the run's settings except the data columns and site-only fields."""
    config = site.config
    return (config.task, config.model, config.lora, config.qa, config.train, tuple(site.task.labels),
            type(site.task))


def _process_model(site: SiteContext) -> _BuiltModel:
    """One backbone copy per worker process, not per site or per round.

    Every tensor a round depends on is reset before use: the trainable ones are loaded from the
    coordinator's arrays (load_exchanged_state checks all of them), the frozen ones are never changed
    by training, a round's optimizer is made afresh (training.local), Opacus' hooks and per-sample
    gradients are removed after each round, and dropout is re-seeded at the start of every round; so a
    cached model gives the same round as a freshly built one.
    """
    key = _model_key(site)
    if _PROCESS_MODEL and _PROCESS_MODEL[0].key == key:
        return _PROCESS_MODEL[0]
    _PROCESS_MODEL.clear()  # the old model goes before the new one is built: one copy at a time
    started = time.perf_counter()
    model = site.task.build_model()
    MODEL_BUILDS[0] += 1
    site_log(site.policy.folder).info(f"model built in {time.perf_counter() - started:.3f} s "
                                      f"(build {MODEL_BUILDS[0]} in process {os.getpid()})")
    _PROCESS_MODEL.append(_BuiltModel(key=key, model=model, fingerprint=frozen_adapter_fingerprint(model)))
    return _PROCESS_MODEL[0]


def _model_with(site: SiteContext, arrays: Mapping[str, np.ndarray], expected_fingerprint: str):
    if site.config.train.num_threads:
        torch.set_num_threads(site.config.train.num_threads)
    built = _process_model(site)
    model, fingerprint = built.model, built.fingerprint
    if expected_fingerprint and fingerprint != expected_fingerprint:
        raise TrainingError(f"site {site.data.site_id}: frozen LoRA A differs from the server's "
                            f"({fingerprint} != {expected_fingerprint}); check `lora.init_seed` and the backbone")
    load_exchanged_state(model, arrays)
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
    started = time.perf_counter()
    model = _model_with(site, arrays, expected_fingerprint)
    ready = time.perf_counter()
    steps = plan.steps_per_round if plan else steps_per_round(len(site.train_examples), config.train)
    should_stop = Path(site.stop_request).exists if site.stop_request else None
    view = site.task.training_view(model, site.train_examples)  # a head-only model: kept features (fixed_features)
    outcome = train_locally(
        view.module, view.examples, view.collate, view.loss,
        loss_reduction=site.task.loss_reduction, settings=config.train, steps=steps,
        seed=config.seed * 100_003 + server_round * 1_009 + site.data.site_id,
        plan=plan, accountant=budget.accountant if budget else None, progress=progress, should_stop=should_stop,
        reproducible_dp=config.privacy.reproducible, clip_scales=view.clip_scales)
    trained = time.perf_counter()
    # Timings stay in the site's own log (they follow the secret Poisson batch sizes: never sent).
    site_log(site.policy.folder).info(
        f"round {server_round}: {outcome.steps} steps on {outcome.examples_seen} examples; train-seconds "
        f"{trained - ready:.3f}, model-ready-seconds {ready - started:.3f}")
    if should_stop is not None and should_stop():  # the stop came after the last step: still nothing recorded
        raise RunInterrupted(f"site {site.data.site_id}: the run was asked to stop; round {server_round} abandoned")
    metrics = {keys.SITE_ID: site.data.site_id, keys.NUM_EXAMPLES: len(site.train_examples),
               keys.TRAIN_LOSS: outcome.mean_loss, keys.STEPS: outcome.steps}
    if budget is not None:
        metrics.update(budget.commit(run_id=run_id, server_round=server_round, steps=outcome.steps).metrics())
    new_arrays = {name: tensor.numpy() for name, tensor in exchanged_state(model).items()}
    return SiteUpdate(arrays=new_arrays, metrics=metrics,
                      accountant_state=budget.state() if budget else None, plan=plan)


def evaluate_round(site: SiteContext, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The global model's metrics on this site's local validation split, with each label's recall
    (``eval-recall-<index>``: a disclosed, non-private statistic, allow-listed in finfed/privacy/disclosure.py)
    and its predicted-minus-true share (``eval-share-gap-<index>``: sent only if the site opted in)."""
    model = _model_with(site, arrays, "")
    metrics = site.task.evaluate(model, site.validation_examples, per_label=True)
    out = {f"eval-{name.replace('_', '-')}": float(value) for name, value in metrics.items()}
    out.update({keys.SITE_ID: site.data.site_id, keys.NUM_EXAMPLES: len(site.validation_examples)})
    return out
