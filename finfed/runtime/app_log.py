"""How the ServerApp's log records reach the ``finfed`` command: one documented line form.

The ServerApp runs in a process of Flower's (a simulation's ``flwr-simulation``, a deployment's
``flwr-serverapp``) whose stdout and stderr Flower streams to ``flwr run --stream``, mixed with
Flower's own lines and Ray's worker output. ``configure_app_logging`` (called by ``server/app.py``)
makes that process write each record of the ``finfed`` logger tree as one line::

    finfed-log {"logger": "finfed.coordinator.run", "level": "INFO", "message": "round 1: ..."}

(``RECORD_PREFIX`` at the very start of the line, then one JSON object). ``parse_app_record`` is the
only reader of that form; the ``finfed`` command re-emits what it parses as its own log record, and
relays every other line on the ``ENGINE`` logger (Flower's output: shown with ``--verbose``).

A site never writes the form: while it handles a message its logging goes to its own log only
(``finfed/site/log_mod.py``), and a Ray worker's line starts with the worker's name, so no line of a
site's output parses as a record. Records marked for the site's log only are dropped here too
(``finfed.privacy.disclosure.off_site``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from finfed.privacy.disclosure import off_site

ROOT = "finfed"
ENGINE = "finfed.engine"  # Flower's (and Ray's) output relayed by the `finfed` command, as they wrote it
RECORD_PREFIX = "finfed-log "
LOG_LEVEL_ENV = "FINFED_LOG_LEVEL"  # the level the `finfed` command runs at, for the processes it starts
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _RecordLines(logging.Handler):
    """Each record as one line, written in one call to the process's stdout of the moment (Flower
    mirrors that stream into the run's log stream; a test's capture replaces it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:  # logging's own policy: a failed record must not stop the run
            self.handleError(record)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        return RECORD_PREFIX + json.dumps({"logger": record.name, "level": record.levelname, "message": message})


def configure_app_logging() -> None:
    """The ServerApp process's logging: the ``finfed`` tree as record lines on stdout, at the level the
    ``finfed`` command runs at (``FINFED_LOG_LEVEL``, else INFO); not also through the root logger,
    whose handlers (a library's ``basicConfig``) would print each record a second time. Idempotent."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(handler, _RecordLines) for handler in logger.handlers):
        handler = _RecordLines()
        handler.addFilter(off_site)
        logger.addHandler(handler)
    level = os.environ.get(LOG_LEVEL_ENV, "").upper()
    logger.setLevel(level if level in LEVELS else "INFO")
    logger.propagate = False


def parse_app_record(line: str) -> logging.LogRecord | None:
    """The log record a ServerApp's record line carries; None for any other line (Flower's, Ray's, a
    site's), or for a line of the form whose fields are not a ``finfed`` logger, a level and a text."""
    if not line.startswith(RECORD_PREFIX):
        return None
    try:
        fields = json.loads(line[len(RECORD_PREFIX):])
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    name, level, message = fields.get("logger"), fields.get("level"), fields.get("message")
    if not (isinstance(name, str) and (name == ROOT or name.startswith(ROOT + ".")) and level in LEVELS
            and isinstance(message, str)):
        return None
    return logging.makeLogRecord({"name": name, "levelname": level, "levelno": logging.getLevelName(level),
                                  "msg": message})
