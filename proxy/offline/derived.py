"""Revisions couchgate makes up to take a doc off a device, and to bring it back (pure).

Stock PouchDB only learns of changes through the replication protocol, so a doc that left
a user's scope is taken off their device by a revision the device cannot refuse: a deleted
revision, child of an upstream leaf the device may hold (a *removal*). Made-up revisions
over one upstream leaf form a chain: the removal; then, if the doc comes back while that
leaf is still CouchDB's winner (the device holds it, below the removal, so it would not
fetch it again), a live revision carrying that leaf's body (a *return*); then, if it
leaves again, or CouchDB moves on to another revision, a removal of the return (which
closes the made-up branch, so it never stands beside the real one); and so on:

    leaf -> rm -> ret -> rm -> ret ...   (odd lengths end deleted, even ones live)

A device is always sent a chain's last revision, whose `_revisions` name the whole chain
down to the leaf and the leaf's own history, so a device that missed steps catches up.

None of these is ever written to CouchDB. Their ids are derived from a secret, the doc id
and the parent revision (`Deriver`), so every replica makes the same ones and recognises
them when a device asks about them or pushes them back; no one without the secret can
make one up. A revision id says nothing of a body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

REMOVAL, RETURN = "rm", "ret"


def generation(rev: str) -> int:
    head, _, _ = rev.partition("-")
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True)
class Made:
    """A made-up revision: its id, the made-up revisions below it (nearest first), the
    upstream leaf the chain grows from, and whether it is a deletion (a live one carries
    the leaf's body)."""

    rev: str
    chain: tuple[str, ...]
    upstream: str
    deleted: bool

    def revisions(self, upstream_ids: Sequence[str]) -> dict[str, object]:
        """`_revisions` of this revision, given the upstream leaf's (its own id first)."""
        own = [r.partition("-")[2] for r in (self.rev, *self.chain)]
        return {"start": generation(self.rev), "ids": [*own, *upstream_ids]}


@dataclass(frozen=True)
class Deriver:
    key: bytes

    def derive(self, kind: str, doc_id: str, parent: str) -> str:
        mac = hmac.new(self.key, f"{kind}\0{doc_id}\0{parent}".encode(), hashlib.sha256).hexdigest()[:32]
        return f"{generation(parent) + 1}-{mac}"

    def chain(self, doc_id: str, leaf: str, length: int) -> list[str]:
        """The first `length` made-up revisions over `leaf`, from the leaf up."""
        revs: list[str] = []
        parent = leaf
        for i in range(length):
            parent = self.derive(RETURN if i % 2 else REMOVAL, doc_id, parent)
            revs.append(parent)
        return revs

    def made(self, doc_id: str, leaf: str, length: int) -> Made:
        """The last of the first `length` (>= 1) made-up revisions over `leaf`."""
        revs = self.chain(doc_id, leaf, length)
        return Made(revs[-1], tuple(reversed(revs[:-1])), leaf, deleted=length % 2 == 1)

    def recognise(self, doc_id: str, rev: str, chains: Mapping[str, int]) -> Made | None:
        """The made-up revision `rev` of `doc_id`, if it is in one of `chains` (upstream
        leaf -> how long its chain has grown)."""
        for leaf, length in chains.items():
            revs = self.chain(doc_id, leaf, length)
            if rev in revs:
                i = revs.index(rev)
                return Made(rev, tuple(reversed(revs[:i])), leaf, deleted=i % 2 == 0)
        return None
