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
from finfed.config import ExperimentConfig, load_config, save_config
from finfed.errors import RunError

STATUS = "status.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
PRIVACY = "privacy.json"
MODEL = "model"
REPORT = "report.md"
MODEL_INFO = "finfed_model.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what PEFT's save_pretrained writes in MODEL/
CHECKPOINT = "checkpoint"
RUN_LEDGERS = "ledgers"  # `finfed simulate` keeps sites' ledgers here when `privacy.ledger_dir` is unset
RUN_SITES = "sites"  # simulated sites' own folders (finfed/site/node_settings.py `site_folder`)
RUNNING, COMPLETE, INTERRUPTED, FAILED, BUDGET_EXHAUSTED = (
    "running", "complete", "interrupted", "failed", "budget-exhausted")


def check_run_dir(run_dir: Path, *, overwrite: bool = False, resume: str = "") -> None:
    """Refuse an existing, non-empty run directory unless ``overwrite``, saying what it holds and what to do
    (``resume``: the command that continues an interrupted run there).

    Reads only ``status.json``: cheap, so `finfed simulate` calls it before any other check.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} exists and is not a folder; choose another `name` (--set name=...)")
    if overwrite or not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    try:
        status = read_status(run_dir)
    except RunError:
        status = {"state": "unreadable"}
    state = status.get("state")
    replace = "pass --overwrite to replace its results (its other files are kept)"
    rename = "choose another `name` (--set name=...)"
    if state == FAILED:
        error = str(status.get("error") or "no reason recorded").splitlines()[0][:160]
        raise RunError(f"run directory {run_dir} holds a failed run ({error}); to rerun it there, {replace}; "
                       f"or {rename}")
    if state == INTERRUPTED and status.get("last_completed_round"):
        raise RunError(f"run directory {run_dir} holds a run interrupted after round "
                       f"{status['last_completed_round']}; continue it with "
                       f"{f'`{resume}`' if resume else '--resume'}, {rename}, or {replace}")
    if state == RUNNING:
        raise RunError(f"run directory {run_dir} holds a run that is running or was killed (status: running); "
                       f"{rename}, or, if no run is using it, {replace}")
    what = {COMPLETE: "a completed run", BUDGET_EXHAUSTED: "a finished run", INTERRUPTED: "an interrupted run",
            "missing": "files but no finfed run status"}.get(state, "a run whose status is unreadable")
    raise RunError(f"run directory {run_dir} already exists and holds {what}; {rename} or {replace}")


def prepare_run_dir(run_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse to write into an existing run unless asked: earlier results are never lost silently."""
    check_run_dir(run_dir, overwrite=overwrite)
    if run_dir.exists() and any(run_dir.iterdir()):
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
    return read_json_object(path, "the run's status")


def run_recorded_its_end(run_dir: Path, since: float) -> bool:
    """The ServerApp has recorded, after ``since``, that the rounds ended normally (``complete`` or
    ``budget-exhausted``): it writes that status after the model, reports and privacy summary, so nothing
    the run leaves behind is still to come. A failure or an interruption is not counted: the engine's own
    account of those is wanted."""
    try:
        status = read_status(run_dir)
    except RunError:
        return False  # being replaced as it is read: asked again at the next line
    return status.get("state") in (COMPLETE, BUDGET_EXHAUSTED) and float(status.get("updated", 0)) >= since


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A run file holding one JSON object; anything else (truncated, edited, not UTF-8) is a one-line RunError."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path} is corrupt ({what}; {_reason(exc)}); restore it or rerun the run") from None
    if not isinstance(value, dict):
        raise RunError(f"{path} is corrupt ({what}): expected a JSON object, found {type(value).__name__}")
    return value


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return f"not readable: {getattr(exc, 'strerror', None) or exc}"


def read_model_info(run_dir: Path) -> dict[str, Any]:
    """``model/finfed_model.json``: what finfed needs to rebuild the run's model (task, labels, backbone)."""
    path = Path(run_dir) / MODEL / MODEL_INFO
    if not path.is_file():
        raise RunError(f"{path} is missing: the run's model folder is incomplete (it names the model's task, "
                       "labels and backbone); restore the folder or rerun the run")
    info = read_json_object(path, "the model's description")
    missing = [key for key in ("labels", "max_length") if key not in info]
    if missing:
        raise RunError(f"{path} is corrupt (the model's description): no {', '.join(missing)}")
    return info


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


def check_run_model(run_dir: str | Path) -> tuple[ExperimentConfig, dict[str, Any]]:
    """(settings, model description) of a completed run with a saved model: every cheap check
    (status, settings, ``finfed_model.json``, the adapter file) before any model is built."""
    run_dir = Path(run_dir)
    require_model(run_dir)
    config = load_config(run_dir / CONFIG)
    info = read_model_info(run_dir)
    adapter = run_dir / MODEL / ADAPTER_WEIGHTS
    if not adapter.is_file():
        raise RunError(f"{adapter} is missing: the run's model folder is incomplete; restore it or rerun the run")
    return config, info


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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is corrupt (the run's rounds; {_reason(exc)}); restore it or rerun the run") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}: line {number} is corrupt (not valid JSON: {exc.msg}); each line is one "
                           "round's record; restore the file or rerun the run") from None
        if not isinstance(record, dict):
            raise RunError(f"{path}: line {number} is corrupt: expected a JSON object (one round's record)")
        records.append(record)
    return records


def read_privacy(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / PRIVACY
    return read_json_object(path, "the run's privacy record") if path.is_file() else {}
