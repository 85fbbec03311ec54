"""Devices forget what leaves their user's scope, and get it back when it returns.

When a doc a user could read stops being readable (a household moved to another area, a
facility or role taken away, a depth reduced, a report made private to them), their next
pull takes it off the device: the scope index knows what the user could read when the
device last synced (`proxy.access.history`), and the feed sends each doc that left as a
made-up deleted revision (`proxy.offline.derived`) that stock PouchDB applies like any
other. Nothing is written to CouchDB for it: the removal exists only on devices and in the
user's ledger (`proxy.offline.ledger`, a `_local` doc in CouchDB, so every replica and
every restart knows what each device was told).

- Pushing afterwards changes nothing upstream and reports no error: couchgate recognises
  its made-up revisions in `_revs_diff` (the device then never sends them) and drops them
  from `_bulk_docs`.
- A doc that comes back is sent again with its current body: its current revision if
  CouchDB has moved on since the removal, else a made-up live revision above the removal
  (a *return*); a later delivery of the doc closes that return, so the device never keeps
  a made-up branch beside the real one.
- An edit the device made before the doc left stays on the device (a live revision beats a
  deletion) and its push is refused as any write outside the scope is: PouchDB reports it
  as `denied`, the audit log records it (`outcome=forbidden`).
- Each pull that sends removals writes one audit entry (`action=removal`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from proxy.audit.recorder import record
from proxy.couch.client import CouchClient
from proxy.offline.derived import Deriver, Made
from proxy.offline.ledger import Ledger, LedgerStore

SHOWN_IDS = 100  # doc ids named in one removal audit entry (the count is always whole)


@dataclass
class Removals:
    enabled: bool
    deriver: Deriver
    store: LedgerStore

    @classmethod
    def of(cls, couch: CouchClient, db_path: str, secret: bytes, horizon: float, enabled: bool) -> Removals:
        key = hashlib.sha256(b"couchgate made-up revisions\0" + secret).digest()
        return cls(enabled, Deriver(key), LedgerStore(couch, db_path, horizon))

    async def ledger(self, user: str) -> Ledger:
        """The user's ledger as CouchDB holds it now. Never cached: another replica may
        have told the user's devices something since (a removal or a return), and a
        decision on a stale ledger would name revisions the device already has, or miss a
        made-up one on its way back (one `_local` read per page that needs it)."""
        return await self.store.load(user)

    async def save(self, ledger: Ledger) -> None:
        await self.store.save(ledger, time.time())

    def recognise(self, ledger: Ledger, doc_id: str, rev: str) -> Made | None:
        return self.deriver.recognise(doc_id, rev, ledger.chains(doc_id))


def audit_removals(request: web.Request, db: str, ids: list[str]) -> None:
    """One entry per pull that takes docs off a device, not one per doc."""
    record(
        request, "removal", "success", db=db, reason=f"{len(ids)} docs left the user's scope",
        details={"count": len(ids), "docs": ids[:SHOWN_IDS]},
    )  # fmt: skip


def leave_revs(
    removals: Removals, ledger: Ledger, doc_id: str, leaves: Iterable[str], now: float
) -> list[str]:
    """The made-up revisions that take a doc off a device: every chain over its live
    upstream leaves, and every chain still open over an older winner, ends deleted."""
    revs: list[str] = []
    live = list(dict.fromkeys(leaves))
    chains = dict(ledger.chains(doc_id))
    for leaf in [*live, *(c for c in chains if c not in live)]:
        length = chains.get(leaf, 0)
        if leaf not in live and length % 2 == 1:
            continue  # an older chain already closed
        if length % 2 == 0:
            length += 1
        ledger.grow(doc_id, leaf, length)
        revs.append(removals.deriver.made(doc_id, leaf, length).rev)
    ledger.mark(doc_id, gone=True, now=now)
    return revs


def delivery_revs(
    removals: Removals, ledger: Ledger, doc_id: str, winner: str, now: float
) -> list[str] | None:
    """The revisions a readable doc's row names when couchgate made up revisions of it
    before (None: the plain upstream row). The chain over the winner comes back (a return);
    every other chain ends deleted, so no made-up branch stands beside the real one."""
    chains = dict(ledger.chains(doc_id))
    if not chains:
        return None
    revs: list[str] = []
    length = chains.get(winner, 0)
    if length:
        if length % 2 == 1:
            length += 1
            ledger.grow(doc_id, winner, length)
        revs.append(removals.deriver.made(doc_id, winner, length).rev)
    else:
        revs.append(winner)
    for leaf, other in chains.items():
        if leaf == winner:
            continue
        if other % 2 == 0:
            other += 1
            ledger.grow(doc_id, leaf, other)
        revs.append(removals.deriver.made(doc_id, leaf, other).rev)
    ledger.mark(doc_id, gone=False, now=now)
    return revs


def made_doc(made: Made, doc_id: str, upstream: dict[str, Any]) -> dict[str, Any]:
    """The body of a made-up revision, from the upstream leaf it grows from (read with
    `revs=true`): a deletion carries nothing; a return carries that leaf's body."""
    ids = upstream.get("_revisions", {}).get("ids") if isinstance(upstream.get("_revisions"), dict) else None
    history = ids if isinstance(ids, list) else [made.upstream.partition("-")[2]]
    if made.deleted:
        return {"_id": doc_id, "_rev": made.rev, "_deleted": True, "_revisions": made.revisions(history)}
    skip = {"_rev", "_revisions", "_conflicts", "_deleted_conflicts", "_revs_info", "_deleted"}
    body = {k: v for k, v in upstream.items() if k not in skip}
    return {**body, "_id": doc_id, "_rev": made.rev, "_revisions": made.revisions(history)}
