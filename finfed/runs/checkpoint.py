"""Coordinator checkpoints: the state after each completed round, so a stopped run can resume.

In the run directory:

- ``checkpoint/arrays-round-<k>.npz``: the global trainable tensors after round k;
- ``checkpoint/checkpoint.json``: the commit point: round k, the run's settings, the coordinator's
  records so far (history, per-site replies, failures, refusals), strategy state, and the arrays
  file with its SHA-256.

Both files go through a temporary file, fsync and rename, the JSON last: a crash at any moment
leaves either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finfed.atomic import write_bytes_atomic
from finfed.errors import RunError
from finfed.runs.outputs import CHECKPOINT as CHECKPOINT_DIR
from finfed.runs.outputs import read_status

STATE_FILE = "checkpoint.json"
FORMAT_VERSION = 1
# Settings that may differ between the interrupted run and its resumption.
# Keys that may differ when a run resumes: where it resumes from, which node id each site has now.
RESUME_ONLY_KEYS = frozenset({"resume_from", "federation.site_nodes"})


@dataclass(frozen=True)
class Checkpoint:
    round: int
    total_rounds: int
    run_config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    run_state: dict[str, Any] = field(default_factory=dict)
    strategy_state: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / STATE_FILE


def _arrays_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    # Positional keys: parameter names need not be valid zip member names; the JSON keeps the names.
    np.savez(buffer, **{f"a{i}": np.asarray(value) for i, value in enumerate(arrays.values())})
    return buffer.getvalue()


def write_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically; older arrays files are removed once the new one is committed."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    arrays_name = f"arrays-round-{checkpoint.round}.npz"
    payload = _arrays_bytes(checkpoint.arrays)
    write_bytes_atomic(folder / arrays_name, payload)
    state = {"format": FORMAT_VERSION, "round": checkpoint.round, "total_rounds": checkpoint.total_rounds,
             "arrays_file": arrays_name, "arrays_sha256": hashlib.sha256(payload).hexdigest(),
             "tensor_names": list(checkpoint.arrays), "run_config": checkpoint.run_config,
             "run_state": checkpoint.run_state, "strategy_state": checkpoint.strategy_state}
    write_bytes_atomic(folder / STATE_FILE, json.dumps(state, default=float).encode("utf-8"))
    for old in folder.glob("arrays-round-*.npz"):
        if old.name != arrays_name:
            old.unlink(missing_ok=True)
    return folder / STATE_FILE


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read and verify a run's checkpoint; anything missing or inconsistent is a clear error."""
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise RunError(f"run directory {run_dir} has no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}): the run "
                       "stopped before completing round 1, so there is nothing to resume; start it again "
                       "(finfed simulate ... --overwrite)")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}")
        arrays = _read_arrays(path.parent / state["arrays_file"], state["arrays_sha256"], state["tensor_names"])
        return Checkpoint(round=int(state["round"]), total_rounds=int(state["total_rounds"]),
                          run_config=dict(state["run_config"]), arrays=arrays,
                          run_state=dict(state["run_state"]), strategy_state=dict(state["strategy_state"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"checkpoint {path} is unreadable ({exc}); the run cannot be resumed from it") from exc


def last_checkpoint_round(run_dir: str | Path) -> int:
    """The round of the run's checkpoint (its last completed round); 0 if it has none yet."""
    try:
        return int(json.loads(checkpoint_path(run_dir).read_text(encoding="utf-8"))["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _read_arrays(path: Path, sha256: str, names: list[str]) -> dict[str, np.ndarray]:
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise ValueError(f"{path.name} does not match the SHA-256 recorded in {STATE_FILE}")
    with np.load(io.BytesIO(payload)) as stored:
        if len(stored.files) != len(names):
            raise ValueError(f"{path.name} holds {len(stored.files)} tensors, {len(names)} named")
        return {name: stored[f"a{i}"] for i, name in enumerate(names)}


def settings_differences(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Run-config keys whose values differ (resume-only keys aside), as readable lines."""
    keys = (set(saved) | set(given)) - RESUME_ONLY_KEYS
    return [f"`{key}`: interrupted run {saved.get(key, '(unset)')!r}, now {given.get(key, '(unset)')!r}"
            for key in sorted(keys) if saved.get(key) != given.get(key)]


def resume_point(run_dir: str | Path, run_config: Mapping[str, Any] | None) -> Checkpoint:
    """The checkpoint to continue from, after refusing targets that cannot be resumed honestly.

    ``run_config``: the settings the resumed run was started with, which must be the
    interrupted run's; None when they are taken from the checkpoint itself.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"cannot resume: run directory {run_dir} does not exist")
    state = read_status(run_dir).get("state")
    if state == "complete":
        raise RunError(f"run directory {run_dir} holds a complete run; there is nothing to resume")
    if state == "budget-exhausted":
        raise RunError(f"run directory {run_dir} holds a run that ended because every site refused to train "
                       "(privacy budget reached); resuming it cannot train further")
    checkpoint = read_checkpoint(run_dir)
    saved_dir = Path(str(checkpoint.run_config.get("run_dir", "")) or run_dir)
    if saved_dir.resolve() != run_dir.resolve():
        raise RunError(f"checkpoint in {run_dir} belongs to run directory {saved_dir}; resume the run where it "
                       "was written (run directories cannot be moved mid-run)")
    if run_config is None:
        return checkpoint
    differences = settings_differences(checkpoint.run_config, run_config)
    if differences:
        raise RunError(f"cannot resume {run_dir} with different settings (sites would train and account "
                       "differently from the rounds already done): " + "; ".join(differences))
    return checkpoint
