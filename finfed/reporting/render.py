"""One report model, three renderings: JSON for machines, Markdown, and one self-contained HTML page.

Markdown and HTML come from Jinja2 templates shipped in finfed/reporting/templates; plots are
inline PNGs, and the figures each plot draws (series, target and budget lines) travel beside it
as JSON in the page, so a reader or a test can check what is drawn.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from finfed.atomic import write_text_atomic
from finfed.reporting.fairness import fairness_plot
from finfed.reporting.privacy_report import build_report
from finfed.reporting.run_report import delta_text, round_rows

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINE_STYLES = {"target": ":", "budget": "--"}
_INLINE = MarkdownIt("commonmark", {"html": False})


def inline_markdown(text: str) -> Markup:
    """Prose that carries inline Markdown (`code`, **bold**) as HTML; raw HTML in it is escaped."""
    return Markup(_INLINE.renderInline(text or ""))


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("finfed.reporting", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["inline"] = inline_markdown
    env.filters["tojson_sorted"] = lambda value: Markup(json.dumps(value, sort_keys=True).replace("<", "\\u003c"))
    return env


ENVIRONMENT = _environment()


def render(template: str, **context: Any) -> str:
    return ENVIRONMENT.get_template(template).render(**context)


def line_plot(data: dict[str, Any], xlabel: str, ylabel: str, title: str) -> str:
    """``data`` (series {label: {x: y}} and horizontal ``lines``) as a base64 PNG, readable without colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axis = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    for index, (label, points) in enumerate(data["series"].items()):
        xs = sorted(points, key=float)
        axis.plot([float(x) for x in xs], [points[x] for x in xs], marker=MARKERS[index % len(MARKERS)],
                  label=label)
    for line in data.get("lines", []):
        axis.axhline(line["value"], linestyle=LINE_STYLES.get(line["kind"], "-."), color="black", linewidth=1.2,
                     label=line["label"])
    axis.set_ylim(bottom=0)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if data["series"] or data.get("lines"):
        axis.legend(fontsize=8)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--")


def bar_plot(data: dict[str, Any], ylabel: str, title: str) -> str:
    """``data`` (``groups`` on the x axis, ``series`` {label: {group: y}}) as grouped bars, base64 PNG; each
    series has its own hatching, so the plot reads without colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, series = data["groups"], data["series"]
    figure, axis = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series.items()):
        xs = [g + index * width for g, name in enumerate(groups) if name in values]
        axis.bar(xs, [values[name] for name in groups if name in values], width=width, label=label,
                 hatch=HATCHES[index % len(HATCHES)], edgecolor="black", linewidth=0.6)
    axis.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups, fontsize=8)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    if series:
        axis.legend(fontsize=7, ncol=min(len(series), 4))
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def budget_lines(target: float | None, budgets: dict[str, float | None]) -> list[dict[str, Any]]:
    """The run's target epsilon and each distinct lifetime budget (sites sharing one share a line)."""
    lines = [] if target is None else [{"kind": "target", "label": f"run target ε = {target:g}", "value": target}]
    by_value: dict[float, list[str]] = {}
    for name, budget in budgets.items():
        if budget is not None:
            by_value.setdefault(budget, []).append(name)
    lines += [{"kind": "budget", "label": f"lifetime budget ε = {value:g} ({', '.join(names)})", "value": value,
               "sites": names} for value, names in sorted(by_value.items())]
    return lines


def run_plots(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the run report's two plots draw."""
    sites = report["sites"].values()
    epsilon = {"series": {s["name"]: {str(r): e for r, e in s.get("epsilon_by_round", {}).items()} for s in sites},
               "lines": budget_lines(report["target_epsilon"], {s["name"]: s["budget_epsilon"] for s in sites})}
    names = [name for name in (report["rounds"][0]["central"] if report["rounds"] else {}) if name != "loss"]
    utility = {"series": {name: {str(r["round"]): r["central"][name] for r in report["rounds"]} for name in names},
               "lines": [{"kind": "baseline", "label": f"baseline {name} = {report['baseline'][name]:.4f}",
                          "value": report["baseline"][name]} for name in names if name in report["baseline"]]}
    return {"epsilon": epsilon, "utility": utility, "fairness": fairness_plot(report.get("fairness"))}


def privacy_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per site: spend, budget, the mechanism's parameters, and a text status (not colour alone)."""
    rows = []
    for site in report["sites"].values():
        if site.get("epsilon") is None:
            rows.append({"site": site["name"], "refused_all": True, "status": "refused every round (budget)"})
            continue
        budget = site["budget_epsilon"]
        rows.append({"site": site["name"], "refused_all": False, "cells": [
            str(site["records"]), f"{site['target_epsilon']:g}", f"{site['epsilon']:.3f}",
            "-" if budget is None else f"{budget:g}",
            "-" if budget is None else f"{max(0.0, budget - site['epsilon']):.3f}",
            delta_text(site["delta"], report.get("run_delta")), f"{site['noise_multiplier']:.4f}",
            f"{site['max_grad_norm']:g}", f"{site['sample_rate']:.4f}", str(site["steps"]), site["accountant"]],
            "status": "within budget" if site["within_budget"] else "OVER BUDGET"})
    return rows


PRIVACY_HEADER = ["records", "target ε", "spent ε", "lifetime budget ε", "remaining ε", "δ", "noise σ", "clip C",
                  "sample rate", "steps", "accountant"]


def run_context(report: dict[str, Any], with_plots: bool) -> dict[str, Any]:
    plots = run_plots(report)
    header, rows = round_rows(report["rounds"])
    context = {"r": report, "plots": plots, "privacy_header": PRIVACY_HEADER, "privacy_rows": privacy_rows(report),
               "round_header": header, "round_rows": rows,
               "refusals": [s for s in report["sites"].values() if s.get("refused_rounds")],
               "configuration_yaml": yaml.safe_dump(report["configuration"], sort_keys=False)}
    if with_plots:
        context["images"] = {
            "epsilon": line_plot(plots["epsilon"], "round", "epsilon (cumulative)",
                                 "Privacy spent per site, against target and budget"),
            "utility": line_plot(plots["utility"], "round", "score", "Global model on the central test split"),
            "fairness": bar_plot(plots["fairness"], "score on the site's validation split",
                                 "Global model per site (disclosed, non-private)")
            if plots["fairness"]["groups"] else ""}
    return context


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=float)


def render_markdown(report: dict[str, Any]) -> str:
    return render("report.md.j2", **run_context(report, with_plots=False))


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML file: styles and plots inline, no external requests."""
    return render("report.html.j2", **run_context(report, with_plots=True))


def write_reports(run_dir: str | Path, status: dict[str, Any] | None = None, pdf: bool = False) -> dict[str, Path]:
    """report.json, report.md and report.html (and report.pdf) of a run, from one report model."""
    run_dir = Path(run_dir)
    report = build_report(run_dir, status)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    for kind, text in (("json", render_json(report)), ("md", render_markdown(report)), ("html", render_html(report))):
        write_text_atomic(paths[kind], text)
    if pdf:
        from finfed.reporting.pdf import print_pdf

        paths["pdf"] = print_pdf(paths["html"], run_dir / "report.pdf")
    return paths


def ledger_plot(summary: dict[str, Any]) -> dict[str, Any]:
    """What the ledger report's plot draws: lifetime epsilon per dataset after each round, and its budget."""
    datasets = {name or "(unnamed)": data for name, data in summary["datasets"].items()}
    return {"series": {name: {str(i): h["epsilon"] for i, h in enumerate(data["history"], 1)}
                       for name, data in datasets.items()},
            "lines": budget_lines(None, {name: data["budget_epsilon"] for name, data in datasets.items()})}


def ledger_context(summary: dict[str, Any], with_plots: bool) -> dict[str, Any]:
    plot = ledger_plot(summary)
    context = {"l": summary, "plot": plot}
    if with_plots:
        context["image"] = line_plot(plot, "DP rounds recorded, oldest first", "lifetime epsilon",
                                     "Lifetime privacy spent, against the site's budget")
    return context


def render_ledger(summary: dict[str, Any], kind: str = "md") -> str:
    """A site's ledger report (ledger_report.ledger_summary) as ``kind``: md, html or json."""
    if kind == "json":
        return json.dumps(summary, indent=2, default=float)
    return render(f"ledger.{kind}.j2", **ledger_context(summary, with_plots=kind == "html"))

