"""A site's privacy ledger: every DP round it ever trained, on the site's own disk.

Spend composes across runs on the same dataset (same fingerprint), so a second
run starts from the first run's epsilon. Writes are atomic (temporary file,
fsync, rename): a crash mid-write leaves the previous ledger intact. A ledger
that cannot be read is a hard error; starting again from zero would erase
privacy history.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from finfed.errors import PrivacyError
from finfed.privacy.accounting import SiteAccountant

LEDGER_VERSION = 1


@dataclass(frozen=True)
class LedgerEntry:
    run_id: str
    round: int
    dataset_fingerprint: str
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float
    epsilon_after: float
    time: float


def dataset_fingerprint(texts: Iterable[str], labels: Iterable[str]) -> str:
    """SHA-256 over the (text, label) pairs a site trains on, order-independent."""
    rows = sorted(f"{text}\x1f{label}" for text, label in zip(texts, labels))
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8"))
        digest.update(b"\x1e")
    return digest.hexdigest()


class PrivacyLedger:
    """Append-only record of a site's DP spend, kept in one JSON file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries = self._read()

    def _read(self) -> list[LedgerEntry]:
        if not self.path.exists():
            return []
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            if payload.get("version") != LEDGER_VERSION:
                raise ValueError(f"unsupported ledger version {payload.get('version')!r}")
            return [LedgerEntry(**entry) for entry in payload["entries"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PrivacyError(f"privacy ledger {self.path} is unreadable ({exc}); refusing to train, since "
                               "starting from zero would erase this site's privacy history. Restore it "
                               "from backup or investigate before continuing.") from exc

    def accountant(self, fingerprint: str, mechanism: str) -> SiteAccountant:
        """An accountant holding every recorded step on this dataset, across all runs."""
        accountant = SiteAccountant(mechanism)
        for entry in self.entries_for(fingerprint):
            if entry.accountant != mechanism:
                raise PrivacyError(f"privacy ledger {self.path} records {entry.accountant!r} spend on this "
                                   f"dataset; `privacy.accountant` must stay {entry.accountant!r}")
            accountant.record(entry.noise_multiplier, entry.sample_rate, entry.steps)
        return accountant

    def entries_for(self, fingerprint: str) -> list[LedgerEntry]:
        return [e for e in self.entries if e.dataset_fingerprint == fingerprint]

    def has_round(self, run_id: str, server_round: int, fingerprint: str) -> bool:
        return any(e.run_id == run_id and e.round == server_round for e in self.entries_for(fingerprint))

    def append(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        payload = {"version": LEDGER_VERSION, "entries": [asdict(e) for e in self.entries]}
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def new_entry(*, run_id: str, server_round: int, fingerprint: str, accountant: str, noise_multiplier: float,
              sample_rate: float, steps: int, max_grad_norm: float, delta: float,
              epsilon_after: float) -> LedgerEntry:
    return LedgerEntry(run_id=run_id, round=server_round, dataset_fingerprint=fingerprint,
                       accountant=accountant, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                       steps=steps, max_grad_norm=max_grad_norm, delta=delta, epsilon_after=epsilon_after,
                       time=time.time())
