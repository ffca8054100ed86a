"""GPU check: DP-LoRA vs non-DP LoRA throughput and memory, fp32 vs bf16, on random models built from configs.

    python benchmarks/gpu_check.py [--steps N] [--batch B] [--seq L]

Runs wherever PyTorch sees CUDA; elsewhere it prints why and exits 0. Two backbones, randomly
initialised from configs (no downloads, no weights): a BERT-base-sized encoder (12 layers, 768 wide)
and a ~0.5B-parameter decoder (Qwen2-0.5B's shape). For each, in fp32 and bf16, one round of finfed's
local training (finfed.training.local.train_locally: the code sites run) with DP-SGD and one without,
at the same batch size. Prints and writes benchmarks/results/gpu-check.json: examples/s, peak GPU
memory, and the DP / non-DP time ratio. Needs only finfed's training code, torch, transformers, peft, opacus.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "gpu-check.json"
MODELS = {
    "bert-base-sized encoder": ("bert", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                         "intermediate_size": 3072, "vocab_size": 30522}),
    "qwen2-0.5b-sized decoder": ("qwen2", {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                                           "num_key_value_heads": 2, "intermediate_size": 4864,
                                           "vocab_size": 151936, "tie_word_embeddings": True}),
}


def build(model_type: str, settings: dict, device: torch.device):
    from transformers import AutoConfig, AutoModel

    from finfed.config import LoraSettings
    from finfed.models.adapters import add_adapters
    from finfed.models.architectures import resolve_pooling
    from finfed.models.hf_pooled_classifier import FinfedPooledClassifier

    torch.manual_seed(0)
    encoder = AutoModel.from_config(AutoConfig.for_model(model_type, **settings))
    model = FinfedPooledClassifier.on_encoder(encoder, ["negative", "neutral", "positive"],
                                              resolve_pooling("auto", model_type))
    return add_adapters(model, LoraSettings(), head="classifier").to(device)


def one_round(model_type: str, settings: dict, *, private: bool, precision: str, steps: int, batch: int,
              seq: int, device: torch.device) -> dict:
    from finfed.config import load_config
    from finfed.privacy.accounting import SiteAccountant
    from finfed.privacy.calibration import plan_privacy
    from finfed.training.local import train_locally

    config = load_config(None, [f"train.batch_size={batch}", f"train.physical_batch_size={batch}",
                                f"train.precision={precision}"])
    model = build(model_type, settings, device)
    generator = torch.Generator().manual_seed(1)
    records = batch * steps * 4
    data = [{"input_ids": torch.randint(5, settings["vocab_size"], (seq,), generator=generator).tolist(),
             "label": i % 3} for i in range(records)]

    def collate(items):
        ids = torch.tensor([item["input_ids"] for item in items])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.tensor([item["label"] for item in items])}

    def loss(module, batch_):
        batch_ = {k: v.to(device) for k, v in batch_.items()}
        logits = module(input_ids=batch_["input_ids"], attention_mask=batch_["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits.float(), batch_["labels"])

    plan = accountant = None
    if private:
        plan = plan_privacy(num_records=records, train=config.train, privacy=config.privacy, rounds=1)
        plan = dataclasses.replace(plan, steps_per_round=steps)
        accountant = SiteAccountant("rdp")

    def run(n: int, seed: int):
        return train_locally(model, data, collate, loss, loss_reduction="mean", settings=config.train, steps=n,
                             seed=seed, plan=plan, accountant=accountant)

    run(1, 0)  # warm-up: kernels, allocator
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    outcome = run(steps, 1)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {"dp": private, "precision": precision, "steps": steps, "examples": outcome.examples_seen,
              "seconds": round(seconds, 3), "examples_per_s": round(outcome.examples_seen / seconds, 1),
              "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
              "parameters": sum(p.numel() for p in model.parameters()), "trainable_parameters": trainable}
    model.to("cpu")
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": f"no CUDA GPU visible to PyTorch {torch.__version__}; nothing measured"}))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    device = torch.device("cuda")
    report = {"hardware": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "python": platform.python_version(), "batch": args.batch, "seq": args.seq, "models": {}}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model_type, settings = MODELS[name]
        runs = {}
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                continue
            for private in (False, True):
                key = f"{precision}-{'dp' if private else 'nodp'}"
                runs[key] = one_round(model_type, settings, private=private, precision=precision, steps=args.steps,
                                      batch=args.batch, seq=args.seq, device=device)
                print(name, key, json.dumps(runs[key]), flush=True)
        ratios = {f"{p}_dp_over_nodp_throughput": round(runs[f"{p}-dp"]["examples_per_s"]
                                                        / runs[f"{p}-nodp"]["examples_per_s"], 3)
                  for p in ("fp32", "bf16") if f"{p}-dp" in runs}
        if "bf16-dp" in runs:
            ratios["bf16_over_fp32_dp_throughput"] = round(runs["bf16-dp"]["examples_per_s"]
                                                           / runs["fp32-dp"]["examples_per_s"], 3)
            ratios["bf16_over_fp32_nodp_throughput"] = round(runs["bf16-nodp"]["examples_per_s"]
                                                             / runs["fp32-nodp"]["examples_per_s"], 3)
        report["models"][name] = {"runs": runs, **ratios}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
