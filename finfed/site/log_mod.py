"""While a site handles a message, finfed's logging goes to the site's own log (``<site folder>/site.log``,
see ``finfed/site/log.py``): full error messages, tracebacks and per-step losses, instead of stdout/stderr.

In simulation Flower forwards a ClientApp's stdout and stderr into the coordinator's ``flower.log``;
in deployment they reach the SuperNode's log. Neither may hold a record, so while a message is
handled every ``finfed`` and ``client`` logger writes to this file only (no propagation to the
root logger, whose last-resort handler prints to stderr), and none through a handler another part of
the process installed on them (the ServerApp's output, a console): while routed, the site's log is their
only handler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finfed.site.log import SITE_LOG

LOGGER_NAMES = ("finfed", "client")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def open_site_log(folder: str | Path) -> Path:
    """Create (mode 0600) the site's log in its folder and return its path."""
    path = Path(folder) / SITE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    return path


@contextmanager
def routed_to_site_log(folder: str | Path | None) -> Iterator[None]:
    """Route finfed's logging to the site's log for the duration of one message (nowhere if ``folder`` is
    None: a site whose folder cannot be resolved still must not print its errors)."""
    handler: logging.Handler = logging.NullHandler()
    if folder is not None:
        handler = logging.FileHandler(open_site_log(folder), encoding="utf-8")
        handler.setFormatter(logging.Formatter(FORMAT))
    loggers = [logging.getLogger(name) for name in LOGGER_NAMES]
    saved = [(logger.level, logger.propagate, logger.handlers[:]) for logger in loggers]
    for logger in loggers:
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, (level, propagate, handlers) in zip(loggers, saved):
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate
        handler.close()
