"""What couchgate told one user's devices that CouchDB does not hold: its made-up
revisions (`proxy.offline.derived`), per doc, kept in CouchDB.

A user's ledger is the `_local` doc `_local/couchgate-ledger~<hash of the user>` of the
main database (never replicated, never in `_changes`), so every replica and every restart
knows what each device of the user was told. Per doc it keeps how far the made-up chain
over each upstream leaf has grown (`chains`), whether the doc is off the user's devices
now (`gone`), and when it last left (`t`, unix seconds) for the scope report and for
pruning: a doc back for longer than the removals horizon, with no chain left open, is
forgotten.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

from proxy.couch.client import CouchClient, JsonResult, quote_id
from proxy.errors import UpstreamError, UpstreamUnavailable

PREFIX = "_local/couchgate-ledger~"


@dataclass
class DocState:
    chains: dict[str, int] = field(default_factory=dict)  # upstream leaf -> chain length
    gone: bool = False
    t: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"chains": self.chains, "gone": self.gone, "t": self.t}

    @classmethod
    def of(cls, raw: Any) -> DocState:
        raw = raw if isinstance(raw, dict) else {}
        chains = raw.get("chains") if isinstance(raw.get("chains"), dict) else {}
        kept = {
            k: v for k, v in chains.items() if isinstance(k, str) and isinstance(v, int) and 0 < v < 10_000
        }
        t = raw.get("t")
        return cls(kept, raw.get("gone") is True, float(t) if isinstance(t, int | float) else 0.0)


@dataclass
class Ledger:
    user: str
    docs: dict[str, DocState] = field(default_factory=dict)
    rev: str | None = None  # the stored `_local` doc's revision
    dirty: bool = False

    def chains(self, doc_id: str) -> dict[str, int]:
        state = self.docs.get(doc_id)
        return state.chains if state is not None else {}

    def grow(self, doc_id: str, leaf: str, length: int) -> None:
        state = self.docs.setdefault(doc_id, DocState())
        if state.chains.get(leaf, 0) < length:
            state.chains[leaf] = length
            self.dirty = True

    def mark(self, doc_id: str, gone: bool, now: float) -> None:
        state = self.docs.setdefault(doc_id, DocState())
        if state.gone != gone:
            state.gone, self.dirty = gone, True
            if gone:
                state.t = now

    def recent(self, since: float) -> int:
        """How many docs left this user's scope (and are off their devices) since `since`."""
        return sum(1 for s in self.docs.values() if s.gone and s.t >= since)

    def prune(self, before: float) -> None:
        stale = [
            d
            for d, s in self.docs.items()
            if s.t < before and not s.gone and all(n % 2 for n in s.chains.values())
        ]
        for doc_id in stale:
            del self.docs[doc_id]
            self.dirty = True

    def to_json(self) -> dict[str, Any]:
        return {"docs": {d: s.to_json() for d, s in self.docs.items()}}

    @classmethod
    def of(cls, user: str, raw: Any, rev: str | None) -> Ledger:
        raw = raw if isinstance(raw, dict) else {}
        docs = raw.get("docs") if isinstance(raw.get("docs"), dict) else {}
        return cls(user, {d: DocState.of(s) for d, s in docs.items() if isinstance(d, str)}, rev)


def ledger_id(user: str) -> str:
    return PREFIX + hashlib.sha256(user.encode()).hexdigest()[:32]


def merge(mine: Ledger, theirs: Ledger) -> None:
    """Fold another replica's ledger into this one: chains only grow, and a doc is gone if
    the later of the two says so."""
    mine.rev = theirs.rev
    for doc_id, other in theirs.docs.items():
        state = mine.docs.setdefault(doc_id, DocState())
        for leaf, length in other.chains.items():
            state.chains[leaf] = max(state.chains.get(leaf, 0), length)
        if other.t > state.t:
            state.gone, state.t = other.gone, other.t


class LedgerStore:
    """Ledgers read from and written to CouchDB. A read that fails refuses the request
    (fail closed: without it, a device could be told of a made-up revision wrongly).

    Reads of one user's ledger are shared, as the index's rounds are: a read serves every
    request that asked for it before it was sent, and while one is in flight the requests
    that ask meanwhile wait for it to end and share the next. Each request so gets a
    ledger read after it asked (as fresh as a read of its own), and a change that wakes
    thousands of live feeds of one user's devices costs two reads, not thousands."""

    def __init__(self, couch: CouchClient, db_path: str, horizon_seconds: float) -> None:
        self.couch = couch
        self.db_path = db_path
        self.horizon = horizon_seconds
        self._next: dict[str, asyncio.Future[JsonResult]] = {}  # per user: the read not sent yet
        self._sent: dict[str, asyncio.Future[JsonResult]] = {}  # per user: the read in flight

    def _path(self, user: str) -> str:
        return f"{self.db_path}/{quote_id(ledger_id(user))}"

    async def _read(self, user: str) -> JsonResult:
        read = self._next.get(user)
        if read is None:
            read = self._next[user] = asyncio.ensure_future(self._send(user, self._sent.get(user)))
            read.add_done_callback(lambda t: self._ended(user, t))
        return await asyncio.shield(read)

    def _ended(self, user: str, read: asyncio.Future[JsonResult]) -> None:
        """A read ended before it was sent (cancelled at shutdown) is joined no more; its
        outcome is each asker's to see."""
        if self._next.get(user) is read:
            del self._next[user]
        if not read.cancelled():
            read.exception()

    async def _send(self, user: str, before: asyncio.Future[JsonResult] | None) -> JsonResult:
        if before is not None:
            await asyncio.wait([before])
        this = self._next.pop(user)  # asked from now on: the next read
        self._sent[user] = this
        try:
            return await self.couch.json("GET", self._path(user))
        finally:
            if self._sent.get(user) is this:
                del self._sent[user]

    async def load(self, user: str) -> Ledger:
        result = await self._read(user)
        if result.status == 404:
            return Ledger(user)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"CouchDB answered {result.status} to a read couchgate needed")
        rev = result.body.get("_rev") if isinstance(result.body.get("_rev"), str) else None
        return Ledger.of(user, result.body, rev)

    async def save(self, ledger: Ledger, now: float) -> None:
        """Write a changed ledger; if another replica wrote it meanwhile, merge and retry."""
        if not ledger.dirty:
            return
        ledger.prune(now - self.horizon)
        for _ in range(5):
            body: dict[str, Any] = {**ledger.to_json(), "_id": ledger_id(ledger.user)}
            if ledger.rev is not None:
                body["_rev"] = ledger.rev
            result = await self.couch.json("PUT", self._path(ledger.user), body=body)
            if result.ok and isinstance(result.body, dict):
                ledger.rev = str(result.body.get("rev"))
                ledger.dirty = False
                return
            if result.status != 409:
                raise UpstreamError(f"CouchDB answered {result.status} to a write couchgate needed")
            merge(ledger, await self.load(ledger.user))
        raise UpstreamUnavailable("the removals ledger is busy; try again")
