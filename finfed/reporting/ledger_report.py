"""`finfed report --ledger` and `finfed ledger new`: a site's lifetime spend, read from its ledger.

The ledger report's model is ``ledger_summary``: every run that spent from the site, epsilon after each
round against the lifetime budget, the remaining budget and the integrity check; finfed.reporting.render
renders it as JSON, Markdown and HTML.

The ledger is verified first (hash chain, and its head in the site folder when
one is found); a ledger that fails is refused, not summarised. Every epsilon is
recomputed from the recorded mechanism parameters; the stored figures are shown
beside it and any difference is flagged.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from pathlib import Path
from typing import Any

from finfed.errors import ConfigError, LedgerIntegrityError
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.ledger import LedgerEntry, PrivacyLedger
from finfed.privacy.ledger_chain import HEAD_FILE
from finfed.wire import clean_site_name

BUDGET_TOLERANCE = 1e-6  # relative: a site calibrated exactly to its budget is within it
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
    return {"ledger": str(path), "site": site_of(path, head_folder(path, Path(site_dir) if site_dir else None)),
            "integrity": _integrity(ledger),
            "datasets": {name: _dataset_summary(ledger, name) for name in names},
            "heads_created": [{**e, "date": _date(e["time"])} for e in ledger.events if e["kind"] == "head-created"]}


def site_of(ledger: str | Path, folder: Path | None) -> str:
    """The site's name, where its files say it ("" otherwise): ``[site] name`` of the site.toml in a deployed
    site's folder, or, for a ``finfed simulate`` ledger (``RUN/ledgers/site-<id>.json``), the name the run's
    privacy.json records for that site."""
    try:
        if folder is not None and (folder / "site.toml").is_file():
            return clean_site_name(tomllib.loads((folder / "site.toml").read_text(encoding="utf-8"))["site"]["name"])
        found = re.fullmatch(r"site-(\d+)", Path(ledger).stem)
        privacy = Path(ledger).resolve().parent.parent / "privacy.json"
        if found and privacy.is_file():
            return clean_site_name(json.loads(privacy.read_text(encoding="utf-8"))["sites"][found[1]]["site-name"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a name is a label: without one the report names the ledger's path only
    return ""


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
        "new_ledgers": _restarts(ledger, name, restarts), "history": [], "run_spend": [], "stored_differs": [],
        "epsilon_stored": None, "remaining_epsilon": None}
    if not rounds:
        return {**summary, "epsilon": 0.0, "accountant": None, "delta": None, "budget_epsilon": None,
                "within_budget": None}
    last = rounds[-1]
    accountant = ledger.accountant(name, last.accountant)
    epsilon = accountant.epsilon(last.delta)
    budget = last.budget_epsilon
    history = _history(rounds)
    return {**summary, "accountant": last.accountant, "delta": last.delta, "epsilon": epsilon,
            "epsilon_recomputed": epsilon, "epsilon_stored": last.epsilon_after,
            "stored_differs": _stored_mismatches(history), "budget_epsilon": budget,
            "remaining_epsilon": None if budget is None else max(0.0, budget - epsilon),
            "within_budget": None if budget is None else epsilon <= budget * (1 + BUDGET_TOLERANCE),
            "history": history, "run_spend": _run_spend(history)}


def _restarts(ledger: PrivacyLedger, name: str, restarts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each explicit new ledger, with what the rounds before it (since the one before) had spent."""
    out, start = [], -1
    for restart in restarts:
        before = [e for e in ledger.entries if e.dataset == name and start < e.seq < restart["seq"]]
        accountant = SiteAccountant(before[0].accountant) if before else None
        for entry in before:
            accountant.record(entry.noise_multiplier, entry.sample_rate, entry.steps)
        out.append({"time": restart["time"], "date": _date(restart["time"]), "reason": restart["reason"],
                    "rounds_before": len(before),
                    "epsilon_before": accountant.epsilon(before[-1].delta) if before else 0.0})
        start = restart["seq"]
    return out


def _history(rounds: list[LedgerEntry]) -> list[dict[str, Any]]:
    """Each composing round with the epsilon recomputed after it (at its own delta) and the one it stored."""
    out, accountant = [], SiteAccountant(rounds[0].accountant)
    for entry in rounds:
        accountant.record(entry.noise_multiplier, entry.sample_rate, entry.steps)
        out.append({"seq": entry.seq, "time": entry.time, "date": _date(entry.time), "run_id": entry.run_id,
                    "round": entry.round, "steps": entry.steps, "delta": entry.delta,
                    "epsilon": accountant.epsilon(entry.delta), "epsilon_stored": entry.epsilon_after,
                    "budget_epsilon": entry.budget_epsilon})
    return out


def _stored_mismatches(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rounds whose stored epsilon differs from the epsilon recomputed after them (at their own delta)."""
    return [{"run_id": h["run_id"], "round": h["round"], "stored": h["epsilon_stored"], "recomputed": h["epsilon"]}
            for h in history if abs(h["epsilon"] - h["epsilon_stored"]) > STORED_TOLERANCE * max(1.0, h["epsilon"])]


def _run_spend(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run that spent from this dataset: its rounds, steps, dates and the lifetime epsilon after it."""
    runs: dict[str, dict[str, Any]] = {}
    for h in history:
        run = runs.setdefault(h["run_id"], {"run_id": h["run_id"], "rounds": 0, "steps": 0, "first": h["date"]})
        run.update(rounds=run["rounds"] + 1, steps=run["steps"] + h["steps"], last=h["date"],
                   epsilon_after=h["epsilon"])
    return list(runs.values())


def _date(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


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
