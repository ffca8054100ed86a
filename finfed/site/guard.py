"""The last check before a reply leaves the site (a Flower client mod, inside the audit mod).

- Any exception raised while handling a message is caught here: its full text and traceback go to
  the site's own log, and the reply is a Flower error reply carrying only
  ``disclosure.error_reason(exc)``. Returning the error reply ourselves, rather than raising, matters:
  Flower would otherwise send ``str(exc)`` as the reason and print it into its own log.
- A reply is checked against the allow-list (``finfed/privacy/disclosure.py``); one holding a record or
  key it does not name is not sent (an ``internal error`` reply instead).
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message

from finfed import constants as keys
from finfed.compat import client_app_error_code
from finfed.compat import secagg_stage as _secagg_stage
from finfed.config import from_run_config
from finfed.privacy.disclosure import (
    CATEGORIES,
    INTERNAL_ERROR,
    DisclosureError,
    OptIns,
    disallowed_fields,
    error_reason,
    reply_policy,
)
from finfed.site.log_mod import routed_to_site_log
from finfed.site.node_settings import site_folder, site_id_of, site_opt_ins

logger = logging.getLogger(__name__)


def secagg_stage(message: Message) -> str | None:
    """The SecAgg+ protocol stage a request asks for (None: not a SecAgg+ message)."""
    return _secagg_stage(message.content)


def request_tensor_names(message: Message) -> list[str]:
    """The adapter tensors the coordinator sent: the only tensor names a plain train reply may carry."""
    arrays = message.content.array_records.get(keys.ARRAYS)
    return list(arrays.keys()) if arrays is not None else []


def _site_settings(context: Context) -> tuple[str | None, OptIns]:
    """The site's folder and its opt-ins (folder None and no opt-in if the run config cannot be read)."""
    try:
        config = from_run_config(context.run_config)
    except Exception:  # reported by the handler itself; here only the log's place is at stake
        folder = str(context.node_config.get(keys.NODE_SITE_DIR, "")) or None
        return folder, OptIns()
    node = context.node_config
    return site_folder(config, node, site_id_of(node)), site_opt_ins(config, node)


def error_reply(message: Message, reason: str) -> Message:
    return Message(Error(code=client_app_error_code(), reason=reason), reply_to=message)


def checked_reply(reply: Message, message: Message, stage: str | None, opt_ins: OptIns,
                  tensor_names: list[str]) -> Message:
    """``reply`` if the allow-list names everything it holds; otherwise an error reply in its place."""
    if reply.has_error():
        if any(reply.error.reason.startswith(f"{c}: ") for c in CATEGORIES):
            return reply
        logger.error("an error reply not in finfed's form was replaced: %s", reply.error.reason)
        return error_reply(message, f"{INTERNAL_ERROR}: an error outside finfed's handlers (details in the "
                                    "site's log)")
    policy = reply_policy(message.metadata.message_type, stage, opt_ins)
    content = dict(reply.content.items())
    extra = disallowed_fields(content, policy, tensor_names)
    if not extra:
        return reply
    error = DisclosureError(f"reply ({policy.name}) held fields not on the allow-list: {extra}",
                            public_reason="the reply held a field not on the site's allow-list; nothing was "
                                          "sent (details in the site's log)")
    logger.error("%s", error)
    return error_reply(message, error_reason(error))


def disclosure_mod(message: Message, context: Context, call_next) -> Message:
    """Flower client mod: errors leave only as record-free reasons; replies only as the allow-list permits."""
    folder, opt_ins = _site_settings(context)
    stage = secagg_stage(message)  # read first: SecAgg+'s mod consumes it
    tensor_names = request_tensor_names(message)
    with routed_to_site_log(folder):
        try:
            reply = call_next(message, context)
        except Exception as exc:  # every failure: full text here, a record-free reason on the wire
            reason = error_reason(exc)
            logger.exception("%s failed (sent to the coordinator as %r)", message.metadata.message_type, reason)
            return error_reply(message, reason)
        return checked_reply(reply, message, stage, opt_ins, tensor_names)

