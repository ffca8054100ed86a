"""Deployment operations (issue 16, item 6): taken ports, distinct runtime ports, one run at a time, a run
refused while the coordinator is down, waits that name the missing sites, bank names in listings, private
coordinator and site files. Fast unit tests first; the process tests at the end are slow."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deployment_harness import (
    Processes,
    fill_site,
    finfed_command,
    make_consortium,
    run_overrides,
    site_data,
    start_coordinator,
    start_run,
    start_site,
    wait_exit,
    wait_for,
)
from test_faults import FakeClock, FakeGrid

from finfed.cli.main import main
from finfed.compat import registered_node_id
from finfed.config import FederationSettings
from finfed.coordinator.sampling import SiteSampler, parse_site_nodes
from finfed.deploy.consortium import (
    DEFAULT_RUNTIME_PORT,
    add_site,
    load_consortium,
    read_toml,
)
from finfed.deploy.launch import check_runtime_port, serve_coordinator, start_superlink
from finfed.deploy.nodes import (
    format_rows,
    read_site_nodes,
    record_site_node,
    run_config_value,
    site_nodes_path,
    site_rows,
)
from finfed.deploy.ports import port_is_free
from finfed.deploy.runlock import LOCK_FILE, RunLock
from finfed.deploy.site_config import load_site_config
from finfed.errors import ConfigError, RunError


@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path)


@pytest.fixture
def listening():
    """A socket listening on a free 127.0.0.1 port (a server already there)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- ports

def test_a_listening_port_is_taken_and_a_closed_one_free(listening):
    assert not port_is_free("127.0.0.1", listening)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert port_is_free("127.0.0.1", closed)


def test_coordinator_on_a_taken_port_is_refused_before_starting(tmp_path, listening):
    consortium = make_consortium(tmp_path)
    text = (consortium.folder / "consortium.toml").read_text()
    (consortium.folder / "consortium.toml").write_text(text.replace(f"port = {consortium.port}",
                                                                    f"port = {listening}"))
    consortium = load_consortium(consortium.folder)
    with pytest.raises(ConfigError, match=f"port {listening} on 127.0.0.1 is already in use, so the coordinator's "
                                          "SuperLink cannot listen there.*consortium.toml"):
        serve_coordinator(consortium, out=lambda line: pytest.fail(f"printed {line!r}"))
    assert not consortium.database.exists()


def test_each_site_gets_its_own_runtime_port(consortium):
    add_site(consortium, "bank-d")
    consortium = load_consortium(consortium.folder)
    ports = [read_toml(consortium.site_dir(s.name) / "site.toml", "site")["supernode"]["runtime_port"]
             for s in consortium.sites]
    assert ports == [DEFAULT_RUNTIME_PORT + i for i in range(4)]


def test_runtime_ports_skip_the_coordinators_port(tmp_path):
    from finfed.deploy.consortium import init_consortium
    consortium = init_consortium(tmp_path / "c", hosts=["127.0.0.1"], sites=["a", "b", "c"],
                                 port=DEFAULT_RUNTIME_PORT + 1)
    ports = [read_toml(consortium.site_dir(s.name) / "site.toml", "site")["supernode"]["runtime_port"]
             for s in consortium.sites]
    assert consortium.port not in ports and len(set(ports)) == 3


def test_site_dry_run_refuses_a_taken_runtime_port(consortium, tmp_path, listening, capsys):
    data = site_data(tmp_path, 3, rows_per_site=40)[0]
    path = fill_site(consortium, consortium.sites[0], data)
    path.write_text(path.read_text().replace(
        f"runtime_port = {load_site_config(path).runtime_port}", f"runtime_port = {listening}"))
    with pytest.raises(ConfigError, match=f"port {listening} .* already in use.*site bank-a's SuperNode.*"
                                          r"\[supernode\] runtime_port"):
        check_runtime_port(load_site_config(path))
    assert main(["deploy", "site", str(path.parent), "--dry-run"]) == 2
    assert "runtime_port" in capsys.readouterr().err


def test_site_folder_and_its_config_are_owner_only(consortium):
    for site in consortium.sites:
        assert _mode(consortium.site_dir(site.name)) == 0o700
        assert _mode(consortium.site_dir(site.name) / "site.toml") == 0o600


# --------------------------------------------------------------------------- a run needs the coordinator, alone

def test_run_with_the_coordinator_down_is_refused_and_writes_nothing(consortium, capsys):
    code = main(["deploy", "run", str(consortium.folder), "--set", "data.labels=a,b", "--set", "name=first"])
    error = capsys.readouterr().err
    assert code == 2 and "does not answer" in error and "finfed deploy coordinator" in error
    assert "Traceback" not in error
    assert not (consortium.runs_dir / "first").exists()
    assert not (consortium.coordinator_dir / LOCK_FILE).exists()


_HOLD = """
import sys, time
from finfed.deploy.runlock import RunLock
RunLock(sys.argv[1], "first-run").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_run_is_refused_while_one_holds_the_lock_and_a_dead_holder_frees_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"another run is in progress on this consortium \(run 'first-run', "
                                           rf"pid {holder.pid}, started .*\); one run at a time"):
            RunLock(tmp_path, "second-run").acquire()
    finally:
        holder.kill()  # SIGKILL: no chance to release, the lock file stays behind
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path, "third-run"):
        assert "third-run" in (tmp_path / LOCK_FILE).read_text()
        assert _mode(tmp_path / LOCK_FILE) == 0o600
    assert (tmp_path / LOCK_FILE).read_text() == ""


# --------------------------------------------------------------------------- which node is which bank

def test_registration_answers_and_recorded_node_ids_name_the_sites(consortium):
    assert registered_node_id('✅ SuperNode 77 registered successfully.\n{"success": true, "node-id": 77}') == 77
    assert registered_node_id('{\n  "success": true,\n  "node-id": 16508360134880963135\n}\n') == 16508360134880963135
    assert registered_node_id("Public key already in use") is None
    record_site_node(consortium, "bank-a", 77)
    record_site_node(consortium, "bank-c", 99)
    assert read_site_nodes(consortium) == {"bank-a": 77, "bank-c": 99}
    assert _mode(site_nodes_path(consortium)) == 0o600
    assert parse_site_nodes(run_config_value(consortium)) == {77: "bank-a", 99: "bank-c"}
    rows = site_rows(consortium, [{"node-id": "77", "status": "online"}, {"node-id": "99", "status": "offline"},
                                  {"node-id": "5", "status": "registered"}])
    assert [(r["site"], r["node"], r["status"]) for r in rows] == [
        ("bank-a", "77", "online"), ("bank-b", "-", "node id unknown"), ("bank-c", "99", "offline"),
        ("(unknown)", "5", "registered")]
    table = format_rows(rows).splitlines()
    assert table[0].split() == ["SITE", "ID", "NODE", "STATUS"] and table[1].split() == ["bank-a", "0", "77", "online"]


# --------------------------------------------------------------------------- waiting for sites

def test_the_wait_for_sites_names_who_is_missing_every_report_interval():
    federation = FederationSettings(num_sites=3, min_sites=2, round_timeout=100.0,
                                    site_nodes="11:bank-a,12:bank-b,13:bank-c")
    clock, lines = FakeClock(), []
    sampler = SiteSampler(federation, poll_s=1.0, report_s=30.0, clock=clock, sleep=clock.sleep, out=lines.append)
    assert sampler.online(FakeGrid([11, 12])) == [11, 12]  # after round_timeout: goes on with those that came
    waiting = [line for line in lines if "waiting for sites" in line]
    assert len(waiting) == 4  # at 0, 30, 60 and 90 s
    assert all(line.startswith("waiting for sites: bank-c (not connected); 2 of 3 connected")
               for line in waiting)
    assert lines[-1].startswith("going on without bank-c (not connected)")


def test_the_connection_wait_has_its_own_limit_and_names_it():
    """`federation.connect_timeout` bounds the waits for sites to connect; `round_timeout` (replies) does not."""
    federation = FederationSettings(num_sites=3, min_sites=2, round_timeout=3600.0, connect_timeout=20.0,
                                    site_nodes="11:bank-a,12:bank-b,13:bank-c")
    clock, lines = FakeClock(), []
    sampler = SiteSampler(federation, poll_s=1.0, report_s=30.0, clock=clock, sleep=clock.sleep, out=lines.append)
    began = clock()
    assert sampler.online(FakeGrid([11, 12])) == [11, 12]
    assert 20.0 <= clock() - began < 22.0  # not the hour of round_timeout
    assert "giving up in 20s (`federation.connect_timeout`)" in lines[0]
    with pytest.raises(RunError, match=r"only 1 of 3 sites online after waiting 20s \(`federation.connect_timeout`\)"):
        sampler.online(FakeGrid([11]))  # a later round: min_sites must be online within the same limit


def test_the_wait_is_silent_when_every_site_is_there_and_counts_sites_it_cannot_name():
    lines = []
    clock = FakeClock()
    sampler = SiteSampler(FederationSettings(num_sites=2, round_timeout=5.0), clock=clock, sleep=clock.sleep,
                          out=lines.append)
    assert sampler.online(FakeGrid([1, 2])) == [1, 2] and lines == []
    sampler = SiteSampler(FederationSettings(num_sites=2, round_timeout=5.0, min_sites=2), clock=clock,
                          sleep=clock.sleep, out=lines.append)
    with pytest.raises(RunError, match="only 1 of 2 sites online"):
        sampler.online(FakeGrid([1]))
    assert lines[0].startswith("waiting for sites: 1 site(s) not connected; 1 of 2 connected")


def test_malformed_site_nodes_are_refused():
    with pytest.raises(ConfigError, match="node-id:site-name"):
        parse_site_nodes("bank-a")


# --------------------------------------------------------------------------- processes (slow)

@pytest.fixture
def processes(tmp_path):
    started = Processes(tmp_path)
    yield started
    started.stop_all()


@pytest.mark.slow
def test_a_second_coordinator_is_refused_with_a_clear_message(processes, consortium):
    began = time.time()
    first = start_coordinator(processes, consortium)
    second = processes.start("second", finfed_command("deploy", "coordinator", str(consortium.folder)))
    assert wait_exit(second, 60) == 2
    text = second.text()
    assert f"port {consortium.port} on 127.0.0.1 is already in use" in text and "coordinator ready" not in text
    assert first.process.poll() is None  # the first one is untouched
    state = consortium.database.parent
    assert _mode(state) == 0o700 and _mode(consortium.database) == 0o600
    assert _mode(consortium.log_file) == 0o600
    # Bank names in the listing: the coordinator recorded each site's node id at registration.
    listing = subprocess.run(finfed_command("deploy", "sites", str(consortium.folder)), capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["bank-a", "bank-b", "bank-c"]
    assert all(row[2].isdigit() and row[3] == "registered" for row in rows)
    print(f"\n[timing] second coordinator refused: {time.time() - began:.0f}s")


@pytest.mark.slow
def test_an_early_superlink_exit_is_reported(consortium, listening, monkeypatch):
    """A port taken after finfed's own check (a race): the SuperLink's exit is reported, not a silent code 1."""
    monkeypatch.setattr("finfed.deploy.launch.check_port_free", lambda *args, **kwargs: None)
    text = (consortium.folder / "consortium.toml").read_text()
    (consortium.folder / "consortium.toml").write_text(text.replace(f"port = {consortium.port}",
                                                                    f"port = {listening}"))
    consortium = load_consortium(consortium.folder)
    from finfed.deploy.launch import write_flower_config
    with pytest.raises(RunError, match="the SuperLink on 127.0.0.1:.* exited"):
        start_superlink(consortium, write_flower_config(consortium), timeout=60)


@pytest.mark.slow
def test_two_sites_on_one_host_start_and_the_run_names_a_site_never_started(processes, tmp_path, tiny_backbone):
    began = time.time()
    consortium = make_consortium(tmp_path, num_sites=2)
    add_site(consortium, "bank-c")  # added, registered, never started
    consortium = load_consortium(consortium.folder)
    for entry, data in zip(consortium.sites, site_data(tmp_path, 3)):
        path = fill_site(consortium, entry, data)
        # The runtime ports init gave them (9094 + id), not the harness's free ports: two sites on one host.
        path.write_text(path.read_text().replace(f"runtime_port = {load_site_config(path).runtime_port}",
                                                 f"runtime_port = {DEFAULT_RUNTIME_PORT + entry.site_id}"))
    if not all(port_is_free("127.0.0.1", DEFAULT_RUNTIME_PORT + i) for i in range(2)):
        pytest.skip("ports 9094/9095 are in use on this machine")
    start_coordinator(processes, consortium)
    for entry in consortium.sites[:2]:
        start_site(processes, consortium, entry)
    # The first round waits `connect_timeout` (8 s) for bank-c: the other two are online before the run starts
    # (start_site waits for their SuperNode ID). Their replies keep the harness's `round_timeout` (300 s).
    run = start_run(processes, consortium, run_overrides(tiny_backbone, "missing", **{
        "federation.connect_timeout": 8, "federation.min_sites": 2, "federation.rounds": 1,
        "federation.fraction_evaluate": 0}))
    wait_for(lambda: "waiting for sites: bank-c (not connected)" in run.text(), 120,
             "the run to name the missing site", run)
    assert wait_exit(run, 300) == 0, run.text()[-4000:]
    assert "going on without bank-c" in run.text()
    print(f"\n[timing] two co-located sites + missing-site wait: {time.time() - began:.0f}s")
