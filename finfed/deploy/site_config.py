"""A bank's ``site.toml``: read, checked at start-up, turned into the SuperNode's node config.

Everything here stays at the site. Flower passes the node config only to the
site's own ClientApp; the coordinator never receives it. Every problem found is
reported at once, each naming the file, the key and what was expected.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finfed import constants as keys
from finfed.compat import parse_flower_address
from finfed.data.loading import read_table
from finfed.deploy import pki
from finfed.deploy.consortium import SITE_FILE, SITE_NAME, read_toml
from finfed.errors import ConfigError, FinfedError
from finfed.models.devices import check_device
from finfed.privacy.ledger import PrivacyLedger
from finfed.settings import Problems, read_sections, setting

# --------------------------------------------------------------------------- what a site.toml holds

@dataclass(frozen=True)
class SiteSection:
    name: str = setting(help="this bank's site name in the consortium (set by `finfed deploy init`)")
    id: int = setting(help="this site's number in the run's records (set by `finfed deploy init`)", minimum=0)
    device: str = setting("auto", "where this site trains: `auto` (CUDA, then Apple MPS, else the CPU), `cpu`, "
                                  "`cuda`, `cuda:N` or `mps`; the coordinator's `model.device` never applies here")


@dataclass(frozen=True)
class CoordinatorSection:
    address: str = setting(help="the coordinator's SuperLink, host:port (set by `finfed deploy init`)")
    root_certificates: str = setting(help="the consortium CA certificate (ca.pem): the site connects only to a "
                                          "coordinator it signed")


@dataclass(frozen=True)
class AuthSection:
    private_key: str = setting(help="this site's EC P-384 private key (OpenSSH format, mode 0600); the coordinator "
                                    "registered its public half")


@dataclass(frozen=True)
class SiteDataSection:
    path: str = setting(help="this bank's data file (CSV, JSONL or Parquet); it never leaves the site",
                        hint="the path of this bank's data file (CSV, JSONL or Parquet)")
    name: str = setting("", "the dataset's name in the privacy ledger: spend composes per name, across runs; "
                            "empty = the data file's name")
    text_column: str = setting("", "the file's text column, if it differs from the run's `data.text_column`")
    label_column: str = setting("", "the file's label column, if it differs from the run's `data.label_column`")


@dataclass(frozen=True)
class SitePrivacySection:
    budget_epsilon: float = setting(help="this bank's lifetime epsilon on this dataset: a round that would exceed "
                                         "it is refused", minimum=0.0, exclusive_min=True,
                                    hint="this bank's lifetime epsilon budget on this dataset, e.g. 8.0")
    budget_delta: float = setting(1e-5, "delta of this bank's budget; keep it below 1 / the file's number of records",
                                  0.0, 1.0, True, exclusive_max=True)
    ledger_path: str = setting("privacy-ledger.json", "the site's privacy ledger: epsilon spent, across runs "
                                                      "(tamper-evident, mode 0600)")
    audit_log: str = setting("", "one JSON line per message the site sends (what left, how many bytes); "
                                 "empty = no audit log")
    require_secure_aggregation: bool = setting(False, "true: this site sends model updates only masked by "
                                                      "SecAgg+ and refuses rounds of a run without it")
    share_train_loss: bool = setting(False, "true: also send each round's training loss, a statistic of the "
                                            "site's records that DP does not protect")
    share_label_shares: bool = setting(False, "true: also send, per label, how far the global model's predicted "
                                              "share of the site's validation records is from the label's true "
                                              "share (not DP-protected; with the other validation metrics it "
                                              "can give away the validation split's label counts)")


@dataclass(frozen=True)
class SupernodeSection:
    runtime_port: int = setting(9094, "local port of the SuperNode's Runtime API (bound to 127.0.0.1); distinct "
                                      "per site sharing a host", 1, 65535)


@dataclass(frozen=True)
class SiteFile:
    """Every section and key a ``site.toml`` may hold: a misspelt one is an error, not an ignored setting."""

    site: SiteSection
    coordinator: CoordinatorSection
    auth: AuthSection
    data: SiteDataSection
    privacy: SitePrivacySection
    supernode: SupernodeSection


REFUSED_KEYS = {"insecure": "finfed never connects a site without TLS"}


@dataclass(frozen=True)
class SiteConfig:
    """A validated site configuration; every path absolute."""

    file: Path
    name: str
    site_id: int
    superlink: str
    root_certificates: Path
    private_key: Path
    data_path: Path
    dataset_name: str  # what the site's ledger composes spend under; "" = the data file's name
    text_column: str
    label_column: str
    budget_epsilon: float
    budget_delta: float
    ledger_path: Path
    audit_log: Path | None
    require_secure_aggregation: bool
    runtime_port: int
    device: str = "auto"  # where the site trains (its own choice; see finfed.site.node_settings.with_site_device)
    share_train_loss: bool = False  # send the (non-private) training loss each round: off unless the bank opts in
    share_label_shares: bool = False  # send eval-share-gap-<i> (non-private): off unless the bank opts in

    @property
    def folder(self) -> Path:
        return self.file.parent

    @property
    def log_file(self) -> Path:
        return self.folder / "supernode.log"

    @property
    def flwr_home(self) -> Path:
        return self.folder / "flwr-home"

    def node_config(self) -> dict[str, Any]:
        """What the site's ClientApp reads (finfed/site/rounds.py, finfed/site/audit.py)."""
        values: dict[str, Any] = {
            keys.NODE_SITE_ID: self.site_id, keys.NODE_SITE_NAME: self.name, keys.NODE_DATA_PATH: str(self.data_path),
            keys.NODE_BUDGET_EPSILON: self.budget_epsilon, keys.NODE_BUDGET_DELTA: self.budget_delta,
            keys.NODE_LEDGER_PATH: str(self.ledger_path), keys.NODE_SITE_DIR: str(self.folder),
            keys.NODE_SHARE_TRAIN_LOSS: self.share_train_loss, keys.NODE_SHARE_LABEL_SHARES: self.share_label_shares,
            keys.NODE_DEVICE: self.device}
        if self.dataset_name:
            values[keys.NODE_DATASET_NAME] = self.dataset_name
        if self.text_column:
            values[keys.NODE_TEXT_COLUMN] = self.text_column
        if self.label_column:
            values[keys.NODE_LABEL_COLUMN] = self.label_column
        if self.audit_log is not None:
            values[keys.NODE_AUDIT_LOG] = str(self.audit_log)
        if self.require_secure_aggregation:
            values[keys.NODE_REQUIRE_SECAGG] = True
        return values

    def node_config_arg(self) -> str:
        """The ``--node-config`` value: space-separated ``key=value`` pairs with TOML values."""
        return " ".join(f"{key}={_toml_scalar(key, value)}" for key, value in self.node_config().items())


def _toml_scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (int, float, str)):
        raise ConfigError(f"node config `{key}` must be text, a number or true/false, got {value!r}")
    if not isinstance(value, str):
        return repr(value)
    # Flower's parser splits on spaces outside quotes, and cannot read a value holding both
    # kinds of quote. A JSON string is a TOML basic string (backslashes escaped).
    if '"' not in value:
        return json.dumps(value)
    if "'" not in value:
        return f"'{value}'"  # a TOML literal string
    raise ConfigError(f"node config `{key}` = {value!r}: Flower's --node-config cannot carry a value "
                      "holding both ' and \"; rename the file or folder")


# --------------------------------------------------------------------------- loading

def site_file(path: Path) -> Path:
    """Accept the site folder or its site.toml."""
    path = Path(path)
    return (path / SITE_FILE if path.is_dir() else path).resolve()


def load_site_config(path: Path) -> SiteConfig:
    """Read and check a site.toml (or the folder holding it); raise one error listing every problem."""
    file = site_file(path)
    problems = Problems(file, toml=True)
    read = read_sections(SiteFile, read_toml(file, "site configuration"), problems, REFUSED_KEYS)
    site, coordinator, auth = read["site"], read["coordinator"], read["auth"]
    data, privacy, supernode = read["data"], read["privacy"], read["supernode"]

    def local(section: Any, key: str) -> Path | None:  # relative paths start at the site's folder
        value = getattr(section, key) if section is not None else ""
        return (file.parent / Path(value).expanduser()).resolve() if value else None

    config = {
        "file": file, "name": site and site.name, "site_id": site and site.id,
        "device": site.device if site else "auto",
        "superlink": coordinator and coordinator.address,
        "root_certificates": local(coordinator, "root_certificates"), "private_key": local(auth, "private_key"),
        "data_path": local(data, "path"), "dataset_name": data and data.name,
        "text_column": data and data.text_column, "label_column": data and data.label_column,
        "budget_epsilon": privacy and privacy.budget_epsilon, "budget_delta": privacy and privacy.budget_delta,
        "ledger_path": local(privacy, "ledger_path"), "audit_log": local(privacy, "audit_log"),
        "require_secure_aggregation": privacy and privacy.require_secure_aggregation,
        "share_train_loss": privacy and privacy.share_train_loss,
        "share_label_shares": privacy and privacy.share_label_shares,
        "runtime_port": supernode and supernode.runtime_port}
    _check_files(config, problems)
    problems.raise_if_any()
    return SiteConfig(**config)


def _check_files(values: dict[str, Any], problems: Problems) -> None:
    """The files the site names: present, readable, of the right kind (each one whose key is valid)."""
    checks = (("coordinator.root_certificates", "root_certificates",
               lambda path: pki.load_certificate(path, "CA certificate")),
              ("auth.private_key", "private_key", _check_key),
              ("data.path", "data_path", lambda path: _check_data(path, values["text_column"] or "",
                                                                 values["label_column"] or "")),
              ("privacy.ledger_path", "ledger_path", lambda path: _check_ledger(path, values["file"].parent)),
              ("privacy.audit_log", "audit_log", _check_writable_parent))
    for dotted, field, check in checks:
        if values.get(field) is None:
            continue  # missing or malformed: already reported
        try:
            check(values[field])
        except FinfedError as exc:
            problems.add(dotted, str(exc))
    if values["name"] and not SITE_NAME.match(values["name"]):
        # The name is sent beside the site's id in every reply (finfed/wire.py): a plain label, never a path.
        problems.add("site.name", f"must be lower-case letters, digits, '-' or '_' (at most 63 characters, "
                                  f"as `finfed deploy init` writes it), got {values['name']!r}")
    if values.get("device") is not None:
        try:
            check_device(values["device"], "[site] device")
        except ConfigError as exc:
            problems.add("site.device", str(exc).replace("[site] device is ", "is "))
    if values["superlink"] and not parse_flower_address(values["superlink"]):
        problems.add("coordinator.address", f"must be host:port, got {values['superlink']!r}")


def _check_key(path: Path) -> None:
    pki.check_site_private_key(path)
    pki.check_private_permissions(path)


def _check_data(path: Path, text_column: str, label_column: str) -> None:
    frame = read_table(path)
    missing = [c for c in (text_column, label_column) if c and c not in frame.columns]
    if missing:
        raise ConfigError(f"data file {path} has no column(s) {missing} (found {list(frame.columns)}); "
                          "set [data] text_column / label_column")


def _check_ledger(path: Path, site_dir: Path) -> None:
    _check_writable_parent(path)
    PrivacyLedger(path, head_dir=site_dir)  # an unreadable or tampered ledger stops the site now, not in round 1


def _check_writable_parent(path: Path) -> None:
    if not path.parent.is_dir():
        raise ConfigError(f"folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{path} is not writable by this user")
