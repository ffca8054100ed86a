"""Tables of a run's records as rows of text: the report templates and the CLI's round table share them."""

from __future__ import annotations

from typing import Any

from finfed import constants as keys


def round_rows(history: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per-round central metrics and the largest site epsilon: a header and one row per round."""
    if not history:
        return [], []
    metric_names = list(history[0]["central"])
    header = ["round", *metric_names, "sites", "max ε"]
    rows = []
    for record in history:
        epsilons = [s[keys.EPSILON] for s in record.get("sites", []) if keys.EPSILON in s]
        rows.append([str(record["round"]), *(f"{record['central'][m]:.4f}" for m in metric_names),
                     str(len(record.get("sites", []))), f"{max(epsilons):.3f}" if epsilons else "-"])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text (Markdown) table, as the CLI prints it after a run."""
    if not header:
        return "(no rounds recorded)"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def round_table(history: list[dict[str, Any]]) -> str:
    return markdown_table(*round_rows(history))


def delta_text(site_delta: float, run_delta: float | None) -> str:
    """A site's delta (the one its epsilon is computed at), with the run's beside it where they differ."""
    if run_delta is None or site_delta == run_delta:
        return f"{site_delta:g}"
    return f"{site_delta:g} (site's own; run: {run_delta:g})"
