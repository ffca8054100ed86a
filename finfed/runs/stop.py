"""Asking a run to stop: the file ``RUN/.stop``.

`finfed simulate` and `finfed deploy run` create it when they receive SIGINT or SIGTERM.
The ServerApp checks it before each round and once a round's training replies are in
(``finfed/coordinator/rounds.py``); a *simulated* site checks it between DP steps and abandons its
round: no ledger entry, no update (``finfed/site/rounds.py``). A file, not a message, because the
ServerApp and the simulated sites run in processes finfed does not own (Flower's SuperExec,
Ray workers), and every one of them can see the run directory. A deployed site cannot see
the coordinator's disk: it finishes the round it is training, and is asked for no other.

The file holds the moment the stop was decided (``requested_at``): no site may record a
privacy spend after it.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from finfed.atomic import write_json_atomic
from finfed.errors import RunError

# The exit status of a command whose run a signal stopped: 128 + SIGINT, the shell's convention for Ctrl-C.
EXIT_INTERRUPTED = 130

STOP_FILE = ".stop"
# How long the CLI waits for the ServerApp to record `interrupted`, then for Flower to end by itself,
# before it stops every process it started.
RECORD_WAIT_S = 5.0
END_WAIT_S = 5.0

log = logging.getLogger(__name__)


def stop_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STOP_FILE


def request_stop(run_dir: str | Path, reason: str) -> float:
    """Create ``RUN/.stop`` (once: a second request keeps the first moment); return when it was decided."""
    path = stop_path(run_dir)
    earlier = stop_time(run_dir)
    if earlier is not None:
        return earlier
    requested_at = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    # whole or absent: a reader never sees half of it
    write_json_atomic(path, {"requested_at": requested_at, "reason": reason}, indent=None)
    return requested_at


def stop_requested(run_dir: str | Path) -> bool:
    return stop_path(run_dir).exists()


def stop_time(run_dir: str | Path) -> float | None:
    """When the stop was decided, or None if no stop was asked."""
    try:
        return float(json.loads(stop_path(run_dir).read_text(encoding="utf-8"))["requested_at"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0  # present but unreadable: a stop is asked, its moment unknown


def clear_stop(run_dir: str | Path) -> None:
    """Before a run (or its resumption) is submitted: an earlier stop request must not stop it."""
    stop_path(run_dir).unlink(missing_ok=True)


@contextmanager
def signals_handled(handler: Callable, signums: tuple[int, ...]) -> Iterator[None]:
    """The one way finfed installs signal handlers: ``handler`` for ``signums`` while inside, then the previous ones.

    Python lets only the main thread install handlers; elsewhere this changes nothing (the main
    thread's handlers stay in force).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def sigterm_interrupts() -> AbstractContextManager[None]:
    """While inside, SIGTERM is Ctrl-C: KeyboardInterrupt, whose path stops the processes finfed started."""
    return signals_handled(_interrupt, (signal.SIGTERM,))


class SignalStop:
    """While a run is submitted: SIGINT/SIGTERM ask it to stop instead of killing finfed at once.

    The first signal creates ``RUN/.stop`` and starts a watcher. The ServerApp then stops
    starting rounds and records ``interrupted``; Flower's run ends by itself. If the record
    does not appear within ``record_wait`` seconds, or Flower has not ended ``end_wait``
    seconds after it, the watcher signals the main thread again; that second signal (or one
    from the user) raises KeyboardInterrupt, whose path stops every process finfed started.
    """

    def __init__(self, run_dir: str | Path, record_wait: float = RECORD_WAIT_S,
                 end_wait: float = END_WAIT_S) -> None:
        self.run_dir = Path(run_dir)
        self.record_wait, self.end_wait = record_wait, end_wait
        self.requested_at: float | None = None
        self._handlers = ExitStack()
        self._ended = threading.Event()
        self._lock = threading.Lock()

    def __enter__(self) -> "SignalStop":
        self._handlers.enter_context(signals_handled(self._handle, (signal.SIGINT, signal.SIGTERM)))
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:  # after this, the watcher signals nobody
            self._ended.set()
        self._handlers.close()

    def _handle(self, signum, frame) -> None:
        if self.requested_at is not None:
            _interrupt(signum, frame)  # a second signal, or the watcher's deadline: stop everything now
        name = signal.Signals(signum).name
        self.requested_at = request_stop(self.run_dir, name)
        log.warning(f"{name}: stopping the run (no new round; simulated sites stop between steps)...")
        threading.Thread(target=self._watch, name="finfed-stop-watch", daemon=True).start()

    def _watch(self) -> None:
        from finfed.runs.outputs import read_status

        deadline = time.time() + self.record_wait
        recorded = False
        while time.time() < deadline and not self._ended.wait(0.2):
            if not recorded and _recorded(read_status, self.run_dir):
                recorded, deadline = True, time.time() + self.end_wait
        with self._lock:
            if self._ended.is_set():
                return
            log.info("the run did not end %s; stopping its processes",
                     "by itself" if recorded else f"within {self.record_wait:g}s")
            # A real signal to the main thread: it interrupts a blocking read, which a flag would not.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)


def _recorded(read_status, run_dir: Path) -> bool:
    try:
        return read_status(run_dir).get("state") not in ("running", "missing")
    except (OSError, ValueError, RunError):  # a status being replaced or unreadable: not recorded yet
        return False
