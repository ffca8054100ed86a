"""Benchmark: `finfed export` fp32 (merged) against `finfed export --quantize int8`.

    python benchmarks/int8_export.py                      # trains the default run first (finfed simulate)
    python benchmarks/int8_export.py --run runs/default   # an existing finished classification run
    python benchmarks/int8_export.py --set federation.rounds=1   # a quicker training run (say so in the notes)
    python benchmarks/int8_export.py --quick-train 150   # no Flower: the default model trained centrally, no DP

Both exports are loaded the way a user loads them, ``transformers.pipeline("text-classification",
model=FOLDER, trust_remote_code=True)``, and measured on the run's central test split: accuracy,
label agreement between the two, size of the weights on disk, and CPU latency per sentence
(one sentence per call, the median of the calls after a warm-up, with torch's thread count
recorded). Writes benchmarks/results/int8-export.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import pipeline

from finfed.cli.main import main as finfed
from finfed.config import load_config
from finfed.data.partition import load_federated_data
from finfed.inference.export import export_run
from finfed.models.backbone import load_tokenizer
from finfed.runs.model_store import save_model
from finfed.runs.outputs import CONFIG, MODEL, RunOutputs
from finfed.tasks import federation_labels, get_task, task_class
from finfed.training.local import train_locally

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def train_default(run_dir: Path, overrides: list[str]) -> float:
    started = time.time()
    args = ["simulate", "--set", f"run_dir={run_dir}", "--set", "name=int8-export"]
    for override in overrides:
        args += ["--set", override]
    if finfed(args) != 0:
        raise SystemExit("the training run failed")
    return time.time() - started


def quick_train(run_dir: Path, steps: int) -> float:
    """The default run's model (MiniLM, LoRA, its head) trained centrally without DP on the default data's
    training pool for ``steps`` steps, saved as a finished run: when a federated run cannot be afforded."""
    started = time.time()
    config = load_config(None, [f"run_dir={run_dir}", "name=int8-export-quick", "privacy.enabled=false"])
    labels = federation_labels(config)
    task = get_task(config, labels)
    data = load_federated_data(config.data, config.federation.num_sites, task.records)
    model = task.build_model()
    tokenizer = load_tokenizer(config.model.backbone)
    examples = task.encode(data.train_pool, tokenizer)
    train_locally(model, examples, task.collate, task.loss,
                  loss_reduction=task.loss_reduction, settings=config.train, steps=steps, seed=0)
    outputs = RunOutputs(config)
    outputs.start()
    save_model(model, config, labels, run_dir / MODEL)
    outputs.write_privacy({"dp_enabled": False, "unit": None, "guarantee": "none: trained centrally without DP "
                           "for this benchmark", "sites": {}, "client_level": None})
    outputs.set_status("complete", rounds=0, trained_rounds=0, model_round=0)
    return time.time() - started


def test_split(run_dir: Path) -> tuple[list[str], list[str]]:
    config = load_config(run_dir / CONFIG)
    data = load_federated_data(config.data, config.federation.num_sites, task_class(config).records)
    return data.test["text"].tolist(), data.test["label"].tolist()


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def measure(folder: Path, texts: list[str], labels: list[str], latency_sentences: int) -> dict:
    pipe = pipeline("text-classification", model=str(folder), trust_remote_code=True)
    started = time.perf_counter()
    predicted = [result["label"] for result in pipe(texts, truncation=True, batch_size=32)]
    batched = time.perf_counter() - started
    for text in texts[:5]:
        pipe(text, truncation=True)  # warm-up
    latencies = []
    for text in texts[:latency_sentences]:
        started = time.perf_counter()
        pipe(text, truncation=True)
        latencies.append(time.perf_counter() - started)
    weights = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    return {"predicted": predicted,
            "accuracy": round(sum(p == y for p, y in zip(predicted, labels)) / len(labels), 4),
            "weights_bytes": weights, "folder_bytes": folder_bytes(folder),
            "latency_ms_per_sentence_median": round(1000 * statistics.median(latencies), 2),
            "latency_ms_per_sentence_p90": round(1000 * statistics.quantiles(latencies, n=10)[-1], 2),
            "batched_ms_per_sentence": round(1000 * batched / len(texts), 2)}


def describe_run(args: argparse.Namespace) -> str:
    if args.run is not None:
        return str(args.run)
    if args.quick_train:
        return (f"the default run's model and data, trained now centrally without DP for {args.quick_train} steps "
                "(not federated: a quick stand-in for the default run)")
    return "trained now: finfed simulate" + (" --set " + " --set ".join(args.overrides) if args.overrides
                                             else " (the default run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished classification run (default: train the default run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the training run (repeatable)")
    parser.add_argument("--quick-train", type=int, metavar="STEPS", help="instead of a federated run: the default "
                        "model trained centrally without DP for STEPS steps (no Flower; figures say so)")
    parser.add_argument("--latency-sentences", type=int, default=200, help="sentences timed one by one")
    parser.add_argument("--note", default="", help="recorded with the figures (e.g. 'contended machine')")
    parser.add_argument("--out", type=Path, default=RESULTS / "int8-export.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="finfed-int8-") as scratch:
        scratch = Path(scratch)
        run_dir, train_s = args.run, None
        if run_dir is None and args.quick_train:
            run_dir = scratch / "run"
            train_s = round(quick_train(run_dir, args.quick_train), 1)
        elif run_dir is None:
            run_dir = scratch / "run"
            train_s = round(train_default(run_dir, args.overrides), 1)
        texts, labels = test_split(run_dir)
        export_s = {}
        for form, options in (("fp32", {"merge": True}), ("int8", {"quantize": "int8"})):
            started = time.perf_counter()
            export_run(run_dir, scratch / form, **options)
            export_s[form] = round(time.perf_counter() - started, 1)
        figures = {form: measure(scratch / form, texts, labels, args.latency_sentences) for form in ("fp32", "int8")}
    fp32, int8 = figures["fp32"].pop("predicted"), figures["int8"].pop("predicted")
    agreement = sum(a == b for a, b in zip(fp32, int8)) / len(fp32)
    result = {
        "case": "int8-export",
        "run": describe_run(args),
        "train_wall_s": train_s,
        "test_sentences": len(texts),
        "label_agreement": round(agreement, 4),
        "export_s": export_s,
        "fp32": figures["fp32"],
        "int8": figures["int8"],
        "weights_ratio": round(figures["int8"]["weights_bytes"] / figures["fp32"]["weights_bytes"], 3),
        "latency_ratio": round(figures["int8"]["latency_ms_per_sentence_median"]
                               / figures["fp32"]["latency_ms_per_sentence_median"], 3),
        "cpu": {"machine": platform.machine(), "processor": platform.processor() or None,
                "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
