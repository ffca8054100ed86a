"""`finfed report`: the privacy-budget report of a finished run, as JSON, Markdown and HTML.

Every figure comes from the run directory (privacy.json, metrics.jsonl, config.yaml);
epsilon is recomputed independently with both Opacus accountants from the recorded
(noise, sampling rate, steps) of each site, so a reader can check the stated spend.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from finfed.config import load_config
from finfed.constants import TRAIN_LOSS
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.guarantee import guarantee_text, sites_that_sent
from finfed.privacy.randomness import randomness_warning
from finfed.reporting.ledger_report import ledger_summary, render_ledger  # noqa: F401  (`finfed report --ledger`)
from finfed.reporting.run_report import audit_text, privacy_table, round_table
from finfed.runs.outputs import CONFIG, read_metrics, read_privacy, require_finished
from finfed.tasks import task_named

# PRV's epsilon is an upper bound computed to within eps_error; RDP is looser but analytic.
CROSS_CHECK_NOTE = ("PRV (privacy random variables) and RDP (Rényi DP) are two sound accountants for the same "
                    "mechanism; PRV is tighter. Both values bound the same spend: the stated epsilon is the one "
                    "of the accountant named in the configuration.")


def recompute_epsilon(site: dict[str, Any], mechanism: str, delta: float) -> float:
    """Epsilon of a site's recorded steps under ``mechanism``, from scratch."""
    accountant = SiteAccountant(mechanism)
    accountant.record(site["noise_multiplier"], site["sample_rate"], int(site["steps"]))
    return accountant.epsilon(delta)


def build_report(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    status = require_finished(run_dir)
    config = load_config(run_dir / CONFIG)
    privacy, rounds = read_privacy(run_dir), read_metrics(run_dir)
    sites = {}
    for site_id, site in privacy.get("sites", {}).items():
        entry = dict(site)
        if privacy.get("dp_enabled") and site.get("noise_multiplier"):
            entry["cross_check"] = {m: recompute_epsilon(site, m, site["delta"]) for m in ("prv", "rdp")}
        entry["local_epochs"] = config.train.local_epochs
        sites[site_id] = entry
    final = rounds[-1]["central"] if rounds else {}
    return {"run": config.name, "synthetic_data": config.data.source == "synthetic",
            "task": config.task, "dp_enabled": privacy.get("dp_enabled", False),
            "guarantee": stated_guarantee(privacy, config, rounds), "unit": privacy.get("unit", "record"),
            "run_delta": privacy.get("run_delta"), "reproducible_dp": privacy.get("reproducible_dp"),
            "dp_randomness": privacy.get("dp_randomness"),
            "client_level": privacy.get("client_level"),
            "sites": sites, "rounds": rounds, "final": final, "baseline": status.get("baseline", {}),
            "budget_exhausted_at_round": status.get("budget_exhausted_at_round"),
            "membership_audit": status.get("membership_audit"),
            "state": status["state"], "trained_rounds": status.get("trained_rounds"),
            "model_round": status.get("model_round"), "outcome": outcome_text(status),
            "cross_check_note": CROSS_CHECK_NOTE + (
                " Sites kept a privacy ledger: their stated epsilon includes earlier runs on the same data, "
                "while the cross-check recomputes this run's steps only." if _shared_ledgers(config) else ""),
            "baseline_description": status.get("baseline_description", "a trivial predictor"),
            "explanation": plain_language(privacy, config, rounds)}


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


def _shared_ledgers(config) -> bool:
    """Ledgers outside the run directory may hold earlier runs' spend (``finfed simulate``'s own do not)."""
    ledgers = config.privacy.ledger_dir
    return bool(ledgers) and not Path(ledgers).resolve().is_relative_to(config.resolved_run_dir.resolve())


def stated_guarantee(privacy: dict[str, Any], config, rounds: list[dict[str, Any]]) -> str:
    """The run's guarantee, rebuilt by the same function that wrote privacy.json's (finfed.privacy.guarantee)."""
    return guarantee_text(privacy, reproducible=config.privacy.reproducible,
                          train_loss_sites=sites_that_sent(rounds, TRAIN_LOSS))


def plain_language(privacy: dict[str, Any], config, rounds: list[dict[str, Any]]) -> str:
    """How the guarantee arises, then the guarantee itself (the same text as privacy.json and report.md)."""
    guarantee = stated_guarantee(privacy, config, rounds)
    protected_unit = task_named(config.task).protected_unit
    unit = f" {protected_unit}" if protected_unit else ""
    if not privacy.get("dp_enabled"):
        return guarantee
    return ("Each site trained with DP-SGD: every record's influence on each step was clipped and Gaussian noise "
            "was added before the update left the site. Smaller epsilon means stronger protection; delta is a "
            "small slack on that bound, read as a small chance that it fails. The guarantee: " + guarantee + unit)


def _plot(series: dict[str, dict[int, float]], ylabel: str, title: str) -> str:
    """A line plot as an inline base64 PNG (matplotlib's non-interactive backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    for label, points in series.items():
        xs = sorted(points)
        axis.plot(xs, [points[x] for x in xs], marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("round")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if series:
        axis.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_markdown(report: dict[str, Any]) -> str:
    privacy = {"dp_enabled": report["dp_enabled"], "sites": report["sites"], "run_delta": report.get("run_delta")}
    lines = [f"# Privacy-budget report: run `{report['run']}`", ""]
    if randomness_warning(report):
        lines += [randomness_warning(report), ""]
    if report["synthetic_data"]:
        lines += ["**Data: synthetic** (finfed's generated financial news).", ""]
    if report.get("outcome"):
        lines += ["## Outcome", "", report["outcome"], ""]
    lines += ["## Privacy-utility summary", "", utility_summary(report), ""]
    lines += ["## Privacy per site", "", privacy_table(privacy), "", "### Epsilon after each round", ""]
    for site_id, site in sorted(report["sites"].items()):
        by_round = ", ".join(f"r{r}: {e:.3f}" for r, e in site.get("epsilon_by_round", {}).items())
        lines.append(f"- site {site_id}: {by_round or 'no DP rounds'}")
        if "cross_check" in site:
            check = site["cross_check"]
            lines.append(f"  - cross-check: PRV {check['prv']:.3f}, RDP {check['rdp']:.3f}")
            recomputed = check.get(site.get("accountant"), site["epsilon"])
            if abs(recomputed - site["epsilon"]) > 0.01 * max(site["epsilon"], 1e-9):
                lines.append(f"  - **MISMATCH**: the stated epsilon {site['epsilon']:.3f} differs from the "
                             f"{site['accountant']} recomputation {recomputed:.3f} of this run's steps "
                             f"at delta {site['delta']:g}")
    lines += ["", report["cross_check_note"], ""]
    lines += ["## Client-level DP", "", client_level_text(report.get("client_level")), ""]
    lines += ["## Utility of the global model", "",
              round_table(report["rounds"]), "",
              f"Trivial baseline ({report['baseline_description']}): " +
              ", ".join(f"{k} {v:.4f}" for k, v in report["baseline"].items()), "",
              "## What the guarantee means", "", report["explanation"], "",
              "## Empirical audit", "", audit_text(report.get("membership_audit")), ""]
    return "\n".join(lines)


def utility_summary(report: dict[str, Any]) -> str:
    final = ", ".join(f"{k} {v:.4f}" for k, v in report["final"].items() if k != "loss")
    baseline = ", ".join(f"{k} {v:.4f}" for k, v in report["baseline"].items())
    if not report["dp_enabled"]:
        return f"Without differential privacy the global model reached {final} (trivial baseline: {baseline})."
    spent = [s["epsilon"] for s in report["sites"].values() if s.get("epsilon") is not None]
    if not spent:
        return (f"No site trained in this run, so it spent no privacy budget; the global model is the untrained "
                f"initial one ({final}; trivial baseline: {baseline}).")
    worst = f"{max(spent):.3f}" if spent else "0"
    return (f"With every site at epsilon <= {worst} ({deltas_text(report)}), "
            f"the global model reached {final} (trivial baseline: {baseline}).")


def deltas_text(report: dict[str, Any]) -> str:
    """The delta of every site's epsilon; each site's own where a site's budget delta is not the run's."""
    run_delta = report.get("run_delta")
    sites = {sid: s["delta"] for sid, s in sorted(report["sites"].items()) if s.get("delta") is not None}
    if not sites:
        return "no delta recorded"
    if run_delta is None or set(sites.values()) == {run_delta}:
        return "delta " + ", ".join(f"{d:g}" for d in sorted(set(sites.values())))
    own = [f"site {sid} at its own delta {d:g}" for sid, d in sites.items() if d != run_delta]
    rest = "the other sites at the run's delta" if len(own) < len(sites) else "the run's delta is"
    return "; ".join(own) + f"; {rest} {run_delta:g}"


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


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML file: styles and plots inline, no external requests."""
    epsilon_series = {f"site {sid}": {int(r): e for r, e in s.get("epsilon_by_round", {}).items()}
                      for sid, s in sorted(report["sites"].items())}
    metric_names = list(report["rounds"][0]["central"]) if report["rounds"] else []
    utility_series = {name: {r["round"]: r["central"][name] for r in report["rounds"]}
                      for name in metric_names if name != "loss"}
    epsilon_png = _plot(epsilon_series, "epsilon (cumulative)", "Privacy spent per site")
    utility_png = _plot(utility_series, "score", "Global model on the central test split")
    body = markdown_to_html(render_markdown(report))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>finfed privacy report: {html.escape(report['run'])}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:3px 8px}}img{{max-width:100%}}</style>
</head><body>
<img id="epsilon-plot" alt="epsilon per site and round" src="data:image/png;base64,{epsilon_png}">
<img id="utility-plot" alt="utility per round" src="data:image/png;base64,{utility_png}">
{body}
</body></html>
"""


def markdown_to_html(text: str) -> str:
    """Just enough Markdown (headings, tables, bullets, paragraphs) for finfed's own reports."""
    out, table = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip().startswith("- "):
            out.append(f"<li>{html.escape(line.strip()[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    return "\n".join(out)


def write_reports(run_dir: str | Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    report = build_report(run_dir)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, default=float), encoding="utf-8")
    paths["md"].write_text(render_markdown(report), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
