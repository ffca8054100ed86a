"""The short Markdown report of a run, and the per-round table the CLI prints."""

from __future__ import annotations

from typing import Any

from finfed import constants as keys
from finfed.config import ExperimentConfig
from finfed.privacy.randomness import randomness_warning
from finfed.tasks import task_named


def round_table(history: list[dict[str, Any]]) -> str:
    """Per-round central metrics and the largest site epsilon, as a Markdown table."""
    if not history:
        return "(no rounds recorded)"
    metric_names = list(history[0]["central"])
    header = ["round", *metric_names, "sites", "max ε"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for record in history:
        epsilons = [s[keys.EPSILON] for s in record.get("sites", []) if keys.EPSILON in s]
        cells = [str(record["round"]), *(f"{record['central'][m]:.4f}" for m in metric_names),
                 str(len(record.get("sites", []))), f"{max(epsilons):.3f}" if epsilons else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def privacy_table(privacy: dict[str, Any]) -> str:
    if not privacy.get("dp_enabled"):
        return "Differential privacy was **off** for this run (`privacy.enabled: false`): no guarantee."
    header = ["site", "records", "target ε", "spent ε", "δ", "noise σ", "clip C", "sample rate",
              "steps", "accountant"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for site_id, site in sorted(privacy["sites"].items(), key=lambda item: int(item[0])):
        if "epsilon" not in site:  # refused every round it was asked
            lines.append(f"| {site_id} | refused every round (budget) |" + " |" * (len(header) - 2))
            continue
        lines.append("| " + " | ".join([
            site_id, str(site["records"]), f"{site['target_epsilon']:g}", f"{site['epsilon']:.3f}",
            delta_text(site["delta"], privacy.get("run_delta")), f"{site['noise_multiplier']:.4f}",
            f"{site['max_grad_norm']:g}",
            f"{site['sample_rate']:.4f}", str(site["steps"]), site["accountant"]]) + " |")
    refusals = [f"site {sid}: rounds {site['refused_rounds']}" for sid, site in sorted(privacy["sites"].items())
                if site.get("refused_rounds")]
    if refusals:
        lines.append("\nRefused to train (own privacy budget reached): " + "; ".join(refusals) + ".")
    return "\n".join(lines)


def delta_text(site_delta: float, run_delta: float | None) -> str:
    """A site's delta (the one its epsilon is computed at), with the run's beside it where they differ."""
    if run_delta is None or site_delta == run_delta:
        return f"{site_delta:g}"
    return f"{site_delta:g} (site's own; run: {run_delta:g})"


def audit_text(audit: dict[str, Any] | None) -> str:
    from finfed.privacy.membership_audit import audit_reading

    if not audit:
        return "No membership-inference audit was run (`privacy.membership_audit` off, or no simulated sites)."
    return audit_reading(audit)


def disclosed_text(privacy: dict[str, Any]) -> str:
    """The non-private statistics sites sent beside their updates (opt-in), named so no one reads them as covered."""
    losses = privacy.get("non_private_statistics", {}).get(keys.TRAIN_LOSS)
    if not losses:
        return ""
    return (f"\n\n**Disclosed outside ε:** site(s) {losses['sites']} sent each round's training loss "
            "(`train-loss`, a non-private statistic of their sampled records), by their own opt-in.")


def write_report(outputs, config: ExperimentConfig, history: list[dict[str, Any]],
                 privacy: dict[str, Any], baseline: dict[str, float], audit: dict[str, Any] | None = None,
                 baseline_description: str = "a trivial predictor") -> None:
    final = history[-1]["central"] if history else {}
    task = task_named(config.task)
    generated = task.synthetic_description
    data_note = (f"**Data: synthetic.** These figures come from finfed's generated {generated}, "
                 "not from real institutions' data." if config.data.source == "synthetic"
                 else f"Data: `{config.data.path}` ({config.data.partitioner} partitioning).")
    warning = randomness_warning(privacy)
    text = f"""# finfed run `{config.name}`
{chr(10) + warning + chr(10) if warning else ""}
{data_note}

Task: {config.task}. Backbone: `{config.model.backbone}`, adapters: {config.lora.method} (r={config.lora.r}),
{config.federation.num_sites} sites, {config.federation.rounds} rounds, {config.train.local_epochs} local epoch(s)
per round, expected batch size {config.train.batch_size}.

## Global model on the central test split

{round_table(history)}

Final: {", ".join(f"{k} {v:.4f}" for k, v in final.items())}.
Trivial baseline ({baseline_description}): {", ".join(f"{k} {v:.4f}" for k, v in baseline.items())}.

## Privacy

{privacy_table(privacy)}

Guarantee: {privacy["guarantee"]}{" " + task.protected_unit if task.protected_unit else ""}

Each site's noise multiplier was calibrated once, before round 1, so that its target ε covers every
round of the run; ε above is cumulative over all rounds, from the Opacus accountant's full history.\
{disclosed_text(privacy)}

{audit_text(audit)}
"""
    outputs.write_text("report.md", text)
