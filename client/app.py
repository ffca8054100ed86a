"""Flower ClientApp: one institution trains the global adapter on its own data.

Replies carry only the trained tensors and numbers (example count, loss, epsilon).
The site's accountant history lives in ``context.state`` so epsilon is cumulative.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.audit import audit_mod
from finfed import constants as keys
from finfed.config import from_run_config
from finfed.errors import BudgetExhausted
from finfed.records import from_array_record, to_array_record
from finfed.site import evaluate_round, site_context, train_round

app = ClientApp(mods=[audit_mod])


def _progress(site_id: int, server_round: int):
    def report(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 4) == 0:
            print(f"[finfed] round {server_round} site {site_id}: step {step}/{total} loss {loss:.4f}",
                  flush=True)
    return report


@app.train()
def train(message: Message, context: Context) -> Message:
    site = site_context(from_run_config(context.run_config), context.node_config)
    config = message.content[keys.CONFIG]
    server_round = int(config[keys.SERVER_ROUND])
    stored = context.state.config_records.get(keys.ACCOUNTANT_STATE)
    arrays = from_array_record(message.content[keys.ARRAYS])
    try:
        update = train_round(site, arrays, server_round=server_round,
                             accountant_state=dict(stored) if stored else None,
                             expected_fingerprint=str(config.get(keys.FROZEN_FINGERPRINT, "")),
                             run_id=str(context.run_id), progress=_progress(site.data.site_id, server_round))
    except BudgetExhausted as refusal:
        # The site declines: no update leaves, only the fact of the refusal.
        print(f"[finfed] round {server_round} site {site.data.site_id} refused: {refusal}", flush=True)
        refused = {keys.SITE_ID: site.data.site_id, keys.REFUSED: 1}
        return Message(content=RecordDict({keys.METRICS: MetricRecord(refused)}), reply_to=message)
    if update.accountant_state is not None:
        context.state[keys.ACCOUNTANT_STATE] = ConfigRecord(update.accountant_state)
    content = RecordDict({
        keys.ARRAYS: to_array_record(update.arrays),
        keys.METRICS: MetricRecord(update.metrics)})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    site = site_context(from_run_config(context.run_config), context.node_config)
    metrics = evaluate_round(site, from_array_record(message.content[keys.ARRAYS]))
    return Message(content=RecordDict({keys.METRICS: MetricRecord(metrics)}), reply_to=message)
