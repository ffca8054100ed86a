"""Outbound audit: a record, at the site, of everything each reply carries.

Enabled by the node config key ``audit-log`` (deployment) or the environment variable
``FINFED_AUDIT_LOG`` (simulation). The log is append-only JSON lines, one per message the
site sends (replies and error replies alike), each listing:

- ``run_id`` (Flower's run id: two runs at once stay apart), ``round``, ``message_type``, and under
  SecAgg+ the protocol ``secagg_stage``;
- ``allowed_by``: the allow-list entry (``finfed/privacy/disclosure.py``) the reply was checked against;
- ``sent_tensors``: every tensor that left, with name, dtype, shape and bytes; under SecAgg+
  these are the masked vectors (``masked: true``), named after the tensors they hide (the
  first is the masked weight, i.e. the example count);
- ``records``: every record's content: metrics and config values in full, byte strings
  (public keys, encrypted key shares) by size only;
- ``error``: an error reply's reason exactly as sent (record-free: ``disclosure.error_reason``);
- ``epsilon``: the site's cumulative epsilon after the round, when the reply states one;
- ``bytes_total``: the payload the reply carries, counted as: every tensor's and byte string's bytes,
  8 bytes per number (Flower sends 64-bit ints and floats), 1 per boolean, the UTF-8 bytes of every
  text value, of every metric/config key and of an error's reason. Protocol framing is not counted,
  so an evaluation (metrics only) shows the small but real size of what left.

so a bank's security team can check that no text or token left the site.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord

from finfed import constants as keys
from finfed.compat import secagg_names
from finfed.config import from_run_config
from finfed.privacy.disclosure import OptIns, error_reason, reply_policy
from finfed.site.guard import error_reply, secagg_stage
from finfed.site.node_settings import site_opt_ins

AUDIT_NODE_KEY = keys.NODE_AUDIT_LOG
AUDIT_ENV = "FINFED_AUDIT_LOG"
METRIC_RECORDS = (keys.METRICS, "fitres.metrics")  # plain replies, SecAgg+ (legacy) replies
CONFIG_RECORDS = (keys.CONFIG, "fitins.config")


def audit_path(context: Context) -> str:
    return str(context.node_config.get(AUDIT_NODE_KEY, "")) or os.environ.get(AUDIT_ENV, "")


def describe_request(message: Message) -> dict[str, Any]:
    """Round, SecAgg+ stage and tensor names of an incoming message (read before SecAgg+ consumes them)."""
    content = message.content
    config = next((dict(content[name]) for name in CONFIG_RECORDS if name in content), {})
    stage = secagg_stage(message)
    group = message.metadata.group_id
    server_round = config.get("server-round", int(group) if str(group).isdigit() else None)
    names = [n for n in str(config.get(keys.TENSOR_NAMES, "")).split(",") if n]
    return {"round": server_round, "secagg_stage": stage, "tensor_names": names}


def value_bytes(value: Any) -> int:
    """The payload size of one metric/config value (see the module docstring for the rule)."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value)
    return 0


def _describe_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"type": "bytes", "bytes": len(value)}
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return {"type": "bytes[]", "count": len(value), "bytes": sum(len(v) for v in value)}
    return value


def _masked_tensors(blobs: list[bytes], names: list[str]) -> list[dict[str, Any]]:
    labels = ["weight", *names] if len(names) + 1 == len(blobs) else [str(i) for i in range(len(blobs))]
    tensors = []
    for label, blob in zip(labels, blobs):
        array = np.load(io.BytesIO(blob), allow_pickle=False)
        tensors.append({"record": secagg_names().record, "name": f"masked:{label}", "dtype": str(array.dtype),
                        "shape": list(array.shape), "bytes": len(blob), "masked": True})
    return tensors


def describe_reply(reply: Message, request: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready inventory of what a reply carries."""
    records, tensors, other_bytes = {}, [], 0
    for name, record in ([] if reply.has_error() else reply.content.items()):
        if isinstance(record, ArrayRecord):
            sent = [{"record": name, "name": key, "dtype": array.dtype, "shape": list(array.shape),
                     "bytes": len(array.data), "masked": False} for key, array in record.items()]
            records[name] = {"kind": "arrays", "tensors": sent}
            tensors += sent
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "values": dict(record)}
            other_bytes += sum(value_bytes(k) + value_bytes(v) for k, v in record.items())
        elif isinstance(record, ConfigRecord):
            values = {k: _describe_value(v) for k, v in record.items()}
            masked = secagg_names().masked_parameters
            if name == secagg_names().record and masked in record:
                tensors += _masked_tensors(list(record[masked]), request["tensor_names"])
                values[masked] = {"type": "masked tensors", "see": "sent_tensors"}
            other_bytes += sum(value_bytes(k) + (0 if k == masked else value_bytes(v))
                               for k, v in record.items())
            records[name] = {"kind": "config", "values": values}
        else:
            records[name] = {"kind": type(record).__name__}
    metrics = next((records[n]["values"] for n in METRIC_RECORDS if n in records), {})
    if reply.has_error():
        other_bytes += value_bytes(reply.error.reason)
    return {"message_type": reply.metadata.message_type, "has_error": reply.has_error(),
            "error": reply.error.reason if reply.has_error() else None,
            "epsilon": metrics.get(keys.EPSILON), "refused": bool(metrics.get(keys.REFUSED, 0)),
            "sent_tensors": tensors, "bytes_total": sum(t["bytes"] for t in tensors) + other_bytes,
            "records": records}


def append_entry(path: str, entry: dict[str, Any]) -> None:
    """One line per message, appended with a single write (O_APPEND) and synced: lines never interleave
    or vanish, and earlier lines are never rewritten."""
    line = (json.dumps(entry, default=str) + "\n").encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def audit_mod(message: Message, context: Context, call_next) -> Message:
    """Flower client mod: append each outbound message's inventory to the site's audit log."""
    path = audit_path(context)
    if not path:
        return call_next(message, context)
    request = describe_request(message)
    header = {"time": time.time(), "run_id": context.run_id,
              "node_config": {k: v for k, v in context.node_config.items() if k != keys.NODE_DATA_PATH},
              "round": request["round"], "secagg_stage": request["secagg_stage"],
              "allowed_by": _policy_name(message, context)}
    try:
        reply = call_next(message, context)
    except Exception as error:  # the guard inside catches everything; this is its backstop
        reply = error_reply(message, error_reason(error))
    append_entry(path, {**header, **describe_reply(reply, request)})
    return reply


def _policy_name(message: Message, context: Context) -> str:
    try:
        opt_ins = site_opt_ins(from_run_config(context.run_config), context.node_config)
    except Exception:  # an unreadable run config fails in the handler; the name is only informative here
        opt_ins = OptIns()
    policy = reply_policy(message.metadata.message_type, secagg_stage(message), opt_ins)
    opted = policy.opted_in
    return policy.name + (f" (with {' and '.join(opted)}: the site opted in)" if opted else "")
