"""Keep Flower's Ray engine on 127.0.0.1 during a simulation.

Flower (1.42) starts Ray inside ``flwr-simulation`` with ``ray.init(include_dashboard=False,
**init_args)``, where ``init_args`` can only come from the federation config's
``init-args-num-cpus``, ``-num-gpus``, ``-logging-level`` and ``-log-to-driver``: there is no
way to hand it ``_node_ip_address``. Ray (2.55) then takes the node's IP from the network
(the address that routes outside) and its gRPC servers listen on that node IP or on every
interface: gcs_server, raylet (node manager and object manager), the driver's and each
worker's core-worker server on ``*:<port>``, the runtime-env agent on the external address.

What Ray does offer is an environment variable read when it picks the node IP:
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` declares "no multi-node cluster", and Ray then
uses the loopback address as the node IP (``ray._private.services.get_node_ip_address``).
Every server above then listens on 127.0.0.1 (measured with psutil: see
tests/test_engine.py), which is all a one-machine simulation needs. The processes inherit
the variable from the SuperLink through SuperExec and ``flwr-simulation``. This leans on how
Ray 2.55 picks the node IP, not on a documented promise: the socket test in
tests/test_engine.py is what tells whether a Ray upgrade keeps it.

Loopback still lets any other account on the machine connect, so Ray's token
authentication is switched on too (``RAY_AUTH_MODE=token``), with a fresh random token
per run handed to Ray's processes in their environment (readable only by this account):
a gRPC call to gcs_server without it is refused (tests/test_engine.py checks that).
"""

from __future__ import annotations

import secrets

RAY_LOOPBACK_ENV = {
    # Node IP = loopback: every Ray server listens on 127.0.0.1 (see the module text).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No usage report to Ray's servers, no prompt about it.
    "RAY_USAGE_STATS_ENABLED": "0",
    # No metrics recording in Ray's core (Flower never reads Ray's metrics; nothing to export).
    "RAY_enable_metrics_collection": "0",
}
# Not needed as settings: Flower passes include_dashboard=False (no dashboard web server; the
# "minimal" dashboard head Ray still starts serves nothing), ray.init starts no Ray Client
# server, and with the node IP on loopback the dashboard and runtime-env agents' servers
# follow it to 127.0.0.1.


def private_ray_env() -> dict[str, str]:
    """The environment of one simulation's Ray: loopback only, and its own authentication token."""
    return {**RAY_LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
