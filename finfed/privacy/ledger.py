"""A site's privacy ledger: every DP round it ever trained, on the site's own disk.

Spend composes per dataset *name*, which the site sets (default: its data
file's name; in simulation the simulated partition), so a second run, or a run
on a dataset with one record added, continues from the epsilon already spent.
Each round also records the training set's content fingerprint: a change is
logged as a warning in the site's log, never taken as a new dataset. A fresh
start for a dataset happens only explicitly (``finfed ledger new``), and is
itself a record of the ledger that every report shows.

The ledger is hash-chained and its head is kept in the site folder as well
(``finfed/privacy/ledger_chain.py``): an edited, deleted or reordered record, or
a deleted ledger whose head exists, is a hard error like a corrupt file, since
starting again from zero would erase the site's privacy history. Epsilon is
always recomputed from the recorded mechanism parameters; the stored
``epsilon_after`` is for people, and nothing trusts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from finfed.errors import LedgerIntegrityError, PrivacyError
from finfed.privacy.accounting import SiteAccountant
from finfed.privacy.ledger_chain import (
    ChainHead,
    check_against_head,
    in_seq_order,
    seal,
    verify_chain,
    write_private_json,
)

LEDGER_VERSION = 2
EVENT_KINDS = {"genesis", "new-ledger", "head-created"}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LedgerEntry:
    """One DP round: the mechanism's parameters, from which epsilon is recomputed."""

    run_id: str
    round: int
    dataset_fingerprint: str
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    epsilon_after: float  # for people reading the file; never used for accounting
    time: float
    dataset: str = ""
    budget_epsilon: float | None = None  # the site's lifetime budget when it trained this round
    seq: int = -1
    prev: str = ""
    hash: str = ""


def dataset_fingerprint(texts: Iterable[str], labels: Iterable[str]) -> str:
    """SHA-256 over the (text, label) pairs a site trains on, order-independent."""
    rows = sorted(f"{text}\x1f{label}" for text, label in zip(texts, labels))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


class PrivacyLedger:
    """Append-only, hash-chained record of a site's DP spend, kept in one JSON file.

    ``head_dir`` is the site folder holding ``ledger-head.json``; without it (a
    report on a copied ledger) the chain is still verified, but not against its head.
    """

    def __init__(self, path: str | Path, head_dir: str | Path | None = None,
                 log: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self.head = ChainHead(head_dir) if head_dir else None
        self.log = log or logger
        self.legacy = False  # a version-1 file: unchained, converted on the next write
        self.entries, self.events = self._read()
        self.head_state = self._check_head()

    # ------------------------------------------------------------------ reading
    def _read(self) -> tuple[list[LedgerEntry], list[dict[str, Any]]]:
        if not self.path.exists():
            return [], []
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            if payload.get("version") == 1:
                self.legacy = True
                return [LedgerEntry(**entry) for entry in payload["entries"]], []
            if payload.get("version") != LEDGER_VERSION:
                raise ValueError(f"unsupported ledger version {payload.get('version')!r}")
            events = [_checked_event(event) for event in payload["events"]]
            entries = [LedgerEntry(**entry) for entry in payload["entries"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerIntegrityError(f"privacy ledger {self.path} is unreadable ({exc}); refusing to train, since "
                                       "starting from zero would erase this site's privacy history. Restore it "
                                       "from backup or investigate before continuing.") from exc
        verify_chain(self.path, in_seq_order(self.path, payload["events"], payload["entries"]))
        return entries, events

    def _check_head(self) -> str:
        """How the ledger stands against its head: matches, missing, ahead, new, or not checked."""
        if self.head is None:
            return "not checked"
        recorded = self.head.get(self.path)
        if not self.path.exists():
            if recorded:
                raise LedgerIntegrityError(f"privacy ledger {self.path} is missing, but its chain head in "
                                           f"{self.head.path} records {recorded.get('records')} records: the ledger "
                                           "was deleted or moved; refusing to train. Restore it from backup.")
            return "new"
        if self.legacy:
            if recorded:
                raise LedgerIntegrityError(f"privacy ledger {self.path} is an unchained version-1 file, but its "
                                           f"chain head in {self.head.path} exists: the ledger was replaced")
            return "missing"
        if recorded is None:
            self.log.warning("privacy ledger %s has no chain head in %s; the next write records one there "
                             "(and notes it in the ledger)", self.path, self.head.path)
            return "missing"
        if check_against_head(self.path, self.records, recorded, self.head.path):
            self.log.warning("privacy ledger %s runs ahead of its chain head (a write was interrupted); "
                             "the head is brought up to date on the next write", self.path)
            return "ahead"
        return "matches"

    @property
    def records(self) -> list[dict[str, Any]]:
        """The whole chain in order: events (genesis, restarts) and rounds."""
        return sorted([*self.events, *(asdict(e) for e in self.entries)], key=lambda record: record["seq"])

    # ------------------------------------------------------------------ composition
    def rounds_for(self, dataset: str) -> list[LedgerEntry]:
        """The rounds that compose for ``dataset``: those after its latest explicit new ledger."""
        if self.legacy:
            return list(self.entries)  # a version-1 ledger's rounds all count, whatever the name
        start = max((e["seq"] for e in self.events if e["kind"] == "new-ledger" and e["dataset"] == dataset),
                    default=-1)
        return [e for e in self.entries if e.dataset == dataset and e.seq > start]

    def accountant(self, dataset: str, mechanism: str) -> SiteAccountant:
        """An accountant holding every composing step on this dataset, across all runs."""
        accountant = SiteAccountant(mechanism)
        for entry in self.rounds_for(dataset):
            if entry.accountant != mechanism:
                raise PrivacyError(f"privacy ledger {self.path} records {entry.accountant!r} spend on dataset "
                                   f"{dataset!r}; `privacy.accountant` must stay {entry.accountant!r}")
            accountant.record(entry.noise_multiplier, entry.sample_rate, entry.steps)
        return accountant

    def warn_if_changed(self, dataset: str, fingerprint: str) -> bool:
        """Log (site log only) that a dataset's content changed since its last round; it keeps composing."""
        rounds = self.rounds_for(dataset)
        if not rounds or rounds[-1].dataset_fingerprint == fingerprint:
            return False
        self.log.warning("dataset %r changed since its last recorded round (content fingerprint %s -> %s); "
                         "its spend keeps composing on ledger %s. To start a new ledger for it, run "
                         "`finfed ledger new` with a reason.", dataset, rounds[-1].dataset_fingerprint[:16],
                         fingerprint[:16], self.path)
        return True

    # ------------------------------------------------------------------ writing
    def append(self, entry: LedgerEntry) -> None:
        self._prepare_write(entry.dataset)
        self.entries.append(LedgerEntry(**self._sealed(asdict(entry))))
        self._write()

    def start_new(self, dataset: str, reason: str) -> None:
        """Start a new ledger for ``dataset``: its earlier rounds stay recorded but no longer compose."""
        if not dataset.strip() or not reason.strip():
            raise PrivacyError("a new ledger needs the dataset name and a reason, both non-empty")
        self._prepare_write(dataset)
        self.events.append(self._sealed({"kind": "new-ledger", "dataset": dataset, "reason": reason,
                                         "time": time.time()}))
        self._write()

    def _prepare_write(self, dataset: str) -> None:
        if self.legacy:
            self._convert_legacy(dataset)
        elif not self.events:
            self.events.append(self._sealed({"kind": "genesis", "time": time.time(), "converted_from": None}))
        elif self.head is not None and self.head_state == "missing":
            self.events.append(self._sealed({"kind": "head-created", "time": time.time(),
                                             "head": str(self.head.path.resolve())}))

    def _convert_legacy(self, dataset: str) -> None:
        """Chain a version-1 ledger's rounds, all attributed to ``dataset`` (their spend keeps counting)."""
        legacy, self.entries, self.legacy = self.entries, [], False
        self.events.append(self._sealed({"kind": "genesis", "time": time.time(), "converted_from": 1}))
        for entry in legacy:
            self.entries.append(LedgerEntry(**self._sealed({**asdict(replace(entry, dataset=dataset))})))
        self.log.warning("privacy ledger %s was version 1 (unchained); its %d rounds are now chained and "
                         "attributed to dataset %r", self.path, len(legacy), dataset)

    def _sealed(self, record: dict[str, Any]) -> dict[str, Any]:
        chain = self.records
        return seal(record, len(chain), chain[-1]["hash"] if chain else "0" * 64)

    def _write(self) -> None:
        # The ledger first, then its head: a crash between the two leaves a ledger ahead of its
        # head, which is accepted (it only adds spend); the reverse would refuse a sound ledger.
        payload = {"version": LEDGER_VERSION, "events": self.events, "entries": [asdict(e) for e in self.entries]}
        write_private_json(self.path, payload)
        if self.head is not None:
            chain = self.records
            self.head.put(self.path, len(chain), chain[-1]["hash"])
            self.head_state = "matches"


def _checked_event(event: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(event, dict) or event.get("kind") not in EVENT_KINDS:
        raise ValueError(f"unknown ledger event {event!r:.80}")
    return event


def new_entry(*, run_id: str, server_round: int, fingerprint: str, accountant: str, noise_multiplier: float,
              sample_rate: float, steps: int, max_grad_norm: float, delta: float, epsilon_after: float,
              dataset: str = "", budget_epsilon: float | None = None) -> LedgerEntry:
    return LedgerEntry(run_id=run_id, round=server_round, dataset_fingerprint=fingerprint,
                       accountant=accountant, noise_multiplier=float(noise_multiplier),
                       sample_rate=float(sample_rate), steps=int(steps), max_grad_norm=float(max_grad_norm),
                       delta=float(delta), epsilon_after=float(epsilon_after), time=time.time(),
                       dataset=dataset, budget_epsilon=budget_epsilon)
