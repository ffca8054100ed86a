"""One run at a time per consortium: two runs at once would both spend every site's budget.

``finfed deploy run`` holds an exclusive lock on ``coordinator/run.lock`` for the run's
whole life. The kernel releases it when the process ends, however it ends (SIGKILL
included), so a lock file left behind by a dead run never blocks the next one; the file
only says who holds it (pid, run name, start time) for the refusal message.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from finfed.errors import RunError

LOCK_FILE = "run.lock"


class RunLock:
    """An exclusive, process-lifetime lock on ``folder/run.lock`` (a context manager)."""

    def __init__(self, folder: Path, run_name: str) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.run_name = run_name
        self.descriptor: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(descriptor)
            os.close(descriptor)
            raise RunError(f"another run is in progress on this consortium ({holder}); one run at a time: two "
                           f"runs would both spend the sites' privacy budgets. Wait for it to end or stop it "
                           f"(lock {self.path})") from None
        holder = {"pid": os.getpid(), "run": self.run_name, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode("utf-8"), 0)
        self.descriptor = descriptor

    def release(self) -> None:
        if self.descriptor is None:
            return
        os.ftruncate(self.descriptor, 0)  # no stale holder shown once released
        fcntl.flock(self.descriptor, fcntl.LOCK_UN)
        os.close(self.descriptor)
        self.descriptor = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(descriptor: int) -> str:
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0).decode("utf-8") or "{}")
        return f"run {holder['run']!r}, pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"
