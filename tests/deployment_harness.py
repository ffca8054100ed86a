"""A consortium on 127.0.0.1 for deployment tests, driven through `finfed deploy` like a platform team would.

Every process starts in its own session; :class:`Processes` kills each one's process
groups (and those of everything it started) when the test ends, pass or fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from finfed.data.synthetic_news import generate_news
from finfed.deploy.consortium import (
    Consortium,
    SiteEntry,
    init_consortium,
    site_template,
)
from finfed.deploy.launch import registered_nodes, write_flower_config
from finfed.runtime.local_engine import free_port
from finfed.runtime.processes import stop_process_tree

LABELS = "negative,neutral,positive"
SITE_BUDGET = 10.0


def finfed_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "finfed.cli", *args]


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


@dataclass
class Processes:
    """Starts commands in new sessions and stops all of them (and their children) at teardown."""

    folder: Path
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict | None = None) -> Started:
        log = self.folder / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        entry = Started(name, process, log)
        self.started.append(entry)
        return entry

    def stop(self, entry: Started) -> None:
        stop_process_tree(entry.process, grace=5.0)

    def stop_all(self) -> None:
        """All at once: each stop may wait out its grace period."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.started))) as pool:
            list(pool.map(self.stop, self.started))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, watch: Started | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if watch is not None and watch.process.poll() is not None:
            raise AssertionError(f"{watch.name} exited ({watch.process.returncode}) while waiting for {what}:\n"
                                 f"{watch.text()[-4000:]}")
        time.sleep(0.1)  # a condition met is seen within 0.1 s, not 0.5
    tail = f":\n{watch.text()[-4000:]}" if watch is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def wait_exit(entry: Started, timeout: float) -> int:
    try:
        return entry.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{entry.name} still running after {timeout:.0f}s:\n{entry.text()[-4000:]}") from None


# --------------------------------------------------------------------------- the consortium

def make_consortium(folder: Path, num_sites: int = 3) -> Consortium:
    """`finfed deploy init` on 127.0.0.1 with a free port."""
    return init_consortium(folder / "consortium", hosts=["127.0.0.1"],
                           sites=[f"bank-{chr(ord('a') + i)}" for i in range(num_sites)],
                           port=free_port(), bind="127.0.0.1")


def site_data(folder: Path, num_sites: int, rows_per_site: int = 200) -> list[Path]:
    """Each bank's own CSV: finfed's synthetic news, one institution per site."""
    frame = generate_news(rows_per_site * num_sites, num_sites, seed=11)
    paths = []
    for site_id, (_, rows) in enumerate(sorted(frame.groupby("institution"), key=lambda item: item[0])):
        path = folder / f"bank-data-{site_id}.csv"
        rows[["text", "label"]].to_csv(path, index=False)
        paths.append(path)
    return paths


def fill_site(consortium: Consortium, site: SiteEntry, data_path: Path, **extra) -> Path:
    """What a bank does with its site.toml template: its data path, its budget (a free local port here)."""
    path = consortium.site_dir(site.name) / "site.toml"
    path.write_text(site_template(site, consortium.address, data_path=str(data_path), budget_epsilon=SITE_BUDGET,
                                  runtime_port=free_port(), **extra), encoding="utf-8")
    return path


def start_coordinator(processes: Processes, consortium: Consortium, name: str = "coordinator") -> Started:
    entry = processes.start(name, finfed_command("deploy", "coordinator", str(consortium.folder)))
    wait_for(lambda: "coordinator ready" in entry.text(), 90, "the coordinator to be ready", entry)
    return entry


def start_site(processes: Processes, consortium: Consortium, site: SiteEntry) -> Started:
    entry = processes.start(site.name, finfed_command("deploy", "site", str(consortium.site_dir(site.name))))
    wait_for(lambda: "SuperNode ID:" in entry.text(), 90, f"{site.name} to connect", entry)
    return entry


def nodes(consortium: Consortium) -> list[dict]:
    return registered_nodes(write_flower_config(consortium))


def online_nodes(consortium: Consortium) -> list[dict]:
    return [node for node in nodes(consortium) if node.get("status") == "online"]


def run_overrides(backbone: str, name: str, **settings) -> list[str]:
    """A tiny federation: tiny BERT, 2 rounds, DP on; the coordinator's test split is synthetic."""
    values = {"name": name, "model.backbone": backbone, "data.labels": LABELS, "data.synthetic_size": 400,
              "federation.rounds": 2, "train.batch_size": 16, "lora.r": 4, "train.learning_rate": 0.01,
              "train.num_threads": 1, "privacy.enabled": True, "federation.round_timeout": 300, **settings}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def start_run(processes: Processes, consortium: Consortium, overrides: list[str], name: str = "run",
              extra: tuple[str, ...] = ()) -> Started:
    return processes.start(name, finfed_command("deploy", "run", str(consortium.folder), *overrides, *extra))


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

