"""`finfed report --ledger` and `finfed ledger new`: a site's lifetime spend, read from its ledger.

The ledger is verified first (hash chain, and its head in the site folder when
one is found); a ledger that fails is refused, not summarised. Every epsilon is
recomputed from the recorded mechanism parameters; the stored figures are shown
beside it and any difference is flagged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from finfed.errors import ConfigError, LedgerIntegrityError
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.ledger import LedgerEntry, PrivacyLedger
from finfed.privacy.ledger_chain import HEAD_FILE

STORED_TOLERANCE = 1e-6  # relative: a stored epsilon further than this from its recomputation is flagged


def head_folder(ledger: Path, site_dir: Path | None = None) -> Path | None:
    """The site folder holding the ledger's head: given, or where finfed puts it by default.

    Deployment keeps the ledger in the site folder itself; ``finfed simulate`` keeps
    ``RUN/ledgers/site-<id>.json`` with its head in ``RUN/sites/site-<id>/``.
    """
    if site_dir is not None:
        return Path(site_dir)
    ledger = Path(ledger).resolve()
    for folder in (ledger.parent, ledger.parent.parent / "sites" / ledger.stem):
        if (folder / HEAD_FILE).is_file():
            return folder
    return None


def open_ledger(path: str | Path, site_dir: str | Path | None = None) -> PrivacyLedger:
    """The verified ledger at ``path``; refuses a missing ledger (also one whose head says it existed)."""
    path = Path(path)
    folder = head_folder(path, Path(site_dir) if site_dir else None)
    try:
        ledger = PrivacyLedger(path, head_dir=folder)
    except LedgerIntegrityError as exc:
        raise LedgerIntegrityError(f"integrity check FAILED: {exc}") from None
    if not path.is_file():
        raise ConfigError(f"no privacy ledger at {path} (a site writes it at its first DP round; check the "
                          "site's `privacy.ledger_path` or `privacy.ledger_dir`)")
    return ledger


def ledger_summary(path: str | Path, site_dir: str | Path | None = None) -> dict[str, Any]:
    """A site's lifetime spend per dataset name, across every run its ledger recorded."""
    ledger = open_ledger(path, site_dir)
    names = list(dict.fromkeys(entry.dataset for entry in ledger.entries))
    names += [e["dataset"] for e in ledger.events if e["kind"] == "new-ledger" and e["dataset"] not in names]
    return {"ledger": str(path), "integrity": _integrity(ledger),
            "datasets": {name: _dataset_summary(ledger, name) for name in names},
            "heads_created": [e for e in ledger.events if e["kind"] == "head-created"]}


def _integrity(ledger: PrivacyLedger) -> dict[str, Any]:
    chain = ("version-1 file, not chained (chained at the site's next round)" if ledger.legacy
             else f"verified ({len(ledger.records)} records)")
    head = f"{ledger.head_state} ({ledger.head.path})" if ledger.head else "not checked (no site folder found; " \
                                                                         "give --site-dir)"
    return {"passed": True, "chain": chain, "head": head}


def _dataset_summary(ledger: PrivacyLedger, name: str) -> dict[str, Any]:
    rounds = ledger.rounds_for(name)
    restarts = [e for e in ledger.events if e["kind"] == "new-ledger" and e["dataset"] == name]
    summary: dict[str, Any] = {
        "runs": list(dict.fromkeys(e.run_id for e in rounds)), "rounds": len(rounds),
        "steps": sum(e.steps for e in rounds), "content_versions": len({e.dataset_fingerprint for e in rounds}),
        "new_ledgers": _restarts(ledger, name, restarts)}
    if not rounds:
        return {**summary, "epsilon": 0.0, "accountant": None, "delta": None, "budget_epsilon": None}
    last = rounds[-1]
    accountant = ledger.accountant(name, last.accountant)
    epsilon = accountant.epsilon(last.delta)
    budget = last.budget_epsilon
    return {**summary, "accountant": last.accountant, "delta": last.delta, "epsilon": epsilon,
            "epsilon_recomputed": epsilon, "epsilon_stored": last.epsilon_after,
            "stored_differs": _stored_mismatches(rounds), "budget_epsilon": budget,
            "remaining_epsilon": None if budget is None else max(0.0, budget - epsilon)}


def _restarts(ledger: PrivacyLedger, name: str, restarts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each explicit new ledger, with what the rounds before it (since the one before) had spent."""
    out, start = [], -1
    for restart in restarts:
        before = [e for e in ledger.entries if e.dataset == name and start < e.seq < restart["seq"]]
        accountant = SiteAccountant(before[0].accountant) if before else None
        for entry in before:
            accountant.record(entry.noise_multiplier, entry.sample_rate, entry.steps)
        out.append({"time": restart["time"], "reason": restart["reason"], "rounds_before": len(before),
                    "epsilon_before": accountant.epsilon(before[-1].delta) if before else 0.0})
        start = restart["seq"]
    return out


def _stored_mismatches(rounds: list[LedgerEntry]) -> list[dict[str, Any]]:
    """Rounds whose stored epsilon differs from the epsilon recomputed after them (at their own delta)."""
    out, accountant = [], SiteAccountant(rounds[0].accountant)
    for entry in rounds:
        accountant.record(entry.noise_multiplier, entry.sample_rate, entry.steps)
        recomputed = accountant.epsilon(entry.delta)
        if abs(recomputed - entry.epsilon_after) > STORED_TOLERANCE * max(1.0, recomputed):
            out.append({"run_id": entry.run_id, "round": entry.round, "stored": entry.epsilon_after,
                        "recomputed": recomputed})
    return out


def render_ledger(summary: dict[str, Any]) -> str:
    integrity = summary["integrity"]
    lines = [f"Privacy ledger {summary['ledger']}",
             f"integrity check: {'passed' if integrity['passed'] else 'FAILED'}; chain {integrity['chain']}; "
             f"head {integrity['head']}", ""]
    if not summary["datasets"]:
        lines.append("(no DP rounds recorded)")
    for name, data in summary["datasets"].items():
        lines += _render_dataset(name or "(unnamed: version-1 ledger)", data)
    for event in summary["heads_created"]:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(event["time"]))
        lines.append(f"note: on {when} this ledger's chain head was missing; a new head was started at {event['head']}")
    return "\n".join(lines)


def _render_dataset(name: str, data: dict[str, Any]) -> list[str]:
    lines = [f"dataset {name!r}: {data['rounds']} round(s), {data['steps']} steps, {len(data['runs'])} run(s)"
             + (": " + ", ".join(data["runs"]) if data["runs"] else "")]
    if data["accountant"]:
        budget = (f"; budget {data['budget_epsilon']:g}, remaining {data['remaining_epsilon']:.3f}"
                  if data["budget_epsilon"] is not None else "; budget unknown")
        lines.append(f"  epsilon {data['epsilon']:.3f} (recomputed from the recorded noise, sample rate and steps; "
                     f"{data['accountant']}, delta {data['delta']:g}){budget}")
        lines.append(f"  stored epsilon {data['epsilon_stored']:.3f}" + (
            "" if not data["stored_differs"] else
            f"  WARNING: {len(data['stored_differs'])} stored figure(s) differ from their recomputation: "
            + ", ".join(f"run {m['run_id']} round {m['round']} stored {m['stored']:.3f} vs {m['recomputed']:.3f}"
                        for m in data["stored_differs"])))
    if data["content_versions"] > 1:
        lines.append(f"  its content changed {data['content_versions'] - 1} time(s); spend kept composing")
    for restart in data["new_ledgers"]:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(restart["time"]))
        lines.append(f"  NEW LEDGER started explicitly on {when} ({restart['reason']}): the "
                     f"{restart['rounds_before']} round(s) before it (epsilon {restart['epsilon_before']:.3f}) "
                     "stay recorded but no longer compose")
    return lines


def start_new_ledger(path: str | Path, site_dir: str | Path | None, dataset: str, reason: str) -> PrivacyLedger:
    """`finfed ledger new`: record an explicit fresh start for one dataset of a site's ledger."""
    path = Path(path)
    folder = head_folder(path, Path(site_dir) if site_dir else None)
    if folder is None:
        raise ConfigError(f"no chain head found for {path}; give the site folder with --site-dir")
    ledger = PrivacyLedger(path, head_dir=folder)
    if not dataset:
        known = sorted({entry.dataset for entry in ledger.entries})
        if len(known) != 1:
            raise ConfigError(f"ledger {path} records datasets {known}; name one with --dataset")
        dataset = known[0]
    ledger.start_new(dataset, reason)
    return ledger
