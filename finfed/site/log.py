"""The site's own log, ``site.log`` in its folder: details that must never leave the site.

In simulation the sites run inside the coordinator's process tree, whose stdout and
stderr end up in the coordinator-side Flower log; a site-log logger therefore does not
propagate, and writes only to the file in the site's folder.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

SITE_LOG = "site.log"


def site_log(folder: str | Path) -> logging.Logger:
    """A logger writing to ``folder/site.log`` only (one per folder: sites may share a process)."""
    path = (Path(folder) / SITE_LOG).resolve()
    log = logging.getLogger(f"finfed.site-log.{hashlib.sha256(str(path).encode()).hexdigest()[:16]}")
    if not log.handlers:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log
