"""The local engine's processes: bound to loopback, stopped promptly, gone with the CLI, no stale folders."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from finfed.config import load_config
from finfed.runs.outputs import read_metrics
from finfed.runtime.engine_home import (
    OWNER_FILE,
    PREFIX,
    clean_stale_engine_homes,
    make_engine_home,
    owner_alive,
    processes_using,
    stop_engine,
)
from finfed.runtime.processes import is_running, process_tree, stop_process_tree

ROOT = Path(__file__).resolve().parents[1]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _wait_until(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _start_engine_like(home: Path) -> subprocess.Popen:
    """A process with the run's FLWR_HOME in its own session, with a child in another session
    (as the SuperLink has SuperExec and Ray below it)."""
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
            " start_new_session=True); time.sleep(600)")
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "FLWR_HOME": str(home)},
                            start_new_session=True)


@pytest.fixture
def engine_root():
    """A private temporary root (short: Ray's socket paths must stay under 108 characters)."""
    root = Path(tempfile.mkdtemp(prefix="fe-", dir="/tmp"))
    yield root
    for home in root.glob(f"{PREFIX}*"):
        stop_engine(home, grace=1.0)
    shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- stopping

def test_stopping_a_tree_ends_when_its_processes_are_gone_not_after_the_grace_period():
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
            " start_new_session=True); subprocess.Popen(['true']); import time; time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    assert _wait_until(lambda: len(process_tree(process.pid)) >= 2, 20)
    family = process_tree(process.pid)
    started = time.monotonic()
    stop_process_tree(process, grace=10.0)
    elapsed = time.monotonic() - started
    assert not any(is_running(member) for member in family)
    assert process.returncode is not None  # reaped: no zombie of ours left behind
    assert elapsed < 3.0, f"teardown waited {elapsed:.1f}s on processes already gone"


def test_stopping_never_signals_the_callers_own_process_group():
    child = subprocess.Popen(SLEEPER)  # same process group as this test
    try:
        stop_process_tree(child, grace=5.0)
        assert child.returncode == -signal.SIGTERM  # stopped, and this process is still here to see it
    finally:
        if child.poll() is None:
            child.kill()


def test_the_wait_for_flower_ends_once_the_serverapp_has_recorded_the_end(tmp_path):
    """`flwr run --stream` stays up while Flower tears its engine down; finfed stops waiting (and stops it)
    as soon as the run's own status says it ended, and says so in the result's status."""
    from finfed.runtime.local_engine import stream_flower_run

    code = ("import time; print('Successfully started run 42', flush=True); print('round 1', flush=True); "
            "print('run complete', flush=True); time.sleep(600)")
    lines: list[str] = []
    started = time.monotonic()
    run_id, ended_by_app = stream_flower_run(
        [sys.executable, "-c", code], dict(os.environ), tmp_path / "flower.log", lines.append, cwd=tmp_path,
        app_finished=lambda: lines[-1] == "run complete")
    assert (run_id, ended_by_app) == ("42", True)
    assert time.monotonic() - started < 30  # not the child's 600 s
    assert "run complete" in (tmp_path / "flower.log").read_text()
    run_id, ended_by_app = stream_flower_run(  # without the question: Flower's own end is awaited
        [sys.executable, "-c", "print('Successfully started run 7')"], dict(os.environ), tmp_path / "flower.log",
        lines.append, cwd=tmp_path)
    assert (run_id, ended_by_app) == ("7", False)


def test_a_run_flower_did_not_start_is_a_finfed_error_quoting_flowers_last_lines(tmp_path):
    """`finfed simulate` prints it as an error (not a traceback), with the reason `flwr run` gave."""
    from finfed.errors import FinfedError
    from finfed.runtime.local_engine import stream_flower_run

    code = "print('Using SuperLink: finfed-local'); print(); print('Connection to the SuperLink refused')"
    with pytest.raises(FinfedError) as raised:
        stream_flower_run([sys.executable, "-c", code], dict(os.environ), tmp_path / "flower.log",
                          lambda line: None, cwd=tmp_path)
    message = str(raised.value)
    assert "did not start the run" in message and "Connection to the SuperLink refused" in message
    assert str(tmp_path / "flower.log") in message


def test_free_ports_come_from_below_the_kernels_ephemeral_range_and_skip_taken_ones(monkeypatch):
    from finfed.runtime import local_engine

    top = local_engine._ephemeral_start()
    ports = [local_engine.free_port() for _ in range(20)]
    assert all(local_engine.LOWEST_PORT <= port < top for port in ports) and len(set(ports)) > 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[0]))
        taken.listen()
        draws = iter([ports[0], ports[1]])  # the first draw is a port in use: the next one is given
        monkeypatch.setattr(local_engine.random.SystemRandom, "randrange", lambda self, lo, hi: next(draws))
        assert local_engine.free_port() == ports[1]
    monkeypatch.setattr(local_engine, "_ephemeral_start", lambda: 1024)  # no range below it: the kernel's pick
    assert local_engine.free_port() > 0


def test_a_superlink_whose_port_another_process_took_starts_on_another_port(tmp_path, monkeypatch):
    """Between choosing a free port and the SuperLink binding it, another process (on a busy machine, another
    run's SuperLink) may take it and answer the health check: that answer is not taken for the SuperLink's."""
    import http.server
    import threading

    from finfed.runtime import local_engine

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    squatter = http.server.HTTPServer(("127.0.0.1", 0), Health)
    taken = squatter.server_address[1]
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    ports = iter([taken])
    real_free_port = local_engine.free_port
    monkeypatch.setattr(local_engine, "free_port", lambda: next(ports, None) or real_free_port())
    home = tmp_path / "home"
    home.mkdir()
    try:
        with local_engine.LocalSuperLink(home, local_engine.flower_env(home)) as link:
            assert link.port != taken
            assert local_engine.listens_on(link.process.pid, link.port)
            assert f"127.0.0.1:{link.port}" in (home / "config.toml").read_text()  # what `flwr run` connects to
    finally:
        squatter.shutdown()
        squatter.server_close()


def test_only_a_normal_end_recorded_during_this_run_ends_the_wait(tmp_path):
    from finfed.runs.outputs import run_recorded_its_end

    def status(state: str, updated: float) -> None:
        (tmp_path / "status.json").write_text(json.dumps({"state": state, "updated": updated}))

    now = time.time()
    assert not run_recorded_its_end(tmp_path, since=now)  # no status yet
    for state in ("complete", "budget-exhausted"):
        status(state, now + 1)
        assert run_recorded_its_end(tmp_path, since=now)
    status("complete", now - 60)  # an earlier run's: this one has not ended
    assert not run_recorded_its_end(tmp_path, since=now)
    for state in ("running", "failed", "interrupted"):  # failures keep Flower's own account
        status(state, now + 1)
        assert not run_recorded_its_end(tmp_path, since=now)


# --------------------------------------------------------------------------- guard

def test_guard_stops_the_engine_and_removes_its_home_when_the_owner_is_killed(engine_root):
    owner_code = textwrap.dedent(f"""
        import json, os, subprocess, sys, time
        from pathlib import Path
        from finfed.runtime.engine_home import make_engine_home
        from finfed.runtime.guard import start_guard
        home = make_engine_home(Path({str(engine_root)!r}))
        guard = start_guard(home)
        code = ("import subprocess, sys, time; "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
                "time.sleep(600)")
        engine = subprocess.Popen([sys.executable, '-c', code], env={{**os.environ, 'FLWR_HOME': str(home)}},
                                  start_new_session=True)
        print(json.dumps({{'home': str(home), 'guard': guard.pid, 'engine': engine.pid}}), flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        started = json.loads(owner.stdout.readline())
        home = Path(started["home"])
        assert _wait_until(lambda: len(process_tree(started["engine"])) == 2, 20)
        engine = process_tree(started["engine"])
        guard = psutil.Process(started["guard"])
        assert (home / OWNER_FILE).is_file() and is_running(guard)

        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)

        assert _wait_until(lambda: not any(is_running(p) for p in [*engine, guard]), 20), \
            [p.pid for p in engine if is_running(p)]
        assert not home.exists()
    finally:
        if owner.poll() is None:
            stop_process_tree(owner, grace=1.0)


# --------------------------------------------------------------------------- stale homes

def test_stale_homes_are_removed_and_live_ones_kept(engine_root):
    def home(name: str, owner: dict | None, age_s: float = 0.0) -> Path:
        folder = engine_root / f"{PREFIX}{name}"
        folder.mkdir()
        if owner is not None:
            (folder / OWNER_FILE).write_text(json.dumps(owner))
        if age_s:
            os.utime(folder, (time.time() - age_s, time.time() - age_s))
        return folder

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_owner = home("dead", {"pid": gone.pid, "create_time": 1.0})
    orphan = _start_engine_like(dead_owner)  # an engine process its killed guard left running
    assert _wait_until(lambda: len(process_tree(orphan.pid)) == 2, 20)
    orphan_family = process_tree(orphan.pid)
    reused_pid = home("reused", {"pid": os.getpid(), "create_time": 1.0})  # our pid, another process's time
    live = make_engine_home(engine_root)
    unowned_old = home("old", None, age_s=3600)
    unowned_young = home("young", None)
    unowned_in_use = home("inuse", None, age_s=3600)
    user = _start_engine_like(unowned_in_use)
    try:
        assert _wait_until(lambda: len(process_tree(user.pid)) == 2, 20)
        removed = clean_stale_engine_homes(engine_root)
        orphan.wait(timeout=5)
        assert sorted(removed) == sorted([dead_owner, reused_pid, unowned_old])
        assert not any(is_running(p) for p in orphan_family)
        assert live.is_dir() and unowned_young.is_dir() and unowned_in_use.is_dir()
        assert is_running(psutil.Process(user.pid))
    finally:
        for process in (orphan, user):
            stop_process_tree(process, grace=1.0)


def test_an_owner_is_recognised_by_its_start_ticks_when_the_system_clock_was_stepped(engine_root):
    """The wall-clock start time psutil reports moves when the clock is stepped (a VM's time sync): the owner
    must still be recognised, or its guard would stop its run under it (the likely cause of two CI runs that
    lost their SuperLink mid-run)."""
    home = make_engine_home(engine_root)
    owner = json.loads((home / OWNER_FILE).read_text())
    assert owner["start_ticks"] is not None
    (home / OWNER_FILE).write_text(json.dumps({**owner, "create_time": owner["create_time"] + 1.0}))
    assert owner_alive(home) is True
    (home / OWNER_FILE).write_text(json.dumps({**owner, "start_ticks": owner["start_ticks"] - 1}))
    assert owner_alive(home) is False  # the same pid, started at another moment: a reused pid


# --------------------------------------------------------------------------- whole runs (Flower + Ray)

def _simulate_command(backbone: str, run_dir: Path, rounds: int) -> list[str]:
    settings = [f"model.backbone={backbone}", f"run_dir={run_dir}", "data.synthetic_size=400",
                "federation.num_sites=2", f"federation.rounds={rounds}", "train.batch_size=16", "lora.r=4",
                "privacy.membership_audit=false"]
    return [sys.executable, "-m", "finfed.cli", "simulate", *[a for s in settings for a in ("--set", s)]]


def _start_simulate(backbone: str, run_dir: Path, rounds: int, tmp: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        return subprocess.Popen(_simulate_command(backbone, run_dir, rounds), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT))


def _run_processes(cli: subprocess.Popen, tmp: Path) -> dict[int, psutil.Process]:
    """The CLI's descendants, and every process started with its private Flower home."""
    found = {p.pid: p for p in process_tree(cli.pid)}
    for home in tmp.glob(f"{PREFIX}*"):
        found.update({p.pid: p for p in processes_using(home)})
    return found


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback


def _listening(processes: dict[int, psutil.Process]) -> set[tuple[str, str, int, str]]:
    """(process name, address, port, tcp/udp) of every listening TCP socket and bound UDP socket."""
    sockets = set()
    for process in processes.values():
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in connections:
            udp = conn.type == socket.SOCK_DGRAM
            if (conn.status == psutil.CONN_LISTEN or (udp and not conn.raddr)) and conn.laddr:
                sockets.add((_name(process), conn.laddr.ip, conn.laddr.port, "udp" if udp else "tcp"))
    return sockets


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("192.0.2.2", False), ("::ffff:192.0.2.2", False)])
def test_the_socket_check_tells_loopback_from_every_interface_and_external_addresses(address, loopback):
    assert _is_loopback(address) is loopback


def _gcs_answer_without_a_token(port: int) -> str:
    """The status of a gRPC call to gcs_server that carries no token (``OK`` if it answered)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10)
        except grpc.RpcError as error:
            return error.code().name
    return "OK"


@pytest.mark.slow
def test_every_engine_socket_of_a_simulation_listens_on_loopback_only(tiny_backbone, tmp_path, engine_root):
    run_dir = tmp_path / "run"
    cli = _start_simulate(tiny_backbone, run_dir, 2, engine_root, tmp_path / "cli.log")
    seen: set[tuple[str, str, int, str]] = set()
    refused: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while cli.poll() is None and time.monotonic() < deadline:
            seen |= _listening(_run_processes(cli, engine_root))
            gcs_ports = sorted(port for name, _, port, _ in seen if name == "gcs_server")
            if gcs_ports and not refused and cli.poll() is None:
                refused.append(_gcs_answer_without_a_token(gcs_ports[0]))
            time.sleep(0.5)
        assert cli.wait(timeout=5) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        if cli.poll() is None:
            stop_process_tree(cli, grace=5.0)
    print("listening:", *sorted(seen), sep="\n  ")
    print("gcs_server called without the token:", refused)
    names = {name for name, *_ in seen}
    # Not vacuous: Ray's core servers, a Ray worker and the SuperLink were all seen listening.
    assert {"gcs_server", "raylet"} <= names, sorted(seen)
    assert any(name.startswith("ray::") for name in names), sorted(seen)
    assert any(name.startswith("flower-superlin") for name in names), sorted(seen)  # names stop at 15 chars
    exposed = sorted(entry for entry in seen if not _is_loopback(entry[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert refused == ["UNAUTHENTICATED"], f"gcs_server, called without Ray's token, answered {refused}"


@pytest.mark.slow
def test_sigkill_of_the_cli_leaves_no_process_and_its_next_start_removes_stale_homes(
        tiny_backbone, tmp_path, engine_root):
    # A home left by an earlier run killed together with its guard, one of its processes still running.
    stale = engine_root / f"{PREFIX}stale"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(json.dumps({"pid": 1, "create_time": 0.0}))  # pid 1 did not make it
    orphan = _start_engine_like(stale)
    run_dir = tmp_path / "run"
    cli = _start_simulate(tiny_backbone, run_dir, 4, engine_root, tmp_path / "cli.log")
    family: dict[int, psutil.Process] = {}
    try:
        assert _wait_until(lambda: not stale.exists(), 120), "the next start did not remove the stale home"
        orphan.wait(timeout=10)

        def training() -> bool:
            assert cli.poll() is None, (tmp_path / "cli.log").read_text()[-3000:]
            actors = [p for p in _run_processes(cli, engine_root).values() if "ClientAppActor" in _name(p)]
            return bool(actors) and (run_dir / "metrics.jsonl").is_file() and bool(read_metrics(run_dir))
        assert _wait_until(training, 600, interval=0.2)
        family = _run_processes(cli, engine_root)
        homes = list(engine_root.glob(f"{PREFIX}*"))
        assert len(homes) == 1 and len(family) > 5, sorted(map(_name, family.values()))

        killed = time.monotonic()
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=10)
        assert _wait_until(lambda: not any(is_running(p) for p in family.values()), 60), \
            sorted((p.pid, _name(p)) for p in family.values() if is_running(p))
        assert _wait_until(lambda: not homes[0].exists(), 10)
        print(f"engine gone {time.monotonic() - killed:.1f}s after SIGKILL; {len(family)} processes")
    finally:
        stop_process_tree(orphan, grace=1.0)
        for process in family.values():
            if is_running(process):
                stop_process_tree(process.pid, grace=1.0)


# --------------------------------------------------------------------------- the preflight's child process

def test_a_function_runs_in_a_child_when_this_process_has_no_pytorch(monkeypatch):
    """`finfed simulate` plans its sites in a child so the command never loads PyTorch (0.45 GB for the whole
    run); its errors come back as the same finfed error, with the same record-free reason."""
    from finfed.errors import ConfigError
    from finfed.runtime import isolated

    assert isolated.call_isolated(os.getpid) == os.getpid()  # PyTorch is loaded here: no child
    monkeypatch.setattr(isolated, "HEAVY_MODULE", "a_module_never_loaded")
    assert isolated.call_isolated(os.getpid) != os.getpid()
    with pytest.raises(ConfigError, match="unknown"):
        isolated.call_isolated(load_config, None, ["federation.no_such_key=1"])


def test_the_simulate_command_plans_its_sites_without_loading_pytorch_itself():
    code = ("import sys; from finfed.cli.main import main; from finfed.runtime import isolated; "
            "calls = []; isolated_call = isolated.call_isolated; "
            "isolated.call_isolated = lambda f, *a: calls.append(f.__name__) or isolated_call(f, *a); "
            "main(['simulate', '--set', 'data.source=file', '--set', 'data.path=/no/such.csv']); "
            "print(calls, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "does not exist" in result.stderr
    assert result.stdout.strip() == "['plan_simulation'] False", result.stdout + result.stderr
