"""Which SuperNode is which bank: node ids mapped to the consortium's site names.

Flower 1.42 stores the ``--name`` given to ``flwr supernode register`` but ``flwr supernode
ls`` shows only node ids, owners and states. ``flwr supernode register`` answers with the
new node's id, so finfed keeps ``site name -> node id`` in the coordinator's state folder
(``coordinator/state/site-nodes.json``, mode 0600) and uses it to name sites: in
``finfed deploy sites`` and in the run's "waiting for sites" lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finfed.deploy.consortium import Consortium
from finfed.errors import ConfigError
from finfed.privacy.ledger_chain import write_private_json

SITE_NODES_FILE = "site-nodes.json"


def site_nodes_path(consortium: Consortium) -> Path:
    return consortium.database.parent / SITE_NODES_FILE


def read_site_nodes(consortium: Consortium) -> dict[str, int]:
    """``{site name: node id}`` for the sites whose registration finfed saw."""
    path = site_nodes_path(consortium)
    if not path.is_file():
        return {}
    try:
        return {str(name): int(node) for name, node in json.loads(path.read_text(encoding="utf-8")).items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a JSON object of site name -> node id ({exc}); delete it and run "
                          "`finfed deploy register` to rebuild it") from None


def record_site_node(consortium: Consortium, name: str, node_id: int) -> None:
    nodes = {**read_site_nodes(consortium), name: int(node_id)}
    write_private_json(site_nodes_path(consortium), dict(sorted(nodes.items())))


def run_config_value(consortium: Consortium) -> str:
    """``node:name`` pairs for the ServerApp (``federation.site_nodes``, read by finfed/coordinator/sampling.py)."""
    known = read_site_nodes(consortium)
    return ",".join(f"{known[site.name]}:{site.name}" for site in consortium.sites if site.name in known)


def site_rows(consortium: Consortium, nodes: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per consortium site (name, id, node, state), then any SuperNode finfed cannot name."""
    known = read_site_nodes(consortium)
    status = {str(node.get("node-id")): str(node.get("status", "?")) for node in nodes}
    rows = []
    for site in consortium.sites:
        node = known.get(site.name)
        state = status.get(str(node), "not registered") if node is not None else "node id unknown"
        rows.append({"site": site.name, "id": str(site.site_id), "node": str(node or "-"), "status": state})
    named = {str(node) for node in known.values()}
    rows += [{"site": "(unknown)", "id": "-", "node": node, "status": state}
             for node, state in status.items() if node not in named and state != "unregistered"]
    return rows


def format_rows(rows: list[dict[str, str]]) -> str:
    columns = ("site", "id", "node", "status")
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
