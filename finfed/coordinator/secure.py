"""SecAgg+ rounds: the coordinator receives only masked vectors and unmasks only their sum.

In flwr 1.42 SecAgg+ exists only for the older strategy/workflow API:
``SecAggPlusWorkflow`` drives the four protocol stages through a ``LegacyContext`` and
asks a legacy ``Strategy`` for fit instructions and, at the end, hands it ``FitRes``
objects whose parameters have all been replaced by the unmasked weighted average.
``RoundFace`` is that legacy strategy, reduced to one round: it sends the sites chosen by
``SiteSampler`` the global tensors (legacy messages carry them unnamed, so their names
travel in the config), and keeps the results. Everything else about a round (recording,
evaluation, checkpoints) is the shared loop in ``finfed/coordinator/rounds.py``.

What the coordinator still sees per site: the plain-text metrics of its ``FitRes`` (site
id, example count, training loss, steps, epsilon and its delta, noise multiplier, sampling rate, or a
refusal), its public keys, encrypted key shares it forwards, and its masked vector.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.common import FitIns, Parameters, parameters_to_ndarrays
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow

from finfed import constants as keys
from finfed.compat import (
    check_secagg_workflow,
    grid_client_proxy,
    legacy_round_context,
    secagg_drop_error_replies,
    secagg_failure_error,
    secagg_keep_participants,
)
from finfed.config import FederationSettings
from finfed.coordinator.rounds import Arrays, RoundOutcome
from finfed.coordinator.sampling import SiteNames, SiteSampler
from finfed.coordinator.validation import AGGREGATE, UpdateValidator, rejection
from finfed.errors import RunError
from finfed.privacy.disclosure import shown_reason
from finfed.records import to_array_record
from finfed.wire import refusing_site

logger = logging.getLogger(__name__)


class DropoutTolerantSecAggPlus(SecAggPlusWorkflow):
    """Flower 1.42's workflow, unmasking only for sites that took part in the key sharing.

    Flower keeps a site that failed the setup or share-keys stage in the set it unmasks
    for, then asks the other sites for that site's key shares, which it never sent: the
    round halts ("Not enough shares"). A site that died just before a round (still listed
    online until its heartbeat expires) is enough to trigger it. Such a site has no
    masks in anyone's vector (sites add pairwise masks only with sites whose key shares
    reached them), so leaving it out of the participants and of every neighbourhood is
    exact; sites that drop after sharing their keys are still unmasked around with their
    neighbours' shares, as SecAgg+ intends.
    """

    refused: dict[int, int]  # this round's node id -> site id of sites that declined at setup

    def setup_stage(self, grid, context, state) -> bool:
        """Flower's setup stage; a site's refusal reply (finfed/wire.py) is a refusal, not a failure."""
        seen = _RepliesSeen(grid)
        proceed = super().setup_stage(seen, context, state)
        self.refused = {reply.metadata.src_node_id: site for reply in seen.replies
                        if (site := refusing_site(reply)) is not None}
        secagg_drop_error_replies(state, keys.REFUSAL_ERROR_CODE)
        return proceed

    def share_keys_stage(self, grid, context, state) -> bool:
        super().share_keys_stage(grid, context, state)
        return secagg_keep_participants(self, state)


class _RepliesSeen:
    """The grid, keeping the replies of the stage it serves (Flower's workflow drops error replies unread)."""

    def __init__(self, grid) -> None:
        self.grid, self.replies = grid, []

    def send_and_receive(self, messages, *args, **kwargs):
        replies = list(self.grid.send_and_receive(messages, *args, **kwargs))
        self.replies += replies
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


def secagg_workflow(federation: FederationSettings) -> SecAggPlusWorkflow:
    """Flower's workflow from finfed's settings (a share <= 1 is a fraction, above it a count)."""
    def share_or_count(value: float) -> int | float:
        return float(value) if value <= 1 else int(value)
    check_secagg_workflow()
    return DropoutTolerantSecAggPlus(
        num_shares=share_or_count(federation.secagg_num_shares),
        reconstruction_threshold=share_or_count(federation.secagg_reconstruction_threshold),
        max_weight=federation.secagg_max_weight, clipping_range=federation.secagg_clipping_range,
        quantization_range=federation.secagg_quantization_range, timeout=federation.round_timeout)


class RoundFace(Strategy):
    """The legacy strategy ``SecAggPlusWorkflow`` talks to, for one round."""

    def __init__(self, grid, nodes: list[int], config: dict[str, Any]) -> None:
        self.grid, self.nodes, self.config = grid, nodes, config
        self.results: list | None = None  # stays None if the protocol halts (too few sites left)
        self.failures: list = []

    def configure_fit(self, server_round, parameters: Parameters, client_manager):
        fit = FitIns(parameters, {**self.config, "server-round": server_round})
        run_id = self.grid.run.run_id
        return [(grid_client_proxy(node, self.grid, run_id), fit) for node in self.nodes]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return None, {}  # the loop applies the sum itself: keeps names and float32

    # The workflow never calls these: evaluation goes through the plain loop.
    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class SecureTraining:
    """One SecAgg+ training round per call, through Flower's workflow."""

    def __init__(self, context, grid, federation: FederationSettings, sampler: SiteSampler,
                 names: SiteNames, validator: UpdateValidator | None = None) -> None:
        self.context, self.grid, self.federation = context, grid, federation
        self.sampler, self.names, self.validator = sampler, names, validator
        self.workflow = secagg_workflow(federation)

    def train(self, server_round: int, arrays: Arrays, config: dict[str, Any]) -> RoundOutcome:
        nodes = self.sampler.train_nodes(self.grid)
        face = RoundFace(self.grid, nodes, {**config, keys.TENSOR_NAMES: ",".join(arrays)})
        legacy = legacy_round_context(self.context, face, self.federation.rounds, server_round,
                                      to_array_record(arrays))
        self.workflow.refused = {}
        self.workflow(self.grid, legacy)
        return self._checked(self._outcome(face, nodes, list(arrays)), arrays)

    def _checked(self, outcome: RoundOutcome, arrays: Arrays) -> RoundOutcome:
        """Only the unmasked average can be checked (finfed/coordinator/validation.py): if it fails, the round's
        aggregate is rejected as a whole, the global model kept, and every contributing site marked."""
        if outcome.arrays is None or self.validator is None:
            return outcome
        reason = self.validator.aggregate_problem(arrays, outcome.arrays, outcome.updates)
        if reason is None:
            return outcome
        logger.warning("round aggregate rejected (%s): some site's masked update was bad, which one SecAgg+ "
                       "hides; the global model is kept", reason)
        outcome.rejected = [{**m, keys.UPDATE_REJECTED: f"{AGGREGATE}: {reason}"} for m in outcome.updates]
        outcome.rejections = [rejection(AGGREGATE, reason)]
        outcome.updates, outcome.arrays = [], None
        return outcome

    def _outcome(self, face: RoundFace, nodes: list[int], names: list[str]) -> RoundOutcome:
        refused = dict(self.workflow.refused)
        refusals = [{keys.SITE_ID: site, keys.REFUSED: 1} for site in refused.values()]
        for node, site in refused.items():
            self.names.learn(node, {keys.SITE_ID: site})
        if face.results is None:
            return RoundOutcome(refusals=refusals,
                                failures=[f"{self.names.label(n)}: secure aggregation halted, too few sites "
                                          "completed its stages" for n in nodes if n not in refused])
        replied = {proxy.node_id: dict(fit.metrics) for proxy, fit in face.results}
        for node, metrics in replied.items():
            self.names.learn(node, metrics)
        updates = [m for m in replied.values() if not m.get(keys.REFUSED)]
        reasons = "; ".join(_failure_reason(f) for f in face.failures) or "no reply within the round timeout"
        outcome = RoundOutcome(updates=updates,
                               refusals=refusals + [m for m in replied.values() if m.get(keys.REFUSED)],
                               failures=[f"{self.names.label(n)}: dropped out of SecAgg+ ({reasons})"
                                         for n in nodes if n not in replied and n not in refused])
        if updates:  # every FitRes carries the same unmasked weighted average
            outcome.arrays = _named(parameters_to_ndarrays(face.results[0][1].parameters), names)
        return outcome

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def _failure_reason(failure: BaseException) -> str:
    """Flower's SecAgg+ workflow wraps a site's error reply as ``Exception(Error)``: keep its record-free reason."""
    error = secagg_failure_error(failure)
    if error is not None:
        return f"error {error.code}: {shown_reason(error.code, error.reason)}"
    return f"{type(failure).__name__} in the SecAgg+ workflow"


def _named(values: list[np.ndarray], names: list[str]) -> Arrays:
    if len(values) != len(names):
        raise RunError(f"SecAgg+ returned {len(values)} tensors for {len(names)} trainable tensors")
    return {name: np.asarray(value, dtype=np.float32) for name, value in zip(names, values)}
