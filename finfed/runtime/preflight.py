"""Checks run before any process starts, so bad input fails fast and names the problem."""

from __future__ import annotations

from finfed.config import ExperimentConfig
from finfed.data.partition import simulated_site
from finfed.models.devices import check_compute
from finfed.privacy.calibration import plan_privacy, steps_per_round
from finfed.privacy.membership_audit import audit_holdout_fraction
from finfed.tasks import federation_labels, task_class


def check_simulation(config: ExperimentConfig) -> list[dict]:
    """Load every simulated site's data and plan its privacy; return one summary per site."""
    check_compute(config.model.device, config.train.precision, config.simulation.gpus_per_site)
    record_format = task_class(config).records  # task_class refuses settings the task cannot run with
    federation_labels(config)
    summaries = []
    for site_id in range(config.federation.num_sites):
        site = simulated_site(config.data, site_id, config.federation.num_sites, record_format,
                              audit_holdout=audit_holdout_fraction(config, site_id))
        records = len(site.train)
        summary = {"site": site_id, "train": records, "validation": len(site.validation),
                   "audit_holdout": len(site.audit_holdout), "steps_per_round": steps_per_round(records, config.train)}
        if config.privacy.enabled:
            plan = plan_privacy(num_records=records, train=config.train, privacy=config.privacy,
                                rounds=config.federation.rounds, site=f"site {site_id}")
            summary.update(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        summaries.append(summary)
    return summaries
