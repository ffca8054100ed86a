"""One dataset, many sites: central test split and per-site partitions.

Partitioning uses flwr-datasets partitioners, so simulated label skew matches what the rest of the
Flower ecosystem means by IID, Dirichlet(alpha) and natural ids. They run on a small index-only
``datasets.Dataset`` (row numbers, plus the label they split by), never on the records' text; natural ids
(the `column` partitioner) are computed in numpy exactly as flwr-datasets' NaturalIdPartitioner assigns
them. A site's frame is then taken from the training pool by row number: the splits are the ones the
partitioners give on the whole table, seed for seed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from finfed.config import DEFAULT_NUM_SITES, DEFAULT_PARTITION_COLUMN, DataSettings, ExperimentConfig
from finfed.data.loading import as_text, check_labels, read_hub_dataset, resolve_labels, user_columns
from finfed.errors import ConfigError, DataError

ROW = "finfed_row"  # the index-only dataset's row-number column


@dataclass(frozen=True)
class RecordFormat:
    """How one kind of record is read, checked, generated and split.

    Each task names its format (finfed.tasks); the functions here take it as a
    parameter and never ask which task is running.
    """

    read_file: Callable[..., pd.DataFrame]
    #: raw rows -> the normalised columns the task encodes (``(frame, settings, source)``)
    normalise: Callable[[pd.DataFrame, DataSettings, str], pd.DataFrame]
    #: finfed's synthetic generator: ``(size, num_sites, seed=...)``
    generate: Callable[..., pd.DataFrame]
    synthetic_name: str  # what the generator produces, for the data source's description
    synthetic_size: int  # rows generated when `data.synthetic_size` is 0
    labelled: bool  # records carry a label from a fixed label list
    #: records sharing this column's value are split as one (QA: a context), so no group straddles a split
    group_column: str | None = None
    #: the file columns the format needs (``read_file(path, columns=...)`` reads only those); None = all
    columns: Callable[[DataSettings], Sequence[str]] | None = None
    #: the generator's variants (`data.synthetic_variant`), passed to it as ``variant=``
    synthetic_variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class FederatedData:
    """The whole simulated consortium's data, before it is split across sites."""

    labels: list[str]
    train_pool: pd.DataFrame
    test: pd.DataFrame
    source: str
    file_columns: tuple[str, ...] = ()  # the user's columns (a file's), for errors


@dataclass(frozen=True)
class SiteData:
    """What one site trains and validates on (and, for the audited site, what it holds back)."""

    site_id: int
    train: pd.DataFrame
    validation: pd.DataFrame
    # Simulation only: records of the audited site that it never trains on, the membership
    # audit's non-members (see finfed.privacy.membership_audit.audit_holdout_fraction).
    audit_holdout: pd.DataFrame = field(default_factory=pd.DataFrame)


def _read(records: RecordFormat, path: str, settings: DataSettings) -> pd.DataFrame:
    if records.columns is None:
        return records.read_file(path)
    wanted = list(dict.fromkeys([*records.columns(settings), settings.partition_column]))
    return records.read_file(path, columns=wanted)


def _raw_examples(settings: DataSettings, num_sites: int, records: RecordFormat) -> tuple[pd.DataFrame, str]:
    if settings.source == "synthetic":
        size, variant = settings.synthetic_size or records.synthetic_size, settings.synthetic_variant
        if variant and variant not in records.synthetic_variants:
            raise ConfigError(f"`data.synthetic_variant` is {variant!r}; the {records.synthetic_name} generator has "
                              + (f"the variants {', '.join(records.synthetic_variants)}" if records.synthetic_variants
                                 else "no variants") + " (empty = its default data)")
        frame = records.generate(size, num_sites or DEFAULT_NUM_SITES, seed=settings.synthetic_seed,
                                 **({"variant": variant} if variant else {}))
        return frame, f"{records.synthetic_name} (seed {settings.synthetic_seed}{f', {variant}' if variant else ''})"
    if settings.source == "hub":
        return read_hub_dataset(settings.path), f"hub dataset {settings.path}"
    return _read(records, settings.path, settings), f"data file {settings.path}"


def normalise(frame: pd.DataFrame, settings: DataSettings, source: str, records: RecordFormat) -> pd.DataFrame:
    """The normalised records of ``records``' kind (e.g. ``text``/``label``, or the QA columns); the partition
    column, if present, as text (its sorted values are the sites)."""
    attrs = dict(frame.attrs)
    frame = records.normalise(frame.reset_index(drop=True), settings, source)
    column = settings.partition_column
    if column and column in frame.columns and column not in ("text", "label"):
        frame[column] = normalise_partition_column(frame, settings, source)
    frame.attrs.update(attrs)
    return frame


def _index_dataset(columns: dict[str, object]):
    from datasets import Dataset  # late: only splitting needs it

    return Dataset.from_dict(columns)


def split_rows(num_rows: int, settings: DataSettings) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the training pool and the test set: exactly `datasets`' ``train_test_split(test_size,
    seed)`` of a table of ``num_rows`` rows (its permutation, in numpy: no table, no `datasets` import)."""
    num_test = math.ceil(settings.test_fraction * num_rows)
    if num_rows - num_test < 1:
        raise DataError(f"{num_rows} record(s) leave none for training after holding out `data.test_fraction` "
                        f"{settings.test_fraction:g} as the test set; use more data or a separate `data.test_path`",
                        public_reason="too few records to hold out a test set")
    permutation = np.random.default_rng(settings.split_seed).permutation(num_rows)
    return permutation[num_test:], permutation[:num_test]


def _row_numbers(dataset) -> np.ndarray:
    """An index-only dataset's row numbers as one array (not row by row: `datasets` 4 iterates a column)."""
    return np.asarray(dataset.with_format("numpy")[:][ROW], dtype=np.int64)


def _split_test(frame: pd.DataFrame, settings: DataSettings,
                group_column: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FlowerTune-style held-out split (default 25 %, seed 42), of whole groups if ``group_column`` is set.

    QA splits by context: questions about a passage seen in training would
    flatter the test score (SQuAD splits by article for the same reason).
    """
    if group_column is None:
        train_rows, test_rows = split_rows(len(frame), settings)
        return _rows(frame, train_rows), _rows(frame, test_rows)
    groups = _index_dataset({"group": sorted(frame[group_column].unique().tolist())})
    test_groups = set(groups.train_test_split(test_size=settings.test_fraction,
                                              seed=settings.split_seed)["test"]["group"])
    in_test = frame[group_column].isin(test_groups)
    return frame[~in_test].reset_index(drop=True), frame[in_test].reset_index(drop=True)


def _rows(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    part = frame.iloc[rows].reset_index(drop=True)
    part.attrs = {}
    return part


@functools.lru_cache(maxsize=4)
def load_federated_data(settings: DataSettings, num_sites: int, records: RecordFormat) -> FederatedData:
    """Read, validate and split the consortium dataset (cached per process)."""
    raw, source = _raw_examples(settings, num_sites, records)
    file_columns = tuple(user_columns(raw)) if settings.source != "synthetic" else ()
    frame = normalise(raw, settings, source, records)
    del raw
    labels = resolve_labels(frame, settings, source) if records.labelled else []
    if settings.test_path:
        test_source = f"test file {settings.test_path}"
        test = normalise(_read(records, settings.test_path, settings), settings, test_source, records)
        if labels:
            check_labels(test, labels, test_source)
        train_pool = frame
    else:
        train_pool, test = _split_test(frame, settings, records.group_column)
    return FederatedData(labels=labels, train_pool=train_pool, test=test, source=source, file_columns=file_columns)


def partitioner_used(settings: DataSettings, columns: Sequence[str], source: str = "the data",
                     file_columns: Sequence[str] = ()) -> str:
    """`iid`, `dirichlet` or `column`: `auto` resolved against the data's ``columns``; a missing partition column
    that the settings ask for is an error naming the user's own columns and the settings that fix it."""
    if settings.partitioner in ("iid", "dirichlet"):
        return settings.partitioner
    column = settings.partition_column
    if column in columns:
        return "column"
    if settings.partitioner == "auto" and column == DEFAULT_PARTITION_COLUMN:
        return "iid"  # a file without finfed's institution column: sites at random
    found = list(file_columns or columns)
    raise DataError(f"{source}: `data.partition_column` {column!r} is not a column; the file has {found}. Set "
                    "`data.partition_column` to the column naming each row's site (e.g. --set "
                    f"data.partition_column={found[0] if found else 'bank'}), or split at random with "
                    "--set data.partitioner=iid (or by label skew with data.partitioner=dirichlet)",
                    public_reason="`data.partition_column` is not a column of the data")


def _partitioner(kind: str, settings: DataSettings, num_sites: int, seed: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if kind == "iid":
        return IidPartitioner(num_partitions=num_sites)
    return DirichletPartitioner(num_partitions=num_sites, partition_by="label", alpha=settings.dirichlet_alpha,
                                min_partition_size=0, self_balancing=False, seed=seed)


def check_site_count(column: str, found: int, num_sites: int) -> None:
    if num_sites and found != num_sites:
        raise ConfigError(f"`data.partition_column` {column!r} has {found} distinct values (one site each) but "
                          f"`federation.num_sites` is {num_sites}; remove `federation.num_sites` (0 = one site per "
                          f"value) or set it to {found}, or split differently with `data.partitioner` iid/dirichlet")


@functools.lru_cache(maxsize=4)
def _partition_rows(settings: DataSettings, num_sites: int, records: RecordFormat) -> tuple[np.ndarray, ...]:
    """Each site's row numbers in the training pool (cached per process: small)."""
    data = load_federated_data(settings, num_sites, records)
    pool = data.train_pool
    kind = partitioner_used(settings, list(pool.columns), data.source, data.file_columns)
    if kind == "column":
        # flwr-datasets' NaturalIdPartitioner, in numpy: site i = the rows (in order) holding the i-th of the
        # column's sorted distinct values. (Its own version reads the column row by row: seconds per 50k rows.)
        values = pool[settings.partition_column].to_numpy(dtype=object)
        names = sorted(set(values))
        check_site_count(settings.partition_column, len(names), num_sites)
        return tuple(np.flatnonzero(values == name).astype(np.int64) for name in names)
    columns: dict[str, object] = {ROW: np.arange(len(pool))}
    if kind == "dirichlet":
        columns["label"] = pool["label"].tolist()
    partitioner = _partitioner(kind, settings, num_sites or DEFAULT_NUM_SITES, settings.split_seed)
    partitioner.dataset = _index_dataset(columns)
    return tuple(_row_numbers(partitioner.load_partition(i)) for i in range(partitioner.num_partitions))


def sites_in(settings: DataSettings, num_sites: int, records: RecordFormat) -> int:
    """How many sites the data makes: ``num_sites``, or (0 = automatic) what the partition column decides."""
    return len(_partition_rows(settings, num_sites, records))


def simulated_site(settings: DataSettings, site_id: int, num_sites: int, records: RecordFormat,
                   audit_holdout: float = 0.0) -> SiteData:
    """Site ``site_id``'s share of the simulated consortium's data.

    ``num_sites``: 0 = automatic (see `federation.num_sites`). ``audit_holdout``: share of the site's
    training records set aside, never trained on, for the membership audit (0 = none).
    """
    rows = _partition_rows(settings, num_sites, records)
    if not 0 <= site_id < len(rows):
        raise ConfigError(f"partition id {site_id} is outside 0..{len(rows) - 1}")
    partition = _rows(load_federated_data(settings, num_sites, records).train_pool, rows[site_id])
    if partition.empty:
        message = (f"site {site_id} received an empty partition from the {settings.partitioner!r} "
                   f"partitioner over {len(rows)} sites; raise `data.dirichlet_alpha`, lower "
                   "`federation.num_sites` or use more data")
        raise DataError(message, public_reason=message)
    site = split_validation(partition, settings, site_id)
    return hold_back_for_audit(site, audit_holdout, records.group_column)


# --------------------------------------------------------------------------- sites from the partition column

def _pool_partition_values(settings: DataSettings, records: RecordFormat,
                           num_sites: int = 0) -> tuple[pd.Series | None, str]:
    """The training pool's partition-column values (as text), or None when the data is not split by a column.

    Cheap for a file of sentences: only the partition column is read, and the test split is taken by row
    number, exactly as :func:`load_federated_data` takes it. Otherwise (synthetic, hub, grouped records) the
    cached full load answers.
    """
    if settings.source == "file" and records.columns is not None and records.group_column is None \
            and settings.partitioner not in ("iid", "dirichlet"):
        source = f"data file {settings.path}"
        frame = records.read_file(settings.path, columns=[settings.partition_column])
        kind = partitioner_used(settings, list(frame.columns), source, user_columns(frame))
        if kind != "column":
            return None, kind
        values = normalise_partition_column(frame, settings, source)
        if not settings.test_path:
            values = values.iloc[split_rows(len(values), settings)[0]]
        return values, kind
    # The synthetic generator makes one institution per site, so it needs the run's count (0: the default).
    data = load_federated_data(settings, num_sites or DEFAULT_NUM_SITES, records)
    kind = partitioner_used(settings, list(data.train_pool.columns), data.source, data.file_columns)
    return (data.train_pool[settings.partition_column] if kind == "column" else None), kind


def normalise_partition_column(frame: pd.DataFrame, settings: DataSettings, source: str) -> pd.Series:
    column = settings.partition_column
    values = frame[column]
    if values.isna().any():
        row = int(values.isna().to_numpy().argmax())
        raise DataError(f"{source}: row {row + 1} has no `{column}` (`data.partition_column`: the site "
                        "holding the row)", public_reason=f"a row has no partition value (row {row + 1})")
    return as_text(values)


def site_names(settings: DataSettings, num_sites: int, records: RecordFormat) -> list[str]:
    """Each simulated site's name, by site id: with the `column` partitioner the partition column's sorted
    distinct values (as text, the order that gives the site ids), else ``site-0``, ``site-1``, ...

    Cheap for a file: reads only the partition column. ``num_sites``: 0 = automatic; a value that contradicts
    the column is a :class:`ConfigError`.
    """
    values, _ = _pool_partition_values(settings, records, num_sites)
    if values is None:
        return [f"site-{i}" for i in range(num_sites or DEFAULT_NUM_SITES)]
    names = sorted(set(values))
    check_site_count(settings.partition_column, len(names), num_sites)
    return names


def resolve_num_sites(config: ExperimentConfig, records: RecordFormat) -> ExperimentConfig:
    """``config`` with `federation.num_sites` decided: an explicit value is checked against the partition
    column (a contradiction is a :class:`ConfigError` naming both); 0 (automatic) becomes the column's number
    of distinct values, or the default when the data is not split by a column."""
    if config.federation.num_sites and not config.sites_from_column:
        return config
    values, _ = _pool_partition_values(config.data, records, config.federation.num_sites)
    if values is None:
        found = config.federation.num_sites or DEFAULT_NUM_SITES
    else:
        found = len(set(values))
        check_site_count(config.data.partition_column, found, config.federation.num_sites)
    if found == config.federation.num_sites:
        return config
    return dataclasses.replace(config, federation=dataclasses.replace(config.federation, num_sites=found))


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

