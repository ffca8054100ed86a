"""How a benchmark case runs a federation, and what it measures around it.

Two engines, one result:

- ``simulate``: `finfed simulate` for real (Flower's simulation engine, one process per site).
  Full benchmark runs use it: the figures are the ones a user gets.
- ``inprocess``: finfed's ServerApp and ClientApp in this process, messages handed over by a
  small grid (no SuperLink, no Ray). ``--quick`` uses it: the same finfed code per round, without
  the engine's start-up cost, so every case can be checked for crashes in a minute or two.

``Meter`` samples the resident memory of this process and all its children (Ray's workers
included) in a background thread: the peak is the largest sum seen.
"""

from __future__ import annotations

import copy
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from finfed.config import ExperimentConfig, load_config, to_run_config, with_absolute_paths


class Meter:
    """Wall time and peak resident memory (process tree, sampled every ``interval`` seconds)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak_bytes, self.wall_s = interval, 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _tree_rss(self) -> int:
        import psutil

        me = psutil.Process(os.getpid())
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:  # a child that ended between listing and reading
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._tree_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Meter":
        self._started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._tree_rss())
        self.wall_s = time.time() - self._started

    def figures(self) -> dict[str, float]:
        return {"wall_s": round(self.wall_s, 1), "peak_rss_mb": round(self.peak_bytes / 2**20, 1)}


def experiment(config_file: str | Path | None, overrides: list[str]) -> ExperimentConfig:
    return with_absolute_paths(load_config(config_file, overrides))


def run_simulate(config_file: str | Path | None, overrides: list[str]) -> int:
    """`finfed simulate` as a user runs it; the exit code."""
    from finfed.cli.main import main as finfed

    args = ["--config", str(config_file)] if config_file else []
    return finfed(["simulate", *args, *[a for item in overrides for a in ("--set", item)]])


def run_inprocess(config_file: str | Path | None, overrides: list[str]) -> int:
    """The ServerApp against ClientApps in this process (see the module docstring); the exit code."""
    from flwr.app import Context, RecordDict

    from finfed.flower_app.client import app as client_app
    from finfed.flower_app.server import app as server_app
    from finfed.runs.outputs import prepare_run_dir
    from finfed.runtime.local_engine import simulation_config

    config = simulation_config(experiment(config_file, overrides))
    prepare_run_dir(config.resolved_run_dir)
    run_config = to_run_config(config)
    grid = _InProcessGrid(client_app.app, run_config, config.federation.num_sites)
    server_app.main(grid, Context(run_id=42, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    return 0


ENGINES: dict[str, Callable[[str | Path | None, list[str]], int]] = {
    "simulate": run_simulate, "inprocess": run_inprocess}


class _InProcessGrid:
    """The least of Flower's Grid the ServerApp uses: every site online, each reply computed at once."""

    NODE_BASE = 1000

    def __init__(self, client_app, run_config: dict, num_sites: int) -> None:
        from flwr.app import Context, RecordDict
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        self.app = client_app
        self.run = SimpleNamespace(run_id=42)
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 42, 1, SUPERLINK_NODE_ID
        self.contexts = {self.NODE_BASE + site: Context(
            run_id=42, node_id=self.NODE_BASE + site, state=RecordDict(), run_config=run_config,
            node_config={"partition-id": site, "num-partitions": num_sites}) for site in range(num_sites)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            reply = copy.deepcopy(self.app(copy.deepcopy(message), self.contexts[message.metadata.dst_node_id]))
            reply.metadata.__dict__["_reply_to_message_id"] = message.metadata.message_id
            replies.append(reply)
        return replies
