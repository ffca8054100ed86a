"""The run directory: what a finished federated run leaves behind.

``status.json`` says ``running`` until the run ends, then what happened, so a
half-written directory never looks valid:

- ``complete``: every round ran; the model is saved.
- ``budget-exhausted``: every site refused a round (its privacy budget reached), so the run
  ended early. ``trained_rounds`` says how many rounds trained; with none, no model is saved.
  With some, the model is the one after round ``model_round``.
- ``interrupted``: stopped on request (``RUN/.stop``, a signal); ``last_completed_round`` is the
  round of the checkpoint a resumed run continues from (0: nothing to resume).
- ``failed``: with the reason (``error``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from finfed.atomic import write_json_atomic, write_text_atomic
from finfed.config import ExperimentConfig, save_config
from finfed.errors import RunError

STATUS = "status.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
PRIVACY = "privacy.json"
MODEL = "model"
REPORT = "report.md"
MODEL_INFO = "finfed_model.json"
CHECKPOINT = "checkpoint"
RUN_LEDGERS = "ledgers"  # `finfed simulate` keeps sites' ledgers here when `privacy.ledger_dir` is unset
RUN_SITES = "sites"  # simulated sites' own folders (finfed/site/node_settings.py `site_folder`)


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse to write into an existing run unless asked: earlier results are never lost silently."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunError(f"run directory {run_dir} already exists; choose another `name` "
                           "(--set name=...) or pass --overwrite")
        for name in (STATUS, CONFIG, METRICS, PRIVACY, REPORT, "report.json", "report.html", "report.pdf",
                     "flower.log"):
            (run_dir / name).unlink(missing_ok=True)
        # The run's own checkpoint, and the ledgers and site folders (ledger heads, site logs) that
        # `finfed simulate` keeps in it, belong to the run replaced.
        for folder in (MODEL, CHECKPOINT, RUN_LEDGERS, RUN_SITES):
            _remove_tree(run_dir / folder)
    run_dir.mkdir(parents=True, exist_ok=True)


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove_tree(child) if child.is_dir() else child.unlink()
        path.rmdir()


def read_status(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS
    if not path.is_file():
        return {"state": "missing"}
    return json.loads(path.read_text(encoding="utf-8"))


RUNNING, COMPLETE, INTERRUPTED, FAILED, BUDGET_EXHAUSTED = (
    "running", "complete", "interrupted", "failed", "budget-exhausted")


def require_finished(run_dir: Path) -> dict[str, Any]:
    """The status of a run that ended by itself (complete, or ended by the sites' budgets); others refused."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    state = status.get("state")
    if state in (COMPLETE, BUDGET_EXHAUSTED):
        return status
    if state == INTERRUPTED:
        raise RunError(f"run directory {run_dir} holds a run interrupted after round "
                       f"{status.get('last_completed_round', 0)}; resume it first "
                       f"(finfed simulate --resume {run_dir})")
    raise RunError(f"run directory {run_dir} is not a completed run (status: {state}"
                   f"{'; ' + status['error'] if status.get('error') else ''})")


def require_model(run_dir: Path) -> dict[str, Any]:
    """The status of a finished run that saved a trained model; a run whose sites never trained is refused."""
    status = require_finished(run_dir)
    if status["state"] == BUDGET_EXHAUSTED and not status.get("trained_rounds"):
        raise RunError(f"run directory {run_dir} has no model: every site refused round "
                       f"{status.get('budget_exhausted_at_round')} because it would have exceeded its privacy "
                       "budget, so no round trained (see `finfed report`)")
    if not (Path(run_dir) / MODEL).is_dir():
        raise RunError(f"run directory {run_dir} has no saved model ({MODEL}/)")
    return status


def mark_interrupted(run_dir: Path, last_completed_round: int, **extra: Any) -> dict[str, Any]:
    """Record ``interrupted`` for a run the ServerApp could not record itself (the CLI stopped it).

    Only a run still ``running`` (or never started) is changed: a state the ServerApp wrote is kept.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") not in (RUNNING, "missing") or not run_dir.is_dir():
        return status
    now = time.time()
    started = status.get("started", now)
    status = {**{k: v for k, v in status.items() if k != "error"}, "state": INTERRUPTED,
              "last_completed_round": last_completed_round, "updated": now,
              "elapsed_s": round(now - started, 1), "started": started, **extra}
    write_json_atomic(run_dir / STATUS, status)
    return status


class RunOutputs:
    """Writes one run's files as the run progresses."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.run_dir = config.resolved_run_dir
        self.started = time.time()
        #: what `model.device` and `train.precision` resolved to on the coordinator (config.yaml, status, report)
        self.compute: dict[str, str] = {}

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.set_status("running")
        save_config(self.config, self.run_dir / CONFIG)
        if self.compute:
            with open(self.run_dir / CONFIG, "a", encoding="utf-8") as handle:
                handle.write("# resolved when the run started (not settings: a resumed run resolves them again)\n"
                             + "".join(f"#   {key}: {value}\n" for key, value in self.compute.items()))
        (self.run_dir / METRICS).write_text("", encoding="utf-8")

    def resume(self, history: list[dict[str, Any]], started: float, from_round: int) -> None:
        """Continue a stopped run: metrics.jsonl is rewritten from the checkpoint, so no round appears twice."""
        self.started = started
        self.set_status("running", resumed_from_round=from_round)
        self.write_text(METRICS, "".join(json.dumps(record, default=float) + "\n" for record in history))

    def set_status(self, state: str, **extra: Any) -> None:
        payload = {"state": state, "started": self.started, "updated": time.time(),
                   "elapsed_s": round(time.time() - self.started, 1), **extra}
        if self.compute:
            payload.setdefault("compute", dict(self.compute))
        write_json_atomic(self.run_dir / STATUS, payload)

    def append_round(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_privacy(self, privacy: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir / PRIVACY, privacy)

    def write_text(self, name: str, text: str) -> None:
        write_text_atomic(self.run_dir / name, text)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_privacy(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / PRIVACY
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
