"""Whole-or-absent files: every file finfed rewrites goes through a temporary file, fsync and rename.

A reader (or a process started after a crash or power loss) sees either the previous file or the
new one, never half of one: the data is synced before the rename, and the folder after it, so the
rename itself survives a power loss too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PRIVATE_MODE = 0o600  # owner-only: ledgers, key maps


def write_bytes_atomic(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically; ``mode`` (e.g. 0o600) applies from the file's creation on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(descriptor, mode)  # the umask may not widen it, but a stale tmp file might
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_text_atomic(path: str | Path, text: str, *, mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode=mode)


def write_json_atomic(path: str | Path, payload: Any, *, mode: int | None = None, indent: int | None = 2) -> None:
    """JSON (non-JSON numbers such as numpy floats written as floats), atomically."""
    write_text_atomic(path, json.dumps(payload, indent=indent, default=float), mode=mode)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
