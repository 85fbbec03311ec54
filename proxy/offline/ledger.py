"""What couchgate told one user's devices that CouchDB does not hold: the made-up
revisions of `proxy.offline.derived`, per doc, kept in CouchDB.

A user's ledger lives in the main database as the `_local` doc
`_local/couchgate-ledger~<hash of the user>` (never replicated, never in `_changes`), so
every replica and every restart sees it. Each change bumps its version; a `since` token
carries the version its device has seen, so couchgate knows which made-up revisions that
device holds. Per doc it keeps:
- `rm`: the upstream leaves a removal was made over, and the version it was sent at;
- `open`: the upstream winners a return was made over and that no later delivery has
  closed yet; `shut`: those closed (their revisions must still be recognised);
- `t`: when the doc was last removed (unix seconds), for the scope report and pruning.
Entries older than the removals horizon are dropped.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.couch.client import CouchClient, quote_id
from proxy.errors import UpstreamError

PREFIX = "_local/couchgate-ledger~"


@dataclass
class DocState:
    rm: tuple[str, ...] = ()
    rm_v: int = 0
    open: list[str] = field(default_factory=list)
    shut: list[str] = field(default_factory=list)
    t: float = 0.0

    def returned_over(self) -> list[str]:
        return [*self.open, *self.shut]

    def to_json(self) -> dict[str, Any]:
        return {"rm": list(self.rm), "rm_v": self.rm_v, "open": self.open, "shut": self.shut, "t": self.t}

    @classmethod
    def of(cls, raw: Any) -> DocState:
        raw = raw if isinstance(raw, dict) else {}
        strs = lambda v: [x for x in v if isinstance(x, str)] if isinstance(v, list) else []  # noqa: E731
        return cls(
            tuple(strs(raw.get("rm"))),
            raw.get("rm_v") if isinstance(raw.get("rm_v"), int) else 0,
            strs(raw.get("open")),
            strs(raw.get("shut")),
            float(raw["t"]) if isinstance(raw.get("t"), int | float) else 0.0,
        )


@dataclass
class Ledger:
    user: str
    version: int = 0
    docs: dict[str, DocState] = field(default_factory=dict)
    rev: str | None = None  # the stored `_local` doc's revision
    dirty: bool = False

    def state(self, doc_id: str) -> DocState:
        return self.docs.get(doc_id) or DocState()

    def _bump(self) -> int:
        if not self.dirty:
            self.version += 1
            self.dirty = True
        return self.version

    def removed(self, doc_id: str, leaves: tuple[str, ...], now: float) -> None:
        state = self.docs.setdefault(doc_id, DocState())
        state.rm, state.rm_v, state.t = leaves, self._bump(), now
        self._close(state)

    def returned(self, doc_id: str, winner: str) -> None:
        state = self.docs.setdefault(doc_id, DocState())
        if winner not in state.open:
            self._bump()
            state.open.append(winner)

    def delivered(self, doc_id: str) -> None:
        """An upstream revision was delivered: every open return is closed in the same row."""
        state = self.docs.get(doc_id)
        if state is not None and state.open:
            self._bump()
            self._close(state)

    @staticmethod
    def _close(state: DocState) -> None:
        state.shut = list(dict.fromkeys([*state.shut, *state.open]))
        state.open = []

    def holds_removal_over(self, doc_id: str, winner: str, seen: int) -> bool:
        """Whether a device that has seen version `seen` holds a removal made over `winner`."""
        state = self.docs.get(doc_id)
        return state is not None and winner in state.rm and 0 < state.rm_v <= seen

    def recent(self, since: float) -> int:
        """How many docs were removed from this user's devices since `since`."""
        return sum(1 for s in self.docs.values() if s.rm and s.t >= since)

    def prune(self, before: float) -> None:
        for doc_id in [d for d, s in self.docs.items() if s.t < before and not s.open]:
            del self.docs[doc_id]

    def to_json(self) -> dict[str, Any]:
        return {"v": self.version, "docs": {d: s.to_json() for d, s in self.docs.items()}}

    @classmethod
    def of(cls, user: str, raw: Any, rev: str | None) -> Ledger:
        raw = raw if isinstance(raw, dict) else {}
        docs = raw.get("docs") if isinstance(raw.get("docs"), dict) else {}
        version = raw.get("v") if isinstance(raw.get("v"), int) else 0
        return cls(user, version, {d: DocState.of(s) for d, s in docs.items() if isinstance(d, str)}, rev)


def ledger_id(user: str) -> str:
    return PREFIX + hashlib.sha256(user.encode()).hexdigest()[:32]


class LedgerStore:
    """Ledgers read from and written to CouchDB; a read that fails refuses the request
    (fail closed: without it, a device could be sent a made-up revision twice over, or a
    doc back under a revision it already holds)."""

    def __init__(self, couch: CouchClient, db_path: str, horizon_seconds: float) -> None:
        self.couch = couch
        self.db_path = db_path
        self.horizon = horizon_seconds

    def _path(self, user: str) -> str:
        return f"{self.db_path}/{quote_id(ledger_id(user))}"

    async def load(self, user: str) -> Ledger:
        result = await self.couch.json("GET", self._path(user))
        if result.status == 404:
            return Ledger(user)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"CouchDB answered {result.status} to a read couchgate needed")
        rev = result.body.get("_rev") if isinstance(result.body.get("_rev"), str) else None
        return Ledger.of(user, result.body, rev)

    async def save(self, ledger: Ledger) -> None:
        """Write a changed ledger; if another replica wrote it meanwhile, merge and retry."""
        if not ledger.dirty:
            return
        ledger.prune(time.time() - self.horizon)
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
            theirs = await self.load(ledger.user)
            merge(ledger, theirs)
        raise web.HTTPServiceUnavailable(reason="the removals ledger is busy; try again")


def merge(mine: Ledger, theirs: Ledger) -> None:
    """Fold another replica's ledger into this one (union; the later removal wins)."""
    mine.rev = theirs.rev
    mine.version = max(mine.version, theirs.version) + 1
    for doc_id, other in theirs.docs.items():
        state = mine.docs.get(doc_id)
        if state is None:
            mine.docs[doc_id] = other
            continue
        if other.rm_v > state.rm_v:
            state.rm, state.rm_v, state.t = other.rm, other.rm_v, other.t
        state.shut = list(dict.fromkeys([*state.shut, *other.shut]))
        state.open = [w for w in dict.fromkeys([*state.open, *other.open]) if w not in state.shut]
