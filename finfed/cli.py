"""`finfed` command line: simulate a consortium, use its model."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from finfed.errors import FinfedError

ACTOR_PREFIX = re.compile(r"^\S*\(ClientAppActor pid=\d+\)\S*\s*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finfed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="run a federation on this machine (Flower simulation)")
    simulate.add_argument("--config", type=Path, help="experiment YAML (default: built-in defaults)")
    simulate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a setting, e.g. --set privacy.target_epsilon=3 (repeatable)")
    simulate.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    simulate.add_argument("--verbose", action="store_true", help="show Flower's full log")

    report = commands.add_parser("report", help="write report.json/.md/.html (privacy budget and utility)")
    report.add_argument("run_dir", type=Path, nargs="?")
    report.add_argument("--ledger", type=Path, help="show a site's lifetime spend per dataset from its ledger")

    predict = commands.add_parser("predict", help="label texts with a finished run's global model")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("texts", nargs="+")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _show(verbose: bool):
    def show(line: str) -> None:
        clean = ACTOR_PREFIX.sub("", ANSI.sub("", line))
        if verbose or "[finfed]" in clean or "ERROR" in clean or "Exception" in clean:
            print(clean, flush=True)
    return show


def simulate(args: argparse.Namespace) -> int:
    from finfed.config import load_config, to_run_config, with_absolute_paths
    from finfed.preflight import check_simulation
    from finfed.report import round_table
    from finfed.run_outputs import prepare_run_dir, read_metrics, read_status
    from simulations.runner import run_simulation

    config = with_absolute_paths(load_config(args.config, args.overrides))
    run_dir = config.resolved_run_dir
    for site in check_simulation(config):
        print(f"[finfed] site {site['site']}: {site['train']} training / {site['validation']} validation "
              f"examples, {site['steps_per_round']} steps per round"
              + (f", noise multiplier {site['noise_multiplier']:.3f}" if "noise_multiplier" in site else ""))
    prepare_run_dir(run_dir, overwrite=args.overwrite)
    run_config = to_run_config(config)
    started = time.time()
    result = run_simulation(run_config, num_sites=config.federation.num_sites,
                            cpus_per_site=config.simulation.cpus_per_site,
                            log_path=run_dir / "flower.log", on_line=_show(args.verbose))
    status = read_status(run_dir)
    print()
    print(round_table(read_metrics(run_dir)))
    if result.succeeded and status.get("state") == "complete":
        print(f"\nRun complete in {time.time() - started:.0f}s: {run_dir}")
        return 0
    reason = status.get("error") or result.details or f"Flower run status {result.status}"
    print(f"\nRun FAILED: {reason}\nFull log: {result.log_path}", file=sys.stderr)
    return 1


def predict(args: argparse.Namespace) -> int:
    from finfed.predict import predict_texts

    results = predict_texts(args.run_dir, args.texts)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        probs = "  ".join(f"{label}={p:.3f}" for label, p in result["probabilities"].items())
        print(f"{result['label']:<10} {probs}  | {result['text']}")
    return 0


def report(args: argparse.Namespace) -> int:
    from finfed.privacy_report import ledger_summary, render_ledger, write_reports

    if args.ledger:
        print(render_ledger(ledger_summary(args.ledger)))
    if args.run_dir:
        for kind, path in write_reports(args.run_dir).items():
            print(f"{kind:>4}: {path}")
    if not (args.ledger or args.run_dir):
        print("finfed report: give a RUN_DIR, --ledger PATH, or both", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"simulate": simulate, "predict": predict, "report": report}[args.command](args)
    except FinfedError as error:
        print(f"finfed: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finfed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
