"""What a case records about a finished run, read back from its run directory.

Everything here is read from the files `finfed simulate` leaves (metrics.jsonl, status.json,
privacy.json, the saved model) or recomputed from the run's own configuration, so a
benchmark measures exactly what a user's run produced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finfed.config import ExperimentConfig, load_config
from finfed.constants import EVAL_ACCURACY, EVAL_EXACT_MATCH, EVAL_F1, EVAL_MACRO_F1, NUM_EXAMPLES
from finfed.data.partition import load_federated_data
from finfed.models.adapters import exchanged_state
from finfed.models.backbone import load_tokenizer
from finfed.reporting.fairness import pooled_share_gaps
from finfed.runs.outputs import CONFIG, read_metrics, read_privacy, read_status
from finfed.tasks import federation_labels, get_task


def rounded(values: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def upload_bytes(config: ExperimentConfig) -> int:
    """Bytes of tensors one site sends per round (float32 values of every trained tensor; Flower's
    message framing not counted)."""
    model = get_task(config, federation_labels(config)).build_model()
    return int(sum(t.numel() * t.element_size() for t in exchanged_state(model).values()))


def label_shares(task, model, examples: list[dict]) -> dict[str, dict[str, float]]:
    """Per label: its share of the model's predictions and of the gold labels on ``examples``."""
    predicted = task.probabilities(model, examples).argmax(dim=-1).tolist()
    gold = [item["label"] for item in examples]
    count_p, count_g, n = Counter(predicted), Counter(gold), max(len(gold), 1)
    return {label: {"predicted": round(count_p[i] / n, 4), "gold": round(count_g[i] / n, 4)}
            for i, label in enumerate(task.labels)}


def training_settings(config: ExperimentConfig) -> dict[str, Any]:
    """The settings a DP-tuning table compares, as the run used them."""
    train, lora, privacy = config.train, config.lora, config.privacy
    values = {"federation.rounds": config.federation.rounds, "train.batch_size": train.batch_size,
              "train.local_epochs": train.local_epochs, "train.optimizer": train.optimizer,
              "train.learning_rate": train.learning_rate, "train.head_learning_rate": train.head_learning_rate,
              "lora.method": lora.method, "lora.r": lora.r, "lora.alpha": lora.alpha,
              "lora.target_modules": ",".join(lora.target_modules),
              "model.pooling": config.model.pooling}
    if privacy.enabled:
        values["privacy.max_grad_norm"] = privacy.max_grad_norm
    if train.class_weights:  # only when set: older records had none
        values["train.class_weights"] = "{" + ", ".join(f"{k}: {v}" for k, v in train.class_weights.items()) + "}"
    return values


def sites_validation(record: dict[str, Any], labels: Sequence[str] = ()) -> dict[str, Any] | None:
    """One round's sites' validation figures (the `eval-*` each site reports on the global model): the
    example-weighted mean of the sites' accuracy and macro-F1 (a site's macro-F1 is over its own split), or
    for QA of their F1 and exact match, and the sites' examples; for classification, when every site shared its
    label shares, each label's predicted minus true share of their pooled records (`share_gap`). What tuning is
    judged on, never the central test split."""
    evaluations = [e for e in record.get("evaluation") or [] if e.get(NUM_EXAMPLES)]
    total = sum(e[NUM_EXAMPLES] for e in evaluations)
    if not total:
        return None
    figures: dict[str, Any] = {"round": record["round"]}
    for key, name in ((EVAL_ACCURACY, "accuracy"), (EVAL_MACRO_F1, "macro_f1"), (EVAL_F1, "f1"),
                      (EVAL_EXACT_MATCH, "exact_match")):
        if all(key in e for e in evaluations):
            figures[name] = round(sum(e[key] * e[NUM_EXAMPLES] for e in evaluations) / total, 4)
    pooled = pooled_share_gaps(evaluations, list(labels))
    if pooled and pooled["sites"] == len(evaluations):
        figures["share_gap"] = {label: round(gap, 4) for label, gap in pooled["gaps"].items()}
    figures["examples"] = int(total)
    return figures


def central_test_examples(config: ExperimentConfig, task) -> list[dict]:
    test = load_federated_data(config.data, config.federation.num_sites, task.records).test
    return task.encode_for_evaluation(test, load_tokenizer(config.model.backbone))


def run_results(run_dir: Path) -> dict[str, Any]:
    """The figures of a finished federated run (see benchmarks/README in docs/benchmarks.md)."""
    from finfed.runs.model_store import load_run_model

    status, privacy = read_status(run_dir), read_privacy(run_dir)
    config = load_config(run_dir / CONFIG)
    metrics = read_metrics(run_dir)
    labels = [str(label) for label in status.get("labels") or []]  # the run's own list, as recorded; none for QA
    result: dict[str, Any] = {
        "state": status.get("state"),
        "rounds": [{"round": r["round"], **rounded(r["central"])} for r in metrics],
        # the sites' validation splits, per round (tuning decisions are taken on these)
        "validation": [v for v in (sites_validation(r, labels) for r in metrics) if v],
        "baseline": rounded(status.get("baseline") or {}),
        "baseline_description": status.get("baseline_description"),
        "dp": config.privacy.enabled,
        "epsilon_per_site": {site: s.get("epsilon") for site, s in sorted(privacy.get("sites", {}).items())},
        "target_epsilon": config.privacy.target_epsilon if config.privacy.enabled else None,
        "upload_bytes_per_site_round": upload_bytes(config),
        "membership_audit_auc": (status.get("membership_audit") or {}).get("auc"),
        "training": training_settings(config),
    }
    if result["rounds"]:
        result["final"] = {k: v for k, v in result["rounds"][-1].items() if k != "round"}
    if config.task == "classification" and status.get("state") in ("complete", "budget-exhausted"):
        task, model, _ = load_run_model(run_dir)
        result["label_share"] = label_shares(task, model, central_test_examples(config, task))
    return result
