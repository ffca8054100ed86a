"""The report model of a finished run: one dict built from the run folder's records.

`finfed report` and the end of a run both build it here and render it (finfed.reporting.render)
as JSON, Markdown and HTML. Every figure comes from the run folder (status.json, config.yaml,
metrics.jsonl, privacy.json); epsilon is recomputed independently with both Opacus accountants
from the recorded (noise, sampling rate, steps) of each site, so a reader can check the stated spend.
Prose fields may carry inline Markdown (`code`, **bold**): the wording is shared with privacy.json
and exports, and the HTML renderer turns it into markup.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import finfed
from finfed.config import ExperimentConfig, LoraSettings, config_to_dict, load_config
from finfed.constants import TRAIN_LOSS
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.guarantee import guarantee_text, sites_that_sent
from finfed.privacy.membership_audit import audit_reading
from finfed.privacy.randomness import randomness_warning
from finfed.reporting.fairness import fairness_section, rejections_section
from finfed.reporting.task_text import data_description, protected_unit_text
from finfed.runs.outputs import CONFIG, read_metrics, read_privacy, require_finished

# PRV's epsilon is an upper bound computed to within eps_error; RDP is looser but analytic.
CROSS_CHECK_NOTE = ("PRV (privacy random variables) and RDP (Rényi DP) are two sound accountants for the same "
                    "mechanism; PRV is tighter. Both values bound the same spend: the stated epsilon is the one "
                    "of the accountant named in the configuration.")
MISMATCH_TOLERANCE = 0.01  # relative: a stated epsilon further than this from its recomputation is flagged
BUDGET_TOLERANCE = 1e-6  # relative: a site calibrated exactly to its budget is within it


def recompute_epsilon(site: dict[str, Any], mechanism: str, delta: float) -> float:
    """Epsilon of a site's recorded steps under ``mechanism``, from scratch."""
    accountant = SiteAccountant(mechanism)
    accountant.record(site["noise_multiplier"], site["sample_rate"], int(site["steps"]))
    return accountant.epsilon(delta)


def config_hash(config: ExperimentConfig) -> str:
    """SHA-256 of the canonical configuration (sorted-key JSON of every setting)."""
    canonical = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def warm_start_text(warm: dict[str, Any] | None) -> str:
    """The warm start (`model.init_from`), named, and that it used none of this federation's site data."""
    if not warm:
        return ""
    source = f"{warm.get('kind', 'run')} `{warm.get('run')}`"
    trained = "with DP" if warm.get("source_dp") else "without DP"
    return (f"**Warm start:** the federation started from the adapters and head of {source} "
            f"(`{warm.get('source')}`, trained {trained} before this run). It used no site data of this "
            "federation: the sites' epsilon covers only what they trained in this run.")


def build_report(run_dir: str | Path, status: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report model of the run in ``run_dir``; ``status``: the one about to be recorded (end of a run)."""
    run_dir = Path(run_dir)
    status = status if status is not None else require_finished(run_dir)
    config = load_config(run_dir / CONFIG)
    privacy, rounds = read_privacy(run_dir), read_metrics(run_dir)
    sites = {sid: _site(sid, site, privacy, config, rounds)
             for sid, site in sorted(privacy.get("sites", {}).items(), key=lambda item: int(item[0]))}
    report = {"run": config.name, "synthetic_data": config.data.source == "synthetic",
              "task": config.task, "dp_enabled": privacy.get("dp_enabled", False),
              "guarantee": stated_guarantee(privacy, config, rounds), "unit": privacy.get("unit", "record"),
              "run_delta": privacy.get("run_delta"), "reproducible_dp": privacy.get("reproducible_dp"),
              "dp_randomness": privacy.get("dp_randomness"), "client_level": privacy.get("client_level"),
              "target_epsilon": config.privacy.target_epsilon if privacy.get("dp_enabled") else None,
              "sites": sites, "rounds": rounds, "final": rounds[-1]["central"] if rounds else {},
              "baseline": status.get("baseline", {}),
              "baseline_description": status.get("baseline_description", "a trivial predictor"),
              "budget_exhausted_at_round": status.get("budget_exhausted_at_round"),
              "membership_audit": status.get("membership_audit"), "state": status["state"],
              "trained_rounds": status.get("trained_rounds"), "model_round": status.get("model_round"),
              "outcome": outcome_text(status), "warning": randomness_warning(privacy),
              "cross_check_note": CROSS_CHECK_NOTE + (
                  " Sites kept a privacy ledger: their stated epsilon includes earlier runs on the same data, "
                  "while the cross-check recomputes this run's steps only." if _shared_ledgers(config) else ""),
              "explanation": plain_language(privacy, config, rounds),
              "disclosed": disclosed_text(privacy), "warm_start": warm_start_text(privacy.get("warm_start")),
              "audit": audit_text(status.get("membership_audit")),
              "client_level_text": client_level_text(privacy.get("client_level")),
              "meta": _meta(config, status), "configuration": config_to_dict(config)}
    report["fairness"] = fairness_section(
        rounds, status.get("labels") or list(config.data.labels),
        lambda sid: sites[sid]["name"] if sid in sites else site_name(sid, {}, rounds))
    report["rejections"] = rejections_section(status, rounds)
    report["aggregation"] = aggregation_text(config)
    report["deltas"] = deltas_text(report)
    report["utility_summary"] = utility_summary(report)
    report["verdict"] = verdict(report)
    return report


def _meta(config: ExperimentConfig, status: dict[str, Any]) -> dict[str, Any]:
    """Who ran what, when, on which data, with which code: the verdict card's header."""
    ended = status.get("updated") or status.get("started")
    when = datetime.datetime.fromtimestamp(ended, datetime.UTC) if ended else None
    return {"date": when.strftime("%Y-%m-%d %H:%M UTC") if when else "not recorded",
            "finfed_version": finfed.__version__, "config_hash": config_hash(config),
            "data": data_description(config), "backbone": config.model.backbone,
            "adapters": adapters_text(config.lora), "num_sites": config.federation.num_sites,
            "rounds": config.federation.rounds, "local_epochs": config.train.local_epochs,
            "batch_size": config.train.batch_size, "compute": compute_text(config, status),
            "loss_weights": loss_weights_text(config)}


def loss_weights_text(config: ExperimentConfig) -> str:
    """`train.class_weights` in words, empty when unset: they change what the model favours (the per-label
    figures), not the guarantee."""
    weights = config.train.class_weights
    if not weights:
        return ""
    named = ", ".join(f"{label} {config.train.weight_of(label):g}" for label in weights)
    return (f"{named} (other labels 1): fixed settings, not counted from the sites' data; each record's loss "
            "is scaled by its own label's weight and, under DP, its gradient clipped to its label's share of the "
            "clipping norm, never more than the norm, so the privacy guarantee is unchanged")


def adapters_text(lora: LoraSettings) -> str:
    """What the sites trained: ``head`` trains no adapter (they stay as the coordinator set them)."""
    if lora.method == "head":
        return f"head only (adapters r={lora.r} fixed as sent by the coordinator, not trained)"
    return f"{lora.method} (r={lora.r})"


def compute_text(config: ExperimentConfig, status: dict[str, Any]) -> str:
    """Device and precision as resolved at start (status.json), or as set when the run did not record them."""
    compute = status.get("compute") or {}
    device = compute.get("model.device", f"{config.model.device} (as set; not recorded)")
    return (f"device {device}, precision {compute.get('train.precision', config.train.precision)}"
            + (f"; {compute['sites']}" if compute.get("sites") else ""))


def site_name(site_id: str, site: dict[str, Any], rounds: list[dict[str, Any]]) -> str:
    """How the report names a site: its id, with the institution's name beside it where a record carries one
    (``site-name``, or ``name`` in older records): ``site 1 (Harbor Savings Bank)``, else ``site 1``."""
    for record in [site, *(s for r in rounds for s in r.get("sites", []) if str(s.get("site")) == site_id)]:
        name = record.get("site-name") or record.get("name")
        if name:
            return f"site {site_id} ({name})"
    return f"site {site_id}"


def site_budget(site: dict[str, Any], config: ExperimentConfig) -> tuple[float | None, str]:
    """A site's lifetime epsilon budget and where it comes from."""
    if site.get("budget_epsilon") is not None:
        return float(site["budget_epsilon"]), "the site's own"
    if not config.privacy.enabled:
        return None, "none (DP off)"
    if config.privacy.site_budget_epsilon:
        return config.privacy.site_budget_epsilon, "privacy.site_budget_epsilon"
    return config.privacy.target_epsilon, "privacy.target_epsilon (no separate lifetime budget set)"


def _site(site_id: str, site: dict[str, Any], privacy: dict[str, Any], config: ExperimentConfig,
          rounds: list[dict[str, Any]]) -> dict[str, Any]:
    # Every field present (None where a site never trained: it refused every round it was asked).
    entry = {"epsilon": None, "delta": None, "accountant": None, "epsilon_by_round": {}, "refused_rounds": [],
             "cross_check": None, "recomputed": None, "mismatch": False, **site}
    if privacy.get("dp_enabled") and site.get("noise_multiplier"):
        entry["cross_check"] = {m: recompute_epsilon(site, m, site["delta"]) for m in ("prv", "rdp")}
        recomputed = entry["cross_check"].get(site.get("accountant"), site["epsilon"])
        entry["mismatch"] = abs(recomputed - site["epsilon"]) > MISMATCH_TOLERANCE * max(site["epsilon"], 1e-9)
        entry["recomputed"] = recomputed
    budget, source = site_budget(site, config)
    spent = site.get("epsilon")
    entry.update(name=site_name(site_id, site, rounds), local_epochs=config.train.local_epochs,
                 budget_epsilon=budget, budget_source=source,
                 within_budget=None if budget is None or spent is None
                 else spent <= budget * (1 + BUDGET_TOLERANCE))
    return entry


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Every site within its budget or not, which sites refused for budget, the headline metric."""
    sites = report["sites"].values()
    over = [s["name"] for s in sites if s["within_budget"] is False]
    refused = [{"site": s["name"], "rounds": s["refused_rounds"]} for s in sites if s.get("refused_rounds")]
    mismatched = [s["name"] for s in sites if s.get("mismatch")]
    headline = headline_metric(report)
    if not report["dp_enabled"]:
        summary = "No privacy guarantee: differential privacy was off for this run."
    elif over:
        summary = f"OVER BUDGET: {', '.join(over)} spent more than its lifetime privacy budget."
    elif refused:
        summary = ("Every site stayed within its privacy budget, but " +
                   "; ".join(f"{r['site']} refused round(s) {', '.join(map(str, r['rounds']))}" for r in refused)
                   + " to stay within it.")
    else:
        summary = "Every site stayed within its privacy budget; no site refused a round."
    if mismatched:
        summary += (f" The stated epsilon of {', '.join(mismatched)} does not match its recomputation from the "
                    "recorded steps (MISMATCH, see the privacy section).")
    return {"within_budget": report["dp_enabled"] and not over, "over_budget": over, "refused": refused,
            "mismatched": mismatched, "summary": summary, "headline": headline,
            "status": ("fail" if over or mismatched or not report["dp_enabled"]
                       else "attention" if refused or report.get("warning") else "pass")}


def headline_metric(report: dict[str, Any]) -> dict[str, Any] | None:
    """The task's first central metric, against the trivial baseline's value of it."""
    for name, value in report["final"].items():
        if name != "loss" and name in report["baseline"]:
            baseline = report["baseline"][name]
            return {"metric": name, "value": value, "baseline": baseline,
                    "baseline_description": report["baseline_description"], "beats_baseline": value > baseline}
    return None


def outcome_text(status: dict[str, Any]) -> str:
    """How the run ended, in words; empty for a run that completed every round."""
    if status["state"] != "budget-exhausted":
        return ""
    refused_at, rounds = status.get("budget_exhausted_at_round"), status.get("rounds")
    if not status.get("trained_rounds"):
        return (f"**No round trained.** Every site refused round {refused_at} of {rounds}: training it would have "
                "taken the site past its own privacy budget (its lifetime epsilon on this dataset, counted in its "
                "ledger). No model was saved; the utility figures below are those of the untrained initial model. "
                "A site trains again only with a larger budget, or on data it has not spent budget on.")
    return (f"**Ended early.** Every site refused round {refused_at} of {rounds} (its privacy budget reached). "
            f"{status['trained_rounds']} round(s) trained; the saved model is the one after round "
            f"{status.get('model_round')}.")


def _shared_ledgers(config: ExperimentConfig) -> bool:
    """Ledgers outside the run directory may hold earlier runs' spend (``finfed simulate``'s own do not)."""
    ledgers = config.privacy.ledger_dir
    return bool(ledgers) and not Path(ledgers).resolve().is_relative_to(config.resolved_run_dir.resolve())


def stated_guarantee(privacy: dict[str, Any], config: ExperimentConfig, rounds: list[dict[str, Any]]) -> str:
    """The run's guarantee, rebuilt by the same function that wrote privacy.json's (finfed.privacy.guarantee)."""
    return guarantee_text(privacy, reproducible=config.privacy.reproducible,
                          train_loss_sites=sites_that_sent(rounds, TRAIN_LOSS))


def plain_language(privacy: dict[str, Any], config: ExperimentConfig, rounds: list[dict[str, Any]]) -> str:
    """How the guarantee arises, then the guarantee itself (the same text as privacy.json)."""
    guarantee = stated_guarantee(privacy, config, rounds)
    if not privacy.get("dp_enabled"):
        return guarantee
    unit = protected_unit_text(config)
    return ("Each site trained with DP-SGD: every record's influence on each step was clipped and Gaussian noise "
            "was added before the update left the site. Smaller epsilon means stronger protection; delta is a "
            "small slack on that bound, read as a small chance that it fails. The guarantee: " + guarantee
            + (f" {unit}" if unit else ""))


def disclosed_text(privacy: dict[str, Any]) -> str:
    """The non-private statistics sites sent beside their updates (opt-in), named so no one reads them as covered."""
    losses = privacy.get("non_private_statistics", {}).get(TRAIN_LOSS)
    if not losses:
        return ""
    sites = privacy.get("sites", {})
    named = ", ".join(site_name(str(i), sites.get(str(i), {}), []) for i in losses["sites"])
    return (f"**Disclosed outside ε:** {named} sent each round's training loss "
            "(`train-loss`, a non-private statistic of their sampled records), by their own opt-in.")


def audit_text(audit: dict[str, Any] | None) -> str:
    if not audit:
        return "No membership-inference audit was run (`privacy.membership_audit` off, or no simulated sites)."
    return audit_reading(audit)


def utility_summary(report: dict[str, Any]) -> str:
    final = ", ".join(f"{k} {v:.4f}" for k, v in report["final"].items() if k != "loss")
    baseline = ", ".join(f"{k} {v:.4f}" for k, v in report["baseline"].items())
    if not report["dp_enabled"]:
        return f"Without differential privacy the global model reached {final} (trivial baseline: {baseline})."
    spent = [s["epsilon"] for s in report["sites"].values() if s.get("epsilon") is not None]
    if not spent:
        return (f"No site trained in this run, so it spent no privacy budget; the global model is the untrained "
                f"initial one ({final}; trivial baseline: {baseline}).")
    return (f"With every site at epsilon <= {max(spent):.3f} ({report['deltas']}), "
            f"the global model reached {final} (trivial baseline: {baseline}).")


def deltas_text(report: dict[str, Any]) -> str:
    """The delta of every site's epsilon; each site's own where a site's budget delta is not the run's."""
    run_delta = report.get("run_delta")
    sites = {s["name"]: s["delta"] for s in report["sites"].values() if s.get("delta") is not None}
    if not sites:
        return "no delta recorded"
    if run_delta is None or set(sites.values()) == {run_delta}:
        return "delta " + ", ".join(f"{d:g}" for d in sorted(set(sites.values())))
    own = [f"{name} at its own delta {d:g}" for name, d in sites.items() if d != run_delta]
    rest = "the other sites at the run's delta" if len(own) < len(sites) else "the run's delta is"
    return "; ".join(own) + f"; {rest} {run_delta:g}"


AGGREGATION_RULES = {
    "fedavg": "FedAvg (the mean of the site updates, weighted by example counts)",
    "median": "coordinate-wise median of the site updates (Flower's FedMedian, unweighted)",
    "trimmed_mean": "coordinate-wise trimmed mean of the site updates (Flower's FedTrimmedAvg, unweighted)",
    "krum": "Krum (Flower's Krum: the one site update closest to its neighbours)",
}


def aggregation_text(config: ExperimentConfig) -> str:
    """How updates were combined and checked (finfed/coordinator/validation.py)."""
    federation = config.federation
    rule = AGGREGATION_RULES[federation.aggregation]
    if federation.aggregation == "trimmed_mean":
        rule += f", cutting {federation.trim_fraction:g} of the updates at each end"
    elif federation.aggregation == "krum":
        rule += f", assuming up to {federation.krum_byzantine_sites} malicious site(s)"
    if not federation.validate_updates:
        return f"Aggregation: {rule}. Updates were **not validated** (`federation.validate_updates: false`)."
    bound = (f"a configured L2 bound of {federation.update_norm_bound:g}" if federation.update_norm_bound
             else "the worst-case L2 bound the training settings imply")
    where = (" Under SecAgg+ only the unmasked average could be checked, not each site's update."
             if federation.secure_aggregation else "")
    return (f"Aggregation: {rule}. Before aggregation every update was checked: tensor names and shapes of the "
            f"global model, finite values, and its change within {bound}.{where}")


def client_level_text(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "Off (`client_dp.mode: off`): no guarantee about a site's participation as a whole."
    if "mechanism" not in summary:
        return ("Recorded by an earlier finfed whose client-level DP weighted sites by example counts under noise "
                f"calibrated for equal weights: its stated epsilon ({summary.get('epsilon', float('nan')):.3f}) "
                "does not hold for the largest site, and none is claimed here.")
    count = (f"; the count of unclipped updates has noise std {summary['count_stddev']:g}"
             if summary.get("count_stddev") else "")
    return (f"{summary['mode']}: {summary['mechanism']}. Sampling: {summary['sampling']}. Weighting: "
            f"{summary['weighting']}. Noise multiplier {summary['noise_multiplier']:g} on clipping norm "
            f"{summary['clipping_norm']:g}{count}; {summary['rounds']} release(s): epsilon "
            f"{summary['epsilon']:.3f} at delta {summary['delta']:g} ({summary['accountant']}). "
            f"Guarantee: {summary['guarantee']}.")
