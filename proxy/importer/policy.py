"""What an import may write, and why not: the policy `proxy.importer.pipeline` asks about
each chunk. It moves nothing itself; the pipeline reads, writes and answers.

For each doc of a chunk that could be read (`proxy.importer.docs.prepare`), in order:
1. `unchanged`: a stored doc the caller may see holds the same content (nothing written);
2. offline users only: the write rules (`proxy.access.batch.authorize_batch`) judge the
   doc; a doc whose new version is outside their scope is `forbidden`, one onto a stored
   doc they may not see is a `conflict`, as for any id that is taken, and never
   `unchanged` or `skipped` (step 1 sees only what they may read), so the answers tell
   nothing about a doc outside the scope;
3. `on_conflict` for an id that is taken (`placement`): `skip` answers `skipped`,
   `overwrite` writes on top of the stored revision (`updated`), `keep_both` stores the
   import as a conflicting branch; a new id is `created`.

Admins and online users are not judged here: admins may write anything, and online
users write with their own credentials, so CouchDB's `_security` judges them. Offline
users are served with the service account and judged here, by `OfflinePolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from proxy.access.batch import authorize_batch
from proxy.access.config import UserCtx
from proxy.access.kinds import CONTACT_KINDS, kind_of
from proxy.access.read import body_readable
from proxy.importer.docs import Prepared, branch_rev, same_content

if TYPE_CHECKING:
    from proxy.offline.sync import IndexSync

Mode = Literal["skip", "overwrite", "keep_both"]
# What `placement` says of an allowed doc: how it is written, or `skipped`.
Placement = Literal["created", "updated", "branch", "skipped"]
SKIPPED = "a doc with this _id exists (on_conflict=skip)"
# A contact's fields the write rules read: what a dry run lends to its later chunks.
CONTACT_FIELDS = ("_id", "type", "contact_type", "parent", "patient_id", "place_id")

Stored = Mapping[str, dict[str, Any] | None]


def unchanged(doc: Prepared, current: dict[str, Any] | None, visible: set[str]) -> bool:
    """Rule 1: a stored doc the caller may see already holds this content."""
    return current is not None and doc.id in visible and same_content(doc.doc, current)


def placement(mode: Mode, doc: Prepared, current: dict[str, Any] | None) -> tuple[Placement, dict[str, Any]]:
    """Rule 3: how an allowed doc is written (with the body to write), or `skipped`."""
    if current is None:
        return "created", doc.doc
    if mode == "skip":
        return "skipped", current
    if mode == "overwrite":
        return "updated", {**doc.doc, "_rev": current["_rev"]}
    return "branch", {**doc.doc, "_rev": branch_rev(doc.doc)}


class Policy:
    """Admins and online users: every stored doc is visible to them, and rule 2 is
    CouchDB's (online users' writes carry their own credentials)."""

    # Whether the pipeline must run chunks one after the other (see `OfflinePolicy`).
    in_order = False
    # Whether every id is read from CouchDB, even one the scope index says does not exist.
    reads_every_id = False

    async def visible(self, stored: Stored, deleted: set[str]) -> tuple[set[str], set[str]]:
        """The stored docs the caller may see, and the deleted ones whose last version they
        could not (not theirs to bring back)."""
        return {i for i, d in stored.items() if d is not None}, set()

    async def refusals(
        self, docs: list[Prepared], stored: Stored, hidden: set[str]
    ) -> dict[int, tuple[str, str]]:
        """Rule 2: (status, reason) of each doc refused, by the doc's index in the input."""
        return {}


class OfflinePolicy(Policy):
    """An offline user: their scope decides what they see (step 1) and the write rules
    what they may write (step 2).

    Chunks run in order, so contacts created by one are in the tree when the next is
    judged; in a dry run nothing is written, so the contacts an earlier chunk was allowed
    are lent to the later ones here. Every id is read: what is read must not depend on
    whether a foreign id exists (their batches would time it)."""

    in_order = True
    reads_every_id = True

    def __init__(self, user: UserCtx, sync: IndexSync, dry_run: bool) -> None:
        self.user = user
        self.sync = sync
        self.dry_run = dry_run
        self.carried: dict[str, dict[str, Any]] = {}  # dry runs: contacts allowed so far

    async def visible(self, stored: Stored, deleted: set[str]) -> tuple[set[str], set[str]]:
        sync, user = self.sync, self.user
        await sync.sync()  # contacts written by earlier chunks are in the tree now
        subj = sync.index.subjects_of(user, sync.settings)
        present = [(i, d) for i, d in stored.items() if d is not None]
        readable = {i for i, d in present if body_readable(d, user, sync.settings, sync.index, subj)}
        return readable, deleted - sync.index.readable_ids(deleted, user, sync.settings)

    async def refusals(
        self, docs: list[Prepared], stored: Stored, hidden: set[str]
    ) -> dict[int, tuple[str, str]]:
        """The write rules, with this chunk's permitted contacts applied (in a dry run,
        those of earlier chunks too). A doc onto a stored one the user may not see is a
        `conflict`, as for any id that is taken, whatever its content."""
        if not docs:
            return {}
        sync = self.sync  # brought level with CouchDB by `visible`
        ids = {d.id for d in docs}
        carried = [c for i, c in self.carried.items() if i not in ids]
        batch = [*carried, *(d.doc for d in docs)]
        decisions = authorize_batch(self.user, sync.settings, sync.index, batch, stored, hidden)[
            len(carried) :
        ]
        refused: dict[int, tuple[str, str]] = {}
        for doc, decision in zip(docs, decisions, strict=True):
            if not decision.allowed:
                refused[doc.index] = (
                    "conflict" if decision.error == "conflict" else "forbidden",
                    decision.reason,
                )
            elif self.dry_run and kind_of(doc.doc) in CONTACT_KINDS:
                self.carried[doc.id] = {k: doc.doc[k] for k in CONTACT_FIELDS if k in doc.doc}
        return refused


def policy_for(user: UserCtx | None, sync: IndexSync, dry_run: bool) -> Policy:
    """The policy for a caller: `user` is set for offline users only."""
    return Policy() if user is None else OfflinePolicy(user, sync, dry_run)
