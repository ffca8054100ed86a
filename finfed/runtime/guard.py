"""A watchdog that makes a local run's engine die with the process that started it.

``prctl(PR_SET_PDEATHSIG)`` would reach only a direct child, while Flower's SuperExec
and Ray's processes live in sessions of their own. So a separate small process (in
its own session too, so a signal to the owner's process group spares it) polls the
owner; when the owner is gone, for example killed with SIGKILL, it stops every
process started with the run's ``FLWR_HOME`` and removes that folder. When the run
ends normally the owner removes the folder itself and the guard exits.

Run as ``python -m finfed.runtime.guard HOME``; HOME's ``owner.json`` names the owner.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from finfed.runtime.engine_home import owner_alive, stop_engine

POLL_S = 0.25
# The owner is gone and nobody waits for the run's results: a short SIGTERM grace, then SIGKILL.
GRACE_S = 2.0


def start_guard(home: Path) -> subprocess.Popen:
    """Start the guard of ``home`` (made by ``make_engine_home`` in this process)."""
    # Not the run's environment: the guard must not carry FLWR_HOME=home, or it would stop itself.
    env = {key: value for key, value in os.environ.items() if key != "FLWR_HOME"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_source_root(), env.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "finfed.runtime.guard", str(home)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _source_root() -> str:
    """The folder that holds this ``finfed``, so the guard imports the same code as its owner."""
    return str(Path(__file__).resolve().parents[2])


def watch(home: Path, poll: float = POLL_S) -> int:
    """Wait while the owner runs; then stop the run's processes and remove ``home``."""
    while home.is_dir():
        if owner_alive(home) is False:
            stopped = stop_engine(home, grace=GRACE_S)
            shutil.rmtree(home, ignore_errors=True)
            return 0 if stopped else 1
        time.sleep(poll)
    return 0  # the owner finished the run and removed its home


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        logging.getLogger(__name__).error("usage: python -m finfed.runtime.guard HOME")
        return 2
    return watch(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
