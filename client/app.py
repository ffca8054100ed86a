"""Flower ClientApp: one institution trains the global adapter on its own data.

Replies carry only the trained tensors and the numbers ``finfed/privacy/disclosure.py`` allows (example
count, epsilon, validation metrics; the training loss and the label share gaps only if the site opted in); under
SecAgg+ (``federation.secure_aggregation``) the tensors leave only masked (``finfed/site/secure.py``).
The site's accountant history lives in ``context.state`` (and in its ledger, if it keeps
one) so epsilon is cumulative.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from finfed import constants as keys
from finfed.config import from_run_config
from finfed.errors import BudgetExhausted
from finfed.privacy.disclosure import outgoing_metrics
from finfed.records import from_array_record
from finfed.site.audit import audit_mod
from finfed.site.guard import disclosure_mod
from finfed.site.node_settings import site_opt_ins
from finfed.site.run_state import keep_accountant_state, stored_accountant_state
from finfed.site.secure import (
    check_secure_range,
    check_secure_weight,
    secure_aggregation_mod,
)
from finfed.wire import evaluate_reply, read_train_request, refusal_reply, train_reply

# The audit mod is outermost: it records what actually leaves, i.e. after SecAgg+ masking and after
# the disclosure guard turned any failure into a record-free error reply (finfed/site/guard.py).
app = ClientApp(mods=[audit_mod, disclosure_mod, secure_aggregation_mod])
logger = logging.getLogger(__name__)  # the site's own log while a message is handled (finfed/site/log_mod.py)


def _progress(site_id: int, server_round: int):
    """Per-step losses describe the sampled records: they go to the site's log, never to stdout."""
    def report(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 4) == 0:
            logger.info("round %d site %d: step %d/%d loss %.4f", server_round, site_id, step, total, loss)
    return report


@app.train()
def train(message: Message, context: Context) -> Message:
    # Imported here, not at the top: Flower starts a fresh process per message, and SecAgg+'s key
    # exchange stages never train, so they should not pay for importing torch and transformers.
    from finfed.site.rounds import site_context, train_round

    site = site_context(from_run_config(context.run_config), context.node_config)
    request = read_train_request(message)
    server_round = int(request.config[keys.SERVER_ROUND])
    federation = site.config.federation
    if request.secure:
        check_secure_weight(len(site.train_examples), federation, site.data.site_id)
    try:
        update = train_round(site, request.arrays, server_round=server_round,
                             accountant_state=stored_accountant_state(context),
                             expected_fingerprint=str(request.config.get(keys.FROZEN_FINGERPRINT, "")),
                             run_id=str(context.run_id), progress=_progress(site.data.site_id, server_round),
                             resumed_at_round=int(request.config.get(keys.RESUMED_AT_ROUND, 0)))
    except BudgetExhausted as refusal:
        # The site declines: no update leaves, only the fact of the refusal.
        logger.info("round %d site %d refused: %s", server_round, site.data.site_id, refusal)
        return refusal_reply(message, request, {keys.SITE_ID: site.data.site_id, keys.REFUSED: 1}, site.name)
    keep_accountant_state(context, update.accountant_state)
    if request.secure:
        check_secure_range(update.arrays, federation, site.data.site_id)
    metrics = outgoing_metrics(update.metrics, site_opt_ins(site.config, context.node_config))
    return train_reply(message, request, update.arrays, metrics, weight=int(update.metrics[keys.NUM_EXAMPLES]),
                       site_name=site.name)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    from finfed.site.rounds import evaluate_round, site_context  # see train()

    site = site_context(from_run_config(context.run_config), context.node_config)
    metrics = evaluate_round(site, from_array_record(message.content[keys.ARRAYS]))
    metrics = outgoing_metrics(metrics, site_opt_ins(site.config, context.node_config))
    return evaluate_reply(message, metrics, site.name)
