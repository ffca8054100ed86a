"""What a site decides and keeps for itself (its folder, its opt-ins), without importing torch: the ClientApp
reads it for every message, SecAgg+ key exchanges included."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from finfed import constants as keys
from finfed.config import ExperimentConfig
from finfed.privacy.disclosure import OptIns


def is_deployed(node_config: Mapping[str, Any]) -> bool:
    """A site with its own data (`data-path`, as `finfed deploy` sets), or any node without the
    `partition-id` Flower's simulation gives every simulated site. A SuperNode started by hand with
    a `partition-id` and no `data-path` trains on the run's own dataset, held by the coordinator too."""
    return keys.NODE_DATA_PATH in node_config or keys.NODE_PARTITION_ID not in node_config


def site_id_of(node_config: Mapping[str, Any]) -> int:
    """The site's number: partition id in simulation, node config ``site-id`` in deployment."""
    return int(node_config.get(keys.NODE_PARTITION_ID, node_config.get(keys.NODE_SITE_ID, 0)))


def site_folder(config: ExperimentConfig, node_config: Mapping[str, Any], site_id: int) -> str:
    """The site's own folder: node config `site-dir` in deployment, ``RUN/sites/site-<id>`` in simulation.

    In simulation every site lives on the coordinator's machine, so its side-files sit in the
    run directory's ``sites/`` folder, which stands for the bank's own disk: nothing the
    coordinator writes reads from it.
    """
    folder = str(node_config.get(keys.NODE_SITE_DIR, ""))
    return folder or str(config.resolved_run_dir / "sites" / f"site-{site_id}")


def with_site_device(config: ExperimentConfig, node_config: Mapping[str, Any]) -> ExperimentConfig:
    """The run's settings with the device this site chose: node config ``device`` (a deployed site's
    site.toml ``[site] device``, ``auto`` if unset). A simulated site (Flower gives it a ``partition-id``)
    without the key uses the run's `model.device`; the coordinator never picks a deployed site's device."""
    value = node_config.get(keys.NODE_DEVICE)
    if value is None:
        value = config.model.device if keys.NODE_PARTITION_ID in node_config else "auto"
    value = str(value).strip()
    if value == config.model.device:
        return config
    return replace(config, model=replace(config.model, device=value))


def site_opt_ins(config: ExperimentConfig, node_config: Mapping[str, Any]) -> OptIns:
    """What this site sends beyond the fixed allow-list: each opt-in decided as ``share_train_loss`` says."""
    return OptIns(train_loss=share_train_loss(config, node_config),
                  label_shares=share_label_shares(config, node_config))


def share_train_loss(config: ExperimentConfig, node_config: Mapping[str, Any]) -> bool:
    """Whether this site sends its training loss. The site decides: node config ``share-train-loss``
    (a deployed site, ``is_deployed``: off unless set). A simulated site without the key follows the run's
    ``privacy.share_train_loss``; the coordinator's settings never switch it on for a deployed site."""
    return _opted_in(node_config, keys.NODE_SHARE_TRAIN_LOSS, config.privacy.share_train_loss)


def share_label_shares(config: ExperimentConfig, node_config: Mapping[str, Any]) -> bool:
    """Whether this site sends each label's predicted-minus-true share of its validation records
    (``eval-share-gap-<index>``): node config ``share-label-shares``, decided as ``share_train_loss``."""
    return _opted_in(node_config, keys.NODE_SHARE_LABEL_SHARES, config.privacy.share_label_shares)


def _opted_in(node_config: Mapping[str, Any], key: str, simulated_default: bool) -> bool:
    value = node_config.get(key)
    if value is None:  # a node with its own data decides alone, even with a partition-id
        return not is_deployed(node_config) and bool(simulated_default)
    return value is True or str(value).strip().lower() in ("true", "1", "yes")
