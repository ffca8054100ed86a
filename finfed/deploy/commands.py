"""The plain Flower command lines behind each ``finfed deploy`` command.

Built here once, run by :mod:`finfed.deploy.launch`, printed by ``--dry-run`` and
quoted in docs/deployment.md, so what finfed does is never a mystery to a
platform team: every step can be done by hand with Flower's own tools.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from finfed.deploy.consortium import Consortium, SiteEntry
from finfed.deploy.site_config import SiteConfig
from finfed.lean_imports import WITHOUT_INT8_ENV
from finfed.runtime.local_engine import QUIET_FLOWER_ENV, connection_config

# The coordinator's name for its own SuperLink in its private $FLWR_HOME/config.toml.
CONNECTION = "finfed-coordinator"
# What a site and the coordinator both need: no telemetry, no update checks, no installs at run time, and
# (their apps never quantize) no int8 library in the apps' processes.
DEPLOY_ENV = {**{key: QUIET_FLOWER_ENV[key] for key in (
    "FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION",
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}, **WITHOUT_INT8_ENV}


def superlink_command(consortium: Consortium) -> list[str]:
    """SuperLink with TLS on every API and only registered SuperNodes admitted."""
    return ["flower-superlink",
            "--ssl-ca-certfile", str(consortium.ca_cert),
            "--ssl-certfile", str(consortium.server_cert),
            "--ssl-keyfile", str(consortium.server_key),
            "--enable-supernode-auth",
            "--host", consortium.bind, "--port", str(consortium.port),
            "--database", str(consortium.database),
            "--disable-runtime-dependency-installation",
            "--log-file", str(consortium.log_file)]


def flower_config(consortium: Consortium) -> str:
    """``$FLWR_HOME/config.toml`` for the coordinator's own `flwr` commands (TLS, the consortium CA)."""
    return connection_config(CONNECTION, consortium.local_address, **{"root-certificates": str(consortium.ca_cert)})


def register_command(consortium: Consortium, site: SiteEntry) -> list[str]:
    return ["flwr", "supernode", "register", str(consortium.public_key(site.name)), CONNECTION,
            "--name", site.name, "--format", "json"]


def list_nodes_command() -> list[str]:
    return ["flwr", "supernode", "ls", CONNECTION, "--format", "json"]


def supernode_command(site: SiteConfig, max_retries: int | None = None) -> list[str]:
    """SuperNode over TLS (the consortium CA), signing with the site's key, with its own node config."""
    command = ["flower-supernode",
               "--superlink", site.superlink,
               "--root-certificates", str(site.root_certificates),
               "--auth-supernode-private-key", str(site.private_key),
               "--node-config", site.node_config_arg(),
               "--host", "127.0.0.1", "--port", str(site.runtime_port)]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return command


def run_command(app: Path, run_config: Path) -> list[str]:
    return ["flwr", "run", str(app), CONNECTION, "--stream", "--run-config", str(run_config)]


def shell(command: list[str]) -> str:
    return shlex.join(command)


def shell_env(env: Mapping[str, str]) -> str:
    return "export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
