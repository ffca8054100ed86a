"""The private Flower home of one local run: a temporary folder that knows who owns it.

Every process of a local run (SuperLink, SuperExec, the simulation, Ray's processes,
``flwr run``) is started with ``FLWR_HOME`` set to this folder, so the folder also
names the run's processes: ``processes_using`` finds them even after they have been
re-parented. ``owner.json`` records the process that made the folder (pid and start
time, so a reused pid is not taken for it). The start time compared is the kernel's
clock-tick count since boot where there is one (Linux): the wall-clock start time
psutil reports moves whenever the system clock is stepped, and an owner that seemed
to have changed would have its run stopped under it. A folder whose owner is gone and that no
process still uses is stale: the next local run removes it, after stopping any of
the run's processes that outlived both the owner and its guard.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from finfed.runtime.processes import is_running, start_ticks, stop_processes

logger = logging.getLogger(__name__)

PREFIX = "finfed-flwr-"
OWNER_FILE = "owner.json"
HOME_VARIABLE = "FLWR_HOME"
# A folder without an owner file (from a finfed before owners were recorded, or being
# made this instant) is left alone this long, unless a process is seen using it.
UNOWNED_GRACE_S = 600.0


def make_engine_home(root: Path | None = None) -> Path:
    """A new private folder for one run, owned by this process."""
    home = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    me = psutil.Process()
    owner = {"pid": me.pid, "create_time": me.create_time(), "start_ticks": start_ticks(me.pid)}
    (home / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
    return home


def owner_alive(home: Path) -> bool | None:
    """Whether the process that made ``home`` still runs; None when the folder names no owner."""
    try:
        owner = json.loads((home / OWNER_FILE).read_text(encoding="utf-8"))
        process = psutil.Process(int(owner["pid"]))
        ticks = owner.get("start_ticks")
        if ticks is not None and start_ticks(process.pid) is not None:
            same = start_ticks(process.pid) == int(ticks)
        else:
            same = abs(process.create_time() - float(owner["create_time"])) < 0.01
    except (OSError, ValueError, KeyError, TypeError):
        return None
    except psutil.Error:
        return False
    return same and is_running(process)


def processes_using(home: Path) -> list[psutil.Process]:
    """This user's running processes started with ``FLWR_HOME`` set to ``home``."""
    wanted, found = str(home), []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.environ().get(HOME_VARIABLE) == wanted:
                found.append(process)
        except psutil.Error:
            continue  # gone, or another user's
    return [p for p in found if is_running(p)]


def stop_engine(home: Path, grace: float = 5.0, attempts: int = 5) -> bool:
    """Stop every process of the run whose home is ``home``; True when none is left.

    Repeated because a dying process may still start another (Ray restarts workers).
    """
    for _ in range(attempts):
        processes = processes_using(home)
        if not processes:
            return True
        stop_processes(processes, grace=grace)
    return not processes_using(home)


def is_stale(home: Path) -> bool:
    alive = owner_alive(home)
    if alive:
        return False
    if alive is None:
        try:
            young = time.time() - home.stat().st_mtime < UNOWNED_GRACE_S
        except OSError:
            return False
        if young or processes_using(home):
            return False
    return True


def clean_stale_engine_homes(root: Path | None = None) -> list[Path]:
    """Remove the homes of runs whose owner is gone (their leftover processes stopped first).

    A folder whose owner still runs is never touched. Returns the folders removed.
    """
    root = Path(root or tempfile.gettempdir())
    removed = []
    for home in sorted(root.glob(f"{PREFIX}*")):
        try:
            if not home.is_dir() or home.is_symlink() or home.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not is_stale(home):
            continue
        if not stop_engine(home):
            logger.warning("left %s: processes of its run could not be stopped", home)
            continue
        shutil.rmtree(home, ignore_errors=True)
        logger.debug("removed %s, left by a run whose process is gone", home)
        removed.append(home)
    return removed
