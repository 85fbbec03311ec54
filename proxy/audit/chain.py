"""Tamper evidence for audit entries (pure, no I/O).

Each writer (one couchgate process) numbers its entries 1, 2, 3, ... (`seq`) and stores in
each the hash of the previous one (`prev_hash`) and its own `hash`: SHA-256 over the
canonical JSON of the entry without `hash` and without CouchDB's `_rev`. Editing an entry
breaks its hash; deleting one leaves a gap in `seq` and a `prev_hash` that no longer
matches; retention records, per writer, the last seq it removed, so the first remaining
entry must follow it. The chain is of entries, not of the CouchDB docs that hold them (a
batch of entries per doc, see proxy/audit/log.py): removing a whole batch doc is a gap in
`seq` like any other, an entry edited inside one fails its hash.
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
    body = entry
    if not UNHASHED.isdisjoint(entry.keys()):
        body = {k: v for k, v in entry.items() if k not in UNHASHED}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True)
class Break:
    writer: str
    seq: int
    problem: str  # edited | missing | relinked | truncated

    def __str__(self) -> str:
        return f"writer {self.writer} seq {self.seq}: {self.problem}"


@dataclass(frozen=True)
class Checkpoint:
    """A writer's latest seq and hash as logged by the process (`audit checkpoint` lines):
    the only evidence against which deleting a writer's newest entries shows."""

    writer: str
    seq: int
    hash: str


class ChainChecker:
    """Checks entries fed in (writer, seq) order, one at a time, holding only the previous
    entry of the current writer: the log can be verified without loading it whole."""

    def __init__(
        self, removed_up_to: Mapping[str, int] | None = None, checkpoints: Iterable[Checkpoint] = ()
    ) -> None:
        self.removed_up_to = dict(removed_up_to or {})
        self.checkpoints = {c.writer: c for c in checkpoints}
        self.breaks: list[Break] = []
        self.entries = 0
        self.intents = 0  # of `entries`, the intents stored before writes
        self.writers: set[str] = set()
        self._writer: str | None = None
        self._expected = 1
        self._prev: str | None = GENESIS
        self._last_seq = 0

    def feed(self, entry: Mapping[str, Any]) -> None:
        writer = str(entry.get("writer"))
        if writer != self._writer:
            self._end_writer()
            self._start_writer(writer)
        self.entries += 1
        self.intents += entry.get("action") == "intent"
        seq = int(entry.get("seq", 0))
        if seq != self._expected:
            self.breaks.append(Break(writer, self._expected, "missing"))
            self._prev = None  # the link across a gap cannot be checked
        if entry.get("hash") != entry_hash(entry):
            self.breaks.append(Break(writer, seq, "edited"))
        elif self._prev is not None and entry.get("prev_hash") != self._prev:
            self.breaks.append(Break(writer, seq, "relinked"))
        checkpoint = self.checkpoints.get(writer)
        if checkpoint is not None and seq == checkpoint.seq and entry.get("hash") != checkpoint.hash:
            self.breaks.append(Break(writer, seq, "edited"))  # rewritten, chain and all
        self._prev = str(entry.get("hash"))
        self._expected = seq + 1
        self._last_seq = seq

    def finish(self) -> list[Break]:
        self._end_writer()
        self._writer = None
        for writer in sorted(set(self.checkpoints) - self.writers):
            self._start_writer(writer)  # a checkpointed writer with no entry left at all
            self._end_writer()
        return self.breaks

    def _start_writer(self, writer: str) -> None:
        self._writer = writer
        self.writers.add(writer)
        self._expected = self.removed_up_to.get(writer, 0) + 1
        self._prev = GENESIS if self._expected == 1 else None
        self._last_seq = self._expected - 1

    def _end_writer(self) -> None:
        if self._writer is None:
            return
        checkpoint = self.checkpoints.get(self._writer)
        if checkpoint is not None and self._last_seq < checkpoint.seq:
            self.breaks.append(Break(self._writer, self._last_seq + 1, "truncated"))


def verify(
    entries: Iterable[Mapping[str, Any]],
    removed_up_to: Mapping[str, int] | None = None,
    checkpoints: Iterable[Checkpoint] = (),
) -> list[Break]:
    """Every break in every writer's chain. `removed_up_to[writer]` is the last seq that
    retention deleted on purpose; entries before it are not expected."""
    checker = ChainChecker(removed_up_to, checkpoints)
    for entry in sorted(entries, key=lambda e: (str(e.get("writer")), int(e.get("seq", 0)))):
        checker.feed(entry)
    return checker.finish()
