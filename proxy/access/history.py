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
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from proxy.access.config import AppSettings
from proxy.access.graph import ContactNode
from proxy.access.kinds import ReportFacts


@dataclass(frozen=True, slots=True)
class Version:
    """What the rules read of a doc for a span of its revisions (a new span starts when
    any of it changes), and the ordinal the span began at."""

    deleted: bool
    kind: str
    keys: tuple[str, ...]
    facts: ReportFacts | None
    born: int


@dataclass
class History:
    since: int = 0  # ordinals after this one are fully recorded
    versions: dict[str, list[tuple[int, Version]]] = field(
        default_factory=dict
    )  # id -> (replaced at, version)
    tree: list[tuple[int, str, ContactNode | None]] = field(default_factory=list)  # (changed at, id, before)
    departed: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # key -> (left at, doc id)
    settings: list[tuple[int, AppSettings]] = field(default_factory=list)  # (changed at, settings before)

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

    def departed_from(self, key: str, after: int) -> Iterator[str]:
        for left_at, doc_id in self.departed.get(key, ()):
            if left_at > after:
                yield doc_id

    def changed_after(self, ordinal: int) -> bool:
        """Whether anything that decides readability changed after `ordinal`, besides the
        docs that changed themselves (which the caller finds by their own ordinals)."""
        return bool(
            (self.tree and self.tree[-1][0] > ordinal) or (self.settings and self.settings[-1][0] > ordinal)
        )
