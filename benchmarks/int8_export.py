"""Benchmark: `finfed export` fp32 (merged) against `finfed export --quantize int8`.

    python -m benchmarks --case int8-export               # trains the default run first (the suite's engine)
    python benchmarks/int8_export.py                      # the same
    python benchmarks/int8_export.py --run runs/default   # an existing finished classification run
    python benchmarks/int8_export.py --set federation.rounds=1   # a quicker training run (say so in the notes)
    python benchmarks/int8_export.py --quick-train 150   # no Flower: the default model trained centrally, no DP

Both exports are loaded the way a user loads them, ``transformers.pipeline("text-classification",
model=FOLDER, trust_remote_code=True)``, and measured on the run's central test split: accuracy,
label agreement between the two, size of the weights on disk, and CPU latency per sentence
(one sentence per call, the median of the calls after a warm-up, with torch's thread count
recorded). Writes benchmarks/results/int8-export.json (through the suite). ``--quick``: the suite's quick
default run (the tiny model, 1 round, in process) and 20 sentences timed (a crash check).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import pipeline

from finfed.config import load_config
from finfed.data.partition import load_federated_data
from finfed.inference.export import export_run
from finfed.models.backbone import load_tokenizer
from finfed.runs.model_store import save_model
from finfed.runs.outputs import CONFIG, MODEL, RunOutputs
from finfed.tasks import federation_labels, get_task, task_class
from finfed.training.local import train_locally

ROOT = Path(__file__).resolve().parents[1]


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


#: standalone options (`python benchmarks/int8_export.py --run/--quick-train/--latency-sentences/--note`)
OPTIONS: dict[str, Any] = {"run": None, "quick_train": None, "latency_sentences": 200, "note": ""}


def int8_export(bench) -> dict:
    """`finfed export` fp32 (merged) against `--quantize int8` of the default classification run: weights on
    disk, CPU latency per sentence, accuracy on the central test split, label agreement."""
    run_dir, source, train_s = OPTIONS["run"], None, None
    started = time.time()
    if run_dir is not None:
        source = str(run_dir)
    elif OPTIONS["quick_train"] and not bench.quick:
        run_dir = bench.work / "int8-export"
        quick_train(run_dir, OPTIONS["quick_train"])
        source = (f"the default run's model and data, trained now centrally without DP for {OPTIONS['quick_train']} "
                  "steps (not federated: a quick stand-in for the default run)")
    else:
        trained = bench.federation("int8-export", None, bench.default_data())
        run_dir = bench.work / "int8-export"
        source = f"trained now: the default run ({trained['engine']}), final {trained.get('final')}"
    if run_dir != OPTIONS["run"]:
        train_s = round(time.time() - started, 1)
    run_dir = Path(run_dir)
    texts, labels = test_split(run_dir)
    latency_sentences = 20 if bench.quick else OPTIONS["latency_sentences"]
    export_s, exports = {}, []
    for form, options in (("fp32", {"merge": True}), ("int8", {"quantize": "int8"})):
        started = time.perf_counter()
        export_run(run_dir, bench.work / f"export-{form}", **options)
        export_s[form] = round(time.perf_counter() - started, 1)
        exports.append({"form": form, "export_s": export_s[form],
                        **measure(bench.work / f"export-{form}", texts, labels, latency_sentences)})
    fp32, int8 = exports[0].pop("predicted"), exports[1].pop("predicted")
    return {
        "engine": "transformers.pipeline on the exported folders (CPU)",
        "run": source,
        "train_wall_s": train_s,
        "test_sentences": len(texts),
        "label_agreement": round(sum(a == b for a, b in zip(fp32, int8)) / len(fp32), 4),
        "exports": exports,
        "weights_ratio": round(exports[1]["weights_bytes"] / exports[0]["weights_bytes"], 3),
        "latency_ratio": round(exports[1]["latency_ms_per_sentence_median"]
                               / exports[0]["latency_ms_per_sentence_median"], 3),
        "cpu": {"machine": platform.machine(), "processor": platform.processor() or None,
                "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "note": OPTIONS["note"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished classification run (default: train the default run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the training run (repeatable)")
    parser.add_argument("--quick-train", type=int, metavar="STEPS", help="instead of a federated run: the default "
                        "model trained centrally without DP for STEPS steps (no Flower; figures say so)")
    parser.add_argument("--latency-sentences", type=int, default=200, help="sentences timed one by one")
    parser.add_argument("--note", default="", help="recorded with the figures (e.g. 'contended machine')")
    parser.add_argument("--quick", action="store_true", help="the suite's quick mode")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import benchmarks.int8_export as suite_module
    from benchmarks.__main__ import main as suite

    suite_module.OPTIONS.update(run=args.run.resolve() if args.run else None, quick_train=args.quick_train,
                                latency_sentences=args.latency_sentences, note=args.note)
    return suite(["--case", "int8-export", *(["--quick"] if args.quick else []),
                  *[a for item in args.overrides for a in ("--set", item)]])


if __name__ == "__main__":
    sys.exit(main())
