"""The console: the ServerApp's record lines, the one parser, and `finfed --quiet/--verbose` (no simulation)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest

from finfed.cli.main import _parser, main
from finfed.cli.run_console import show_engine_line
from finfed.config import from_run_config
from finfed.runs.outputs import RunOutputs
from finfed.runtime.app_log import (
    RECORD_PREFIX,
    configure_app_logging,
    parse_app_record,
)
from finfed.runtime.local_engine import FlowerRunResult
from finfed.site.log_mod import routed_to_site_log

# What a ServerApp process logs, written by the real handler in a process of its own.
_SERVER_APP = """
import logging
from finfed.privacy.disclosure import SITE_ONLY
from finfed.runtime.app_log import configure_app_logging
configure_app_logging()
log = logging.getLogger("finfed.coordinator.run")
print("INFO :      a line of Flower's own", flush=True)
log.info("round 1: accuracy=0.5000, max site epsilon=7.998")
log.debug("a debug line")
log.warning("run r: reproducible DP randomness")
log.info("quoted %s", "\\"text\\" é ✓\\nsecond line")
log.info("the record 'Client CANARY-7' at row 3", extra=SITE_ONLY)
try:
    raise ValueError("boom")
except ValueError:
    log.exception("central evaluation failed")
"""


def server_app_lines(level: str = "") -> list[str]:
    env = {**os.environ, "FINFED_LOG_LEVEL": level}
    done = subprocess.run([sys.executable, "-c", _SERVER_APP], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_server_apps_records_cross_as_lines_only_the_parser_reads():
    lines = server_app_lines()
    records = [parse_app_record(line) for line in lines]
    assert records[0] is None and lines[0].startswith("INFO :")  # Flower's line is not a record
    parsed = [r for r in records if r is not None]
    assert [(r.name, r.levelname, r.levelno) for r in parsed[:2]] == [
        ("finfed.coordinator.run", "INFO", logging.INFO), ("finfed.coordinator.run", "WARNING", logging.WARNING)]
    assert parsed[0].getMessage() == "round 1: accuracy=0.5000, max site epsilon=7.998"
    assert parsed[2].getMessage() == 'quoted "text" é ✓\nsecond line'  # one line on the wire, whole again here
    assert parsed[3].levelname == "ERROR" and "ValueError: boom" in parsed[3].getMessage()
    assert len(parsed) == 4  # debug below the default level; the site-only record never written
    assert "CANARY" not in "\n".join(lines)
    debug = [parse_app_record(line) for line in server_app_lines("DEBUG")]
    assert "a debug line" in [r.getMessage() for r in debug if r is not None]  # `finfed --verbose`'s level


@pytest.mark.parametrize("line", [
    "[finfed] round 1: accuracy=0.5",  # the old printed form: no longer a record
    "\x1b[36m(ClientAppActor pid=10019)\x1b[0m " + RECORD_PREFIX
    + '{"logger": "finfed.x", "level": "INFO", "message": "m"}',
    " " + RECORD_PREFIX + '{"logger": "finfed.x", "level": "INFO", "message": "m"}',
    RECORD_PREFIX + "{not json",
    RECORD_PREFIX + '["finfed.x", "INFO", "m"]',
    RECORD_PREFIX + '{"logger": "flwr", "level": "INFO", "message": "m"}',
    RECORD_PREFIX + '{"logger": "finfedish", "level": "INFO", "message": "m"}',
    RECORD_PREFIX + '{"logger": "finfed.x", "level": "LOUD", "message": "m"}',
    RECORD_PREFIX + '{"logger": "finfed.x", "level": "INFO", "message": 3}',
    "",
])
def test_anything_else_is_not_a_record(line):
    assert parse_app_record(line) is None


def test_a_site_handling_a_message_in_the_servers_process_logs_only_to_its_own_log(tmp_path, capfd):
    configure_app_logging()  # undone after the test (tests/conftest.py)
    log = logging.getLogger("finfed.site.guard")
    with routed_to_site_log(tmp_path / "site"):
        log.info("step 1/4 loss 0.5 of a site")
    log.info("round 1: coordinator")
    out = capfd.readouterr().out
    assert "step 1/4" not in out and "step 1/4" in (tmp_path / "site" / "site.log").read_text()
    assert parse_app_record(out.splitlines()[-1]).getMessage() == "round 1: coordinator"


@pytest.fixture
def fake_engine(tiny_config, monkeypatch):
    """`finfed simulate` with the engine replaced: its stream is the lines a real ServerApp process wrote."""
    lines = server_app_lines("DEBUG")

    def run_simulation(run_config, *, on_line, log_path, **_):
        outputs = RunOutputs(from_run_config(run_config))
        outputs.start()
        for line in ["\x1b[36m(ClientAppActor pid=7)\x1b[0m a Ray worker's warning", *lines,
                     "ERROR :     ServerApp thread raised an Exception"]:
            on_line(line)
        outputs.set_status("complete")
        return FlowerRunResult(run_id="1", status="finished:completed", details="", log_path=log_path)

    monkeypatch.setattr("finfed.runtime.local_engine.run_simulation", run_simulation)
    config = tiny_config("privacy.membership_audit=false")
    return ["simulate", *[arg for item in (f"model.backbone={config.model.backbone}", f"run_dir={config.run_dir}",
                                           "data.synthetic_size=400", "federation.num_sites=2")
                          for arg in ("--set", item)]]


def test_the_default_console_shows_progress_not_flowers_lines(fake_engine, capsys):
    assert main(fake_engine) == 0
    out, err = capsys.readouterr()
    assert "[finfed] site 0: " in err and "[finfed] round 1: accuracy=0.5000, max site epsilon=7.998\n" in err
    assert "[finfed] WARNING: run r: reproducible DP randomness" in err
    assert "ERROR :     ServerApp thread raised an Exception" in err  # Flower's error, as Flower wrote it
    assert "a line of Flower's own" not in err and "Ray worker" not in err and "a debug line" not in err
    assert "Run complete" in out and "[finfed]" not in out  # the result on stdout, progress on stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_shows_warnings_errors_and_the_result(fake_engine, capsys, where):
    argv = ["--quiet", *fake_engine] if where == "before" else [*fake_engine, "-q"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "[finfed] site 0" not in err and "round 1:" not in err
    assert "[finfed] WARNING: run r" in err and "[finfed] ERROR: central evaluation failed" in err
    assert "ServerApp thread raised an Exception" in err
    assert "Run complete" in out


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_flowers_lines_and_debug(fake_engine, capsys, where):
    argv = ["-v", *fake_engine] if where == "before" else [*fake_engine, "--verbose"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "INFO :      a line of Flower's own" in err and "a Ray worker's warning" in err
    assert "[finfed] a debug line" in err and "[finfed] round 1:" in err


def test_the_console_is_undone_when_the_command_returns(fake_engine, capsys):
    finfed = logging.getLogger("finfed")
    before = finfed.handlers[:], finfed.level, finfed.propagate
    main(["--verbose", *fake_engine])
    assert (finfed.handlers, finfed.level, finfed.propagate) == before
    assert "FINFED_LOG_LEVEL" not in os.environ


def test_console_options_parse_before_and_after_any_subcommand(capsys):
    parser = _parser()
    assert parser.parse_args(["-q", "deploy", "run", "c"]).quiet
    assert parser.parse_args(["deploy", "run", "c", "--verbose"]).verbose
    assert parser.parse_args(["ledger", "new", "l", "--reason", "r", "-v"]).verbose
    assert not hasattr(parser.parse_args(["report", "r"]), "verbose")
    with pytest.raises(SystemExit) as exit_:
        main(["-q", "report", "r", "-v"])
    assert exit_.value.code == 2 and "choose one" in capsys.readouterr().err


def test_report_quiet_still_prints_its_result(tmp_path, capsys):
    """A command whose output is its result: --quiet leaves it alone."""
    assert main(["--quiet", "report"]) == 2  # nothing to report on: the usage line is the result
    assert "give a RUN_DIR" in capsys.readouterr().err


def test_show_drops_a_record_below_the_level(capsys):
    from finfed.cli.console import console_logging
    line = RECORD_PREFIX + json.dumps({"logger": "finfed.coordinator.run", "level": "INFO", "message": "round 2"})
    with console_logging(logging.WARNING):
        show_engine_line(line)
    with console_logging(logging.INFO):
        show_engine_line(line)
    assert capsys.readouterr().err == "[finfed] round 2\n"


def test_libraries_warnings_are_shown_with_verbose_only():
    from finfed.cli.console import console_logging
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with console_logging(logging.INFO):
            warnings.warn("opacus says", UserWarning, stacklevel=2)
        with console_logging(logging.DEBUG):
            warnings.warn("torch says", UserWarning, stacklevel=2)
    assert [str(w.message) for w in seen] == ["torch says"]
