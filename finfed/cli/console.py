"""The ``finfed`` command's console: its log records, the ServerApp's, and Flower's output.

Configured once per command (``finfed.cli.main.main``). Records of the ``finfed`` logger tree go to
stderr as ``[finfed] message`` (``[finfed] WARNING: message`` from warnings up); Flower's output,
relayed on the ``finfed.engine`` logger, is shown as Flower wrote it. Levels: ``--quiet`` warnings
and errors; default progress too; ``--verbose`` debug lines, all of Flower's output, and libraries'
warnings (Python's ``warnings`` in this process; transformers': ``models.backbone.quiet_transformers``).
The processes the command starts run at its level (``FINFED_LOG_LEVEL``, read by ``finfed.runtime.app_log``).

The command's results (tables, JSON, paths, ``--dry-run`` plans, the run's outcome) are printed to
stdout by the command itself, at every level.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from finfed.privacy.disclosure import off_site
from finfed.runtime.app_log import ENGINE, LOG_LEVEL_ENV, ROOT

PREFIX = "[finfed] "


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.name == ENGINE or record.name.startswith(ENGINE + "."):
            return message  # Flower's line, as Flower wrote it
        label = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return f"{PREFIX}{label}{message}"


class _Stderr(logging.StreamHandler):
    """stderr of the moment (a test's capture replaces it), like logging's own last-resort handler."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


@contextmanager
def console_logging(level: int) -> Iterator[None]:
    """The ``finfed`` tree logs to the console at ``level`` for the duration; restored afterwards (a
    command run in-process, e.g. by a test, leaves no handler behind)."""
    logger = logging.getLogger(ROOT)
    saved = logger.handlers[:], logger.level, logger.propagate, os.environ.get(LOG_LEVEL_ENV)
    handler = _Stderr()
    handler.setFormatter(ConsoleFormatter())
    handler.addFilter(off_site)
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False  # not also through a root handler a library installed (opacus' basicConfig)
    os.environ[LOG_LEVEL_ENV] = logging.getLevelName(level)
    try:
        with warnings.catch_warnings():
            if level > logging.DEBUG:
                warnings.simplefilter("ignore")  # libraries' warnings (opacus', torch's): with --verbose only
            yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])  # through setLevel: it clears the loggers' cached levels
        if saved[3] is None:
            os.environ.pop(LOG_LEVEL_ENV, None)
        else:
            os.environ[LOG_LEVEL_ENV] = saved[3]
        handler.close()


def console_level(quiet: bool, verbose: bool) -> int:
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


class ProgressBar:
    """``[finfed] predicting  [#####-----]  120/400 rows`` on stderr, redrawn in place: on a terminal, and
    not with ``--quiet``; elsewhere (a pipe, a log file) one line when done, so logs stay readable."""

    WIDTH = 30

    def __init__(self, label: str, unit: str) -> None:
        self.label, self.unit = label, unit
        self.shown = logging.getLogger(ROOT).isEnabledFor(logging.INFO)
        self.live = self.shown and sys.stderr.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        if self.live:
            filled = self.WIDTH * done // max(total, 1)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            sys.stderr.write(f"\r{PREFIX}{self.label} [{bar}] {done}/{total} {self.unit}")
            sys.stderr.flush()
            self.drawn = True
        elif self.shown and done >= total:
            sys.stderr.write(f"{PREFIX}{self.label}: {done}/{total} {self.unit}\n")

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False
