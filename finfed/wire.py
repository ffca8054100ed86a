"""The two shapes a train request and its reply take on the wire.

- plain (Flower's Message API): ``arrays`` (named tensors) and ``config`` in, ``arrays`` and
  ``metrics`` out;
- SecAgg+ (Flower's legacy fit messages, the only ones its SecAgg+ mod understands):
  ``fitins.parameters`` (tensors named "0".."n-1"; their real names travel in the config)
  and ``fitins.config`` in, ``fitres.parameters`` / ``fitres.num_examples`` /
  ``fitres.metrics`` / ``fitres.status`` out. The SecAgg+ mod then replaces the tensors by
  a masked vector before anything leaves.
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
                metrics: Mapping[str, Any], weight: int) -> Message:
    """The update (or, with ``weight`` 0 in SecAgg+, a refusal that adds nothing to the sum)."""
    if not request.secure:
        return Message(content=RecordDict({keys.ARRAYS: to_array_record(arrays),
                                           keys.METRICS: MetricRecord(dict(metrics))}), reply_to=message)
    content = RecordDict({
        RES_PARAMETERS: to_array_record(arrays),
        RES_NUM_EXAMPLES: MetricRecord({"num_examples": int(weight)}),
        RES_METRICS: ConfigRecord(dict(metrics)),
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


def refusal_reply(message: Message, request: TrainRequest, metrics: Mapping[str, Any]) -> Message:
    """No update leaves. Under SecAgg+ a site normally declines at the protocol's setup stage
    (:func:`setup_refusal`); one that still reaches training must complete the protocol, so it sends the
    global tensors it received with weight 0: they contribute exactly nothing to the unmasked sum."""
    if not request.secure:
        return Message(content=RecordDict({keys.METRICS: MetricRecord(dict(metrics))}), reply_to=message)
    return train_reply(message, request, request.arrays, metrics, weight=0)
