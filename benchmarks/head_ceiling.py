"""How far can a head alone go on PhraseBank? A study of the DP recipe's ceiling (issue 12).

The PhraseBank DP recipe trains only the linear head on the backbone's fixed, pooled features. This
study asks what limits it, with two references computed on the same sites' records (finfed's own
partition of simulations/phrasebank.yaml, audit hold-out and validation splits included):

* **the linear ceiling**: one multinomial logistic regression fitted on every site's training records
  together, without DP (L2 strength chosen on the sites' validation records): the best any linear head on
  these features reaches, federated or not;
* **a replica of the federation's head training**, fast enough to try many settings: FedAvg of the four
  sites' heads, each trained by Poisson-sampled steps (dropout 0.1 on the features, the head's optimiser
  made afresh each round, as finfed does), under DP with per-record clipping, per-label norms for class
  weights and Gaussian noise at the multiplier finfed's own calibration gives (``plan_privacy``). It is
  not finfed's code path; it reproduces finfed's figures (the recipe: about 0.70 test accuracy with and without
  DP in both) and is used only to see which settings could matter, to be checked in finfed itself.

    python -m benchmarks.head_ceiling                       # the bundled MiniLM's features
    python -m benchmarks.head_ceiling --from runs/twitter-public   # a finished run's backbone (warm start)
    python -m benchmarks.head_ceiling --compare runs/a runs/b      # public sources side by side
    python -m benchmarks.head_ceiling --backbone PATH             # another backbone's features (a model folder)

Writes ``benchmarks/results/studies/head-ceiling[-warm|-<backbone folder>].json`` (``--compare``:
``warm-sources.json``, each source's linear ceiling and the warm recipe's replica only); docs/benchmarks.md shows
them.
Settings are compared on the sites' validation records; test figures are shown, never used to choose.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.cases import DATA_ROOT, ROOT

STUDIES = ROOT / "benchmarks" / "results" / "studies"
PHRASEBANK = ROOT / "simulations" / "phrasebank.yaml"
SEEDS = (0, 1, 2)
# (label, DP, optimiser, head rate, passes per round, class weights); rounds 6 and batch 128 as the recipe
GRID = [("recipe (AdamW 0.1, 4 passes, negative x2)", True, "adamw", 0.1, 4, (2.0, 1.0, 1.0))]
GRID += [(f"{opt} {rate}, {passes} pass{'es' if passes > 1 else ''}", dp, opt, rate, passes, None)
         for dp in (False, True) for passes in (1, 4)
         for opt, rate in (("adamw", 0.01), ("adamw", 0.03), ("adamw", 0.1), ("adamw", 0.3),
                           ("sgd", 0.3), ("sgd", 1.0), ("sgd", 3.0))]


@dataclasses.dataclass
class Split:
    x: torch.Tensor  # pooled features, one row per record
    y: torch.Tensor  # label numbers


def phrasebank_config(data_root: Path):
    from finfed.config import load_config
    from finfed.runtime.local_engine import simulation_config

    path = data_root / "financial_phrasebank" / "sentences_50agree.csv"
    return simulation_config(load_config(PHRASEBANK, [f"data.path={path}"]))


def pooled_encoder(run_dir: Path | None, backbone: str):
    """(texts -> pooled features, the run's head or None) for the bundled backbone or a finished run's model."""
    from transformers import AutoTokenizer

    from finfed.models.backbone import load_encoder, resolve_backbone
    from finfed.models.hf_pooled_classifier import pool

    head = None
    if run_dir is None:
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(backbone))
        encoder, pooling = load_encoder(backbone), "mean"
    else:
        from finfed.runs.model_store import load_run_model

        _, model, tokenizer = load_run_model(run_dir, device="cpu")
        classifier = model.get_base_model()
        encoder, pooling = classifier.encoder, classifier.config.pooling
        head = (classifier.classifier.weight.detach().clone(), classifier.classifier.bias.detach().clone())
    encoder.eval()

    @torch.inference_mode()
    def encode(texts: list[str], max_length: int) -> torch.Tensor:
        parts = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            states = encoder(**batch).last_hidden_state
            parts.append(pool(states, batch["attention_mask"], pooling))
        return torch.cat(parts)

    return encode, head


def site_splits(config, encode) -> tuple[list[Split], list[Split], Split, list[str]]:
    """Each site's training and validation features (finfed's partition) and the central test split's."""
    from finfed.data.partition import load_federated_data, simulated_site
    from finfed.privacy.membership_audit import audit_holdout_fraction
    from finfed.tasks import task_class

    records, num_sites = task_class(config).records, config.federation.num_sites
    data = load_federated_data(config.data, num_sites, records)
    number = {label: i for i, label in enumerate(data.labels)}

    def split(frame) -> Split:
        return Split(encode(frame["text"].tolist(), config.data.max_length),
                     torch.tensor(frame["label"].map(number).to_numpy()))

    sites = [simulated_site(config.data, s, num_sites, records, audit_holdout=audit_holdout_fraction(config, s))
             for s in range(num_sites)]
    return [split(s.train) for s in sites], [split(s.validation) for s in sites], split(data.test), data.labels


def joined(splits: list[Split]) -> Split:
    return Split(torch.cat([s.x for s in splits]), torch.cat([s.y for s in splits]))


def figures(weight: torch.Tensor, bias: torch.Tensor, split: Split, classes: int) -> dict[str, Any]:
    """finfed's own accuracy and macro-F1 of the head (``weight``, ``bias``) on ``split``, and its label shares."""
    from finfed.tasks.classification_metrics import accuracy, macro_f1

    predicted = (split.x @ weight.T + bias).argmax(1)
    truth, guesses = split.y.tolist(), predicted.tolist()
    return {"accuracy": accuracy(truth, guesses), "macro_f1": macro_f1(truth, guesses, classes),
            "predicted_share": (torch.bincount(predicted, minlength=classes) / len(predicted)).tolist()}


def mean_figures(heads: list[tuple[torch.Tensor, torch.Tensor]], split: Split, classes: int) -> dict[str, Any]:
    """``figures`` of each head (one per seed) on ``split``, averaged."""
    each = [figures(w, b, split, classes) for w, b in heads]
    mean = {key: float(np.mean([e[key] for e in each])) for key in ("accuracy", "macro_f1")}
    return {**mean, "predicted_share": np.mean([e["predicted_share"] for e in each], 0).tolist()}


def logistic_regression(train: Split, classes: int, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with L2 strength 1 / ``c`` (scikit-learn's C), fitted to convergence."""
    weight = torch.zeros(classes, train.x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = (torch.nn.functional.cross_entropy(train.x @ weight.T + bias, train.y, reduction="sum")
                 + (weight ** 2).sum() / (2 * c))
        value.backward()
        return value

    optimiser.step(loss)
    return weight.detach(), bias.detach()


def linear_ceiling(train: Split, validation: Split, test: Split, classes: int) -> dict[str, Any]:
    """Multinomial logistic regression without DP on every site's records, L2 strength chosen on validation."""
    tried = []
    for c in (0.1, 1.0, 10.0, 100.0):
        w, b = logistic_regression(train, classes, c)
        tried.append({"C": c, "validation": figures(w, b, validation, classes), "test": figures(w, b, test, classes)})
    best = max(tried, key=lambda t: t["validation"]["accuracy"])
    return {"chosen_C": best["C"], "validation": best["validation"], "test": best["test"], "tried": tried}


def noise_multipliers(config, sites: list[Split], passes: int) -> list[float]:
    from finfed.privacy.calibration import plan_privacy

    train = dataclasses.replace(config.train, local_epochs=passes)
    return [plan_privacy(num_records=len(s.y), train=train, privacy=config.privacy,
                         rounds=config.federation.rounds, site=f"site {i}").noise_multiplier
            for i, s in enumerate(sites)]


def replica(sites: list[Split], *, rounds: int, train, sigmas: list[float] | None, clip: float,
            weights: tuple | None, head: tuple | None, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FedAvg of head-only (DP-)SGD at every site; returns the averaged head after ``rounds``.

    ``train`` (finfed's TrainSettings) gives the expected batch, the passes per round (finfed's own step
    count), the optimiser, the head's rate and AdamW's weight decay."""
    from finfed.privacy.calibration import steps_per_round

    batch, rate = train.batch_size, train.head_learning_rate
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    start = torch.nn.Linear(sites[0].x.shape[1], classes)
    weight, bias = (head[0].clone(), head[1].clone()) if head else (start.weight.detach(), start.bias.detach())
    label_weight = torch.tensor(weights) if weights else torch.ones(classes)
    for _ in range(rounds):
        total_w, total_b, total = torch.zeros_like(weight), torch.zeros_like(bias), 0
        for number, site in enumerate(sites):
            w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
            step = (torch.optim.SGD([w, b], lr=rate, momentum=0.9) if train.optimizer == "sgd"
                    else torch.optim.AdamW([w, b], lr=rate, weight_decay=train.weight_decay))
            n = len(site.y)
            for _ in range(steps_per_round(n, train)):
                chosen = torch.rand(n, generator=generator) < batch / n
                x, y = site.x[chosen], site.y[chosen]
                x = x * (torch.rand(x.shape, generator=generator) > 0.1) / 0.9  # the head's dropout
                error = torch.softmax(x @ w.detach().T + b.detach(), 1) - torch.nn.functional.one_hot(y, classes)
                scale = label_weight[y]  # the loss weight of each record's label
                grad_w, grad_b = (error * scale[:, None])[:, :, None] * x[:, None, :], error * scale[:, None]
                if sigmas is None:
                    w.grad, b.grad = grad_w.sum(0) / max(1, len(y)), grad_b.sum(0) / max(1, len(y))
                else:
                    norms = (grad_w.square().sum((1, 2)) + grad_b.square().sum(1)).sqrt()
                    factor = (clip * scale / label_weight.max() / (norms + 1e-6)).clamp(max=1.0)
                    noise = sigmas[number] * clip
                    w.grad = ((grad_w * factor[:, None, None]).sum(0)
                              + torch.randn(w.shape, generator=generator) * noise) / batch
                    b.grad = ((grad_b * factor[:, None]).sum(0)
                              + torch.randn(b.shape, generator=generator) * noise) / batch
                step.step()
            total_w, total_b, total = total_w + w.detach() * n, total_b + b.detach() * n, total + n
        weight, bias = total_w / total, total_b / total
    return weight, bias


def study(run_dir: Path | None, data_root: Path, backbone: str | None = None) -> dict[str, Any]:
    config = phrasebank_config(data_root)
    encode, head = pooled_encoder(run_dir, backbone or config.model.backbone)
    started = time.time()
    sites, validations, test, labels = site_splits(config, encode)
    validation, classes = joined(validations), len(labels)
    features = (f"the backbone of run {run_dir.name}" if run_dir else
                f"backbone {Path(backbone).name} (mean pooling)" if backbone else "the bundled MiniLM (mean pooling)")
    result: dict[str, Any] = {
        "features": features,
        "labels": labels, "gold_share": (torch.bincount(test.y, minlength=classes) / len(test.y)).tolist(),
        "records": {"train": [len(s.y) for s in sites], "validation": len(validation.y), "test": len(test.y)},
        "linear_ceiling": linear_ceiling(joined(sites), validation, test, classes), "replica": []}
    if head is not None:
        result["source_head"] = {"validation": figures(*head, validation, classes),
                                 "test": figures(*head, test, classes)}
    sigmas = {passes: noise_multipliers(config, sites, passes) for passes in (1, 4)}
    starts = [("the source's head", head), ("a new head", None)] if head is not None else [("a new head", None)]
    for label, dp, optimiser, rate, passes, weights in GRID:
        for start_label, start in starts:
            train = dataclasses.replace(config.train, local_epochs=passes, optimizer=optimiser,
                                        head_learning_rate=rate)
            runs = [replica(sites, rounds=config.federation.rounds, train=train, sigmas=sigmas[passes] if dp else None,
                            clip=config.privacy.max_grad_norm, weights=weights, head=start, classes=classes, seed=s)
                    for s in SEEDS]
            row = {"setting": label, "dp": dp, "start": start_label, "optimiser": optimiser, "rate": rate,
                   "passes": passes, "class_weights": weights, "noise_multipliers": sigmas[passes] if dp else None}
            row.update({name: mean_figures(runs, split, classes) for name, split in (("validation", validation),
                                                                                      ("test", test))})
            result["replica"].append(row)
            print(f"{label:45s} dp={dp!s:5} {start_label:18s} validation {row['validation']['accuracy']:.3f} / "
                  f"{row['validation']['macro_f1']:.3f}  test {row['test']['accuracy']:.3f} / "
                  f"{row['test']['macro_f1']:.3f}", flush=True)
    result["seeds"], result["wall_s"] = len(SEEDS), round(time.time() - started, 1)
    return result


def compare_sources(run_dirs: list[Path], data_root: Path) -> dict[str, Any]:
    """Public warm-start sources side by side on the sites' records: the linear ceiling on each one's features
    and the warm recipe (GRID's first row) replicated from its head, so that a source is chosen on validation."""
    config = phrasebank_config(data_root)
    _, dp, optimiser, rate, passes, weights = GRID[0]
    train = dataclasses.replace(config.train, local_epochs=passes, optimizer=optimiser, head_learning_rate=rate)
    started, sources = time.time(), []
    for run_dir in run_dirs:
        encode, head = pooled_encoder(run_dir, config.model.backbone)
        sites, validations, test, labels = site_splits(config, encode)
        validation, classes = joined(validations), len(labels)
        sigmas = noise_multipliers(config, sites, passes)
        runs = [replica(sites, rounds=config.federation.rounds, train=train, sigmas=sigmas if dp else None,
                        clip=config.privacy.max_grad_norm, weights=weights, head=head, classes=classes, seed=s)
                for s in SEEDS]
        row = {"source": run_dir.name, "source_settings": _source_settings(run_dir),
               "linear_ceiling": linear_ceiling(joined(sites), validation, test, classes)}
        row.update({name: mean_figures(runs, split, classes) for name, split in (("validation", validation),
                                                                              ("test", test))})
        sources.append(row)
        print(f"{run_dir.name:24s} ceiling {row['linear_ceiling']['validation']['accuracy']:.3f}  recipe "
              f"validation {row['validation']['accuracy']:.3f} / {row['validation']['macro_f1']:.3f}", flush=True)
    return {"recipe": GRID[0][0], "seeds": len(SEEDS), "sources": sources, "wall_s": round(time.time() - started, 1)}


def _source_settings(run_dir: Path) -> dict[str, Any]:
    """What distinguishes a public source run: its rounds, LoRA method and rates (from its saved config)."""
    from finfed.config import load_config
    from finfed.runs.outputs import CONFIG

    saved = load_config(run_dir / CONFIG)
    return {"rounds": saved.federation.rounds, "lora_method": saved.lora.method,
            "learning_rate": saved.train.learning_rate, "head_learning_rate": saved.train.head_learning_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from", dest="run_dir", type=Path,
                        help="a finished classification run: its backbone's features")
    source.add_argument("--backbone", help="another backbone (a local model folder): its mean-pooled features")
    source.add_argument("--compare", nargs="+", type=Path, metavar="RUN",
                        help="finished public source runs: each one's ceiling and the warm recipe's replica")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    STUDIES.mkdir(parents=True, exist_ok=True)
    if args.compare:
        path = STUDIES / "warm-sources.json"
        path.write_text(json.dumps(compare_sources([r.resolve() for r in args.compare], args.data_root), indent=1)
                        + "\n", encoding="utf-8")
        print(f"written {path}")
        return
    result = study(args.run_dir.resolve() if args.run_dir else None, args.data_root, args.backbone)
    suffix = "-warm" if args.run_dir else f"-{Path(args.backbone).name}" if args.backbone else ""
    path = STUDIES / f"head-ceiling{suffix}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"linear ceiling: {result['linear_ceiling']['test']}; written {path}")


if __name__ == "__main__":
    main()
