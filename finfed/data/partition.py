"""One dataset, many sites: central test split and per-site partitions.

Partitioning uses flwr-datasets partitioners, so simulated label skew matches
what the rest of the Flower ecosystem means by IID, Dirichlet(alpha) and natural ids.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
from datasets import Dataset
from datasets.table import InMemoryTable
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
)

from finfed.config import DataSettings
from finfed.data.loading import check_labels, read_hub_dataset, resolve_labels
from finfed.errors import ConfigError, DataError


@dataclass(frozen=True)
class RecordFormat:
    """How one kind of record is read, checked, generated and split.

    Each task names its format (finfed.tasks); the functions here take it as a
    parameter and never ask which task is running.
    """

    read_file: Callable[[str], pd.DataFrame]
    #: raw rows -> the normalised columns the task encodes (``(frame, settings, source)``)
    normalise: Callable[[pd.DataFrame, DataSettings, str], pd.DataFrame]
    #: finfed's synthetic generator: ``(size, num_sites, seed=...)``
    generate: Callable[..., pd.DataFrame]
    synthetic_name: str  # what the generator produces, for the data source's description
    synthetic_size: int  # rows generated when `data.synthetic_size` is 0
    labelled: bool  # records carry a label from a fixed label list
    #: records sharing this column's value are split as one (QA: a context), so no group straddles a split
    group_column: str | None = None


@dataclass(frozen=True)
class FederatedData:
    """The whole simulated consortium's data, before it is split across sites."""

    labels: list[str]
    train_pool: pd.DataFrame
    test: pd.DataFrame
    source: str


@dataclass(frozen=True)
class SiteData:
    """What one site trains and validates on (and, for the audited site, what it holds back)."""

    site_id: int
    train: pd.DataFrame
    validation: pd.DataFrame
    # Simulation only: records of the audited site that it never trains on, the membership
    # audit's non-members (see finfed.privacy.membership_audit.audit_holdout_fraction).
    audit_holdout: pd.DataFrame = field(default_factory=pd.DataFrame)


def _raw_examples(settings: DataSettings, num_sites: int, records: RecordFormat) -> tuple[pd.DataFrame, str]:
    if settings.source == "synthetic":
        size = settings.synthetic_size or records.synthetic_size
        frame = records.generate(size, num_sites, seed=settings.synthetic_seed)
        return frame, f"{records.synthetic_name} (seed {settings.synthetic_seed})"
    if settings.source == "hub":
        return read_hub_dataset(settings.path), f"hub dataset {settings.path}"
    return records.read_file(settings.path), f"data file {settings.path}"


def normalise(frame: pd.DataFrame, settings: DataSettings, source: str, records: RecordFormat) -> pd.DataFrame:
    """The normalised records of ``records``' kind (e.g. ``text``/``label``, or the QA columns)."""
    return records.normalise(frame.reset_index(drop=True), settings, source)


def _split_test(frame: pd.DataFrame, settings: DataSettings,
                group_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FlowerTune-style held-out split (default 25 %, seed 42), of whole groups if ``group_column`` is set.

    QA splits by context: questions about a passage seen in training would
    flatter the test score (SQuAD splits by article for the same reason).
    """
    if group_column is None:
        dataset = Dataset.from_pandas(frame, preserve_index=False)
        parts = dataset.train_test_split(test_size=settings.test_fraction, seed=settings.split_seed)
        return parts["train"].to_pandas(), parts["test"].to_pandas()
    groups = Dataset.from_dict({"group": sorted(frame[group_column].unique().tolist())})
    test_groups = set(groups.train_test_split(test_size=settings.test_fraction,
                                              seed=settings.split_seed)["test"]["group"])
    in_test = frame[group_column].isin(test_groups)
    return frame[~in_test].reset_index(drop=True), frame[in_test].reset_index(drop=True)


@functools.lru_cache(maxsize=4)
def load_federated_data(settings: DataSettings, num_sites: int, records: RecordFormat) -> FederatedData:
    """Read, validate and split the consortium dataset (cached per process)."""
    raw, source = _raw_examples(settings, num_sites, records)
    frame = normalise(raw, settings, source, records)
    labels = resolve_labels(frame, settings, source) if records.labelled else []
    if settings.test_path:
        test_source = f"test file {settings.test_path}"
        test = normalise(records.read_file(settings.test_path), settings, test_source, records)
        if labels:
            check_labels(test, labels, test_source)
        train_pool = frame
    else:
        train_pool, test = _split_test(frame, settings, records.group_column)
    return FederatedData(labels=labels, train_pool=train_pool, test=test, source=source)


def _partitioner(settings: DataSettings, num_sites: int, seed: int):
    if settings.partitioner == "iid":
        return IidPartitioner(num_partitions=num_sites)
    if settings.partitioner == "dirichlet":
        return DirichletPartitioner(num_partitions=num_sites, partition_by="label",
                                    alpha=settings.dirichlet_alpha, min_partition_size=0,
                                    self_balancing=False, seed=seed)
    return NaturalIdPartitioner(partition_by=settings.partition_column)


@functools.lru_cache(maxsize=4)
def _partitions(settings: DataSettings, num_sites: int, records: RecordFormat) -> tuple[pd.DataFrame, ...]:
    data = load_federated_data(settings, num_sites, records)
    if settings.partitioner == "column":
        if settings.partition_column not in data.train_pool.columns:
            raise DataError(f"{data.source}: `data.partition_column` {settings.partition_column!r} "
                            f"is not a column; found {list(data.train_pool.columns)}",
                            public_reason="`data.partition_column` is not a column of the data")
        found = data.train_pool[settings.partition_column].nunique()
        if found != num_sites:
            raise ConfigError(f"`data.partition_column` {settings.partition_column!r} has {found} distinct "
                              f"values but `federation.num_sites` is {num_sites}; they must match")
    partitioner = _partitioner(settings, num_sites, settings.split_seed)
    # A fingerprint given, not computed: datasets would hash the whole table (string columns pickled row by
    # row: ~20 s for the default 2,250 rows on 2 busy cores), and partitions do not depend on it.
    partitioner.dataset = Dataset(InMemoryTable.from_pandas(data.train_pool, preserve_index=False),
                                  fingerprint=f"finfed-train-pool-{num_sites}-{len(data.train_pool)}")
    return tuple(partitioner.load_partition(i).to_pandas() for i in range(num_sites))


def simulated_site(settings: DataSettings, site_id: int, num_sites: int, records: RecordFormat,
                   audit_holdout: float = 0.0) -> SiteData:
    """Site ``site_id``'s share of the simulated consortium's data.

    ``audit_holdout``: share of the site's training records set aside, never trained on,
    for the membership audit (0 = none).
    """
    if not 0 <= site_id < num_sites:
        raise ConfigError(f"partition id {site_id} is outside 0..{num_sites - 1}")
    partition = _partitions(settings, num_sites, records)[site_id]
    if partition.empty:
        message = (f"site {site_id} received an empty partition from the {settings.partitioner!r} "
                   f"partitioner over {num_sites} sites; raise `data.dirichlet_alpha`, lower "
                   "`federation.num_sites` or use more data")
        raise DataError(message, public_reason=message)
    site = split_validation(partition, settings, site_id)
    return hold_back_for_audit(site, audit_holdout, records.group_column)


def local_site(settings: DataSettings, path: str, labels: list[str], site_id: int,
               records: RecordFormat) -> SiteData:
    """A deployed site's own file, checked against the federation's labels."""
    source = f"data file {path}"
    frame = normalise(records.read_file(path), settings, source, records)
    if labels:
        check_labels(frame, labels, source)
    return split_validation(frame, settings, site_id)


def split_validation(frame: pd.DataFrame, settings: DataSettings, site_id: int) -> SiteData:
    """Keep ``validation_fraction`` of a site's rows for its local evaluation."""
    shuffled = frame.sample(frac=1.0, random_state=settings.split_seed + site_id).reset_index(drop=True)
    num_validation = int(round(len(shuffled) * settings.validation_fraction))
    if settings.validation_fraction > 0:
        num_validation = max(1, num_validation)
    if len(shuffled) - num_validation < 1:
        message = f"site {site_id} has {len(frame)} examples: too few to keep a validation split"
        raise DataError(message, public_reason=message)
    return SiteData(site_id=site_id, train=shuffled.iloc[num_validation:].reset_index(drop=True),
                    validation=shuffled.iloc[:num_validation].reset_index(drop=True))


def hold_back_for_audit(site: SiteData, fraction: float, group_column: str | None = None) -> SiteData:
    """Move ``fraction`` of ``site``'s training records into ``audit_holdout`` (deterministic).

    The training records are already shuffled by the split seed, so their first rows are a
    seeded random sample of the site's own distribution. With ``group_column`` (QA: the
    context) whole groups move, so no non-member shares its passage with a member.
    """
    if fraction <= 0:
        return site
    train = site.train
    wanted = max(1, int(round(len(train) * fraction)))
    if group_column is None:
        held = pd.Series(train.index < wanted, index=train.index)
    else:
        sizes = train.groupby(group_column, sort=False).size()
        groups = sizes.index[(sizes.cumsum() - sizes) < wanted]  # groups in first-seen order, until enough
        held = train[group_column].isin(set(groups))
    if held.all():
        raise DataError(f"site {site.site_id} has {len(train)} training records: too few to hold back "
                        f"`privacy.audit_holdout_fraction` {fraction:g} for the membership audit and still "
                        "train; lower it or turn `privacy.membership_audit` off")
    return SiteData(site_id=site.site_id, train=train[~held].reset_index(drop=True),
                    validation=site.validation, audit_holdout=train[held].reset_index(drop=True))


# TEMP site_names (data helper owns the real one)
def site_names(settings: DataSettings, num_sites: int, records: RecordFormat) -> list[str]:
    """Each simulated site's name: the partition column's sorted distinct values, else ``site-<i>``."""
    if settings.partitioner == "column":
        frame = load_federated_data(settings, num_sites, records).train_pool
        if settings.partition_column in frame.columns:
            return [str(value) for value in sorted(frame[settings.partition_column].unique())]
    return [f"site-{i}" for i in range(num_sites)]
