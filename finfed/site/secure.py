"""The site's side of SecAgg+: Flower's ``secaggplus_mod`` for SecAgg+ requests, and the site's own checks.

One ClientApp serves both modes: a train request carrying SecAgg+ protocol settings goes
through Flower's mod (key agreement, secret sharing, masking, unmasking); any other
message passes straight through, unless the site's node config says
``require-secure-aggregation = true``, in which case it refuses to send a plain update.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.client.mod import secaggplus_mod

from finfed import constants as keys
from finfed.compat import secagg_names, secagg_stage
from finfed.config import FederationSettings
from finfed.errors import PrivacyError, TrainingError
from finfed.site.run_state import stored_accountant_state
from finfed.wire import setup_refusal

logger = logging.getLogger(__name__)


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def secure_aggregation_mod(message: Message, context: Context, call_next) -> Message:
    """Route SecAgg+ train messages through Flower's mod; enforce the site's own SecAgg+ requirement."""
    if message.metadata.message_type != MessageType.TRAIN:
        return call_next(message, context)
    stage = secagg_stage(message.content)
    if stage is not None:
        if stage == secagg_names().setup:
            refusal = refuse_at_setup(message, context)
            if refusal is not None:
                return refusal
        return secaggplus_mod(message, context, call_next)
    if _truthy(context.node_config.get(keys.NODE_REQUIRE_SECAGG, False)):
        message = (f"this site's node config sets `{keys.NODE_REQUIRE_SECAGG}`, but the coordinator asked "
                   "for a plain update; it sends updates only under SecAgg+ (`federation.secure_aggregation = true`)")
        raise PrivacyError(message, public_reason=message)
    return call_next(message, context)


def refuse_at_setup(message: Message, context: Context) -> Message | None:
    """A site over its budget declines before the key sharing: no public key, share or masked vector leaves."""
    from finfed.config import from_run_config

    config = from_run_config(context.run_config)
    if not config.privacy.enabled:
        return None
    from finfed.site.rounds import (  # torch: only for a DP run's setup stage
        budget_refusal,
        site_context,
    )

    site = site_context(config, context.node_config)
    reason = budget_refusal(site, stored_accountant_state(context))
    if reason is None:
        return None
    logger.info(f"round {message.metadata.group_id} site {site.data.site_id} refused before SecAgg+ key "
                f"sharing: {reason}")  # the site's own log (finfed/site/log_mod.py)
    return setup_refusal(message, site.data.site_id)


def check_secure_weight(num_examples: int, federation: FederationSettings, site_id: int) -> None:
    """Before training: an example count above SecAgg+'s maximum weight would overflow its quantization."""
    if num_examples > federation.secagg_max_weight:
        message = (f"site {site_id}: {num_examples} training records exceed "
                   f"`federation.secagg_max_weight` ({federation.secagg_max_weight:g}); SecAgg+ would "
                   "corrupt this site's weighted update. Raise the setting for the whole federation")
        raise TrainingError(message, public_reason=message)  # the count is sent anyway (num-examples)


def check_secure_range(arrays: Mapping[str, np.ndarray], federation: FederationSettings, site_id: int) -> None:
    """After training: SecAgg+ clips values silently before quantizing; refuse instead of sending a wrong update."""
    limit = federation.secagg_clipping_range
    for name, value in arrays.items():
        largest = float(np.max(np.abs(value))) if value.size else 0.0
        if largest > limit:
            raise TrainingError(f"site {site_id}: tensor {name} holds a value of magnitude {largest:.4g}, outside "
                                f"`federation.secagg_clipping_range` ({limit:g}); SecAgg+ would clip it",
                                public_reason=f"an updated tensor holds a value outside "
                                              f"`federation.secagg_clipping_range` ({limit:g})")
