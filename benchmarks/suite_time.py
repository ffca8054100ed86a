"""Benchmark: the wall time of the test tiers, as the README gives them (issue 14). A case of the suite:

    python -m benchmarks --case test-tiers     # about 13 min on the 2-core machine: the fast tier, then everything

Each tier is the README's command (``python -m pytest -n 2 --dist loadgroup`` with its marker), run in a child
process from the repository root; the record keeps its wall time, its counts (passed, failed, skipped, errors)
and its slowest tests. The tiers are timed here, not inside the tests: a timed test would fail on a slow
machine for reasons that are not the code's. ``--quick`` only collects each tier (a crash check: the suite's
quick mode runs inside the test suite, which must not run itself again).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"]
# name: (the marker expression, or None for every test; the README's words for it)
TIERS = {"fast": ('not slow', "the fast tier: no test over 20 s"),
         "whole": (None, "everything, as CI runs it")}
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")
SLOWEST = re.compile(r"^\s*([\d.]+)s (call|setup|teardown)\s+(\S+)")


def tiers(bench) -> dict:
    """The README's test tiers, each timed as a user runs it: wall time, counts, slowest tests."""
    measured = {name: run_tier(marker, quick=bench.quick) for name, (marker, _) in TIERS.items()}
    failed = [name for name, tier in measured.items() if tier["exit_code"] != 0]
    if failed:
        raise RuntimeError(f"test tier(s) {', '.join(failed)} did not pass: "
                           + "; ".join(f"{n}: {measured[n]['counts']}" for n in failed))
    rows = [{"tier": name, "what": TIERS[name][1], "command": tier["command"], "wall_s": tier["wall_s"],
             **tier["counts"], "machine": tier["measured"]["note"]} for name, tier in measured.items()]
    slow = [{"tier": name, **test} for name, tier in measured.items() for test in tier["slowest"]]
    shares = [tier["measured"]["other_share_of_machine"] for tier in measured.values()]
    return {"engine": "pytest in a child process" + (" (quick: collection only)" if bench.quick else ""),
            **{f"{name}_tier_s": tier["wall_s"] for name, tier in measured.items()},
            "measured": {"note": f"other processes used at most {max(shares):.1%} of the machine's CPU "
                                 "during either tier" + (" (quiet)" if max(shares) < 0.05 else " (contended)")},
            "tiers": rows, "slowest_tests": slow}


def run_tier(marker: str | None, *, quick: bool) -> dict:
    from benchmarks.speed import OtherLoad, TreeMemory

    command = ([*PYTEST, "-q", "--durations=10"] if not quick else  # quick: collected in one process
               [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q"])
    command += ["-m", marker] if marker else []
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    load = OtherLoad(process.pid)  # how busy the rest of the machine was: a contended tier is slower
    with TreeMemory(process.pid) as tree:
        output, _ = process.communicate()
    wall = time.perf_counter() - started
    return {"command": shlex.join(["python", *command[1:]]), "marker": marker, "exit_code": process.returncode,
            "wall_s": round(wall, 1), "counts": counts(output, quick=quick), "slowest": slowest(output),
            "measured": load.measured(tree.seen, wall)}


def counts(output: str, *, quick: bool) -> dict[str, int]:
    """The last summary line's counts (``629 passed, 49 deselected``); collection: ``678 tests collected``."""
    lines = [line for line in output.splitlines() if line.strip()]
    if quick:
        found = re.search(r"(\d+)(?:/(\d+))? tests? collected", output)
        return {"collected": int(found.group(1))} if found else {}
    last = next((line for line in reversed(lines) if " in " in line and SUMMARY.search(line)), "")
    return {kind.rstrip("s") if kind.startswith("error") else kind: int(number)
            for number, kind in SUMMARY.findall(last)}


def slowest(output: str) -> list[dict]:
    return [{"seconds": float(m.group(1)), "phase": m.group(2), "test": m.group(3)}
            for m in map(SLOWEST.match, output.splitlines()) if m]
