"""A Flower Grid that delivers the ServerApp's messages to ClientApps in this process.

No SuperLink, no Ray: deterministic and fast, so tests can script faults (a site that
stops answering, or that the SuperLink reports unavailable) and inspect every reply the
coordinator received. Messages are deep-copied on the way in and out, as serialization
would, so no object is shared between the two sides.
"""

from __future__ import annotations

import copy
import uuid
from types import SimpleNamespace

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from finfed.config import ExperimentConfig, to_run_config

NODE_BASE = 1000


class InProcessGrid:
    def __init__(self, client_app, config: ExperimentConfig, node_configs: list[dict] | None = None,
                 node_base: int = NODE_BASE) -> None:
        self.app = client_app
        self.run = SimpleNamespace(run_id=42)
        # Messages take their sender from the process's task identity, which Flower sets in its own processes.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 42, 1, SUPERLINK_NODE_ID
        run_config = to_run_config(config)
        node_configs = node_configs or [{} for _ in range(config.federation.num_sites)]
        self.contexts = {
            node_base + site: Context(run_id=42, node_id=node_base + site, state=RecordDict(), run_config=run_config,
                                      node_config={"partition-id": site, "num-partitions": len(node_configs),
                                                   **extra})
            for site, extra in enumerate(node_configs)}
        self.gone: set[int] = set()         # no longer listed online (heartbeats expired)
        self.unavailable: set[int] = set()  # still listed; the SuperLink answers NODE_UNAVAILABLE for them
        self.silent: set[int] = set()       # still listed; never answer (the round times out)
        self.received: list[Message] = []   # every reply the coordinator got
        self.sent: list[Message] = []       # every message the coordinator sent
        self.before_send = lambda grid, message: None  # hook: scripted faults, e.g. a site dying in round 2

    def get_node_ids(self):
        return [node for node in self.contexts if node not in self.gone]

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.before_send(self, message)
            self.sent.append(message)
            reply = self._deliver(message)
            if reply is not None:
                replies.append(reply)
        self.received += replies
        return replies

    def _deliver(self, message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node in self.silent:
            return None
        if node in self.unavailable or node in self.gone:
            reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Error: Node Unavailable"),
                            reply_to=message)
            reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # the SuperLink answers, not the node
            return reply
        incoming = copy.deepcopy(message)
        try:
            reply = self.app(incoming, self.contexts[node])
        except Exception as error:  # noqa: BLE001 - what Flower's ClientApp runner does with any exception
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(error)}:<'{error}'>"), reply_to=incoming)
        reply = copy.deepcopy(reply)
        reply.metadata.__dict__["_reply_to_message_id"] = message.metadata.message_id
        return reply


def serve(config: ExperimentConfig, grid: InProcessGrid | None = None) -> InProcessGrid:
    """Run finfed's ServerApp to the end against ``grid`` (default: a fresh one with every site healthy)."""
    from finfed.flower_app.client import app as client_app
    from finfed.flower_app.server import app as server_app

    grid = grid or InProcessGrid(client_app.app, config)
    context = Context(run_id=42, node_id=0, node_config={}, state=RecordDict(), run_config=to_run_config(config))
    server_app.main(grid, context)
    return grid


def message_round(message: Message) -> int:
    """The round a coordinator message belongs to (plain: its config; SecAgg+ stages: its group id)."""
    for name in ("config", "fitins.config"):
        if name in message.content and "server-round" in message.content[name]:
            return int(message.content[name]["server-round"])
    return int(message.metadata.group_id)
