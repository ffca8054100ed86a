"""A consortium folder: the certificate authority, the coordinator's files, one folder per site.

``finfed deploy init`` lays it out::

    DIR/consortium.toml          coordinator host names, port, site names and ids (no site paths)
    DIR/ca/ca.pem, ca.key        the consortium's certificate authority (keep ca.key offline)
    DIR/coordinator/             server.pem + server.key (TLS), ca.pem, site-keys/<site>.pub
    DIR/sites/<site>/            site.toml, ca.pem, <site>.key + <site>.pub: hand this folder to the bank

The coordinator's side knows each site's name, id and public key, never its
data path, budget or ledger: those are filled in by the bank in its own
``site.toml`` (see :mod:`finfed.deploy.site_config`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w

from finfed.atomic import write_text_atomic
from finfed.deploy import pki
from finfed.errors import ConfigError
from finfed.settings import Problems, read_section, setting

CONSORTIUM_FILE = "consortium.toml"
SITE_FILE = "site.toml"
CA_FILE = "ca.pem"
DEFAULT_PORT = 9092
DEFAULT_RUNTIME_PORT = 9094  # the first site's local Runtime API port (Flower's default); site N gets 9094 + N
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9.:-]+$")  # DNS names, IPv4 and IPv6 addresses


@dataclass(frozen=True)
class SiteEntry:
    name: str
    site_id: int


@dataclass(frozen=True)
class Consortium:
    """What the coordinator knows about the consortium; paths derive from ``folder``."""

    folder: Path
    name: str
    hosts: tuple[str, ...]
    port: int
    bind: str
    sites: tuple[SiteEntry, ...]

    @property
    def authority_dir(self) -> Path:
        """The CA's key and certificate: needed only to issue certificates (keep it offline)."""
        return self.folder / "ca"

    @property
    def ca_cert(self) -> Path:
        """The coordinator's copy of the CA certificate: the coordinator folder is self-contained."""
        return self.coordinator_dir / CA_FILE

    @property
    def coordinator_dir(self) -> Path:
        return self.folder / "coordinator"

    @property
    def server_cert(self) -> Path:
        return self.coordinator_dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.coordinator_dir / "server.key"

    @property
    def flwr_home(self) -> Path:
        """The coordinator's private Flower configuration (connection to its own SuperLink)."""
        return self.coordinator_dir / "flwr-home"

    @property
    def database(self) -> Path:
        """SuperLink state on disk: registered sites and runs survive a coordinator restart."""
        return self.coordinator_dir / "state" / "superlink.db"

    @property
    def log_file(self) -> Path:
        return self.coordinator_dir / "superlink.log"

    @property
    def runs_dir(self) -> Path:
        return self.coordinator_dir / "runs"

    @property
    def address(self) -> str:
        """Where sites reach the SuperLink."""
        return _host_port(self.hosts[0], self.port)

    @property
    def local_address(self) -> str:
        """Where the coordinator's own `flwr` commands reach it (a name the certificate covers)."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "::", "") else self.bind
        return _host_port(host, self.port)

    def public_key(self, site: str) -> Path:
        return self.coordinator_dir / "site-keys" / f"{site}.pub"

    def site_dir(self, site: str) -> Path:
        return self.folder / "sites" / site


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- creating

def check_site_name(name: str) -> str:
    if not SITE_NAME.match(name):
        raise ConfigError(f"site name {name!r} must be lower-case letters, digits, '-' or '_' "
                          "(it becomes a folder and key file name)")
    return name


def check_host(host: str) -> str:
    """A DNS name or an IP address, as it goes into the certificate (no scheme, no port)."""
    if not HOST_NAME.match(host) or (":" in host and not _is_ip(host)):
        raise ConfigError(f"coordinator host {host!r} must be a DNS name or an IP address, without scheme or port")
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def init_consortium(folder: Path, *, hosts: list[str], sites: list[str], port: int = DEFAULT_PORT,
                    bind: str = "0.0.0.0", name: str = "") -> Consortium:
    """Create a new consortium folder; an existing, non-empty folder is never touched."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} already exists and is not empty: finfed never overwrites a consortium "
                          "(its keys would no longer match the sites'); choose a new folder")
    names = [check_site_name(s.strip()) for s in sites if s.strip()]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"give distinct site names (--sites bank-a,bank-b,...), got {sites}")
    if not 0 < port < 65536:
        raise ConfigError(f"port must be in 1..65535, got {port}")
    hosts = [check_host(h.strip()) for h in hosts if h.strip()]
    if not hosts:
        raise ConfigError("give at least one coordinator host name or IP address (--coordinator-host)")
    consortium = Consortium(folder=folder.resolve(), name=name or folder.resolve().name, hosts=tuple(hosts),
                            port=port, bind=bind, sites=tuple(SiteEntry(n, i) for i, n in enumerate(names)))
    consortium.authority_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = pki.create_ca(consortium.authority_dir, f"{consortium.name} consortium CA")
    pki.create_server_certificate(consortium.coordinator_dir, ca_cert, ca_key, hosts)
    shutil.copyfile(ca_cert, consortium.ca_cert)
    for site in consortium.sites:
        _create_site(consortium, site)
    _write_consortium_file(consortium)
    return consortium


def add_site(consortium: Consortium, name: str) -> SiteEntry:
    """A new site folder and key pair; the coordinator registers it with `finfed deploy register`."""
    check_site_name(name)
    if any(s.name == name for s in consortium.sites) or consortium.site_dir(name).exists():
        raise ConfigError(f"site {name!r} already exists in {consortium.folder}")
    site = SiteEntry(name, max((s.site_id for s in consortium.sites), default=-1) + 1)
    _create_site(consortium, site)
    _write_consortium_file(replace(consortium, sites=(*consortium.sites, site)))
    return site


def runtime_port(consortium: Consortium, site: SiteEntry) -> int:
    """Distinct per site, so that sites sharing a host (a test bed, a bank with two datasets) do not collide;
    the coordinator's own port is skipped. `finfed deploy site` checks the port is free before starting."""
    port = DEFAULT_RUNTIME_PORT + site.site_id
    return port + 1 if port >= consortium.port >= DEFAULT_RUNTIME_PORT else port


def _create_site(consortium: Consortium, site: SiteEntry) -> None:
    folder = consortium.site_dir(site.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700)  # the bank's folder: its key, and later its data path, ledger and logs
    keys = pki.create_site_keys(folder, site.name)
    consortium.public_key(site.name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(keys.public_key, consortium.public_key(site.name))
    shutil.copyfile(consortium.ca_cert, folder / CA_FILE)
    descriptor = os.open(folder / SITE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(site_template(site, consortium.address, runtime_port=runtime_port(consortium, site)))


CONSORTIUM_HEADER = """\
# finfed consortium: what the coordinator knows. Site data paths and budgets are NOT here:
# each bank keeps them in its own sites/<name>/site.toml.
# [coordinator] hosts: the names/IPs in the TLS certificate; bind: the interface the SuperLink listens on.

"""


def _write_consortium_file(consortium: Consortium) -> None:
    values = {"name": consortium.name,
              "coordinator": {"hosts": list(consortium.hosts), "port": consortium.port, "bind": consortium.bind},
              "sites": [{"name": site.name, "id": site.site_id} for site in consortium.sites]}
    write_text_atomic(consortium.folder / CONSORTIUM_FILE, CONSORTIUM_HEADER + tomli_w.dumps(values))


def _toml(value: object) -> str:
    """One value as it stands after ``key = `` in TOML (strings quoted and escaped)."""
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def site_template(site: SiteEntry, address: str, *, data_path: str = "", budget_epsilon: float | None = None,
                  budget_delta: float = 1e-5, text_column: str = "text", label_column: str = "label",
                  runtime_port: int = DEFAULT_RUNTIME_PORT) -> str:
    """The text of a site's ``site.toml``; the bank fills in its data path and budget."""
    budget = (f"budget_epsilon = {budget_epsilon!r}" if budget_epsilon is not None else
              "# budget_epsilon = 8.0      # REQUIRED: this bank's lifetime epsilon on this dataset")
    return f"""\
# finfed site configuration for {site.name}. It stays at the site: the coordinator never
# sees these paths or this budget. Relative paths are relative to this file's folder.
# Check it with `finfed deploy site <this folder> --dry-run`.

[site]
name = {_toml(site.name)}
id = {site.site_id}   # this site's number in the run's records

[coordinator]
address = {_toml(address)}   # the SuperLink, host:port
root_certificates = "{CA_FILE}"   # the consortium CA: only a coordinator it signed is trusted

[auth]
private_key = "{site.name}.key"   # EC P-384, OpenSSH format; the coordinator registered {site.name}.pub

[data]
path = {_toml(data_path)}   # REQUIRED: CSV, JSONL or Parquet file with this bank's records
text_column = {_toml(text_column)}
label_column = {_toml(label_column)}
# name = "loans"   # the dataset's name in the privacy ledger (default: the file's name); spend composes per name

[privacy]
{budget}
budget_delta = {budget_delta!r}
ledger_path = "privacy-ledger.json"   # epsilon spent, across runs (kept here)
audit_log = "audit.jsonl"             # one line per message this site sends
require_secure_aggregation = false   # true: send updates only masked by SecAgg+
share_train_loss = false             # true: also send each round's training loss (not DP-protected)
share_label_shares = false           # true: also send each label's predicted-minus-true share on validation

[supernode]
runtime_port = {runtime_port}   # local port of the SuperNode's Runtime API (127.0.0.1 only)
"""


# --------------------------------------------------------------------------- loading

def read_toml(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise ConfigError(f"{what} {path} is not readable by this user") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


@dataclass(frozen=True)
class CoordinatorEntries:
    hosts: tuple = setting(help="the coordinator's DNS names or IP addresses, as its TLS certificate covers them; "
                                "sites reach the first")
    port: int = setting(help="the SuperLink's port for sites", minimum=1, maximum=65535)
    bind: str = setting("0.0.0.0", "the interface the SuperLink listens on")


@dataclass(frozen=True)
class SiteEntries:
    name: str = setting(help="the site's name (its folder, key files and registration)")
    id: int = setting(help="the site's number in the run's records", minimum=0)


@dataclass(frozen=True)
class ConsortiumFile:
    """``consortium.toml`` less its ``[[sites]]`` list (each entry read as :class:`SiteEntries`)."""

    coordinator: CoordinatorEntries
    name: str = setting("", "the consortium's name; empty = its folder's name")


def load_consortium(folder: Path) -> Consortium:
    """Read ``consortium.toml`` and check the coordinator's certificate and keys."""
    folder = Path(folder).resolve()
    path = folder / CONSORTIUM_FILE
    values = read_toml(path, "consortium file")
    problems = Problems(path, toml=True)
    entries = values.pop("sites", [])
    if not isinstance(entries, list):
        problems.add(("sites",), f"must be a list of [[sites]] tables, got {entries!r}")
        entries = []
    sites = [read_section(SiteEntries, entry, problems, (f"sites #{number}",))
             for number, entry in enumerate(entries, 1)]
    read = read_section(ConsortiumFile, values, problems)
    if read is not None and not read.coordinator.hosts:
        problems.add(("coordinator", "hosts"), "is empty: list the names or IP addresses in the TLS certificate")
    problems.raise_if_any()
    coordinator = read.coordinator
    return Consortium(folder=folder, name=read.name or folder.name, hosts=coordinator.hosts, port=coordinator.port,
                      bind=coordinator.bind, sites=tuple(SiteEntry(site.name, site.id) for site in sites))


def check_coordinator_files(consortium: Consortium) -> None:
    """Everything the SuperLink needs, checked before it starts (Flower's own errors are terse)."""
    pki.check_issued_by(consortium.server_cert, consortium.ca_cert, "server certificate")
    if not consortium.server_key.is_file():
        raise ConfigError(f"server private key {consortium.server_key} does not exist")
    pki.check_private_permissions(consortium.server_key)
    covered = set(pki.certificate_hosts(consortium.server_cert))
    missing = [h for h in consortium.hosts if h not in covered]
    if missing:
        raise ConfigError(f"server certificate {consortium.server_cert} does not cover host(s) {missing} "
                          f"named in {consortium.folder / CONSORTIUM_FILE} (it covers {sorted(covered)})")
    for site in consortium.sites:
        pki.check_site_public_key(consortium.public_key(site.name))
