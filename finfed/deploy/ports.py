"""Is a local port free? Checked before finfed starts a process that must listen on it.

Flower's own servers report a taken port late (the SuperLink after it printed its banner,
the SuperNode with a bare uvicorn traceback), so finfed asks first and names the setting
to change. A check cannot reserve the port: a process that exits early is still watched.
"""

from __future__ import annotations

import errno
import socket

from finfed.errors import ConfigError


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as uvicorn does: SO_REUSEADDR set)."""
    bind_host = host.strip("[]") or "0.0.0.0"
    with socket.socket(_family(bind_host), socket.SOCK_STREAM) as sock:
        # A port left in TIME_WAIT by a stopped server is free for a new one: only a listener counts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return True


def check_port_free(host: str, port: int, *, what: str, fix: str) -> None:
    """Raise a clear error if ``host:port`` is taken: ``what`` needs it, ``fix`` says what to change."""
    if not port_is_free(host, port):
        raise ConfigError(f"port {port} on {host} is already in use, so {what} cannot listen there "
                          f"(another instance already running, or another program); {fix}")
