"""Which sites a round asks, without waiting forever for a site that has died.

Flower's own sampling blocks until ``min_available_nodes`` SuperNodes are online. A
SuperNode that dies stops sending heartbeats and drops out of ``grid.get_node_ids()``
(the SuperLink marks it offline after 2 x its heartbeat interval), so waiting for every
site would stall the run. Here a round waits for all sites only when this coordinator
process starts (they may still be connecting) and otherwise takes the sites online, as
long as there are at least ``needed`` of them (``federation.min_sites``).

While it waits it says so every ``report_s`` seconds, naming the sites not connected
when the coordinator knows their node ids (``federation.site_nodes``, set by
``finfed deploy run``), so a site that was never started is not a silent hour-long wait.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from finfed import constants as keys
from finfed.config import FederationSettings
from finfed.errors import ConfigError, RunError
from finfed.wire import clean_site_name

REPORT_S = 30.0  # seconds between "waiting for sites" lines
logger = logging.getLogger(__name__)


def parse_site_nodes(value: str) -> dict[int, str]:
    """``federation.site_nodes`` ("node-id:name,..." from finfed/deploy/nodes.py) as {node id: name}."""
    pairs = {}
    for item in filter(None, (part.strip() for part in str(value).split(","))):
        node, _, name = item.partition(":")
        if not name.strip() or not node.strip().isdigit():
            raise ConfigError(f"`federation.site_nodes` entries must be node-id:site-name, got {item!r}")
        pairs[int(node)] = name.strip()
    return pairs


class SiteSampler:
    """Chooses each round's sites from the SuperNodes online."""

    def __init__(self, federation: FederationSettings, *, minimum: int = 1, poll_s: float = 1.0,
                 report_s: float = REPORT_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, out: Callable[[str], None] | None = None,
                 needed: int | None = None):
        self.federation = federation
        per_round = max(int(federation.num_sites * federation.fraction_train), 1)
        # The fewest sites online a round may go on with: `needed` if given, else `min_sites`, or every
        # site a round samples.
        self.needed = max(needed or federation.min_sites or per_round, minimum)
        self.poll_s, self.clock, self.sleep = poll_s, clock, sleep
        self.report_s, self.out = report_s, out or _progress
        self.site_names = parse_site_nodes(federation.site_nodes)
        self.started = False

    def online(self, grid) -> list[int]:
        """The sites online now, after the first call waits (up to the connection wait) for all to connect."""
        if not self.started:
            nodes = self._wait(grid, self.federation.num_sites, self.connect_timeout, settle=True)
            self.started = True
            return nodes
        return self._wait(grid, self.needed, self.connect_timeout, settle=False)

    @property
    def connect_timeout(self) -> float:
        return self.federation.connect_timeout or self.federation.round_timeout

    @property
    def _timeout_key(self) -> str:
        return "`federation.connect_timeout`" if self.federation.connect_timeout else "`federation.round_timeout`"

    def train_nodes(self, grid) -> list[int]:
        nodes = self.online(grid)
        size = min(len(nodes), max(int(len(nodes) * self.federation.fraction_train), self.needed))
        return sorted(random.sample(nodes, size))

    def evaluate_nodes(self, grid) -> list[int]:
        """A `fraction_evaluate` share of the sites online now (at least one; none when it is 0, as in
        Flower's strategies); no wait for the others."""
        if self.federation.fraction_evaluate == 0:
            return []
        nodes = sorted(grid.get_node_ids())
        size = min(len(nodes), max(round(len(nodes) * self.federation.fraction_evaluate), 1))
        return sorted(random.sample(nodes, size))

    def poisson_nodes(self, grid, rate: float, rng: np.random.Generator) -> list[int]:
        """Client-level DP's sample: every site independently with probability ``rate``.

        Coins are flipped for the sites online only: a configured site that is offline would
        contribute nothing if sampled, so the output is distributed as if every configured site had
        its coin (see finfed.privacy.client_level). More SuperNodes than configured sites would let
        one site be sampled (and counted) twice, so that is refused.
        """
        nodes = self.online(grid)
        if len(nodes) > self.federation.num_sites:
            raise RunError(f"{len(nodes)} SuperNodes are online but `federation.num_sites` is "
                           f"{self.federation.num_sites}: with client-level DP each site must be one node, "
                           "or a site could be sampled more often than the accountant assumes")
        return [node for node in nodes if rng.random() < rate]

    def _wait(self, grid, wanted: int, timeout: float, *, settle: bool) -> list[int]:
        deadline = self.clock() + timeout
        next_report = self.clock()
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= wanted:
                return nodes
            if self.clock() >= next_report:
                self.out(self.waiting_line(nodes, wanted, deadline - self.clock()))
                next_report = self.clock() + self.report_s
            if self.clock() >= deadline:
                if settle and len(nodes) >= self.needed:
                    self.out(f"going on without {self.missing(nodes) or 'the missing sites'}: "
                             f"{len(nodes)} of {self.federation.num_sites} sites connected")
                    return nodes  # some sites never came: go on with those that did
                raise RunError(f"only {len(nodes)} of {self.federation.num_sites} sites online after waiting "
                               f"{timeout:.0f}s ({self._timeout_key}); a round needs {self.needed} "
                               "(`federation.min_sites`)")
            self.sleep(self.poll_s)

    def missing(self, online: list[int]) -> str:
        """The named sites not online now ("" when the coordinator knows no names)."""
        return ", ".join(f"{name} (not connected)" for node, name in sorted(self.site_names.items(),
                                                                           key=lambda item: item[1])
                         if node not in set(online))

    def waiting_line(self, online: list[int], wanted: int, left: float) -> str:
        missing = self.missing(online) or f"{max(self.federation.num_sites - len(online), 0)} site(s) not connected"
        return (f"waiting for sites: {missing}; {len(online)} of {self.federation.num_sites} connected, "
                f"{wanted} needed; giving up in {max(left, 0):.0f}s ({self._timeout_key})")


def _progress(line: str) -> None:
    logger.info("%s", line)


class SiteNames:
    """Which site each SuperNode is, learnt from the site ids in its replies, for readable failure records."""

    def __init__(self, known: Mapping[str, int] | None = None) -> None:
        self.by_node = {int(node): int(site) for node, site in (known or {}).items()}
        self.names: dict[int, str] = {}  # site id -> the name its replies carry (not checkpointed: sent again)

    def learn(self, node_id: int, metrics: Mapping[str, Any]) -> None:
        if keys.SITE_ID not in metrics:
            return
        site = int(metrics[keys.SITE_ID])
        # A site that reconnected under a new node id (a restarted simulation, a re-registered
        # SuperNode) is not also an offline one under its old id.
        self.by_node = {node: known for node, known in self.by_node.items() if known != site}
        self.by_node[int(node_id)] = site
        if clean_site_name(metrics.get(keys.SITE_NAME)):
            self.names[site] = clean_site_name(metrics.get(keys.SITE_NAME))

    def label(self, node_id: int) -> str:
        site = self.by_node.get(int(node_id))
        if site is None:
            return f"node {node_id}"
        name = f"{self.names[site]}, " if site in self.names else ""
        return f"site {site} ({name}node {node_id})"

    def state(self) -> dict[str, int]:
        return {str(node): site for node, site in self.by_node.items()}
