"""Benchmark: speed and memory of simulated runs (issue 14). Cases of `python -m benchmarks`:

    python -m benchmarks --case default-speed   # the default `finfed simulate` (3 sites, 4 rounds)
    python -m benchmarks --case scale-50        # simulations/scale.yaml: 50 sites, 10 % per round, 5 rounds
    python -m benchmarks --case scale-5         # the same federation with 5 sites (the memory reference)
    python benchmarks/speed.py scale-200 --limit 900   # the same, standalone (also: --keep RUN_DIR); stretch: 200 sites

Each case runs `finfed simulate` in a child process and samples, every 0.25 s, the summed resident set
size of that process and all its descendants (the CLI, SuperLink, `flwr run`, the simulation process,
Ray's own processes and its ClientApp workers): ``peak_rss_mb`` is the largest such sum. It also reads
the run's own figures: wall time, the training steps' time (each site's ``train-seconds``, summed over
sites and rounds, from the sites' own logs: timings never leave a site) and the examples trained.
Results: benchmarks/results/<case>.json (through the suite). Figures measured on a shared machine are
contended: the JSON says where and when it was measured. ``--quick``: the same federations, shrunk, on the
tiny model with the suite's in-process engine (a crash check; its memory and speed mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCALE = ROOT / "simulations" / "scale.yaml"

CASES: dict[str, list[str]] = {
    "default-speed": [],
    "scale-50": ["--config", str(SCALE)],
    # The memory reference: 5 sites of the same size as scale-50's (180 training sentences), all asked each
    # round, so each round trains as many examples as a scale-50 round does.
    "scale-5": ["--config", str(SCALE), "--set", "federation.num_sites=5", "--set",
                "federation.fraction_train=1.0", "--set", "data.synthetic_size=1200", "--set", "name=scale-5"],
    "scale-200": ["--config", str(SCALE), "--set", "federation.num_sites=200", "--set",
                  "federation.fraction_train=0.025", "--set", "data.synthetic_size=48000", "--set", "name=scale-200"],
}


class TreeMemory:
    """Peak of the summed RSS of a process and its descendants, sampled on a thread."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_processes = 0
        self.at_peak: list[tuple[str, int]] = []  # (process, RSS) at the peak, largest first
        self.seen: set[int] = set()  # every process of the tree, for OtherLoad
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            sizes = []
            self.seen.update(process.pid for process in processes)
            for process in processes:
                try:
                    sizes.append((_short_name(process), process.memory_info().rss))
                except psutil.Error:
                    pass
            total = sum(size for _, size in sizes)
            if total > self.peak:
                self.peak, self.peak_processes = total, len(processes)
                self.at_peak = sorted(sizes, key=lambda item: -item[1])
            self._stop.wait(self.interval)


class OtherLoad:
    """CPU seconds that processes outside the measured run (and outside this one) used while it ran: what
    makes a measurement contended. Counts the processes alive at the end (one that started and ended in
    between is missed), so "quiet" is a lower bound on the contention, said as such."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.before = self._cpu_by_process(set())

    @staticmethod
    def _cpu_by_process(excluded: set[int]) -> dict[tuple[int, float], float]:
        seconds = {}
        for process in psutil.process_iter(["pid", "create_time", "cpu_times"]):
            info = process.info
            if info["pid"] in excluded or info["cpu_times"] is None:
                continue
            seconds[(info["pid"], info["create_time"])] = info["cpu_times"].user + info["cpu_times"].system
        return seconds

    def measured(self, tree: set[int], wall_s: float) -> dict[str, Any]:
        after = self._cpu_by_process({os.getpid(), self.root_pid, *tree})
        other = sum(max(0.0, now - self.before.get(key, 0.0)) for key, now in after.items())
        share = other / max(wall_s * (os.cpu_count() or 1), 1e-9)
        return {"other_processes_cpu_s": round(other, 1), "other_share_of_machine": round(share, 3),
                "note": ("quiet: other processes used {:.1%} of the machine's CPU during the run" if share < 0.05
                         else "contended: other processes used {:.1%} of the machine's CPU during the run"
                         ).format(share)}


def _short_name(process: psutil.Process) -> str:
    words = [Path(word).name for word in process.cmdline()[:4] if not word.startswith("-")]
    name = process.name()
    if "python" in name and len(words) > 1:
        name = " ".join(words[1:3])
    return name[:40]


def run_case(name: str, args: list[str], run_dir: Path, limit: float | None) -> dict:
    from finfed.runtime.processes import stop_process_tree

    command = [sys.executable, "-m", "finfed.cli", "simulate", *args, "--set", f"run_dir={run_dir}"]
    started = time.time()
    process = subprocess.Popen(command, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    load, timed_out = OtherLoad(process.pid), False
    with TreeMemory(process.pid) as memory:
        try:
            _, stderr = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:  # stop the whole run (SuperLink, Ray...), keep what it measured
            timed_out = True
            stop_process_tree(process, grace=5.0)
            stderr = ""
        except BaseException:  # Ctrl-C or SIGTERM stops the suite (KeyboardInterrupt): the run stops with it
            stop_process_tree(process, grace=5.0)
            raise
    wall = time.time() - started
    return {"case": name, "exit_code": process.returncode, "timed_out_after_s": limit if timed_out else None,
            "wall_s": round(wall, 1),
            "peak_rss_mb": round(memory.peak / 2**20), "processes_at_peak": memory.peak_processes,
            "rss_mb_at_peak": [[name, round(size / 2**20)] for name, size in memory.at_peak[:8]],
            **run_figures(run_dir), "stderr_tail": stderr[-2000:] if process.returncode else "",
            "measured": {"host": platform.node(), "cpus": os.cpu_count(),
                         "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         **load.measured(memory.seen, wall)}}


SITE_LINE = re.compile(r"round (\d+): (\d+) steps on (\d+) examples; train-seconds ([\d.]+), "
                       r"model-ready-seconds ([\d.]+)")


def run_figures(run_dir: Path) -> dict:
    """Training time, steps and examples from the sites' own logs (RUN/sites/*/site.log: finfed.site.rounds
    writes one line per round trained), central metrics from metrics.jsonl."""
    train_s, ready_s, examples, steps, fits = 0.0, 0.0, 0, 0, 0
    for log in sorted(run_dir.glob("sites/*/site.log")):
        for match in SITE_LINE.finditer(log.read_text(encoding="utf-8", errors="replace")):
            fits += 1
            steps += int(match[2])
            examples += int(match[3])
            train_s += float(match[4])
            ready_s += float(match[5])
    builds = sum(len(re.findall(r"model built in ", log.read_text(encoding="utf-8", errors="replace")))
                 for log in run_dir.glob("sites/*/site.log"))
    rounds, central = 0, {}
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            rounds, central = max(rounds, int(record.get("round", 0))), record.get("central", central)
    return {"rounds": rounds, "site_rounds_trained": fits, "training_steps": steps, "examples_trained": examples,
            "train_step_s": round(train_s, 1), "model_ready_s": round(ready_s, 2),
            "site_model_builds": builds, "final_central": central}


#: standalone options (`python benchmarks/speed.py --limit/--keep`); the suite runs without a limit
OPTIONS: dict[str, Any] = {"limit": None, "keep": None}

# --quick: the same federations shrunk (the tiny model, 1 round, in process; see benchmarks/cases.py QUICK).
QUICK_SETTINGS: dict[str, list[str]] = {
    "default-speed": ["data.synthetic_size=200"],
    "scale-50": ["data.synthetic_size=4000"],
    "scale-5": ["federation.num_sites=5", "federation.fraction_train=1.0", "data.synthetic_size=400"],
    "scale-200": ["federation.num_sites=200", "federation.fraction_train=0.025", "data.synthetic_size=16000"],
}


def derived(result: dict) -> dict:
    if result.get("train_step_s"):
        result["wall_over_train_step"] = round(result["wall_s"] / result["train_step_s"], 2)
    if result.get("examples_trained"):
        result["wall_s_per_1000_examples"] = round(1000 * result["wall_s"] / result["examples_trained"], 2)
    return result


def speed_case(bench, name: str) -> dict:
    """One of CASES: full, `finfed simulate` in a child process measured as the module says; quick, in process."""
    if bench.quick:
        config = SCALE if "scale" in name else None
        started = time.time()
        result = bench.federation(name, config, QUICK_SETTINGS[name])
        result["wall_s"] = round(time.time() - started, 1)
        figures = run_figures(bench.work / name)
        figures.pop("rounds"), figures.pop("final_central")
        return derived({**result, **figures, "rounds_completed": len(result["rounds"]) - 1})
    run_dir = Path(OPTIONS["keep"]) if OPTIONS["keep"] else bench.work / name
    args = [*CASES[name], *[a for item in bench.extra for a in ("--set", item)]]
    result = run_case(name, args, run_dir, OPTIONS["limit"])
    result.pop("case")
    rounds_completed, final = result.pop("rounds"), result.pop("final_central")
    result = {"engine": "finfed simulate in a child process (benchmarks/speed.py)",
              "config": str(SCALE.relative_to(ROOT)) if "scale" in name else None,
              "overrides": [a for a in args if a not in ("--config", "--set", str(SCALE))],
              **result, "rounds_completed": rounds_completed,
              "final": {k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}}
    if result["exit_code"] != 0 and result["timed_out_after_s"] is None:
        raise RuntimeError(f"finfed simulate exited {result['exit_code']}: {result['stderr_tail'][-500:]}")
    return derived(result)


def default_speed(bench) -> dict:
    """Speed of the default `finfed simulate` (3 sites, 4 rounds): wall time against the sites' training-step
    time, model builds, examples trained, peak memory of the whole process tree."""
    return speed_case(bench, "default-speed")


def scale_50(bench) -> dict:
    """50 sites, 10 % asked per round, 5 rounds, DP epsilon 8 (simulations/scale.yaml): wall time, training-step
    time, model builds, peak memory of the whole process tree (goal: at most 1.2 times scale-5's)."""
    return speed_case(bench, "scale-50")


def scale_5(bench) -> dict:
    """The memory reference for scale-50: the same federation with 5 sites, all asked each round (as many
    examples per round as a scale-50 round)."""
    return speed_case(bench, "scale-5")


def scale_200(bench) -> dict:
    """Stretch: simulations/scale.yaml with 200 sites, 2.5 % asked per round."""
    return speed_case(bench, "scale-200")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--keep", help="keep the run directory here instead of a temporary one")
    parser.add_argument("--limit", type=float, default=None,
                        help="seconds before the run is stopped (e.g. 450: a shared machine's lock turn); what it "
                             "measured so far is still written, with timed_out_after_s")
    parser.add_argument("--quick", action="store_true", help="the suite's quick mode")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import benchmarks.speed as suite_module
    from benchmarks.__main__ import main as suite
    from benchmarks.registry import CASES as REGISTERED

    suite_module.OPTIONS.update(limit=args.limit, keep=args.keep)
    if args.case in REGISTERED:
        return suite(["--case", args.case, *(["--quick"] if args.quick else [])])
    # scale-200 is not one of the suite's cases (hours): the suite's record, written the same way.
    from benchmarks.__main__ import QUICK_RESULTS, RESULTS
    from benchmarks.__main__ import run_case as suite_case
    from benchmarks.cases import Bench

    results = QUICK_RESULTS if args.quick else RESULTS
    with tempfile.TemporaryDirectory(prefix="finfed-bench-") as scratch:
        bench = Bench(quick=args.quick, work=Path(scratch), engine="inprocess" if args.quick else "simulate")
        if args.quick:
            from benchmarks.tiny import write_tiny_bert

            bench.backbone = str(write_tiny_bert(Path(scratch) / "tiny-bert"))
        record = suite_case(args.case, getattr(suite_module, args.case.replace("-", "_")), bench)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.case}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=2))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
