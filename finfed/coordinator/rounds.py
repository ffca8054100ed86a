"""The coordinator's round loop, shared by plain FedAvg and SecAgg+.

Flower's ``Strategy.start`` always runs rounds 1..N; a resumed run must start at the
round after its checkpoint, so the loop lives here. Each round: train (a pluggable step:
plain Message-API FedAvg or SecAgg+), record every site's reply, refusal, error or
silence, federated evaluation, central evaluation, then a checkpoint.

A stop request (``RUN/.stop``, see ``finfed.runs.stop``) is honoured before each round and once a
round's training replies are in: a round every asked site answered is finished (recorded,
centrally evaluated, checkpointed; the spend it cost is kept), one that the stop cut short is
abandoned. Either way RunInterrupted ends the loop, naming the last checkpointed round. A run
whose sites have all refused for budget reasons ends after that round: no later round could train.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from flwr.app import ConfigRecord, Message

from finfed import constants as keys
from finfed.config import to_run_config
from finfed.coordinator.run import FederatedRun
from finfed.coordinator.sampling import SiteNames
from finfed.coordinator.validation import UNREADABLE, UpdateValidator, rejection
from finfed.errors import RunInterrupted
from finfed.privacy.disclosure import shown_reason
from finfed.records import from_array_record, to_array_record
from finfed.runs.checkpoint import Checkpoint, write_checkpoint
from finfed.runs.stop import stop_requested
from finfed.wire import reply_metrics

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass
class RoundOutcome:
    """What one training round produced: the new global arrays (None: keep the old) and who did what."""

    arrays: Arrays | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # Updates that failed validation (finfed/coordinator/validation.py): the sites' metrics, marked with
    # keys.UPDATE_REJECTED (their privacy spend is real), and the recorded rejections (site, reason).
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    # A client-level DP release: applied (and accounted) even when no sampled site sent an update.
    private_release: bool = False


class TrainingStep(Protocol):
    def train(self, server_round: int, arrays: Arrays, config: dict[str, Any]) -> RoundOutcome: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class CheckpointedStrategy(Protocol):
    """A strategy with state of its own that a resumed run must continue from (finfed's, not a Flower wrapper's)."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None: ...


def failure_lines(sent: Iterable[Message], replies: Iterable[Message], names: SiteNames,
                  timeout: float) -> list[str]:
    """One line per asked site that sent no usable reply: its error, or its silence.

    A SuperLink answers for a SuperNode that stopped heartbeating (NODE_UNAVAILABLE) with
    itself as sender, so replies are matched to sites through the message they answer.
    """
    destination = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    answered, lines = set(), []
    for reply in replies:
        node = destination.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        answered.add(node)
        if reply.has_error():
            # Only a record-free reason is kept (finfed/privacy/disclosure.py), whatever the site sent.
            lines.append(f"{names.label(node)}: error {reply.error.code}: "
                         f"{shown_reason(reply.error.code, reply.error.reason)}")
    lines += [f"{names.label(node)}: no reply within {timeout:g}s" for node in destination.values()
              if node not in answered]
    return lines


def _metrics(replies: list[Message]) -> list[dict[str, Any]]:
    return [reply_metrics(m) for m in replies]


def _common_metrics(replies: list[Message]) -> list[Message]:
    """The replies with only the metric keys all of them hold (recorded already): Flower's averaging of
    evaluation metrics refuses replies whose keys differ, as per-label recall does where a site's validation
    split lacks a label."""
    common = set.intersection(*(set(m.content[keys.METRICS].keys()) for m in replies)) if replies else set()
    for reply in replies:
        record = reply.content[keys.METRICS]
        for key in [k for k in record.keys() if k not in common]:
            del record[key]
    return replies


class PlainTraining:
    """Updates travel as named tensors (Flower's Message API) and the strategy averages them."""

    def __init__(self, strategy, grid, names: SiteNames, timeout: float,
                 validator: UpdateValidator | None = None) -> None:
        self.strategy, self.grid, self.names, self.timeout = strategy, grid, names, timeout
        self.validator = validator

    def train(self, server_round: int, arrays: Arrays, config: dict[str, Any]) -> RoundOutcome:
        messages = list(self.strategy.configure_train(server_round, to_array_record(arrays),
                                                      ConfigRecord(config), self.grid))
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout)) if messages else []
        errors = [m for m in replies if m.has_error()]
        answered = [m for m in replies if not m.has_error()]
        for reply in answered:
            self.names.learn(reply.metadata.src_node_id, reply_metrics(reply))
        updates = [m for m in answered if keys.ARRAYS in m.content]
        refusals = [m for m in answered if keys.ARRAYS not in m.content]
        accepted, rejected, rejections = self.screen(server_round, arrays, updates)
        # Error replies go on to the strategy: a client-level DP strategy releases its noise regardless.
        aggregated, _ = self.strategy.aggregate_train(server_round, accepted + errors)
        return RoundOutcome(arrays=from_array_record(aggregated) if aggregated is not None else None,
                            updates=_metrics(accepted), refusals=_metrics(refusals),
                            failures=failure_lines(messages, replies, self.names, self.timeout),
                            rejected=rejected, rejections=rejections,
                            private_release=getattr(self.strategy, "releases_every_round", False))

    def screen(self, server_round: int, arrays: Arrays, updates: list[Message]):
        """Updates that pass validation; the metrics and rejections of those that do not (no value recorded)."""
        if self.validator is None:
            return updates, [], []
        accepted, rejected, rejections = [], [], []
        for reply in updates:
            metrics = {k: v for k, v in reply.content[keys.METRICS].items() if k != keys.UPDATE_REJECTED}
            try:
                update = from_array_record(reply.content[keys.ARRAYS])
            except Exception:  # noqa: BLE001 - whatever a foreign site sent, it is rejected, not fatal
                reason = UNREADABLE
            else:
                reason = self.validator.problem(arrays, update, metrics)
            if reason is None:
                accepted.append(reply)
                continue
            label = self.names.label(reply.metadata.src_node_id)
            logger.warning("round %d: the update of %s was rejected (%s) and not aggregated; the round goes on "
                           "with the others", server_round, label, reason)
            rejected.append({**metrics, keys.UPDATE_REJECTED: reason})
            site = metrics.get(keys.SITE_ID)
            rejections.append(rejection(int(site) if isinstance(site, (int, float)) else label, reason))
        return accepted, rejected, rejections

    def state(self) -> dict[str, Any]:
        # Adaptive client-level clipping adapts its norm each round: a resumed run must start from it.
        return self.strategy.checkpoint_state() if isinstance(self.strategy, CheckpointedStrategy) else {}

    def restore(self, state: dict[str, Any]) -> None:
        if isinstance(self.strategy, CheckpointedStrategy):
            self.strategy.restore_checkpoint_state(state)


class Coordinator:
    """Runs rounds ``first..N`` of a run, from scratch or from a checkpoint."""

    def __init__(self, run: FederatedRun, grid, training: TrainingStep, evaluation, names: SiteNames,
                 timeout: float) -> None:
        self.run, self.grid, self.training, self.evaluation = run, grid, training, evaluation
        self.names, self.timeout = names, timeout
        self.resumed_at = 0
        self.completed_round = 0  # the round of the last checkpoint written (or resumed from)

    def run_rounds(self, checkpoint: Checkpoint | None) -> Arrays:
        if checkpoint is None:
            arrays, first = self.run.initial_arrays(), 1
            self.run.central_evaluate(0, arrays)
        else:
            arrays, first = dict(checkpoint.arrays), checkpoint.round + 1
            self.resumed_at = self.completed_round = checkpoint.round
            self.training.restore(checkpoint.strategy_state.get("training", {}))
        for server_round in range(first, self.run.config.federation.rounds + 1):
            self.check_stop(f"before round {server_round}")
            arrays = self.one_round(server_round, arrays)
            self.save(server_round, arrays)
            if self.run.exhausted:
                break  # every site refused for budget reasons: asking again cannot change their answer
            self.check_stop(f"after round {server_round}")
        return arrays

    def check_stop(self, when: str) -> None:
        if self.stop_requested():
            logger.info("stop requested: no new round (%s)", when)
            raise RunInterrupted(f"the run was asked to stop {when}")

    def stop_requested(self) -> bool:
        return stop_requested(self.run.outputs.run_dir)

    def one_round(self, server_round: int, arrays: Arrays) -> Arrays:
        config = {**self.run.train_config(), keys.RESUMED_AT_ROUND: self.resumed_at}
        # Once every site has refused for budget reasons, asking again cannot change their answer.
        outcome = RoundOutcome() if self.run.exhausted else self.training.train(server_round, arrays, config)
        stopping = self.stop_requested()
        if stopping and outcome.failures:
            # The stop reached sites mid-round: those that finished before it keep their spend in their
            # ledgers; a resumed run trains this round again.
            self.check_stop(f"during round {server_round}: round abandoned")
        self.run.record_training(server_round, outcome.updates, outcome.failures, outcome.refusals,
                                 offline=self.offline(outcome.failures), rejected=outcome.rejected,
                                 rejections=outcome.rejections)
        if outcome.private_release:
            self.run.record_client_level_release(server_round)
        if outcome.arrays is not None and (outcome.updates or outcome.private_release):
            arrays = self.run.keep_fixed(outcome.arrays, arrays)
        if not (self.run.exhausted or stopping):
            self.evaluate(server_round, arrays)
        self.run.central_evaluate(server_round, arrays)
        return arrays

    def offline(self, already: list[str]) -> list[str]:
        """Sites seen earlier in the run that are no longer connected (not asked, so not in ``already``)."""
        online = set(self.grid.get_node_ids())
        lines = [f"{self.names.label(node)}: offline (not connected to the coordinator)"
                 for node in sorted(self.names.by_node) if node not in online]
        return [line for line in lines if not any(f.startswith(line.split(":")[0] + ":") for f in already)]

    def evaluate(self, server_round: int, arrays: Arrays) -> None:
        """Federated evaluation on each site's validation split (plain messages in both modes)."""
        messages = list(self.evaluation.configure_evaluate(server_round, to_array_record(arrays), ConfigRecord(),
                                                           self.grid))
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout)) if messages else []
        answered = [m for m in replies if not m.has_error()]
        for reply in answered:  # a site failing every training round is still named by its evaluation
            self.names.learn(reply.metadata.src_node_id, reply_metrics(reply))
        self.run.record_evaluation(server_round, _metrics(answered))
        self.evaluation.aggregate_evaluate(server_round, _common_metrics(answered))

    def save(self, server_round: int, arrays: Arrays) -> None:
        run = self.run
        write_checkpoint(run.outputs.run_dir, Checkpoint(
            round=server_round, total_rounds=run.config.federation.rounds,
            run_config=to_run_config(run.config), arrays=arrays, run_state=run.snapshot(),
            strategy_state={"training": self.training.state(), "site_names": self.names.state()}))
        self.completed_round = server_round
