"""`finfed` command line: simulate a consortium, use its model."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from finfed.cli.console import console_level, console_logging
from finfed.cli.deploy import add_deploy_parser, deploy
from finfed.cli.run_console import finish_run, show_engine_line, submit_stoppable
from finfed.constants import CALIBRATION_CACHE_ENV
from finfed.errors import FinfedError
from finfed.runs.stop import EXIT_INTERRUPTED, sigterm_interrupts

logger = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """Every command and subcommand takes the console options: before the subcommand or after it."""

    #: a subcommand whose options may come before, between or after its positionals (`predict RUN --json TEXT`)
    intermixed = False

    def __init__(self, *args, **kwargs) -> None:
        self._intermixing = False
        super().__init__(*args, **kwargs)  # subparsers are made of this class too (argparse's parser_class)
        console = self.add_mutually_exclusive_group()
        console.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="show only warnings and errors (and the result)")
        console.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show debug lines and Flower's, Ray's and transformers' full output")

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # argparse's intermixed parsing calls parse_known_args itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finfed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="run a federation on this machine (Flower simulation)")
    simulate.add_argument("--config", type=Path, help="experiment YAML (default: built-in defaults)")
    simulate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a setting, e.g. --set privacy.target_epsilon=3 (repeatable)")
    simulate.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    simulate.add_argument("--resume", type=Path, metavar="RUN_DIR",
                          help="continue a stopped run from its last completed round, with its saved settings")

    report = commands.add_parser("report", help="write report.json/.md/.html (privacy budget and utility)")
    report.add_argument("run_dir", type=Path, nargs="?")
    report.add_argument("--ledger", type=Path, help="show a site's lifetime spend per dataset from its ledger")
    report.add_argument("--site-dir", type=Path, help="the site folder holding the ledger's chain head "
                        "(default: found beside the ledger, or RUN/sites/site-<id> for a simulated site)")
    report.add_argument("--format", choices=("md", "html", "json"), default="md",
                        help="the ledger report's format (--ledger; default md)")
    report.add_argument("--out", type=Path, help="write the ledger report to this file instead of printing it")
    report.add_argument("--pdf", action="store_true", help="also print the HTML report to PDF with headless "
                        "Chromium: RUN/report.pdf; for --ledger, --out (default: <ledger name>-report.pdf)")

    ledger = commands.add_parser("ledger", help="a site's privacy ledger: start a new one explicitly")
    ledger_new = ledger.add_subparsers(dest="ledger_command", required=True).add_parser(
        "new", help="start a new ledger for one dataset (its earlier rounds stay recorded, no longer compose)")
    ledger_new.add_argument("ledger", type=Path, help="the site's ledger file")
    ledger_new.add_argument("--reason", required=True, help="why, e.g. 'records replaced by a new cohort'")
    ledger_new.add_argument("--dataset", default="", help="the dataset name (default: the only one recorded)")
    ledger_new.add_argument("--site-dir", type=Path, help="the site folder holding the chain head")

    add_predict_parser(commands)

    export = commands.add_parser("export", help="write a run's model as a folder transformers.pipeline loads")
    export.add_argument("run_dir", type=Path)
    export.add_argument("out", type=Path)
    export.add_argument("--merge", action="store_true",
                        help="merge the adapters into the weights (default: PEFT adapter beside its base)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    export.add_argument("--quantize", choices=("int8",), help="int8: a smaller merged model (torchao; Linear "
                        "layers int8), loaded by the same pipeline call (needs torchao: finfed[int8])")

    add_deploy_parser(commands)
    return parser


def add_predict_parser(commands) -> None:
    """`finfed predict`: its options may come anywhere (before, between or after the run folder and texts)."""
    predict = commands.add_parser("predict", help="use a finished run's global model: label texts "
                                  "(classification) or answer a question about a passage (qa), given as "
                                  "arguments or as a CSV/JSONL file (--input)")
    predict.intermixed = True
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("texts", nargs="*", help="classification: texts to label")
    predict.add_argument("--question", help="qa: the question")
    predict.add_argument("--context", help="qa: the passage holding the answer")
    predict.add_argument("--max-answer-tokens", type=int, help="qa: longest answer (default: the run's setting)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument("--explain", action="store_true", help="show which words drove each prediction "
                         "(Integrated Gradients on the global model; qa: also the runner-up spans)")
    predict.add_argument("--explain-html", type=Path, metavar="FILE",
                         help="write the explanation as a coloured HTML snippet to FILE (implies --explain)")
    predict.add_argument("--explain-steps", type=int, default=50, metavar="N",
                         help="integration steps of --explain (default 50; more: smaller convergence delta)")
    batch = predict.add_argument_group("a file of inputs")
    batch.add_argument("--input", type=Path, metavar="FILE",
                       help="a CSV or JSONL file: one prediction per row, in batches of the run's "
                            "train.eval_batch_size")
    batch.add_argument("--output", type=Path, metavar="FILE", help="write the predictions to this .csv or "
                       ".jsonl file (default: JSON lines on stdout); an existing file is refused")
    batch.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    for field, task in (("text", "classification"), ("question", "qa"), ("context", "qa")):
        batch.add_argument(f"--{field}-column", metavar="NAME", dest=f"column_{field}",
                           help=f"{task}: the input's column holding the {field} (default: the run's "
                                f"data.{field}_column, or a column named {field!r})")


def simulate(args: argparse.Namespace) -> int:
    # Noise is calibrated once per simulation: the preflight's results are shared with the coordinator's and
    # the sites' processes through this file (finfed.privacy.calibration checks each value it reads).
    with tempfile.TemporaryDirectory(prefix="finfed-calibration-") as cache, \
            _environment(CALIBRATION_CACHE_ENV, str(Path(cache) / "calibration.json")):
        return _simulate(args)


@contextlib.contextmanager
def _environment(name: str, value: str):
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _simulate(args: argparse.Namespace) -> int:
    from finfed.config import to_run_config
    from finfed.runs.outputs import prepare_run_dir, run_recorded_its_end
    from finfed.runtime.isolated import call_isolated
    from finfed.runtime.local_engine import run_simulation

    if args.resume and (args.config or args.overrides or args.overwrite):
        raise FinfedError("--resume continues a run with its saved settings: it takes no --config, --set or "
                          "--overwrite")
    level = logging.getLogger("finfed").getEffectiveLevel()
    config, sites = call_isolated(plan_simulation, args.config, args.overrides, args.resume, args.overwrite, level)
    for site in sites:
        logger.info(f"site {site['site']}: {site['train']} training / {site['validation']} validation "
                    f"examples{_held_back(site)}, {site['steps_per_round']} steps per round"
                    + (f", noise multiplier {site['noise_multiplier']:.3f}" if "noise_multiplier" in site else ""))
    run_dir = config.resolved_run_dir
    if not args.resume:
        prepare_run_dir(run_dir, overwrite=args.overwrite)
    run_config = to_run_config(config)
    started = time.time()
    result = submit_stoppable(run_dir, lambda: run_simulation(
        run_config, num_sites=config.federation.num_sites, cpus_per_site=config.simulation.cpus_per_site,
        gpus_per_site=config.simulation.gpus_per_site,
        log_path=run_dir / "flower.log", on_line=show_engine_line, append_log=bool(args.resume),
        app_finished=lambda: run_recorded_its_end(run_dir, since=started)))
    return finish_run(run_dir, result, started)


def plan_simulation(config_file: Path | None, overrides: list[str], resume: Path | None, overwrite: bool,
                    level: int):
    """`finfed simulate`'s settings and its checks before anything is written: the run folder, then the
    settings and data paths (seconds), then every site's data loaded and its privacy planned (the noise
    calibrated once, shared through the calibration file). Returns the settings and one summary per site.

    It loads PyTorch, so the command runs it in a child process (finfed.runtime.isolated)."""
    from finfed.config import load_config, with_absolute_paths
    from finfed.runs.outputs import check_run_dir
    from finfed.runtime.local_engine import resume_config, simulation_config
    from finfed.runtime.preflight import check_configuration, check_simulation

    with console_logging(level):
        if resume:
            config = resume_config(resume)
        else:
            config = simulation_config(with_absolute_paths(load_config(config_file, overrides)))
            run_dir = config.resolved_run_dir
            check_run_dir(run_dir, overwrite=overwrite, resume=f"finfed simulate --resume {run_dir}")
        check_configuration(config)
        return config, check_simulation(config)


def predict(args: argparse.Namespace) -> int:
    from finfed.inference.predict import answer_question, predict_texts

    columns = {key.removeprefix("column_"): value for key, value in vars(args).items()
               if key.startswith("column_") and value is not None}
    if args.explain or args.explain_html:
        if args.input is not None:
            raise FinfedError("--explain explains texts or a question given as arguments, not an --input file")
        from finfed.inference.explain import explain_prediction

        print(explain_prediction(args.run_dir, texts=args.texts, question=args.question, context=args.context,
                                 max_answer_tokens=args.max_answer_tokens, html_path=args.explain_html,
                                 as_json=args.json, steps=args.explain_steps))
        return 0
    if args.input is not None:
        return predict_input_file(args, columns)
    if args.output or args.overwrite or columns:
        raise FinfedError("--output, --overwrite and --*-column go with --input FILE")
    if args.question is not None or args.context is not None:
        if not (args.question and args.context) or args.texts:
            raise FinfedError("qa prediction needs both --question and --context, and no texts")
        answer = answer_question(args.run_dir, args.question, args.context, args.max_answer_tokens)
        print(json.dumps(answer, indent=2) if args.json else
              f"{answer['answer']}\n(score {answer['score']:.3f}, characters {answer['start']}-{answer['end']})")
        return 0
    if not args.texts:
        raise FinfedError("give texts to label, --question and --context for a qa run, or --input FILE")
    results = predict_texts(args.run_dir, args.texts)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        probs = "  ".join(f"{label}={p:.3f}" for label, p in result["probabilities"].items())
        print(f"{result['label']:<10} {probs}  | {result['text']}")
    return 0


def predict_input_file(args: argparse.Namespace, columns: dict[str, str]) -> int:
    """`finfed predict RUN --input FILE`: every check that needs no model first, then the batches."""
    from finfed.cli.console import ProgressBar
    from finfed.inference.predict import plan_file_prediction, predict_file

    if args.texts or args.question is not None or args.context is not None:
        raise FinfedError("--input takes its texts or questions from the file: give no texts, --question or "
                          "--context with it")
    job = plan_file_prediction(args.run_dir, args.input, args.output, columns=columns, overwrite=args.overwrite,
                               max_answer_tokens=args.max_answer_tokens)
    logger.info(f"predicting {len(job.rows)} rows of {job.input} (columns: "
                + ", ".join(f"{field}={column!r}" for field, column in job.columns.items()) + ")")
    bar = ProgressBar("predicting", "rows")
    try:
        count = predict_file(job, progress=bar)
    finally:
        bar.close()
    if job.output is not None:
        logger.info(f"wrote {count} predictions to {job.output}")
    return 0


def export(args: argparse.Namespace) -> int:
    if args.quantize:
        from finfed.lean_imports import bring_back_int8_library

        bring_back_int8_library()  # a shell that exported the apps' FINFED_WITHOUT_INT8 still quantizes
    from finfed.inference.export import (
        export_run,
        load_snippet,
        privacy_line,
        training_note,
    )

    manifest = export_run(args.run_dir, args.out, merge=args.merge, overwrite=args.overwrite, quantize=args.quantize)
    form = manifest["form"] + (f", {manifest['quantization']['method']}" if manifest.get("quantization") else "")
    print(f"Exported {manifest['task']} model ({form}) of run {manifest['run']['name']} to {args.out}")
    if training_note(manifest):
        print(training_note(manifest))
    print(f"Privacy: {privacy_line(manifest)}\nLoad it with:\n\n{load_snippet(manifest, str(args.out))}")
    return 0


def report(args: argparse.Namespace) -> int:
    from finfed.reporting.render import write_reports

    if args.ledger:
        ledger_report(args)
    if args.run_dir:
        for kind, path in write_reports(args.run_dir, pdf=args.pdf).items():
            print(f"{kind:>4}: {path}")
    if not (args.ledger or args.run_dir):
        print("finfed report: give a RUN_DIR, --ledger PATH, or both", file=sys.stderr)
        return 2
    return 0


def ledger_report(args: argparse.Namespace) -> None:
    """`finfed report --ledger`: printed, written to --out, or printed to PDF."""
    from finfed.reporting.ledger_report import ledger_summary
    from finfed.reporting.pdf import print_pdf
    from finfed.reporting.render import render_ledger

    summary = ledger_summary(args.ledger, args.site_dir)
    if args.pdf:
        pdf = args.out or Path(f"{args.ledger.stem}-report.pdf")
        html = pdf.with_suffix(".html")
        html.write_text(render_ledger(summary, "html"), encoding="utf-8")
        print(f"html: {html}\n pdf: {print_pdf(html, pdf)}")
    elif args.out:
        args.out.write_text(render_ledger(summary, args.format), encoding="utf-8")
        print(f"{args.format:>4}: {args.out}")
    else:
        print(render_ledger(summary, args.format))


def ledger(args: argparse.Namespace) -> int:
    from finfed.reporting.ledger_report import start_new_ledger

    started = start_new_ledger(args.ledger, args.site_dir, args.dataset, args.reason)
    dataset = started.events[-1]["dataset"]
    print(f"New ledger started for dataset {dataset!r} in {args.ledger}: its earlier rounds stay recorded "
          "and are shown by `finfed report --ledger`, but no longer compose")
    return 0


def _held_back(site: dict) -> str:
    held = site.get("audit_holdout", 0)
    return f" (+{held} held back, never trained on, for the membership audit)" if held else ""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    quiet, verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    if quiet and verbose:
        parser.error("--quiet and --verbose: choose one")
    with console_logging(console_level(quiet, verbose)):
        return _command(args)


def _command(args: argparse.Namespace) -> int:
    try:
        # SIGTERM is Ctrl-C: the processes finfed started are stopped before it exits.
        with sigterm_interrupts():
            return {"simulate": simulate, "predict": predict, "report": report,
                    "export": export, "deploy": deploy, "ledger": ledger}[args.command](args)
    except FinfedError as error:
        print(f"finfed: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finfed: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
