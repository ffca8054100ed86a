"""The hash chain that makes a privacy ledger tamper-evident, and its head kept in the site folder.

Every record of a ledger (its genesis, each DP round, each explicit restart)
carries ``seq`` (its place in the chain), ``prev`` (the previous record's hash)
and ``hash`` (SHA-256 of its own canonical JSON without ``hash``). Editing a
record breaks its hash; deleting, inserting or reordering one breaks the next
record's ``prev``; deleting the newest records (or the whole file) is caught by
the chain head, which the site also writes to ``ledger-head.json`` in its own
folder. Both files are written atomically and with mode 0600.

This is tamper *evidence* against an edit of one file, not a proof against
whoever controls the site's disk and rewrites both files consistently.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable

from finfed.atomic import PRIVATE_MODE, write_text_atomic
from finfed.errors import LedgerIntegrityError

GENESIS_PREV = "0" * 64
HEAD_FILE = "ledger-head.json"
HEAD_VERSION = 1


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 of a record's canonical JSON (sorted keys, no spaces), its own ``hash`` left out."""
    body = {key: value for key, value in record.items() if key != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def seal(record: dict[str, Any], seq: int, prev: str) -> dict[str, Any]:
    """``record`` placed at ``seq`` after a record whose hash is ``prev``, with its own hash."""
    sealed = {**record, "seq": seq, "prev": prev}
    sealed["hash"] = record_hash(sealed)
    return sealed


def verify_chain(path: Path, records: list[dict[str, Any]]) -> None:
    """Refuse a chain with an edited, missing, inserted or reordered record (``records`` in seq order)."""
    if not records or records[0].get("kind") != "genesis":
        raise LedgerIntegrityError(f"privacy ledger {path}: its genesis record is missing; the ledger was truncated "
                                   "or rewritten")
    prev = GENESIS_PREV
    for index, record in enumerate(records):
        if record.get("seq") != index:
            raise LedgerIntegrityError(f"privacy ledger {path}: record {index} is missing (found seq "
                                       f"{record.get('seq')!r} in its place); a record was deleted or inserted")
        if record.get("prev") != prev:
            raise LedgerIntegrityError(f"privacy ledger {path}: record {index} does not follow record {index - 1} "
                                       "(its previous-hash differs); records were deleted, inserted or reordered")
        if record.get("hash") != record_hash(record):
            raise LedgerIntegrityError(f"privacy ledger {path}: record {index} was edited after it was written "
                                       "(its contents no longer match its hash)")
        prev = record["hash"]


def in_seq_order(path: Path, *groups: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge the file's record lists into one chain; each list must itself be in chain order."""
    merged = []
    for group in groups:
        seqs = [record.get("seq") for record in group]
        if not all(isinstance(seq, int) for seq in seqs):
            raise LedgerIntegrityError(f"privacy ledger {path}: a record has no whole-number `seq`")
        if seqs != sorted(seqs):
            raise LedgerIntegrityError(f"privacy ledger {path}: records are out of order (seq {seqs}); records were "
                                       "reordered")
        merged.extend(group)
    return sorted(merged, key=lambda record: record["seq"])


def write_private_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename) with mode 0600 from creation on."""
    write_text_atomic(path, json.dumps(payload, indent=1), mode=PRIVATE_MODE)


class ChainHead:
    """``ledger-head.json`` in a site folder: each ledger's record count and last hash, keyed by path."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / HEAD_FILE

    def _read_all(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            if payload.get("version") != HEAD_VERSION or not isinstance(payload.get("ledgers"), dict):
                raise ValueError(f"unsupported head version {payload.get('version')!r}")
            return payload["ledgers"]
        except (OSError, ValueError, AttributeError) as exc:
            raise LedgerIntegrityError(f"ledger chain head {self.path} is unreadable ({exc}); refusing to train. "
                                       "Restore it from backup or investigate before continuing.") from exc

    def get(self, ledger: Path) -> dict[str, Any] | None:
        return self._read_all().get(str(Path(ledger).resolve()))

    def put(self, ledger: Path, records: int, last_hash: str) -> None:
        ledgers = self._read_all()
        ledgers[str(Path(ledger).resolve())] = {"records": records, "last_hash": last_hash, "time": time.time()}
        write_private_json(self.path, {"version": HEAD_VERSION, "ledgers": ledgers})


def check_against_head(path: Path, records: list[dict[str, Any]], head: dict[str, Any], head_file: Path) -> bool:
    """Refuse a ledger shorter than, or diverging from, its head; True if it runs ahead of it.

    A ledger one write ahead of its head is what a crash between the two writes leaves
    (the ledger is written first): its extra records only add spend, so it is accepted.
    """
    count, last = head.get("records"), head.get("last_hash")
    if not isinstance(count, int) or count < 1 or not isinstance(last, str):
        raise LedgerIntegrityError(f"ledger chain head {head_file} has no record count / last hash for {path}")
    if len(records) < count:
        raise LedgerIntegrityError(f"privacy ledger {path} holds {len(records)} records but its chain head in "
                                   f"{head_file} records {count}: records were deleted; refusing to train")
    if records[count - 1]["hash"] != last:
        raise LedgerIntegrityError(f"privacy ledger {path} does not match its chain head in {head_file} (record "
                                   f"{count - 1} differs): the ledger was rewritten; refusing to train")
    return len(records) > count
