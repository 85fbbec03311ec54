"""Revisions couchgate makes up to take a doc off a device, and to bring it back (pure).

Stock PouchDB only ever learns of changes through the replication protocol, so a doc that
left a user's scope is taken off their device by a revision the device cannot refuse: a
deleted revision, child of each live leaf the device may hold (a *removal*). A doc that
comes back while CouchDB still has the revision the removal was a child of (the device
holds it, below the removal, so it would not fetch it again) comes back as a live
revision child of the removal, carrying the current body (a *return*); a return still
open on a device is closed, whenever the doc is delivered again, by a removal of it.

None of these is ever written to CouchDB. Their ids are derived from a secret, the doc id
and the parent revision (`derive`), so every replica makes the same ones, recognises them
when a device asks about them (`_revs_diff`, `_bulk_get`) or pushes them back, and no one
without the secret can make one up. A revision id says nothing of a body; a removal's
`_revisions` name the ids of the upstream revisions it descends from.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REMOVAL, RETURN = "rm", "ret"


def generation(rev: str) -> int:
    head, _, _ = rev.partition("-")
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True)
class Deriver:
    key: bytes

    def derive(self, kind: str, doc_id: str, parent: str) -> str:
        mac = hmac.new(self.key, f"{kind}\0{doc_id}\0{parent}".encode(), hashlib.sha256).hexdigest()[:32]
        return f"{generation(parent) + 1}-{mac}"

    def removal(self, doc_id: str, leaf: str) -> str:
        return self.derive(REMOVAL, doc_id, leaf)

    def return_over(self, doc_id: str, winner: str) -> tuple[str, str]:
        """The removal of `winner` and the return above it."""
        removal = self.removal(doc_id, winner)
        return removal, self.derive(RETURN, doc_id, removal)


@dataclass(frozen=True)
class Made:
    """A made-up revision: its id, its parent chain up to the upstream revision it grows
    from (`upstream`), and whether it is a deletion."""

    rev: str
    chain: tuple[str, ...]  # made-up ancestors, nearest first, below `rev`
    upstream: str  # the upstream revision the chain grows from
    deleted: bool
    body_of: str | None = None  # a return: the upstream revision whose body it carries

    def revisions(self, upstream_ids: Sequence[str]) -> dict[str, object]:
        """`_revisions` of this revision, given the upstream one's (its own id first)."""
        own = [r.partition("-")[2] for r in (self.rev, *self.chain)]
        return {"start": generation(self.rev), "ids": [*own, *upstream_ids]}


def recognise(
    deriver: Deriver, doc_id: str, rev: str, leaves: Iterable[str], returned_over: Iterable[str]
) -> Made | None:
    """The made-up revision `rev` of `doc_id`, if it is one: a removal of a live upstream
    leaf, or, for a doc once returned over an upstream winner W, the removal of W, the
    return above it, or the removal of that return."""
    for leaf in leaves:
        if rev == deriver.removal(doc_id, leaf):
            return Made(rev, (), leaf, deleted=True)
    for winner in returned_over:
        removal, back = deriver.return_over(doc_id, winner)
        if rev == removal:
            return Made(rev, (), winner, deleted=True)
        if rev == back:
            return Made(rev, (removal,), winner, deleted=False, body_of=winner)
        if rev == deriver.removal(doc_id, back):
            return Made(rev, (back, removal), winner, deleted=True)
    return None
