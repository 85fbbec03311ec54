"""The scope index's recent past, so what a user could read at an earlier ordinal can be
judged again (pure, no I/O).

A device that synced up to ordinal T holds what its user could read at T. To tell it what
has left its scope since, couchgate judges each candidate doc twice: as the tree, the doc,
the settings and the user stood at T, and as they stand now. The index keeps, for a
horizon of ordinals back:
- each doc's earlier versions, where what the rules read of it changed (`Version`);
- each contact's earlier node (its parent, shortcode, liveness) before each change;
- per replication key, the docs that left it (so a doc no longer filed under a key of
  the old scope is still found);
- the settings before each change.
Before the horizon (`History.since`), nothing is kept: an older position cannot be
judged again (the caller then starts the device over).

It also keeps `Marks`: where the index stood against CouchDB over time, so a position
another replica or an earlier process handed out (which names CouchDB's state by wall
clock, not by this index's ordinals) can be placed between two of this index's ordinals.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from proxy.access.config import AppSettings
from proxy.access.graph import ContactNode
from proxy.access.kinds import ReportFacts


@dataclass(frozen=True, slots=True)
class Version:
    """What the rules read of a doc for a span of its revisions (a new span starts when
    any of it changes), the ordinal the span began at, and its last revision (what a device
    that synced within the span holds, or an ancestor of it)."""

    deleted: bool
    kind: str
    keys: tuple[str, ...]
    facts: ReportFacts | None
    born: int
    rev: str = ""

    def __reduce__(self) -> tuple[type[Version], tuple[object, ...]]:  # a plain tuple (snapshots)
        return Version, (self.deleted, self.kind, self.keys, self.facts, self.born, self.rev)


class Marks:
    """Where the index stood against CouchDB, over time: for each mark, an ordinal and two
    wall-clock times (ms): `level`, when a read of CouchDB began whose every change the
    index held at that ordinal (so the index there holds all CouchDB held at `level`), and
    `applied`, when the index reached that ordinal (so it holds nothing CouchDB did not
    hold at `applied`). Marks closer than `grain` ms are merged into the later one (a
    coarser mark places a position less tightly, never wrongly). Compact arrays: one
    mark costs 24 bytes."""

    def __init__(self, grain_ms: int = 5000) -> None:
        self.grain = grain_ms
        self.ordinals = array("q")
        self.levels = array("q")
        self.applied = array("q")

    def __len__(self) -> int:
        return len(self.ordinals)

    def mark(self, ordinal: int, level_ms: int, applied_ms: int) -> None:
        """The index reached `ordinal` by `applied_ms`, level with CouchDB as of `level_ms`
        (times never go back: a clock stepped back is read as the last time seen)."""
        n = len(self.ordinals)
        if n:
            level_ms, applied_ms = max(level_ms, self.levels[-1]), max(applied_ms, self.applied[-1])
        if n and self.ordinals[-1] == ordinal:
            self.levels[-1] = level_ms  # no change since: level later
            return
        if n > 1 and applied_ms - self.applied[-2] < self.grain:
            self.ordinals[-1], self.levels[-1], self.applied[-1] = ordinal, level_ms, applied_ms
            return
        self.ordinals.append(ordinal)
        self.levels.append(level_ms)
        self.applied.append(applied_ms)

    def level_at(self, ordinal: int) -> int:
        """A time (ms) at which CouchDB held nothing the index at `ordinal` lacks: the level
        of the newest mark at or before it (0 when there is none)."""
        i = bisect.bisect_right(self.ordinals, ordinal)
        return self.levels[i - 1] if i else 0

    def floor(self, at_ms: int) -> int | None:
        """The newest ordinal at which the index held nothing CouchDB had not written by
        `at_ms`; None when the marks do not reach back that far."""
        i = bisect.bisect_right(self.applied, at_ms)
        return self.ordinals[i - 1] if i else None

    def ceiling(self, at_ms: int) -> int | None:
        """The oldest ordinal at which the index held all CouchDB had written by `at_ms`;
        None when the index has not been level since then."""
        i = bisect.bisect_left(self.levels, at_ms)
        return self.ordinals[i] if i < len(self.levels) else None

    def forget_before(self, applied_ms: int) -> int | None:
        """Drop the marks applied before `applied_ms` but the newest of them (a floor for
        what follows). Returns that mark's ordinal, before which the past may be forgotten
        (None: no mark is that old)."""
        i = bisect.bisect_left(self.applied, applied_ms)
        if i == 0:
            return None
        del self.ordinals[: i - 1], self.levels[: i - 1], self.applied[: i - 1]
        return self.ordinals[0]


@dataclass
class History:
    since: int = 0  # ordinals after this one are fully recorded
    versions: dict[str, list[tuple[int, Version]]] = field(
        default_factory=dict
    )  # id -> (replaced at, version)
    tree: list[tuple[int, str, ContactNode | None]] = field(default_factory=list)  # (changed at, id, before)
    departed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # key -> (left at, doc id)
    settings: list[tuple[int, AppSettings]] = field(default_factory=list)  # (changed at, settings before)
    marks: Marks = field(default_factory=Marks)

    # -- recording ------------------------------------------------------------------------

    def replaced(self, doc_id: str, at: int, old: Version, new_keys: Iterable[str]) -> None:
        self.versions.setdefault(doc_id, []).append((at, old))
        kept = set(new_keys)
        for key in old.keys:
            if key not in kept:
                self.departed.setdefault(key, []).append((at, doc_id))

    def node_changed(self, contact_id: str, at: int, before: ContactNode | None) -> None:
        self.tree.append((at, contact_id, before))

    def settings_changed(self, at: int, before: AppSettings) -> None:
        self.settings.append((at, before))

    def forget_before(self, ordinal: int) -> None:
        """Drop what only positions at or before `ordinal` need."""
        if ordinal <= self.since:
            return
        self.since = ordinal
        self.tree = self.tree[bisect.bisect_right(self.tree, ordinal, key=lambda t: t[0]) :]
        self.settings = self.settings[bisect.bisect_right(self.settings, ordinal, key=lambda t: t[0]) :]
        for store in (self.versions, self.departed):
            for key in list(store):
                kept = [item for item in store[key] if item[0] > ordinal]
                if kept:
                    store[key] = kept  # type: ignore[assignment]
                else:
                    del store[key]

    # -- reading ----------------------------------------------------------------------------

    def covers(self, ordinal: int) -> bool:
        return ordinal >= self.since

    def nodes_at(self, ordinal: int) -> dict[str, ContactNode | None]:
        """The contacts that changed after `ordinal`, as they stood at it (None: absent)."""
        start = bisect.bisect_right(self.tree, ordinal, key=lambda t: t[0])
        found: dict[str, ContactNode | None] = {}
        for _, contact_id, before in self.tree[start:]:
            found.setdefault(contact_id, before)
        return found

    def settings_at(self, ordinal: int, current: AppSettings) -> AppSettings:
        start = bisect.bisect_right(self.settings, ordinal, key=lambda t: t[0])
        return self.settings[start][1] if start < len(self.settings) else current

    def version_at(self, doc_id: str, ordinal: int, current: Version) -> Version | None:
        """The doc's version that was the winner at `ordinal`, or None if it had none."""
        for replaced_at, old in self.versions.get(doc_id, ()):
            if replaced_at > ordinal:
                return old if old.born <= ordinal else None
        return current if current.born <= ordinal else None

    def versions_born(self, doc_id: str, after: int, until: int, current: Version) -> list[Version]:
        """The doc's versions that began in (`after`, `until`]: what it was at some moment
        between two ordinals (a position known only to lie between them)."""
        spans = [old for _, old in self.versions.get(doc_id, ())] + [current]
        return [v for v in spans if after < v.born <= until]

    def departed_from(self, key: str, after: int) -> Iterator[str]:
        for left_at, doc_id in self.departed.get(key, ()):
            if left_at > after:
                yield doc_id
