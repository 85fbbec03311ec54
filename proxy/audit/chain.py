"""Tamper evidence for audit entries (pure, no I/O).

Each writer (one couchgate process) numbers its entries 1, 2, 3, ... (`seq`) and stores in
each the hash of the previous one (`prev_hash`) and its own `hash`: SHA-256 over the
canonical JSON of the entry without `hash` and without CouchDB's `_rev`. Editing an entry
breaks its hash; deleting one leaves a gap in `seq` and a `prev_hash` that no longer
matches; retention records, per writer, the last seq it removed, so the first remaining
entry must follow it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS = "0" * 64
UNHASHED = {"hash", "_rev", "_revisions", "_conflicts"}


def canonical(entry: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in entry.items() if k not in UNHASHED}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True)
class Break:
    writer: str
    seq: int
    problem: str  # edited | missing | relinked

    def __str__(self) -> str:
        return f"writer {self.writer} seq {self.seq}: {self.problem}"


def verify(
    entries: Iterable[Mapping[str, Any]], removed_up_to: Mapping[str, int] | None = None
) -> list[Break]:
    """Every break in every writer's chain. `removed_up_to[writer]` is the last seq that
    retention deleted on purpose; entries before it are not expected."""
    by_writer: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        by_writer.setdefault(str(entry.get("writer")), []).append(entry)
    breaks: list[Break] = []
    for writer, chain in sorted(by_writer.items()):
        chain.sort(key=lambda e: int(e.get("seq", 0)))
        expected_seq = (removed_up_to or {}).get(writer, 0) + 1
        prev: str | None = GENESIS if expected_seq == 1 else None
        for entry in chain:
            seq = int(entry.get("seq", 0))
            if seq != expected_seq:
                breaks.append(Break(writer, expected_seq, "missing"))
                prev = None  # the link across a gap cannot be checked
            if entry.get("hash") != entry_hash(entry):
                breaks.append(Break(writer, seq, "edited"))
            elif prev is not None and entry.get("prev_hash") != prev:
                breaks.append(Break(writer, seq, "relinked"))
            prev = str(entry.get("hash"))
            expected_seq = seq + 1
    return breaks
