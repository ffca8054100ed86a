"""The two shapes a train request and its reply take on the wire.

- plain (Flower's Message API): ``arrays`` (named tensors) and ``config`` in, ``arrays`` and
  ``metrics`` out;
- SecAgg+ (Flower's legacy fit messages, the only ones its SecAgg+ mod understands):
  ``fitins.parameters`` (tensors named "0".."n-1"; their real names travel in the config)
  and ``fitins.config`` in, ``fitres.parameters`` / ``fitres.num_examples`` /
  ``fitres.metrics`` / ``fitres.status`` out. The SecAgg+ mod then replaces the tensors by
  a masked vector before anything leaves.

Every reply also names the site (``constants.SITE_NAME``): in a ``site`` config record of its own
(plain train and evaluate replies: a metric record holds numbers only), or among the FitRes metrics
(SecAgg+, whose FitRes keeps no other record). ``clean_site_name`` is applied on both ends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from finfed import constants as keys
from finfed.errors import TrainingError
from finfed.records import from_array_record, to_array_record

MAX_SITE_NAME = 64  # characters
_NOT_IN_A_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")


def clean_site_name(value: Any) -> str:
    """A site's name as it may travel and be shown: text of at most ``MAX_SITE_NAME`` characters, without
    control characters or path separators (each run of them becomes "-"); "" for anything else."""
    if not isinstance(value, str):
        return ""
    return " ".join(_NOT_IN_A_NAME.sub("-", value).split())[:MAX_SITE_NAME].strip()


def site_record(site_name: str) -> dict[str, ConfigRecord]:
    """The record naming the site in a plain reply (none when it has no name)."""
    name = clean_site_name(site_name)
    return {keys.SITE_RECORD: ConfigRecord({keys.SITE_NAME: name})} if name else {}


def reply_metrics(message: Message) -> dict[str, Any]:
    """A plain reply's metrics, with the site's name (cleaned) where the reply carries one."""
    metrics = dict(message.content[keys.METRICS])
    record = message.content.config_records.get(keys.SITE_RECORD)
    name = clean_site_name(record.get(keys.SITE_NAME)) if record is not None else ""
    return {**metrics, keys.SITE_NAME: name} if name else metrics


FIT_PARAMETERS, FIT_CONFIG = "fitins.parameters", "fitins.config"
RES_PARAMETERS, RES_NUM_EXAMPLES, RES_METRICS, RES_STATUS = (
    "fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")


@dataclass(frozen=True)
class TrainRequest:
    arrays: dict[str, np.ndarray]
    config: dict[str, Any]
    secure: bool  # a SecAgg+ (legacy) request: the reply must be a legacy FitRes


def is_secure_request(message: Message) -> bool:
    return FIT_PARAMETERS in message.content


def read_train_request(message: Message) -> TrainRequest:
    if not is_secure_request(message):
        return TrainRequest(from_array_record(message.content[keys.ARRAYS]), dict(message.content[keys.CONFIG]),
                            secure=False)
    config = dict(message.content[FIT_CONFIG])
    names = [n for n in str(config.get(keys.TENSOR_NAMES, "")).split(",") if n]
    values = [array.numpy() for array in message.content[FIT_PARAMETERS].values()]
    if len(names) != len(values):
        raise TrainingError(f"SecAgg+ request carries {len(values)} tensors but names {len(names)} "
                            f"(`{keys.TENSOR_NAMES}`)")
    return TrainRequest(dict(zip(names, values)), config, secure=True)


def train_reply(message: Message, request: TrainRequest, arrays: Mapping[str, np.ndarray],
                metrics: Mapping[str, Any], weight: int, site_name: str = "") -> Message:
    """The update (or, with ``weight`` 0 in SecAgg+, a refusal that adds nothing to the sum)."""
    if not request.secure:
        return Message(content=RecordDict({keys.ARRAYS: to_array_record(arrays),
                                           keys.METRICS: MetricRecord(dict(metrics)), **site_record(site_name)}),
                       reply_to=message)
    name = clean_site_name(site_name)
    content = RecordDict({
        RES_PARAMETERS: to_array_record(arrays),
        RES_NUM_EXAMPLES: MetricRecord({"num_examples": int(weight)}),
        RES_METRICS: ConfigRecord({**metrics, **({keys.SITE_NAME: name} if name else {})}),
        RES_STATUS: ConfigRecord({"code": 0, "message": "Success"})})
    return Message(content=content, reply_to=message)


def setup_refusal(message: Message, site_id: int) -> Message:
    """A site declining a SecAgg+ round at its first stage: an error reply, so it takes no part in the key
    sharing and no masked vector leaves it. The reason names only the site and the round."""
    reason = f"privacy refusal: site {int(site_id)} declines round {message.metadata.group_id} (its privacy budget)"
    return Message(Error(code=keys.REFUSAL_ERROR_CODE, reason=reason), reply_to=message)


def refusing_site(reply: Message) -> int | None:
    """The site id of a :func:`setup_refusal` reply; None for any other reply."""
    if not reply.has_error() or reply.error.code != keys.REFUSAL_ERROR_CODE:
        return None
    found = re.match(r"privacy refusal: site (\d+) ", reply.error.reason or "")
    return int(found.group(1)) if found else None


def evaluate_reply(message: Message, metrics: Mapping[str, Any], site_name: str = "") -> Message:
    return Message(content=RecordDict({keys.METRICS: MetricRecord(dict(metrics)), **site_record(site_name)}),
                   reply_to=message)


def refusal_reply(message: Message, request: TrainRequest, metrics: Mapping[str, Any],
                  site_name: str = "") -> Message:
    """No update leaves. Under SecAgg+ a site normally declines at the protocol's setup stage
    (:func:`setup_refusal`); one that still reaches training must complete the protocol, so it sends the
    global tensors it received with weight 0: they contribute exactly nothing to the unmasked sum."""
    if not request.secure:
        return Message(content=RecordDict({keys.METRICS: MetricRecord(dict(metrics)), **site_record(site_name)}),
                       reply_to=message)
    return train_reply(message, request, request.arrays, metrics, weight=0, site_name=site_name)
