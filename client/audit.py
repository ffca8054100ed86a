"""Outbound audit: a record, at the site, of everything each reply carries.

Enabled by the node config key ``audit-log`` (deployment) or the environment
variable ``FINFED_AUDIT_LOG`` (simulation): one JSON line per message sent,
listing each tensor's name, dtype, shape and bytes, and every metric and config
value, so a bank's security team can check that no text or token left the site.
"""

from __future__ import annotations

import json
import os
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

AUDIT_NODE_KEY = "audit-log"
AUDIT_ENV = "FINFED_AUDIT_LOG"


def describe_message(message: Message) -> dict:
    """A JSON-ready inventory of a message's content."""
    records = {}
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {"kind": "arrays", "tensors": [
                {"name": key, "dtype": array.dtype, "shape": list(array.shape), "bytes": len(array.data)}
                for key, array in record.items()]}
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "values": dict(record)}
        elif isinstance(record, ConfigRecord):
            records[name] = {"kind": "config", "values": {k: _plain(v) for k, v in record.items()}}
        else:
            records[name] = {"kind": type(record).__name__}
    return {"time": time.time(), "message_type": message.metadata.message_type,
            "has_error": message.has_error(), "records": records}


def _plain(value):
    return value.decode("latin-1") if isinstance(value, bytes) else value


def audit_mod(message: Message, context: Context, call_next) -> Message:
    """Flower client mod: append the reply's inventory to the site's audit log."""
    reply = call_next(message, context)
    path = str(context.node_config.get(AUDIT_NODE_KEY, "")) or os.environ.get(AUDIT_ENV, "")
    if path:
        entry = {"node_config": {k: v for k, v in context.node_config.items() if k != "data-path"},
                 **describe_message(reply)}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
    return reply
