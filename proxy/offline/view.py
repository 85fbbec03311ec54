"""One offline user's view of the scope index, for the duration of one request."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from proxy import observe
from proxy.access.config import AppSettings, UserCtx
from proxy.access.read import body_readable, scope_inputs
from proxy.auth.caller import Caller
from proxy.offline.since import fingerprint
from proxy.offline.sync import IndexSync


class Entry(Protocol):
    """What the index knows of one doc's current winning revision."""

    @property
    def id(self) -> str: ...
    @property
    def rev(self) -> str: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def ordinal(self) -> int: ...
    @property
    def leaves(self) -> Sequence[str]: ...


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judged:
    """Ids found readable at an index ordinal under some settings (`UserView.judged`)."""

    readable: set[str]
    ordinal: int
    settings: AppSettings

    def holds(self, doc_id: str, ordinal: int, settings: AppSettings) -> bool:
        return doc_id in self.readable and ordinal == self.ordinal and settings is self.settings


@dataclass
class UserView:
    sync: IndexSync
    user: UserCtx
    settings: AppSettings

    @classmethod
    def of(cls, sync: IndexSync, caller: Caller) -> UserView:
        return cls(sync, caller.user, sync.settings)

    @property
    def epoch(self) -> str:
        return self.sync.epoch

    @cached_property
    def fingerprint(self) -> str:
        """Everything but the contact tree that decides what this user may read."""
        return fingerprint(*scope_inputs(self.user, self.settings))

    @property
    def current_ordinal(self) -> int:
        return self.sync.index.ordinal

    def level_at(self, ordinal: int) -> int:
        """When (wall clock, ms) CouchDB held nothing the index at `ordinal` lacks."""
        return self.sync.index.history.marks.level_at(ordinal)

    def place(self, level_ms: int, issued_ms: int) -> tuple[int, ...] | None:
        """Two ordinals of this index around a position handed out elsewhere (another
        replica, an earlier process): the device there holds all CouchDB held at `level_ms`
        and nothing it did not hold at `issued_ms`. The first ordinal holds no more than
        CouchDB held at `level_ms`, the second all it held at `issued_ms`, each widened by
        the clocks' allowed skew. None when this index's marks do not reach back that far."""
        history = self.sync.index.history
        skew = self.sync.skew_ms
        ahead = issued_ms - time.time_ns() // 1_000_000
        if ahead > skew:
            log.warning("a since token issued %d ms ahead of this clock: replicas' clocks disagree", ahead)
            return None  # from the future: the clocks cannot be trusted to place it
        low = history.marks.floor(level_ms - skew)
        if level_ms <= 0 or low is None or not history.covers(low):
            return None
        high = history.marks.ceiling(issued_ms + skew)
        high = self.current_ordinal if high is None else max(high, low)
        return (low,) if high == low else (low, high)

    def left_scope(
        self, then: UserCtx, ordinal: int, *, everything: bool, until: int | None = None
    ) -> list[Entry]:
        """Docs `then` could read at `ordinal` (or, with `until`, at some point up to it)
        that this user cannot read now."""
        index = self.sync.index
        return list(
            index.left_scope(self.user, self.settings, then, ordinal, everything=everything, until=until)
        )

    def entries_after(self, ordinal: int) -> list[Entry]:
        """Readable docs (tombstones included) changed after `ordinal`, oldest first."""
        return list(self.sync.index.changes_since(self.user, self.settings, ordinal))

    def readable_ids(self, ids: Iterable[str]) -> set[str]:
        return self.sync.index.readable_ids(ids, self.user, self.settings)

    def live_ids(self) -> list[str]:
        """Readable docs that are not deleted (what `_all_docs` lists)."""
        return [e.id for e in self.sync.index.readable_entries(self.user, self.settings) if not e.deleted]

    def live_count(self) -> int:
        return self.sync.index.readable_counts(self.user, self.settings)[0]

    def counts(self) -> tuple[int, int]:
        """Readable docs: (live, deleted)."""
        return self.sync.index.readable_counts(self.user, self.settings)

    def is_leaf(self, doc_id: str, rev: str) -> bool:
        return self.sync.index.is_leaf(doc_id, rev)

    def winner_rev(self, doc_id: str) -> str | None:
        winner = self.sync.index.winner(doc_id)
        return winner[0] if winner is not None else None

    def judged(self, ids: set[str]) -> Judged:
        """What `servable` may take as read of these readable ids while the index stays
        where it stands now."""
        return Judged(ids, self.sync.index.ordinal, self.settings)

    def servable(self, doc: Mapping[str, Any], judged: Judged | None = None) -> bool:
        """May this body, read from CouchDB just now, be served to the user? Judged on the
        body itself, in the tree as the index has it: the winner the index judged is the
        same revision (revisions never change), anything else (a newer winner the index has
        not seen yet, a past or conflicting revision) is judged on its content. `judged`:
        ids found readable just before, taken as they are while the index has not moved
        (the index's winner then is judged the same way: nothing it reads has changed)."""
        doc_id = str(doc.get("_id"))
        index = self.sync.index
        winner = index.winner(doc_id)
        if winner is not None and not winner[1] and doc.get("_rev") == winner[0] and "_deleted" not in doc:
            if judged is not None and judged.holds(doc_id, index.ordinal, self.settings):
                ok = True
            else:
                ok = index.is_readable_id(doc_id, self.user, self.settings)
        else:
            subj = index.subjects_of(self.user, self.settings)
            ok = body_readable(doc, self.user, self.settings, index, subj)
        if ok:
            observe.doc_served()  # metrics: every body served passes here
        return ok

    def hidden(self, ids: Iterable[str]) -> set[str]:
        """Of these ids, those the index knows as deleted docs the user could not read: a
        write must not bring such a doc back (into the user's area or anywhere)."""
        index = self.sync.index
        return {
            i for i in ids
            if (w := index.winner(i)) is not None and w[1]
            and not index.is_readable_id(i, self.user, self.settings)
        }  # fmt: skip

    async def readable_now(self, ids: Iterable[str], known: Judged | None = None) -> set[str]:
        """Readable ids, syncing the index first only if some id is not (yet) readable:
        the docs themselves are always read from CouchDB, the index only decides access.
        `known`: ids judged readable before, taken while the index has not moved since."""
        wanted = set(ids)
        index = self.sync.index
        if known is not None and known.ordinal == index.ordinal and known.settings is self.settings:
            readable = wanted & known.readable
        else:
            readable = self.readable_ids(wanted)
        if readable != wanted:
            await self.sync.sync()
            self.settings = self.sync.settings
            readable = self.readable_ids(wanted)
        return readable
