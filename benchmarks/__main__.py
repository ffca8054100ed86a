"""finfed's benchmark suite.

    python -m benchmarks                      # every case, full size (hours on a 2-core CPU)
    python -m benchmarks --case phrasebank-dp # one case (repeat --case for more)
    python -m benchmarks --case default-speed --repeat 3   # 3 runs: the median run, with every run's figures
    python -m benchmarks --case phrasebank-nodp --seeds 0,1,2   # one run per training seed, kept the same way
    python -m benchmarks --quick              # every case on a tiny model and small data (CI, < 3 min)
    python -m benchmarks --list               # the cases, and which are available
    python -m benchmarks --write-docs         # docs/benchmarks.md from benchmarks/results/*.json

Each case writes <results>/<case>.json (default benchmarks/results; --quick: benchmarks/results-quick).
Cases are registered in benchmarks/registry.py; the docs' template is benchmarks/docs_template.md.
Full cases need the real data under --data-root (default ../shared/data); --quick needs none.
Exit status 1 when a case crashed (its JSON then holds the error); 130 when Ctrl-C or SIGTERM stopped the
suite (every case and repeat after the one running; that one writes nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

from benchmarks.cases import DATA_ROOT, ROOT, Bench
from benchmarks.engine import Meter
from benchmarks.registry import CASES
from benchmarks.repeats import SEED, combine
from finfed.runs.stop import EXIT_INTERRUPTED, sigterm_interrupts

RESULTS = ROOT / "benchmarks" / "results"
QUICK_RESULTS = ROOT / "benchmarks" / "results-quick"


def resolve(name: str) -> Callable[[Bench], dict] | None:
    """The case's function, or None when its module is not there (yet)."""
    module_name, function = CASES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            return None
        raise
    return getattr(module, function)


def describe(function: Callable) -> str:
    return " ".join((function.__doc__ or "").split())


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_case(name: str, function: Callable[[Bench], dict], bench: Bench) -> dict[str, Any]:
    record: dict[str, Any] = {"case": name, "description": describe(function),
                              "mode": "quick" if bench.quick else "full",
                              "date": datetime.date.today().isoformat(), "commit": commit()}
    with Meter() as meter:
        try:
            figures, error = function(bench), None
        except Exception as exc:  # noqa: BLE001 - a crashed case is recorded and the suite fails at the end
            figures, error = {}, f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    record.update({"ok": error is None, "error": error, **meter.figures(), **figures})
    return record


def keep_previous_tuning_row(results: Path, name: str) -> None:
    """Before a PhraseBank case's result is replaced, its previous result moves to
    ``<results>/tuning/suite-<date>-<commit>/``: the DP tuning table lists every federation ever measured,
    and a re-run must not erase the row of the settings it replaces. A result promoted from a tuning run
    (its ``tuning_run``) already has its row there."""
    from benchmarks.docs import TUNED_CASES

    previous = results / f"{name}.json"
    if name not in TUNED_CASES or not previous.is_file():
        return
    record = json.loads(previous.read_text(encoding="utf-8"))
    if record.get("tuning_run") or not record.get("ok", True):
        return
    folder = results / "tuning" / f"suite-{record.get('date', 'undated')}-{record.get('commit') or 'unknown'}"
    folder.mkdir(parents=True, exist_ok=True)
    previous.replace(folder / previous.name)


def _fresh(bench: Bench, repeat: int, seed: int | None = None) -> Bench:
    """The suite's Bench, with a run folder of its own for each repeat (a run folder is never overwritten),
    and the repeat's own ``seed=`` with ``--seeds``."""
    extra = bench.extra if seed is None else [*bench.extra, f"{SEED}{seed}"]
    if repeat == 0:
        return dataclasses.replace(bench, extra=extra)
    work = bench.work / f"repeat-{repeat}"
    work.mkdir()
    return dataclasses.replace(bench, work=work, extra=extra)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes whole numbers separated by commas, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds names a seed twice: {text!r}")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=[], help="run this case (repeatable); default: all")
    parser.add_argument("--quick", action="store_true", help="tiny model, small synthetic data, in-process engine")
    parser.add_argument("--results", type=Path, help="folder for <case>.json")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="the real data (full mode)")
    parser.add_argument("--engine", choices=["simulate", "inprocess"],
                        help="how federations run (default: simulate; --quick: inprocess)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each case N times and keep the median run with every run's figures "
                             "(benchmarks/repeats.py); for figures inside the machine's run-to-run spread")
    parser.add_argument("--seeds", type=_seeds, metavar="K,K,...",
                        help="run each case once per training seed (`seed=K`) and keep the median run with every "
                             "run's figures, as --repeat does; for runs whose only randomness is their seed")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        help="an extra `section.key=value` for every federation of this run")
    parser.add_argument("--warm-from", default="", help="the warm cases (phrasebank-warm, tatqa-warm): start "
                        "from this finished public run, for the case of its task, instead of training it")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md from the results")
    parser.add_argument("--check-docs", action="store_true", help="exit 1 if docs/benchmarks.md is stale")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.write_docs or args.check_docs:
        from benchmarks.docs import DOCS, render

        text = render(args.results or RESULTS)
        if args.check_docs:
            stale = not DOCS.is_file() or DOCS.read_text(encoding="utf-8") != text
            print(f"{DOCS} is {'stale: run python -m benchmarks --write-docs' if stale else 'up to date'}")
            return int(stale)
        DOCS.write_text(text, encoding="utf-8")
        print(f"wrote {DOCS}")
        return 0
    if args.repeat < 1:
        print(f"--repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        return 2
    if args.seeds and (args.repeat > 1 or any(o.startswith(SEED) for o in args.extra)):
        print("--seeds gives each run its seed: it goes with neither --repeat nor --set seed=", file=sys.stderr)
        return 2
    unknown = [name for name in args.case if name not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    functions = {name: resolve(name) for name in (args.case or CASES)}
    if args.list:
        for name, function in functions.items():
            print(f"{name:24s} {describe(function) if function else '(unavailable: ' + CASES[name] + ')'}")
        return 0
    results = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    try:
        with sigterm_interrupts():  # SIGTERM stops the suite as Ctrl-C does (a run's own stop is its engine's)
            failed = run_cases(args, functions, results)
    except KeyboardInterrupt:
        print(f"[bench] stopped by a signal: the case being run wrote nothing; the cases finished before it "
              f"are in {results}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if failed:
        print(f"[bench] crashed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_cases(args: argparse.Namespace, functions: dict[str, Callable[[Bench], dict] | None],
              results: Path) -> list[str]:
    """Run every case (each ``--repeat`` times) and write its record; the names of those that crashed.
    A stop (Ctrl-C, SIGTERM, or a federation stopped by one) ends every case and repeat: KeyboardInterrupt."""
    failed = []
    with tempfile.TemporaryDirectory(prefix="finfed-bench-") as scratch:
        work = Path(scratch)
        bench = Bench(quick=args.quick, work=work, data_root=args.data_root.resolve(),
                      engine=args.engine or ("inprocess" if args.quick else "simulate"), extra=args.extra,
                      warm_from=args.warm_from)
        if args.quick:
            from benchmarks.tiny import write_tiny_bert

            bench.backbone = str(write_tiny_bert(work / "tiny-bert"))
        for name, function in functions.items():
            if function is None:
                print(f"[bench] {name}: unavailable ({CASES[name]} not found), skipped", file=sys.stderr)
                continue
            print(f"[bench] {name}: running ({bench.engine}{', quick' if args.quick else ''})", file=sys.stderr)
            seeds = args.seeds or [None] * args.repeat
            record = combine([run_case(name, function, _fresh(bench, i, seed)) for i, seed in enumerate(seeds)])
            keep_previous_tuning_row(results, name)
            (results / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(f"[bench] {name}: {'ok' if record['ok'] else 'FAILED: ' + record['error']} "
                  f"in {record['wall_s']} s, final {record.get('final')}", file=sys.stderr)
            if not record["ok"]:
                failed.append(name)
    return failed


if __name__ == "__main__":
    sys.exit(main())
