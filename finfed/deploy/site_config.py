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

from flwr.supercore.address import parse_address

from finfed import constants as keys
from finfed.data.loading import read_table
from finfed.deploy import pki
from finfed.deploy.consortium import SITE_FILE, read_toml
from finfed.errors import ConfigError, FinfedError
from finfed.privacy.ledger import PrivacyLedger

# Every key a site.toml may hold: a misspelt key is an error, not a silently ignored setting.
KNOWN_KEYS = {
    "site": {"name", "id"},
    "coordinator": {"address", "root_certificates"},
    "auth": {"private_key"},
    "data": {"path", "name", "text_column", "label_column"},
    "privacy": {"budget_epsilon", "budget_delta", "ledger_path", "audit_log", "require_secure_aggregation",
                "share_train_loss"},
    "supernode": {"runtime_port"},
}


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
    share_train_loss: bool = False  # send the (non-private) training loss each round: off unless the bank opts in

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
            keys.NODE_SITE_ID: self.site_id, keys.NODE_DATA_PATH: str(self.data_path),
            keys.NODE_BUDGET_EPSILON: self.budget_epsilon, keys.NODE_BUDGET_DELTA: self.budget_delta,
            keys.NODE_LEDGER_PATH: str(self.ledger_path), keys.NODE_SITE_DIR: str(self.folder),
            keys.NODE_SHARE_TRAIN_LOSS: self.share_train_loss}
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

class _Problems:
    """Collects every problem in one site.toml so the bank fixes them in one pass."""

    def __init__(self, file: Path) -> None:
        self.file, self.items = file, []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"[{key.split('.')[0]}] {key.split('.', 1)[1]}: {message}" if "." in key
                          else f"{key}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(f"{self.file} has {len(self.items)} problem(s):\n  - " + "\n  - ".join(self.items))


def site_file(path: Path) -> Path:
    """Accept the site folder or its site.toml."""
    path = Path(path)
    return (path / SITE_FILE if path.is_dir() else path).resolve()


def load_site_config(path: Path) -> SiteConfig:
    """Read and check a site.toml (or the folder holding it); raise one error listing every problem."""
    file = site_file(path)
    values = read_toml(file, "site configuration")
    problems = _Problems(file)
    _check_known_keys(values, problems)
    get = _Getter(values, file.parent, problems)
    config = {
        "file": file, "name": get.text("site.name"), "site_id": get.integer("site.id", 0, None),
        "superlink": get.text("coordinator.address"),
        "root_certificates": get.path("coordinator.root_certificates"),
        "private_key": get.path("auth.private_key"),
        "data_path": get.path("data.path", hint="the path of this bank's data file (CSV, JSONL or Parquet)"),
        "dataset_name": get.text("data.name", default=""),
        "text_column": get.text("data.text_column", default=""),
        "label_column": get.text("data.label_column", default=""),
        "budget_epsilon": get.number("privacy.budget_epsilon", exclusive_min=0.0,
                                     hint="this bank's lifetime epsilon budget on this dataset, e.g. 8.0"),
        "budget_delta": get.number("privacy.budget_delta", exclusive_min=0.0, below=1.0, default=1e-5),
        "ledger_path": get.path("privacy.ledger_path", default="privacy-ledger.json"),
        "audit_log": get.path("privacy.audit_log", default="") or None,
        "require_secure_aggregation": get.boolean("privacy.require_secure_aggregation", default=False),
        "runtime_port": get.integer("supernode.runtime_port", 1, 65535, default=9094),
        "share_train_loss": get.boolean("privacy.share_train_loss", default=False)}
    _check_files(config, problems)
    problems.raise_if_any()
    return SiteConfig(**config)


def _check_known_keys(values: dict, problems: _Problems) -> None:
    for section, entries in values.items():
        if section not in KNOWN_KEYS:
            problems.add(section, f"unknown section; known sections: {', '.join(KNOWN_KEYS)}")
            continue
        if not isinstance(entries, dict):
            problems.add(section, "must be a [section] of keys")
            continue
        for key in sorted(set(entries) - KNOWN_KEYS[section]):
            hint = (" (finfed never connects a site without TLS)" if key == "insecure" else "")
            problems.add(f"{section}.{key}", f"unknown key{hint}; known keys: {', '.join(sorted(KNOWN_KEYS[section]))}")


class _Getter:
    """Typed access to ``section.key`` values, recording what is missing or wrong."""

    _MISSING = object()

    def __init__(self, values: dict, folder: Path, problems: _Problems) -> None:
        self.values, self.folder, self.problems = values, folder, problems

    def _raw(self, dotted: str, default: Any, hint: str = "") -> Any:
        section, key = dotted.split(".")
        entries = self.values.get(section)
        value = entries.get(key, default) if isinstance(entries, dict) else default
        if value is self._MISSING:
            self.problems.add(dotted, "is missing" + (f": set {hint}" if hint else ""))
        return value

    def text(self, dotted: str, default: Any = _MISSING, hint: str = "") -> str:
        value = self._raw(dotted, default, hint)
        if value is self._MISSING:
            return ""
        if not isinstance(value, str):
            self.problems.add(dotted, f"must be text (in quotes), got {value!r}")
            return ""
        if default is self._MISSING and not value.strip():
            self.problems.add(dotted, "is empty" + (f": set {hint}" if hint else ""))
            return ""
        return value

    def path(self, dotted: str, default: Any = _MISSING, hint: str = "") -> Path | None:
        value = self.text(dotted, default, hint)
        return (self.folder / Path(value).expanduser()).resolve() if value else None

    def integer(self, dotted: str, low: int | None, high: int | None, default: Any = _MISSING) -> int:
        value = self._raw(dotted, default)
        if value is self._MISSING:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or \
                (low is not None and value < low) or (high is not None and value > high):
            self.problems.add(dotted, f"must be a whole number in {low}..{high if high is not None else ''}, "
                                      f"got {value!r}")
            return 0
        return value

    def boolean(self, dotted: str, default: Any = _MISSING) -> bool:
        value = self._raw(dotted, default)
        if value is not self._MISSING and not isinstance(value, bool):
            self.problems.add(dotted, f"must be true or false, got {value!r}")
        return value is True

    def number(self, dotted: str, *, exclusive_min: float, below: float | None = None, default: Any = _MISSING,
               hint: str = "") -> float:
        value = self._raw(dotted, default, hint)
        if value is self._MISSING:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= exclusive_min or \
                (below is not None and value >= below):
            bound = f"> {exclusive_min}" + (f" and < {below}" if below is not None else "")
            self.problems.add(dotted, f"must be a number {bound}, got {value!r}")
            return 0.0
        return float(value)


def _check_files(values: dict[str, Any], problems: _Problems) -> None:
    """The files the site names: present, readable, of the right kind (each one whose key is valid)."""
    checks = (("coordinator.root_certificates", "root_certificates",
               lambda path: pki.load_certificate(path, "CA certificate")),
              ("auth.private_key", "private_key", _check_key),
              ("data.path", "data_path", lambda path: _check_data(path, values["text_column"],
                                                                 values["label_column"])),
              ("privacy.ledger_path", "ledger_path", lambda path: _check_ledger(path, values["file"].parent)),
              ("privacy.audit_log", "audit_log", _check_writable_parent))
    for dotted, field, check in checks:
        if values.get(field) is None:
            continue  # missing or malformed: already reported
        try:
            check(values[field])
        except FinfedError as exc:
            problems.add(dotted, str(exc))
    if values["superlink"] and not parse_address(values["superlink"]):
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
