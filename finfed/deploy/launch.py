"""Start and supervise a consortium's processes with Flower's own tools.

* the coordinator: ``flower-superlink`` with TLS and SuperNode authentication, then
  ``flwr supernode register`` for every site's public key;
* a site: its ``site.toml`` checked, a TLS handshake with the coordinator tried, then
  ``flower-supernode`` with its key, the consortium CA and its node config;
* a run: ``flwr run`` of finfed's app on the coordinator, its outcome read with ``flwr ls``.

finfed opens no connections of its own beyond two checks (the SuperLink's health
route and one TLS handshake); every process it starts is stopped with it.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from finfed.compat import (
    PLAIN_CONNECTION_TO_TLS,
    PRIVATE_KEY_UNREADABLE,
    SUPERNODE_NOT_REGISTERED,
    TLS_CERTIFICATE_UNTRUSTED,
    key_already_registered,
    listed_nodes,
    log_error_lines,
    parse_flower_address,
    port_taken,
    registered_node_id,
    registration_succeeded,
)
from finfed.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    read_yaml,
    to_run_config,
    with_absolute_paths,
)
from finfed.deploy import commands
from finfed.deploy.consortium import Consortium, check_coordinator_files
from finfed.deploy.nodes import record_site_node, run_config_value
from finfed.deploy.ports import check_port_free
from finfed.deploy.site_config import SiteConfig
from finfed.errors import ConfigError, RunError
from finfed.runs.checkpoint import resume_point
from finfed.runs.stop import sigterm_interrupts
from finfed.runtime.app_log import ENGINE
from finfed.runtime.flower_app import write_app
from finfed.runtime.local_engine import (
    FlowerRunResult,
    final_run_status,
    flower_env,
    flower_tool,
    stream_flower_run,
    write_run_config,
)
from finfed.runtime.processes import stop_process_tree

Printer = Callable[[str], None]
# What finfed's Flower processes create (SuperLink database and log, run outputs, a site's ledger and log)
# is for their owner only.
PRIVATE_UMASK = 0o077
logger = logging.getLogger(__name__)
flower_output = logging.getLogger(ENGINE)


def _executable(command: list[str]) -> list[str]:
    """Flower's tools from this interpreter's environment, whatever PATH says."""
    return [flower_tool(command[0]), *command[1:]]


def deploy_env(home: Path) -> dict[str, str]:
    private_dir(home)
    return flower_env(home)


def private_dir(folder: Path) -> Path:
    """A folder only its owner can enter (state, logs and keys live below it)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


def private_files(*paths: Path) -> None:
    """Files written by an earlier version, or by Flower before finfed set its umask: owner only."""
    for path in paths:
        if path.is_file():
            path.chmod(0o600)


def _supervise(process: subprocess.Popen, wait: Callable[[], int]) -> int:
    """Wait for a child; Ctrl-C or SIGTERM stops it and everything it started."""
    try:
        with sigterm_interrupts():
            return wait()
    except KeyboardInterrupt:
        stop_process_tree(process)
        return 130


# --------------------------------------------------------------------------- coordinator

def coordinator_plan(consortium: Consortium) -> list[list[str]]:
    """The commands `finfed deploy coordinator` runs, in order."""
    return [commands.superlink_command(consortium),
            *(commands.register_command(consortium, site) for site in consortium.sites)]


def write_flower_config(consortium: Consortium) -> dict[str, str]:
    env = deploy_env(consortium.flwr_home)
    (consortium.flwr_home / "config.toml").write_text(commands.flower_config(consortium), encoding="utf-8")
    return env


def start_superlink(consortium: Consortium, env: Mapping[str, str], timeout: float = 60.0) -> subprocess.Popen:
    """Start the SuperLink and return once it answers over TLS."""
    check_coordinator_files(consortium)
    check_port_free(consortium.bind, consortium.port, what="the coordinator's SuperLink",
                    fix=f"stop the other coordinator, or change [coordinator] port in "
                        f"{consortium.folder / 'consortium.toml'} (the sites' site.toml must then follow)")
    private_dir(consortium.database.parent)
    private_files(*consortium.database.parent.glob(consortium.database.name + "*"), consortium.log_file)
    # Its own session, so that stopping it reaches it and everything it started.
    process = subprocess.Popen(_executable(commands.superlink_command(consortium)), env=dict(env),
                               cwd=str(consortium.coordinator_dir), start_new_session=True, umask=PRIVATE_UMASK)
    try:
        wait_until_serving(consortium, process, timeout)
    except BaseException:
        stop_process_tree(process)
        raise
    return process


def wait_until_serving(consortium: Consortium, process: subprocess.Popen, timeout: float) -> None:
    context = ssl.create_default_context(cafile=str(consortium.ca_cert))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if answers_over_tls(consortium, context):
            if process.poll() is None:
                return
            break  # the answer came from another process on that port
        if process.poll() is not None:
            break
        time.sleep(0.3)
    if process.poll() is not None:
        raise RunError(superlink_exit_message(consortium, process.returncode))
    raise RunError(f"the SuperLink did not answer on {consortium.local_address} within {timeout:.0f}s")


def answers_over_tls(consortium: Consortium, context: ssl.SSLContext | None = None) -> bool:
    """One request to the SuperLink's health route, its certificate verified against the consortium CA."""
    context = context or ssl.create_default_context(cafile=str(consortium.ca_cert))
    try:
        with urllib.request.urlopen(f"https://{consortium.local_address}/health", context=context, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered over verified TLS: serving
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise ConfigError(f"the SuperLink on {consortium.local_address} serves a certificate that "
                              f"{consortium.ca_cert} does not verify: {exc.reason.verify_message}") from None
    except OSError:
        pass
    return False


def superlink_exit_message(consortium: Consortium, code: int | None) -> str:
    """Why the SuperLink stopped, from the last lines of its log (e.g. a port taken meanwhile)."""
    try:
        lines = consortium.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    errors = log_error_lines(lines[-30:])
    reason = ("its port was taken: " if any(port_taken(line) for line in errors)
              else "") + (errors[-1] if errors else "no error in its log")
    return f"the SuperLink on {consortium.local_address} exited (code {code}): {reason}; see {consortium.log_file}"


def require_coordinator(consortium: Consortium) -> None:
    """Before a run is prepared: the coordinator must answer, or nothing is written."""
    if not answers_over_tls(consortium):
        raise RunError(f"the coordinator at {consortium.local_address} does not answer; start it with "
                       f"`finfed deploy coordinator {consortium.folder}` and try again (nothing was written)")


def register_sites(consortium: Consortium, env: Mapping[str, str], out: Printer = logger.info) -> dict[str, str]:
    """Register every site's public key (again after a restart: an already known key is fine)."""
    outcome = {}
    for site in consortium.sites:
        command = commands.register_command(consortium, site)
        done = subprocess.run(_executable(command), env=dict(env), capture_output=True, text=True, timeout=120,
                              cwd=str(consortium.coordinator_dir), check=False)
        text = done.stdout + done.stderr
        if done.returncode == 0 and registration_succeeded(done.stdout):
            outcome[site.name] = "registered"
            node_id = registered_node_id(done.stdout)
            if node_id is not None:  # Flower's listing shows node ids only: keep which bank each is
                record_site_node(consortium, site.name, node_id)
        elif key_already_registered(text):
            outcome[site.name] = "already registered"
        else:
            raise RunError(f"registering site {site.name} ({consortium.public_key(site.name)}) failed:\n"
                           f"$ {commands.shell(command)}\n{text.strip()}")
        out(f"site {site.name} (id {site.site_id}): {outcome[site.name]}")
    return outcome


def serve_coordinator(consortium: Consortium, out: Printer = logger.info) -> int:
    """`finfed deploy coordinator`: run the SuperLink until stopped, sites registered."""
    env = write_flower_config(consortium)
    process = start_superlink(consortium, env)
    try:
        register_sites(consortium, env, out)
        if process.poll() is not None:
            raise RunError(superlink_exit_message(consortium, process.returncode))
    except BaseException:
        stop_process_tree(process)
        raise
    out(f"coordinator ready on {consortium.address} (TLS, SuperNode authentication; "
        f"log {consortium.log_file}). Sites start with `finfed deploy site`; runs with `finfed deploy run`.")
    code = _supervise(process, process.wait)
    if code > 0 and code != 130:  # not stopped by a signal, as asked: say why
        raise RunError(superlink_exit_message(consortium, code))
    return code


# --------------------------------------------------------------------------- site

# What Flower prints when a SuperNode is turned away, and what it means for a bank.
DIAGNOSES = (
    (SUPERNODE_NOT_REGISTERED,
     ("the coordinator refused this site: its public key {pub} is not registered there. The coordinator's "
      "operator registers it with `finfed deploy register <consortium folder>` "
      "(or `flwr supernode register {pub} ...`).")),
    (TLS_CERTIFICATE_UNTRUSTED,
     ("the coordinator at {address} presented a TLS certificate that {ca} does not trust: wrong CA file, "
      "or not the consortium's coordinator.")),
    (PRIVATE_KEY_UNREADABLE,
     "Flower could not read the private key {key}."),
    (PLAIN_CONNECTION_TO_TLS,
     "the coordinator at {address} closed the connection: it speaks TLS and this connection did not."),
)


def check_coordinator_tls(site: SiteConfig, timeout: float = 5.0) -> bool:
    """One TLS handshake with the coordinator, verified against the site's CA file.

    A certificate the CA did not sign stops the site now, with the reason; a
    coordinator not up yet is fine (the SuperNode keeps trying); returns whether it answered.
    """
    parsed = parse_flower_address(site.superlink)
    if not parsed:
        raise ConfigError(f"{site.file}: [coordinator] address must be host:port, got {site.superlink!r}")
    host, port, _ = parsed
    context = ssl.create_default_context(cafile=str(site.root_certificates))
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return True
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(f"the coordinator at {site.superlink} presented a TLS certificate that "
                          f"{site.root_certificates} does not trust ({exc.verify_message}): check that "
                          "[coordinator] root_certificates is the consortium's ca.pem and the address is the "
                          "coordinator's") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS handshake with {site.superlink} failed ({exc}); is it the consortium's "
                          "coordinator?") from None
    except OSError:
        return False


def check_runtime_port(site: SiteConfig) -> None:
    """Two SuperNodes on one host need distinct Runtime API ports (Flower only prints a traceback)."""
    check_port_free("127.0.0.1", site.runtime_port, what=f"site {site.name}'s SuperNode (Runtime API)",
                    fix=f"set another free port in {site.file} [supernode] runtime_port")


def site_diagnosis(site: SiteConfig, lines: list[str]) -> str:
    text = "\n".join(lines)
    for marker, message in DIAGNOSES:
        if marker in text:
            return message.format(pub=site.private_key.with_suffix(".pub"), address=site.superlink,
                                  ca=site.root_certificates, key=site.private_key)
    return ""


def serve_site(site: SiteConfig, *, max_retries: int | None = None, out: Printer = logger.info) -> int:
    """`finfed deploy site`: run the SuperNode until stopped; a refusal is explained, not just logged."""
    check_runtime_port(site)
    if not check_coordinator_tls(site):
        out(f"coordinator {site.superlink} not reachable yet; the SuperNode keeps trying")
    env = deploy_env(site.flwr_home)
    command = commands.supernode_command(site, max_retries)
    out(f"site {site.name} (id {site.site_id}) joining {site.superlink}; log {site.log_file}")
    # Its own session: Flower's SuperExec outlives a SuperNode that exits at start, and is
    # stopped with the SuperNode's process group.
    process = subprocess.Popen(_executable(command), env=env, cwd=str(site.folder), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True, umask=PRIVATE_UMASK)
    tail: list[str] = []

    def relay() -> None:
        with os.fdopen(os.open(site.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                       encoding="utf-8") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                flower_output.info("%s", line.rstrip("\n"))  # the SuperNode's own output
                tail[:] = [*tail[-40:], line]

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    code = _supervise(process, process.wait)
    stop_process_tree(process, grace=5.0)
    reader.join(timeout=10)
    if code > 0 and code != 130:  # negative: stopped by a signal, as asked
        reason = site_diagnosis(site, tail) or f"see {site.log_file}"
        raise RunError(f"site {site.name}: the SuperNode stopped (exit code {code}): {reason}")
    return code


# --------------------------------------------------------------------------- run

def deployment_config(consortium: Consortium, path: Path | None, overrides: list[str], *,
                      resume: bool = False) -> ExperimentConfig:
    """The experiment as the coordinator runs it: every site of the consortium, outputs beside the coordinator.

    These defaults yield to the YAML file and to ``--set``. ``resume`` continues the run
    directory of an interrupted run from its last checkpoint (same settings required).
    """
    values = read_yaml(path) if path else {}
    defaults = {"federation": {"num_sites": len(consortium.sites)},
                "privacy": {"membership_audit": False},  # the coordinator holds no site's records
                "output_dir": str(consortium.runs_dir)}
    for section, value in defaults.items():
        if isinstance(value, dict):
            values[section] = {**value, **(values.get(section) or {})}
        else:
            values.setdefault(section, value)
    config = config_from_dict(apply_overrides(values, overrides), source=path or "")
    if not config.federation.num_sites:  # 0 = automatic: in a deployment, every site of the consortium
        config = replace(config, federation=replace(config.federation, num_sites=len(consortium.sites)))
    if config.privacy.reproducible:
        raise ConfigError(f"{path or 'the run'}: `privacy.reproducible` is for tests and benchmarks only: it derives "
                          "each site's DP sampling and noise from the run's seed, which the coordinator knows, so "
                          "no site's epsilon would hold against it; remove it (deployed sites refuse it too)")
    from finfed.tasks import (
        task_class,  # late: the task registry loads torch, which other commands never need
    )

    if task_class(config).needs_labels and not config.data.labels:  # task_class also checks the task's settings
        raise ConfigError("sites hold their own data, so the labels must be listed: set `data.labels` "
                          "(e.g. --set data.labels=negative,neutral,positive)")
    if config.federation.num_sites > len(consortium.sites):
        raise ConfigError(f"`federation.num_sites` is {config.federation.num_sites}, but the consortium has "
                          f"{len(consortium.sites)} site(s); the run would wait for sites that do not exist")
    from finfed.models.backbone import check_adapter_targets

    config = with_absolute_paths(config)
    check_adapter_targets(config.model.backbone, config.lora.target_modules)  # before the sites are asked to train
    if not resume:
        return config
    config = replace(config, resume_from=config.run_dir)
    resume_point(config.run_dir, to_run_config(config))  # refused here, before anything is submitted
    return config


def start_run(consortium: Consortium, config: ExperimentConfig, *, on_line: Printer) -> FlowerRunResult:
    """Submit finfed's app to the coordinator's SuperLink and wait until the run ends."""
    env = write_flower_config(consortium)
    run_dir = config.resolved_run_dir
    run_config = consortium.flwr_home / f"run-config-{config.name}.toml"
    values = {**to_run_config(config), "federation.site_nodes": run_config_value(consortium)}
    write_run_config(values, run_config)
    run_config.chmod(0o600)
    # A resumed run keeps the interrupted run's log beside its own.
    log_path = run_dir / ("flower-resumed.log" if config.resume_from else "flower.log")
    app = write_app(consortium.flwr_home)
    run_id, _ = stream_flower_run(_executable(commands.run_command(app, run_config)), env, log_path, on_line,
                                  cwd=consortium.flwr_home)
    status, details = final_run_status(run_id, env, commands.CONNECTION, cwd=consortium.flwr_home)
    return FlowerRunResult(run_id=run_id, status=status, details=details, log_path=log_path)


def plan_summary(plan: list[list[str]], env: Mapping[str, Any]) -> str:
    """What --dry-run prints: the environment and each command, ready to paste."""
    return "\n".join([commands.shell_env(env), *(commands.shell(command) for command in plan)])


def registered_nodes(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """The coordinator's view of SuperNodes (`flwr supernode ls`)."""
    done = subprocess.run(_executable(commands.list_nodes_command()), env=dict(env), capture_output=True,
                          text=True, timeout=120, check=False)
    try:
        return listed_nodes(done.stdout)
    except (ValueError, KeyError) as exc:
        raise RunError(f"`flwr supernode ls` gave no node list ({exc}): {done.stdout}{done.stderr}") from None
