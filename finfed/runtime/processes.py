"""Stop the processes finfed started, and everything they started, without waiting on the dead.

Flower's SuperLink starts SuperExec, which starts the simulation, which starts Ray's
processes; several of them open their own process group or session, so a signal to
one group does not reach them. Stopping therefore signals every process group found
below the root. A process counts as gone once it has exited, zombie or not: a zombie
holds no resources, and in a container whose first process does not reap orphans it
would stay forever and make every teardown wait out its grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable

import psutil

logger = logging.getLogger(__name__)

POLL_S = 0.05


def is_running(process: psutil.Process) -> bool:
    """Whether the process still runs (a zombie has exited: it only waits to be reaped)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), unaffected by changes of the system clock;
    None where the system does not say (then only the wall-clock start time is known)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
        return int(fields[19])  # field 22 of proc(5), counted after pid and comm
    except (OSError, IndexError, ValueError):
        return None


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant of it alive now (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def stop_process_tree(process: subprocess.Popen | int, grace: float = 10.0) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, the process and every process group below it.

    Returns as soon as none of them runs; a ``Popen`` started here is reaped too.
    """
    pid = process if isinstance(process, int) else process.pid
    stop_processes(process_tree(pid), grace=grace, reap=None if isinstance(process, int) else process)


def stop_processes(processes: Iterable[psutil.Process], grace: float = 10.0,
                   reap: subprocess.Popen | None = None) -> bool:
    """Stop these processes and the process groups they lead or belong to; True when all are gone.

    The caller's own process group is never signalled as a group (it holds the caller):
    members of it are signalled one by one.
    """
    members = [p for p in processes if p.pid != os.getpid()]
    own_group = os.getpgrp()
    groups = {group for group in map(_group_of, members) if group not in (None, own_group)}
    singles = [p for p in members if _group_of(p) in (None, own_group)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        _signal(groups, singles, sig)
        if _wait_gone(groups, members, wait, reap):
            return True
    logger.warning("processes still running after SIGKILL: %s", [p.pid for p in _living(groups, members)])
    return False


def _group_of(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal(groups: set[int], singles: list[psutil.Process], sig: signal.Signals) -> None:
    for group in groups:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for process in singles:
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


def _wait_gone(groups: set[int], members: list[psutil.Process], timeout: float,
               reap: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not _living(groups, members):
            _reap(reap)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def _reap(child: subprocess.Popen | None) -> None:
    """Collect our own child's exit status (it has exited: a zombie or gone), so no zombie of ours stays."""
    if child is not None:
        try:
            child.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            logger.warning("process %s exited but could not be reaped", child.pid)


def _living(groups: set[int], members: list[psutil.Process]) -> list[psutil.Process]:
    """Members still running, and any running process of their groups (children started late included)."""
    living = [p for p in members if is_running(p)]
    if groups:
        seen = {p.pid for p in living}
        for process in psutil.process_iter():
            if process.pid not in seen and _group_of(process) in groups and is_running(process):
                living.append(process)
    return living
