"""Run finfed's Flower app on this machine with Flower's own simulation engine.

A private SuperLink in simulation mode is started on a free loopback port with a
private ``FLWR_HOME``; ``flwr run --stream`` submits the app (``finfed.runtime.flower_app``:
the very same ServerApp and ClientApp a deployment uses);
the run's real outcome is read back with ``flwr ls`` because ``flwr run`` exits 0
even when the run failed. Every process started here is stopped here.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import psutil
import tomli_w

from finfed.compat import FLOWER_RUN_COMPLETED, listed_run_status, started_run_id
from finfed.config import ExperimentConfig, from_run_config
from finfed.errors import RunError
from finfed.lean_imports import WITHOUT_INT8_ENV
from finfed.runs.checkpoint import resume_point
from finfed.runs.outputs import RUN_LEDGERS
from finfed.runtime.engine_home import clean_stale_engine_homes, make_engine_home
from finfed.runtime.flower_app import write_app
from finfed.runtime.guard import start_guard
from finfed.runtime.loopback import private_ray_env
from finfed.runtime.processes import stop_process_tree

CONNECTION = "finfed-local"

# Off by default in anything finfed starts: no telemetry, no update checks, no runtime installs.
QUIET_FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


# The status of a run whose ServerApp recorded its end (``app_finished``): the engine was then stopped
# without waiting for Flower's own teardown (about 4 s of Ray shutdown and a `flwr ls`).
RECORDED_BY_SERVERAPP = "finished:recorded-by-serverapp"
GRACE_AFTER_RECORDED_END = 0.5


@dataclass(frozen=True)
class FlowerRunResult:
    run_id: str
    status: str
    details: str
    log_path: Path

    @property
    def succeeded(self) -> bool:
        return self.status in (FLOWER_RUN_COMPLETED, RECORDED_BY_SERVERAPP)


LOWEST_PORT = 20000  # free ports are drawn from here up to the kernel's ephemeral range


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range, for a server finfed starts.

    The server binds it a second or more after it is chosen. A port the kernel handed out (a bind to port 0)
    can meanwhile go to any other process's port-0 bind or outgoing connection (Ray's workers, gRPC channels,
    another run); a port below that range is only ever taken by an explicit bind. Drawn at random, so two
    runs started together do not try the same one. Where no such range exists, the kernel's choice."""
    top, draw = _ephemeral_start(), random.SystemRandom()
    for _ in range(50):
        port = draw.randrange(LOWEST_PORT, top) if top > LOWEST_PORT else 0
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_run_config(values: Mapping[str, object], path: Path) -> None:
    """One TOML file of overrides: `-c k=v` flags sharing a dotted prefix overwrite each other.

    Its keys stay dotted (quoted in TOML), as Flower's run config names them."""
    path.write_text(tomli_w.dumps(dict(values)), encoding="utf-8")


def connection_config(connection: str, address: str, **options: object) -> str:
    """``$FLWR_HOME/config.toml`` making ``connection`` (at ``address``) the default SuperLink of `flwr`."""
    return tomli_w.dumps({"superlink": {"default": connection,
                                        connection: {"address": address, **options}}})


class PortTaken(RuntimeError):
    """Another process bound the port chosen for the SuperLink before the SuperLink did."""


class LocalSuperLink:
    """A simulation-mode SuperLink bound to 127.0.0.1, stopped with everything it spawned.

    Its port is free when chosen but only bound a second or two later, by the SuperLink's own process; on a
    busy machine another process (another run's SuperLink, Ray) can take it in between, and would then answer
    the health check too. So the SuperLink counts as up only when its own process listens on the port, and a
    SuperLink that lost its port starts again on another one (``PORT_ATTEMPTS`` in all)."""

    PORT_ATTEMPTS = 3

    def __init__(self, home: Path, env: Mapping[str, str]) -> None:
        self.home, self.env, self.port = home, dict(env), free_port()
        self.process: subprocess.Popen | None = None
        self.grace = 10.0  # seconds between SIGTERM and SIGKILL when it is stopped

    def __enter__(self) -> "LocalSuperLink":
        attempts = self.PORT_ATTEMPTS
        while True:
            self._start()
            try:
                self._wait_healthy(timeout=60)
                return self
            except PortTaken:
                stop_process_tree(self.process, grace=1.0)
                attempts -= 1
                if not attempts:
                    raise
                self.port = free_port()

    def _start(self) -> None:
        (self.home / "config.toml").write_text(
            connection_config(CONNECTION, f"127.0.0.1:{self.port}", insecure=True), encoding="utf-8")
        self.process = subprocess.Popen(
            [flower_tool("flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
             "--port", str(self.port), "--disable-runtime-dependency-installation",
             "--log-file", str(self.home / "superlink.log")],
            env=self.env, cwd=str(self.home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if _answers_health(self.port) and listens_on(self.process.pid, self.port):
                return
            if self.process.poll() is not None:
                if port_in_use(self.port):
                    raise PortTaken(f"port {self.port} was taken by another process before the SuperLink bound it")
                raise RuntimeError(f"SuperLink exited at start; see {self.home / 'superlink.log'}")
            time.sleep(0.2)
        raise RuntimeError(f"SuperLink did not answer on 127.0.0.1:{self.port} within {timeout:.0f}s")

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            stop_process_tree(self.process, grace=self.grace)


def _answers_health(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5)
        return True
    except OSError:
        return False


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself listens on TCP ``port``."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def flower_tool(name: str) -> str:
    """Flower's executables from this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, **QUIET_FLOWER_ENV, **WITHOUT_INT8_ENV, FLWR_HOME=str(home), RAY_TMPDIR=str(home / "ray"))
    # SuperExec finds flwr-simulation on PATH: put this environment's bin first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def simulation_env(home: Path) -> dict[str, str]:
    """A simulation's environment: Flower's, plus Ray on 127.0.0.1 with a token (see finfed.runtime.loopback)."""
    return {**flower_env(home), **private_ray_env()}


def simulation_config(config: ExperimentConfig) -> ExperimentConfig:
    """`finfed simulate`'s own defaults: the number of sites decided (from the partition column when left at 0),
    and sites keep privacy ledgers in the run directory.

    A resumed run is a new Flower run whose sites start with an empty ``Context.state``;
    only a ledger tells them what they spent before the stop. Keeping one per run makes
    every simulated run resumable with the same epsilon an uninterrupted run reports.
    """
    if config.resume_from:
        raise RunError("to resume a run, use `finfed simulate --resume RUN_DIR` (it takes the run's saved settings)")
    from finfed.data.partition import resolve_num_sites
    from finfed.tasks import task_class

    # `federation.num_sites` 0 = automatic: one site per value of the partition column (read alone, cheaply)
    config = resolve_num_sites(config, task_class(config).records)
    if config.privacy.ledger_dir or not config.privacy.enabled:
        return config
    ledgers = str(config.resolved_run_dir / RUN_LEDGERS)
    return dataclasses.replace(config, privacy=dataclasses.replace(config.privacy, ledger_dir=ledgers))


def resume_config(run_dir: Path) -> ExperimentConfig:
    """The settings of the stopped run in ``run_dir`` (from its checkpoint), set to resume it."""
    run_dir = Path(run_dir).resolve()
    checkpoint = resume_point(run_dir, None)
    config = from_run_config({**checkpoint.run_config, "resume_from": str(run_dir)})
    if config.privacy.enabled and not config.privacy.ledger_dir:
        raise RunError(f"run {run_dir} was started without site privacy ledgers (`privacy.ledger_dir`), so its "
                       "sites cannot know what they spent before it stopped; it cannot be resumed honestly")
    return config


def federation_config(num_sites: int, cpus_per_site: int, gpus_per_site: float, total_cpus: int) -> str:
    """``flwr run --federation-config``: Flower's simulation backend reserves these client resources per site."""
    return (f"num-supernodes={num_sites} client-resources-num-cpus={cpus_per_site} "
            f"client-resources-num-gpus={float(gpus_per_site)} init-args-num-cpus={total_cpus}")


def run_simulation(run_config: Mapping[str, object], *, num_sites: int, cpus_per_site: int,
                   gpus_per_site: float = 0.0,
                   log_path: Path, on_line: Callable[[str], None] = lambda line: None,
                   append_log: bool = False, app_finished: Callable[[], bool] | None = None) -> FlowerRunResult:
    """Submit finfed's app to a private local SuperLink and wait for it to finish.

    Everything it starts runs with this process's private ``FLWR_HOME``; a guard stops all
    of it and removes that folder if this process dies (even by SIGKILL) before the run ends.
    ``app_finished`` (asked after each line of the run's log) tells that the ServerApp has recorded the
    run's end with all its outputs: the engine is then stopped at once, and the result's status is
    ``RECORDED_BY_SERVERAPP`` instead of Flower's own.
    """
    clean_stale_engine_homes()
    home, guard = make_engine_home(), None
    total_cpus = max(cpus_per_site, os.cpu_count() or 1)
    try:
        guard = start_guard(home)
        (home / "ray").mkdir()
        env = simulation_env(home)
        with LocalSuperLink(home, env) as superlink:
            write_run_config(run_config, home / "run-config.toml")
            app = write_app(home)
            command = [flower_tool("flwr"), "run", str(app), CONNECTION, "--stream",
                       "--federation-config", federation_config(num_sites, cpus_per_site, gpus_per_site, total_cpus),
                       "--run-config", str(home / "run-config.toml")]
            run_id, ended_by_app = stream_flower_run(command, env, log_path, on_line, append_log, cwd=home,
                                                     app_finished=app_finished)
            if ended_by_app:
                # Everything the run leaves is written: Flower's graceful shutdown of Ray (3 s of waiting
                # on a MiniLM run) would only delay the answer.
                superlink.grace = GRACE_AFTER_RECORDED_END
            status, details = ((RECORDED_BY_SERVERAPP, "") if ended_by_app
                               else final_run_status(run_id, env, cwd=home))
        result = FlowerRunResult(run_id=run_id, status=status, details=details, log_path=log_path)
        if not result.succeeded:
            keep_superlink_log(home, log_path)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if guard is not None:
            stop_process_tree(guard, grace=2.0)  # it exits by itself once the home is gone
    return result


def keep_superlink_log(home: Path, log_path: Path) -> None:
    """A failed run's SuperLink log, kept beside its Flower log (the engine home is removed): it tells
    whether the SuperLink stopped, and why."""
    try:
        shutil.copyfile(home / "superlink.log", log_path.with_name("superlink.log"))
    except OSError:
        pass  # it never started far enough to write one


def stream_flower_run(command: list[str], env: Mapping[str, str], log_path: Path,
                      on_line: Callable[[str], None], append_log: bool = False, *, cwd: Path,
                      app_finished: Callable[[], bool] | None = None) -> tuple[str, bool]:
    """Run ``flwr run --stream``, logging and showing its lines; returns the run id, and True when
    ``app_finished`` ended the wait (``flwr run`` is then stopped: nothing it would still print matters)."""
    run_id, ended_by_app = "", False
    # Line-buffered: if this process is killed, the log still holds everything up to that moment.
    # Its own session: a terminal's Ctrl-C reaches finfed only, which asks the run to stop (finfed.runs.stop)
    # instead of `flwr run` dying at once and the run going on unwatched.
    with open(log_path, "a" if append_log else "w", encoding="utf-8", buffering=1) as log, subprocess.Popen(
            command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=str(cwd), start_new_session=True) as process:
        try:
            for line in process.stdout:
                log.write(line)
                run_id = started_run_id(line) or run_id
                on_line(line.rstrip("\n"))
                if run_id and app_finished is not None and app_finished():
                    ended_by_app = True
                    stop_process_tree(process)
                    break
        except BaseException:
            stop_process_tree(process)
            raise
    if not run_id:
        raise not_started(log_path)
    return run_id, ended_by_app


class RunNotStarted(RunError):
    """`flwr run` ended without starting the run (see ``not_started``)."""


def not_started(log_path: Path, lines: int = 12) -> RunNotStarted:
    """The error for a run `flwr run` did not start, with the last lines of its log: they say why."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    last = [line for line in text.splitlines() if line.strip()][-lines:] or ["(it printed nothing)"]
    return RunNotStarted("Flower did not start the run; `flwr run` ended with:"
                         + "".join(f"\n  {line}" for line in last) + f"\n(log: {log_path})")


def final_run_status(run_id: str, env: Mapping[str, str], connection: str = CONNECTION, *,
                  cwd: Path) -> tuple[str, str]:
    listing = subprocess.run([flower_tool("flwr"), "ls", connection, "--run-id", run_id, "--format", "json"],
                             env=dict(env), capture_output=True, text=True, cwd=str(cwd), timeout=120)
    return listed_run_status(listing.stdout) or ("unknown", listing.stdout + listing.stderr)
