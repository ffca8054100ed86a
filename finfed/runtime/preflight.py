"""Checks run before any process starts, so bad input fails fast and names the problem.

Importing this module is cheap (settings only): the modules :func:`check_simulation` needs (data,
privacy calibration, the tasks with PyTorch and PEFT: seconds to import) are imported when it runs,
so that :func:`check_configuration`'s errors come first.
"""

from __future__ import annotations

from pathlib import Path

from finfed.config import ExperimentConfig
from finfed.errors import DataError


def check_configuration(config: ExperimentConfig) -> None:
    """What can fail from the settings alone, in seconds: no site's data loaded, no weights loaded (the backbone
    only from its config, weightless, for LoRA's targets), no engine.

    `finfed simulate` calls it after the run-folder check and before :func:`check_simulation`.
    """
    _check_data_files(config)  # the plainest mistake first, before the slower imports
    from finfed.data.checks import check_data_config
    from finfed.tasks import task_class  # PyTorch and PEFT: the slowest import of the checks, so last

    records = task_class(config).records  # task_class refuses settings the task cannot run with
    check_data_config(config, records)  # columns, labels, label map, partition column: file headers, no model
    from finfed.models.backbone import check_adapter_targets
    from finfed.models.devices import check_compute

    check_compute(config.model.device, config.train.precision, config.simulation.gpus_per_site)
    check_adapter_targets(config.model.backbone, config.lora.target_modules)


def _check_data_files(config: ExperimentConfig) -> None:
    if config.data.source != "file":
        return
    for key in ("path", "test_path"):  # an empty `data.path` with `source: file` is refused by finfed.config
        value = getattr(config.data, key)
        if value and not Path(value).expanduser().is_file():
            raise DataError(f"data file {value} does not exist (`data.{key}`)",
                            public_reason="the data file does not exist")


def check_simulation(config: ExperimentConfig) -> list[dict]:
    """Load every simulated site's data and plan its privacy; return one summary per site."""
    from finfed.data.partition import simulated_site
    from finfed.privacy.calibration import plan_privacy, steps_per_round
    from finfed.privacy.membership_audit import audit_holdout_fraction
    from finfed.tasks import federation_labels, task_class

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
