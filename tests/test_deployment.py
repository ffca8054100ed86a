"""Deployment: the consortium's PKI and site checks, and real SuperLink/SuperNode runs on 127.0.0.1.

The process tests start everything through `finfed deploy` (coordinator with TLS and
SuperNode authentication, one SuperNode per bank) on free loopback ports with private
Flower homes, and stop every process they started (tests/deployment_harness.py).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from deployment_harness import (
    SITE_BUDGET,
    Processes,
    audit_entries,
    fill_site,
    finfed_command,
    make_consortium,
    metrics,
    nodes,
    online_nodes,
    run_overrides,
    site_data,
    start_coordinator,
    start_run,
    wait_exit,
    wait_for,
)
from flwr.common.config import parse_config_args

from finfed import constants as keys
from finfed.cli.main import main
from finfed.config import ExperimentConfig
from finfed.deploy import pki
from finfed.deploy.consortium import add_site, init_consortium, load_consortium
from finfed.deploy.launch import deployment_config
from finfed.deploy.site_config import load_site_config
from finfed.errors import ConfigError, RunError
from finfed.privacy.ledger import PrivacyLedger
from finfed.runs.outputs import read_status

pytestmark = pytest.mark.deployment

SECURE_AGGREGATION = ("secure_aggregation" in
                      ExperimentConfig.__dataclass_fields__["federation"].default_factory().__dict__)
RESUME = "resume_from" in ExperimentConfig.__dataclass_fields__


# --------------------------------------------------------------------------- PKI and consortium

@pytest.fixture
def consortium(tmp_path):
    return make_consortium(tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_lays_out_a_consortium_with_private_keys_only_owner_readable(consortium):
    assert [s.name for s in consortium.sites] == ["bank-a", "bank-b", "bank-c"]
    private = [consortium.authority_dir / "ca.key", consortium.server_key,
               *(consortium.site_dir(s.name) / f"{s.name}.key" for s in consortium.sites)]
    assert all(_mode(path) == 0o600 for path in private)
    pki.check_issued_by(consortium.server_cert, consortium.ca_cert, "server certificate")
    assert set(pki.certificate_hosts(consortium.server_cert)) == {"127.0.0.1", "localhost"}
    for site in consortium.sites:
        key = pki.check_site_private_key(consortium.site_dir(site.name) / f"{site.name}.key")
        assert isinstance(key.curve, ec.SECP384R1)
        registered = pki.check_site_public_key(consortium.public_key(site.name))
        assert registered.public_numbers() == key.public_key().public_numbers()
    assert load_consortium(consortium.folder) == consortium


def test_init_refuses_an_existing_consortium_and_leaves_it_untouched(consortium):
    before = {p: p.read_bytes() for p in consortium.folder.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already exists"):
        init_consortium(consortium.folder, hosts=["127.0.0.1"], sites=["bank-z"])
    assert {p: p.read_bytes() for p in consortium.folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("sites, message", [(["bank-a", "bank-a"], "distinct"), (["Bank A"], "lower-case"),
                                            (["../evil"], "lower-case")])
def test_init_rejects_bad_site_names(tmp_path, sites, message):
    with pytest.raises(ConfigError, match=message):
        init_consortium(tmp_path / "c", hosts=["127.0.0.1"], sites=sites)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("hosts", [[], ["https://coord.example"], ["coord.example:9092"], ["coord example"]])
def test_init_rejects_bad_coordinator_hosts_before_writing_anything(tmp_path, hosts):
    with pytest.raises(ConfigError, match="coordinator host"):
        init_consortium(tmp_path / "c", hosts=hosts, sites=["bank-a"])
    assert not (tmp_path / "c").exists()


def test_server_certificate_covers_given_names_and_ips(tmp_path):
    ca, ca_key = pki.create_ca(tmp_path, "test CA")
    cert, _ = pki.create_server_certificate(tmp_path / "srv", ca, ca_key, ["coord.bank.example", "10.1.2.3"])
    assert set(pki.certificate_hosts(cert)) == {"coord.bank.example", "10.1.2.3", "localhost", "127.0.0.1"}


def test_a_certificate_from_another_ca_is_refused(consortium, tmp_path):
    rogue, _ = pki.create_ca(tmp_path / "rogue", "rogue CA")
    with pytest.raises(ConfigError, match="was not signed by the CA"):
        pki.check_issued_by(consortium.server_cert, rogue, "server certificate")


def test_add_site_gets_the_next_id_and_its_own_keys(consortium):
    site = add_site(consortium, "bank-d")
    assert site.site_id == 3
    assert [s.name for s in load_consortium(consortium.folder).sites][-1] == "bank-d"
    pki.check_site_public_key(consortium.public_key("bank-d"))
    with pytest.raises(ConfigError, match="already exists"):
        add_site(load_consortium(consortium.folder), "bank-d")


# --------------------------------------------------------------------------- site.toml

@pytest.fixture
def site(consortium, tmp_path):
    """bank-a's folder with its template filled in by the bank."""
    data = site_data(tmp_path, 3, rows_per_site=40)[0]
    fill_site(consortium, consortium.sites[0], data)
    return consortium.site_dir("bank-a")


def _edit(site_dir: Path, old: str, new: str) -> None:
    path = site_dir / "site.toml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_filled_site_config_loads_and_its_node_config_survives_flowers_parser(site):
    config = load_site_config(site)
    assert config.budget_epsilon == SITE_BUDGET and config.site_id == 0
    assert config.ledger_path == site / "privacy-ledger.json" and config.audit_log == site / "audit.jsonl"
    parsed = parse_config_args([config.node_config_arg()])
    assert parsed == config.node_config()
    assert parsed["data-path"] == str(config.data_path) and parsed["site-id"] == 0


@pytest.mark.parametrize("name", ["it's a \\ folder", 'the "q" folder', "données 2024"])
def test_node_config_keeps_paths_with_spaces_quotes_and_backslashes(site, tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    data = folder / "data.csv"
    data.write_bytes(load_site_config(site).data_path.read_bytes())
    _edit(site, f'path = "{load_site_config(site).data_path}"', f"path = {json.dumps(str(data))}")
    config = load_site_config(site)
    assert parse_config_args([config.node_config_arg()])["data-path"] == str(data)


@pytest.mark.parametrize("old, new, expected", [
    ("budget_epsilon = 10.0\n", "\n", "[privacy] budget_epsilon: is missing"),
    ("budget_epsilon = 10.0", "budget_epsilon = 0", "[privacy] budget_epsilon: must be > 0.0, got 0.0"),
    ("budget_delta = 1e-05", "budget_delta = 2.0", "[privacy] budget_delta: must be > 0.0 and < 1.0, got 2.0"),
    ('root_certificates = "ca.pem"', 'root_certificates = "missing.pem"', "missing.pem does not exist"),
    ('[coordinator]\n', '[coordinator]\ninsecure = true\n', "finfed never connects a site without TLS"),
    ('label_column = "label"', 'label_column = "sentiment"', "has no column(s) ['sentiment']"),
    ('[data]\n', '[data]\nlabels = "x"\n', "[data] labels: is an unknown key; known keys here: path, name"),
])
def test_site_config_errors_name_the_file_and_key(site, old, new, expected):
    _edit(site, old, new)
    with pytest.raises(ConfigError) as error:
        load_site_config(site)
    assert str(site / "site.toml") in str(error.value)
    assert expected in str(error.value)


def test_missing_data_file_is_named(site):
    config = load_site_config(site)
    config.data_path.unlink()
    with pytest.raises(ConfigError, match=rf"\[data\] path: data file {config.data_path} does not exist"):
        load_site_config(site)


def test_unreadable_certificate_is_refused(site):
    (site / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=r"\[coordinator\] root_certificates: CA certificate .*ca.pem is not a "
                                          "PEM-encoded X.509 certificate"):
        load_site_config(site)


@pytest.mark.parametrize("kind", ["ed25519", "pem-ec"])
def test_wrong_key_type_is_refused(site, kind):
    key_path = site / "bank-a.key"
    key_path.unlink()
    if kind == "ed25519":  # an OpenSSH key, but not the EC kind Flower signs with
        data = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        expected = "needs an EC key"
    else:  # the right curve in the wrong container (PKCS#8 PEM instead of OpenSSH)
        data = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        expected = "is not an unencrypted OpenSSH private key"
    pki.write_private(key_path, data)
    with pytest.raises(ConfigError, match=rf"\[auth\] private_key: site private key .*bank-a.key .*{expected}"):
        load_site_config(site)


def test_private_key_readable_by_others_is_refused(site):
    os.chmod(site / "bank-a.key", 0o644)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_site_config(site)


def test_every_problem_is_reported_at_once(site):
    _edit(site, "budget_epsilon = 10.0\n", "\n")
    _edit(site, 'root_certificates = "ca.pem"', 'root_certificates = "missing.pem"')
    with pytest.raises(ConfigError, match=r"2 problem\(s\)"):
        load_site_config(site)


# --------------------------------------------------------------------------- commands (dry run)

def test_dry_runs_print_flowers_commands_with_tls_and_node_auth(consortium, site, capsys):
    assert main(["deploy", "coordinator", str(consortium.folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "FLWR_TELEMETRY_ENABLED=0" in out and "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in out
    superlink = next(line for line in out.splitlines() if line.startswith("flower-superlink"))
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--database"):
        assert flag in superlink
    assert "--insecure" not in out
    assert out.count("flwr supernode register") == 3

    assert main(["deploy", "site", str(site), "--dry-run"]) == 0
    out = capsys.readouterr().out
    supernode = next(line for line in out.splitlines() if line.startswith("flower-supernode"))
    assert "--root-certificates" in supernode and "--auth-supernode-private-key" in supernode
    assert "--node-config" in supernode and "--insecure" not in supernode and "not reachable now" in out


def test_run_config_takes_the_consortiums_sites_and_requires_labels(consortium):
    config = deployment_config(consortium, None, ["data.labels=negative,neutral,positive"])
    assert config.federation.num_sites == 3 and not config.privacy.membership_audit
    assert Path(config.run_dir) == consortium.runs_dir / "default"
    with pytest.raises(ConfigError, match="data.labels"):
        deployment_config(consortium, None, [])
    with pytest.raises(ConfigError, match="consortium has 3 site"):
        deployment_config(consortium, None, ["data.labels=a,b", "federation.num_sites=4"])
    with pytest.raises(ConfigError, match=r"names \['qv'\], which backbone bundled"):  # LoRA's targets, from the config
        deployment_config(consortium, None, ["data.labels=a,b", "lora.target_modules=query,qv"])


@pytest.mark.skipif(not RESUME, reason="resume (`resume_from`) not available")
def test_resume_is_refused_before_submitting_when_there_is_nothing_to_resume(consortium):
    with pytest.raises(RunError, match="does not exist"):
        deployment_config(consortium, None, ["data.labels=a,b"], resume=True)


# --------------------------------------------------------------------------- processes

@pytest.fixture
def deployment(tmp_path, tiny_backbone):
    """A consortium of three banks with their data filled in; every process stopped at the end."""
    processes = Processes(tmp_path)
    consortium = make_consortium(tmp_path)
    for entry, data in zip(consortium.sites, site_data(tmp_path, len(consortium.sites))):
        fill_site(consortium, entry, data)
    yield processes, consortium, tiny_backbone
    processes.stop_all()
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(consortium.folder) in " ".join(p.info["cmdline"] or [])]
    assert not leftovers, f"processes left running: {[p.info['cmdline'] for p in leftovers]}"


def _start_sites(processes, consortium):
    entries = [processes.start(s.name, finfed_command("deploy", "site", str(consortium.site_dir(s.name))))
               for s in consortium.sites]
    for entry in entries:
        wait_for(lambda entry=entry: "SuperNode ID:" in entry.text(), 120, f"{entry.name} to connect", entry)
    return entries


def _check_site_records(consortium, site_names, rounds) -> None:
    """Each site's own ledger and audit log hold its rounds, at the site."""
    for name in site_names:
        folder = consortium.site_dir(name)
        entries = PrivacyLedger(folder / "privacy-ledger.json").entries
        assert {e.round for e in entries} >= set(rounds), name
        assert max(e.epsilon_after for e in entries) <= SITE_BUDGET
        audit = audit_entries(folder / "audit.jsonl")
        trained = {e["round"] for e in audit if e["message_type"] == "train" and not e["has_error"]}
        assert trained >= set(rounds), name
        epsilons = [e["epsilon"] for e in audit if e.get("epsilon") is not None]
        assert epsilons and max(epsilons) <= SITE_BUDGET
        assert all("data-path" not in e["node_config"] for e in audit)


def _text_under(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_e2e_three_banks_tls_node_auth_dp_secure_aggregation_and_a_coordinator_restart(deployment):
    """Three banks with TLS, node authentication, DP and SecAgg+; the coordinator goes down after round 1,
    comes back, and the run resumes from its checkpoint. One deployment for both (each alone took 2 to 3
    minutes beside another test): every round is applied exactly once with all three banks."""
    processes, consortium, backbone = deployment
    started = time.time()
    coordinator = start_coordinator(processes, consortium)
    _start_sites(processes, consortium)
    assert len(online_nodes(consortium)) == 3
    # The sites' evaluation (one more process per site and round: a quarter of this test's time) is left to the
    # faults-and-canaries deployment below; this one is about TLS, node auth, DP, SecAgg+ and the restart.
    settings = {"federation.fraction_evaluate": 0}
    if SECURE_AGGREGATION:
        settings["federation.secure_aggregation"] = "true"
    overrides = run_overrides(backbone, "e2e", **settings)
    first = start_run(processes, consortium, overrides, name="run-first")
    run_dir = consortium.runs_dir / "e2e"
    if RESUME:
        checkpoint = run_dir / "checkpoint" / "checkpoint.json"
        wait_for(lambda: checkpoint.exists() and json.loads(checkpoint.read_text())["round"] >= 1, 600,
                 "the round-1 checkpoint", first)
        processes.stop(coordinator)  # the coordinator goes down mid-run
        wait_exit(first, 120)
        start_coordinator(processes, consortium, name="coordinator-restarted")
        wait_for(lambda: len(online_nodes(consortium)) == 3, 180, "the sites to reconnect")
        second = start_run(processes, consortium, overrides, name="run-resumed", extra=("--resume",))
        assert wait_exit(second, 900) == 0, second.text()[-4000:]
        assert read_status(run_dir).get("resumed_from_rounds") == [1]
    else:
        assert wait_exit(first, 900) == 0, first.text()[-4000:]
    assert read_status(run_dir)["state"] == "complete"
    records = metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]  # every round applied exactly once
    for record in records[1:]:
        assert sorted(s["site"] for s in record["sites"]) == [0, 1, 2]
        assert all(0 < s["epsilon"] <= 8.0 for s in record["sites"])
    _check_site_records(consortium, ["bank-a", "bank-b", "bank-c"], [1, 2])
    # The coordinator's files (state, logs, run outputs) never hold a site's data path or ledger path.
    coordinator_text = _text_under(consortium.coordinator_dir)
    for entry in consortium.sites:
        site = load_site_config(consortium.site_dir(entry.name))
        assert str(site.data_path) not in coordinator_text and str(site.ledger_path) not in coordinator_text
    if SECURE_AGGREGATION:
        # The run that ran to its end logged it (the first one's log may stop before its round-1 line arrives:
        # the coordinator goes down as soon as round 1's checkpoint exists).
        finished_log = run_dir / ("flower-resumed.log" if RESUME else "flower.log")
        assert "Secure aggregation completed" in finished_log.read_text(encoding="utf-8")
    print(f"\n[timing] e2e deployment (3 sites, 2 rounds, SecAgg+ {SECURE_AGGREGATION}, a coordinator restart): "
          f"{time.time() - started:.0f}s")


CANARY = "ZQXCANARY4409"  # planted in three banks' data: a record's text, a folder name, a label


def _kill_hard(entry) -> None:
    """A crash: SIGKILL to the site's process and everything below it, no goodbye to the coordinator."""
    tree = [entry.process.pid, *(c.pid for c in psutil.Process(entry.process.pid).children(recursive=True))]
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    entry.process.wait(timeout=30)


@pytest.mark.slow
def test_a_killed_site_does_not_stop_the_run_and_canaries_in_the_banks_data_never_reach_the_coordinator(
        tmp_path, tiny_backbone):
    """One deployment of four banks, for two checks that each need a run with sites failing mid-way (one
    deployment instead of two: each costs about two minutes).

    Faults: bank-d is killed (SIGKILL, no goodbye) after round 1, and the run completes with the others.
    Canaries: bank-a trains on a record holding the canary; bank-b's data file (in a folder named with the
    canary) disappears after round 1; bank-c has a label outside the run's list, holding the canary. Nothing
    of the canary reaches the coordinator's folder (runs, flower.log, SuperLink database, checkpoints) or its
    console; the banks' own logs hold the details."""
    started = time.time()
    processes, consortium = Processes(tmp_path), make_consortium(tmp_path, num_sites=4)
    try:
        data = site_data(tmp_path, 4)
        frame = pd.read_csv(data[0])
        frame.loc[:, "text"] = frame["text"] + f" Client {CANARY}."
        frame.to_csv(data[0], index=False)
        hidden = tmp_path / f"bank-b-{CANARY}" / "data.csv"
        hidden.parent.mkdir()
        data[1].rename(hidden)
        data[1] = hidden
        frame = pd.read_csv(data[2])
        frame.loc[5, "label"] = f"label-{CANARY}"
        frame.to_csv(data[2], index=False)
        for entry, path in zip(consortium.sites, data):
            fill_site(consortium, entry, path)
        start_coordinator(processes, consortium)
        sites = _start_sites(processes, consortium)
        run = start_run(processes, consortium, run_overrides(tiny_backbone, "canary", **{"federation.min_sites": 1}))
        run_dir = consortium.runs_dir / "canary"
        wait_for(lambda: any(r["round"] == 1 for r in metrics(run_dir)), 600, "round 1", run)
        hidden.unlink()
        _kill_hard(sites[3])  # bank-d, site id 3
        assert wait_exit(run, 900) == 0, run.text()[-4000:]
        records, status = metrics(run_dir), read_status(run_dir)
        assert status["state"] == "complete" and records[-1]["round"] == 2
        assert sorted(s["site"] for s in records[1]["sites"]) == [0, 1, 3]
        assert [s["site"] for s in records[2]["sites"]] == [0]
        # The killed site: recorded, and the others' own records hold their rounds.
        recorded = json.dumps(records[2].get("failures", [])) + json.dumps(status.get("site_failures", {}))
        assert "site 3" in recorded or "bank-d" in recorded, (records[2], status)
        _check_site_records(consortium, ["bank-a"], [1, 2])
        _check_site_records(consortium, ["bank-b", "bank-d"], [1])
        # The sites evaluated too (the end-to-end test above leaves evaluation to this one).
        audit = audit_entries(consortium.site_dir("bank-a") / "audit.jsonl")
        assert any(e["message_type"] == "evaluate" and not e["has_error"] for e in audit)
        # The canaries.
        failures = " | ".join(records[2]["failures"])
        assert "data error: the data file does not exist" in failures, failures
        assert "data error: a label is not in the run's label list (row 6)" in failures, failures
        assert all(keys.TRAIN_LOSS not in s for r in records[1:] for s in r["sites"])  # no bank opted in
        coordinator = _text_under(consortium.coordinator_dir) + run.text()
        assert CANARY not in coordinator
        sites_logs = {entry.name: (consortium.site_dir(entry.name) / "site.log").read_text()
                      for entry in consortium.sites[:3]}
        assert str(hidden) in sites_logs["bank-b"] and f"label-{CANARY}" in sites_logs["bank-c"]
    finally:
        processes.stop_all()
    print(f"\n[timing] deployment faults and canaries: {time.time() - started:.0f}s")


@pytest.mark.slow
def test_sites_failing_the_coordinators_checks_are_refused(deployment, tmp_path):
    """One coordinator for the four refusals (each its own coordinator cost 17 to 30 s): a site asked to
    connect without TLS, a SuperNode speaking plain HTTP, a site trusting another CA, an unregistered key."""
    processes, consortium, _ = deployment
    coordinator = start_coordinator(processes, consortium)
    site = consortium.site_dir("bank-a")
    original = (site / "site.toml").read_text(encoding="utf-8")

    # finfed has no way to turn TLS off ...
    _edit(site, "[coordinator]\n", "[coordinator]\ninsecure = true\n")
    refused = processes.start("bank-a-insecure", finfed_command("deploy", "site", str(site)))
    assert wait_exit(refused, 60) == 2
    assert "finfed never connects a site without TLS" in refused.text()
    (site / "site.toml").write_text(original, encoding="utf-8")
    # ... and a SuperNode that speaks plain HTTP to the coordinator gets no answer.
    plain = processes.start("plain-supernode", [
        str(Path(sys.executable).parent / "flower-supernode"), "--insecure", "--superlink", consortium.address,
        "--max-retries", "2", "--port", str(load_site_config(consortium.site_dir("bank-b")).runtime_port)],
        # it starts flower-superexec from PATH: this environment's, as finfed's own launches do (deploy/launch.py)
        env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert wait_exit(plain, 120) != 0
    assert "Failed to initialize the connection to the SuperLink" in plain.text()

    # A site trusting another CA than the consortium's.
    rogue, _ = pki.create_ca(tmp_path / "rogue", "some other CA")
    _edit(site, 'root_certificates = "ca.pem"', f"root_certificates = {json.dumps(str(rogue))}")
    refused = processes.start("bank-a-wrong-ca", finfed_command("deploy", "site", str(site)))
    assert wait_exit(refused, 60) == 2
    assert "presented a TLS certificate that" in refused.text() and "does not trust" in refused.text()
    (site / "site.toml").write_text(original, encoding="utf-8")

    # A key pair the coordinator was never asked to register.
    add_site(consortium, "bank-x")
    consortium = load_consortium(consortium.folder)
    fill_site(consortium, consortium.sites[-1], load_site_config(consortium.site_dir("bank-a")).data_path)
    intruder = processes.start("bank-x", finfed_command("deploy", "site", str(consortium.site_dir("bank-x"))))
    assert wait_exit(intruder, 120) == 2
    assert "refused this site: its public key" in intruder.text() and "is not registered" in intruder.text()
    wait_for(lambda: "No SuperNode found with the given public key" in consortium.log_file.read_text(), 30,
             "the coordinator to log the refusal", coordinator)
    assert len(nodes(consortium)) == 3 and not online_nodes(consortium)


def test_a_site_reads_its_own_column_names_from_its_node_config(tiny_config, tmp_path):
    from finfed.site.rounds import site_context

    original = site_data(tmp_path, 3, rows_per_site=40)[1]
    renamed = tmp_path / "renamed.csv"
    pd.read_csv(original).rename(columns={"text": "sentence", "label": "sentiment"}).to_csv(renamed, index=False)
    config = tiny_config("data.labels=negative,neutral,positive")
    node_config = {"site-id": 1, "data-path": str(renamed), "text-column": "sentence", "label-column": "sentiment",
                   "budget-epsilon": SITE_BUDGET}
    site = site_context(config, node_config)
    assert site.data.site_id == 1 and len(site.train_examples) + len(site.validation_examples) == 40
    assert site.policy.budget_epsilon == SITE_BUDGET
