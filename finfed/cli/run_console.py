"""A submitted run's console: relaying the engine's lines, stopping the run on a signal, and its outcome.

`finfed simulate` and `finfed deploy run` share it: both submit a Flower run and wait for it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from finfed.compat import engine_line_is_error, engine_line_text
from finfed.runs.stop import EXIT_INTERRUPTED
from finfed.runtime.app_log import ENGINE, parse_app_record

engine = logging.getLogger(ENGINE)


def show_engine_line(line: str) -> None:
    """One line of `flwr run --stream`: a ServerApp's record becomes this command's own (shown at its
    level); any other line is Flower's, relayed as it is: an error shown, the rest with --verbose."""
    record = parse_app_record(line)
    if record is not None:
        if logging.getLogger(record.name).isEnabledFor(record.levelno):
            logging.getLogger(record.name).handle(record)
        return
    clean = engine_line_text(line)
    engine.log(logging.ERROR if engine_line_is_error(clean) else logging.DEBUG, "%s", clean)


def submit_stoppable(run_dir: Path, submit):
    """Run ``submit()`` (a Flower run of ``run_dir``) so that SIGINT/SIGTERM stop it as one path.

    The signal asks the run to stop (``RUN/.stop``: finfed.runs.stop.SignalStop); if it has not ended
    within a few seconds, KeyboardInterrupt stops every process finfed started. Returns the run's
    result, or None when it had to be stopped that way.
    """
    from finfed.runs.stop import SignalStop, clear_stop

    clear_stop(run_dir)  # an earlier run's (or the interrupted run's) request must not stop this one
    with SignalStop(run_dir) as stop:
        try:
            return submit()
        except KeyboardInterrupt:
            if stop.requested_at is None:
                raise
            return None


def finish_run(run_dir: Path, result, started: float, resume_hint: str = "") -> int:
    """Print the round table and the run's real outcome (Flower's `flwr run` exits 0 even on failure).

    ``result``: None when the run had to be stopped (finfed.runs.stop); then ``interrupted`` is recorded
    here unless the ServerApp recorded it. Exit codes: 0 complete (or ended early by the sites'
    budgets after training), 1 failed or no round trained, 130 interrupted.
    """
    from finfed.reporting.run_report import round_table
    from finfed.runs.checkpoint import last_checkpoint_round
    from finfed.runs.outputs import mark_interrupted, read_metrics, read_status

    if result is None:
        mark_interrupted(run_dir, last_checkpoint_round(run_dir), recorded_by="finfed (the run was stopped)")
    status = read_status(run_dir)
    state = status.get("state")
    print()
    print(round_table(read_metrics(run_dir)))
    if state == "interrupted":
        return _interrupted(run_dir, status, resume_hint or f"finfed simulate --resume {run_dir}")
    if state == "budget-exhausted":
        return _budget_exhausted(run_dir, status, started)
    if state == "complete" and (result is None or result.succeeded):
        print(f"\nRun complete in {time.time() - started:.0f}s: {run_dir}")
        return 0
    reason = status.get("error") or (result.details if result else "") or \
        (f"Flower run status {result.status}" if result else f"run state {state}")
    log = result.log_path if result else run_dir / "flower.log"
    superlink_log = log.with_name("superlink.log")
    also = f" (and the SuperLink's: {superlink_log})" if superlink_log.is_file() else ""
    print(f"\nRun FAILED: {reason}\nFull log: {log}{also}", file=sys.stderr)
    return 1


def _interrupted(run_dir: Path, status: dict, resume_hint: str) -> int:
    completed = int(status.get("last_completed_round") or 0)
    if completed:
        print(f"finfed: interrupted after round {completed}; resume with {resume_hint}", file=sys.stderr)
    else:
        print(f"finfed: interrupted before round 1 completed; nothing to resume: start it again "
              f"(--overwrite replaces {run_dir})", file=sys.stderr)
    return EXIT_INTERRUPTED


def _budget_exhausted(run_dir: Path, status: dict, started: float) -> int:
    refused_at, trained = status.get("budget_exhausted_at_round"), int(status.get("trained_rounds") or 0)
    if not trained:
        print(f"\nRun ended WITHOUT TRAINING: every site refused round {refused_at}, which would have taken it "
              f"past its privacy budget; no model was saved. `finfed report {run_dir}` shows each site's spend.",
              file=sys.stderr)
        return 1
    print(f"\nRun ended early in {time.time() - started:.0f}s: every site refused round {refused_at} (privacy "
          f"budget reached); the model saved is that after round {status.get('model_round')} ({trained} of "
          f"{status.get('rounds')} rounds trained): {run_dir}")
    return 0
