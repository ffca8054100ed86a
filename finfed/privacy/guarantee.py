"""The record-level guarantee of a run, in words: one text for privacy.json, report.md/json/html and exports.

It states exactly what DP-SGD covers (each site's training split), the accountant and δ
each ε was computed with, what the coordinator sees that the guarantee does not cover,
and what it assumes. docs/privacy.md is the long form; this must stay consistent with it.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

NO_DP = ("None: differential privacy was off (`privacy.enabled: false`); the adapters each site sent carry no "
         "formal limit on what they reveal about its records.")

TRUST = ("It assumes that each site draws its DP sampling and noise from a secure random source the coordinator "
         "can neither seed nor predict, and runs finfed's code as published; the reproducible test mode "
         "(`privacy.reproducible`) voids it.")

REPRODUCIBLE = ("This run used the reproducible test mode: its DP randomness was seeded from the configuration, "
                "so the guarantee does NOT hold against the coordinator or anyone who knows the seed "
                "(not private against the coordinator).")


def _accounting(sites: Mapping[str, Mapping[str, Any]]) -> str:
    """'the PRV accountant at δ = 1e-05', or each site's pair where they differ."""
    pairs = {(str(site.get("accountant") or "unrecorded").upper(), site.get("delta"))
             for site in sites.values() if site.get("delta") is not None}
    if not pairs:
        return "the accountant and δ named per site"
    if len(pairs) == 1:
        accountant, delta = next(iter(pairs))
        return f"the {accountant} accountant at δ = {delta:g}"
    per_site = ", ".join(f"site {sid}: {str(s.get('accountant') or 'unrecorded').upper()}, δ = {s['delta']:g}"
                         for sid, s in sorted(sites.items(), key=lambda item: int(item[0]))
                         if s.get("delta") is not None)
    return f"each site's own accountant and δ ({per_site})"


def guarantee_text(privacy: Mapping[str, Any], *, reproducible: bool = False,
                   train_loss_sites: Iterable[int] = ()) -> str:
    """The guarantee of a run whose privacy summary (privacy.json) is ``privacy``.

    ``train_loss_sites``: sites whose replies carried their training loss (sent in the clear,
    not covered); ``reproducible``: the run used ``privacy.reproducible``.
    """
    if not privacy.get("dp_enabled"):
        return NO_DP
    loss_sites = sorted({int(s) for s in train_loss_sites})
    losses = (f", and the training losses that site(s) {', '.join(map(str, loss_sites))} sent"
              if loss_sites else "")
    text = ("Record-level (ε, δ)-differential privacy, per site, for the records of that site's training split "
            f"only: each site's ε is computed by {_accounting(privacy.get('sites', {}))}, over all its DP-SGD "
            "steps on that data (across runs where it keeps a ledger). It bounds what the updates a site "
            "sent, and everything computed from them (the global model included), reveal about whether any one of "
            "those records was used; a customer with many "
            "records is protected only as far as each record is. Not covered, and seen by the coordinator: "
            "each site's record counts, the label set, which sites took part or refused a round, validation "
            "metrics (computed on validation records, which DP does not protect), error categories"
            f"{losses}. {TRUST}")
    return f"{text} {REPRODUCIBLE}" if reproducible else text


def sites_that_sent(rounds: Iterable[Mapping[str, Any]], key: str) -> list[int]:
    """Sites whose recorded training replies (metrics.jsonl's per-site entries) carried ``key``."""
    return sorted({int(site["site"]) for record in rounds for site in record.get("sites", []) if key in site})
