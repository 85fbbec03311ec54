"""The scope index: from which one user's readable docs and changes are found in time
proportional to that user's docs, never the database's (pure, no I/O).

Fed one upstream change at a time (`apply`). It keeps:
- per doc an `Entry` (id, winning rev, leaves, deleted, kind, keys, report facts) and an
  ordinal, the index's own change counter (upstream seqs are opaque and never compared);
- postings: replication key -> doc ids, and per key the highest ordinal filed under it,
  so a user's incremental feed skips untouched keys;
- the contact tree (parent pointers, children, live shortcode holders), which is the
  `ContactGraph` the rules walk.
A contact that is created or moves re-sequences every doc keyed on it or on any contact
below it, and a change of who holds a shortcode (or of whether they live) every doc keyed
on that shortcode: for users who gain those docs they arrive as changes, without a full backfill.
A deleted doc keeps the keys of its last live version, and a deleted contact its place in
the tree (its shortcode then names nobody), so a tombstone reaches the users who could
read the doc.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.access.config import AppSettings, UserCtx
from proxy.access.graph import ContactGraph, ContactNode, OverlayGraph, Subjects, WalkScope, subjects
from proxy.access.history import History, Version
from proxy.access.kinds import (
    CONTACT_KINDS,
    GLOBAL,
    REPORT,
    ReportFacts,
    contact_is_person,
    kind_of,
    replication_keys,
    report_facts,
)
from proxy.access.read import contact_node, entry_readable


@dataclass(slots=True)
class Entry:
    id: str
    rev: str
    deleted: bool
    ordinal: int
    leaves: tuple[str, ...]
    kind: str
    keys: tuple[str, ...]
    facts: ReportFacts | None
    person: bool | None = None  # for contacts: person (True) or place (False)
    born: int = 0  # the ordinal at which what the rules read of it last changed (`History`)

    def __reduce__(self) -> tuple[type[Entry], tuple[object, ...]]:
        # Saved as a plain tuple (proxy/offline/snapshot.py): a slotted dataclass's own
        # pickling walks its fields in Python, ten times slower at a million entries.
        return Entry, (self.id, self.rev, self.deleted, self.ordinal, self.leaves, self.kind, self.keys,
                       self.facts, self.person, self.born)  # fmt: skip


@dataclass
class _UserFeed:
    """One user's readable entries in ordinal order, as of index ordinal `at`."""

    settings: AppSettings
    tree_version: int
    at: int
    entries: list[Entry] = field(default_factory=list)
    ordinals: list[int] = field(default_factory=list)
    live: int = -1  # how many entries are not deleted; -1: not counted since the last change


CACHED_USERS = 512


def as_held(entry: Entry, held: list[Version], current: Version, before: Entry | None = None) -> Entry:
    """The entry of a doc that left, standing on the revisions the device may hold: for
    each version of it the user could read (one when the device's position is known, any
    in the span otherwise), its last revision; the current one only while the doc itself
    has not changed since. Never the revision of a version the user could not read: its id
    (a hash of its body) must not reach the device, whose made-up deletion names its parent.
    `before`: what was found for the doc already (its revisions are kept)."""
    revs = [entry.rev if v is current or not v.rev else v.rev for v in held]
    if before is not None:
        revs = [before.rev, *before.leaves, *revs]
    others = [leaf for leaf in entry.leaves if leaf != entry.rev]  # conflicts it may hold
    leaves = tuple(dict.fromkeys([*reversed(revs), *others]))
    if leaves == entry.leaves and leaves[0] == entry.rev:
        return entry
    return Entry(entry.id, leaves[0], entry.deleted, entry.ordinal, leaves, entry.kind,
                 entry.keys, entry.facts, entry.person, entry.born)  # fmt: skip


WINDOW_POINTS = 64  # moments of a placed position's span judged for what left (at most)


class ScopeIndex:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.postings: dict[str, set[str]] = {}
        self.key_max: dict[str, int] = {}
        self.globals: set[str] = set()
        self.nodes: dict[str, ContactNode] = {}
        self.kids: dict[str, set[str]] = {}
        self.codes: dict[str, set[str]] = {}  # shortcode -> the contacts (deleted too) holding it
        # Private reports by submitter: whether one is readable depends on where its
        # submitter sits, so a submitter's move re-sequences them too.
        self.private_by_submitter: dict[str, set[str]] = {}
        self.ordinal = 0
        # Bumped on every change to the contact tree: subjects and feeds computed for an
        # older tree are recomputed, others are refreshed with just the newer changes.
        self.tree_version = 0
        self._subjects: OrderedDict[UserCtx, tuple[AppSettings, int, Subjects]] = OrderedDict()
        self._feeds: OrderedDict[UserCtx, _UserFeed] = OrderedDict()
        self.person_types: frozenset[str] = frozenset({"person"})
        self.history = History()

    def __getstate__(self) -> dict[str, Any]:
        """What a snapshot keeps (proxy.offline.snapshot): everything but the caches."""
        state = dict(self.__dict__)
        state["_subjects"], state["_feeds"] = OrderedDict(), OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- ContactGraph -----------------------------------------------------------------------

    def contact(self, contact_id: str) -> ContactNode | None:
        return self.nodes.get(contact_id)

    def children(self, contact_id: str) -> Iterable[str]:
        return self.kids.get(contact_id, ())

    def holders(self, code: str) -> Collection[str]:
        return self.codes.get(code, ())

    def filed(self, key: str) -> Iterator[Entry]:
        for doc_id in self.postings.get(key, ()):
            yield self.entries[doc_id]

    def affected(self, contact_id: str) -> Iterator[Entry]:
        seen: set[str] = set()
        stack = [contact_id]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self.kids.get(current, ()))
            node = self.nodes.get(current)
            for key in (current, node.shortcode if node is not None else None):
                if key is not None:
                    yield from self.filed(key)
            for doc_id in self.private_by_submitter.get(current, ()):
                yield self.entries[doc_id]

    # -- feeding ----------------------------------------------------------------------------

    def _next(self) -> int:
        self.ordinal += 1
        return self.ordinal

    def apply(self, doc: Mapping[str, Any], seq: object = None, leaves: tuple[str, ...] = ()) -> None:
        """One upstream change: the doc's winning revision (a deleted doc: its tombstone)."""
        doc_id = doc.get("_id")
        if not isinstance(doc_id, str):
            return
        rev = str(doc.get("_rev", ""))
        old = self.entries.get(doc_id)
        deleted = doc.get("_deleted") is True
        if deleted:
            kind = old.kind if old else "other"
            keys = old.keys if old else ()
            facts = old.facts if old else None
            person = old.person if old else None
        else:
            kind = kind_of(doc)
            keys = replication_keys(doc, kind)
            facts = report_facts(doc) if kind == REPORT else None
            person = contact_is_person(doc, self.person_types) if kind in CONTACT_KINDS else None
        entry = Entry(doc_id, rev, deleted, self._next(), leaves or (rev,), kind, keys, facts, person)
        entry.born = entry.ordinal
        node = contact_node(doc) if kind in CONTACT_KINDS and not deleted else None
        if old is not None:
            # A contact's place in the tree is part of what the rules read of it: a move
            # starts a new version too (so a removal stands on the revision before it).
            moved = node is not None and old.kind in CONTACT_KINDS and self.nodes.get(doc_id) != node
            if (old.kind, old.keys, old.facts, old.deleted) == (kind, keys, facts, deleted) and not moved:
                entry.born = old.born
            else:
                past = Version(old.deleted, old.kind, old.keys, old.facts, old.born, old.rev)
                self.history.replaced(doc_id, entry.ordinal, past, keys)
            for key in old.keys:
                if key not in keys:
                    self._unfile(key, doc_id)
            if old.facts is not None and old.facts.private and old.facts.submitter:
                self._unwatch(old.facts.submitter, doc_id)
        if facts is not None and facts.private and facts.submitter:
            self.private_by_submitter.setdefault(facts.submitter, set()).add(doc_id)
        self.entries[doc_id] = entry
        for key in keys:
            self.postings.setdefault(key, set()).add(doc_id)
            self.key_max[key] = entry.ordinal
        if kind == GLOBAL:
            self.globals.add(doc_id)  # a deleted global doc's tombstone reaches everyone
        else:
            self.globals.discard(doc_id)
        if node is not None:
            self._update_contact(doc_id, node)
        elif kind in CONTACT_KINDS:
            # A deleted contact keeps its place in the tree, so its tombstone (and the docs
            # below it) stay with the users who could read it; its shortcode names nobody.
            node = self.nodes.get(doc_id)
            if node is not None:
                self._update_contact(doc_id, ContactNode(doc_id, node.parent, node.shortcode, live=False))
        elif old is not None and old.kind in CONTACT_KINDS:
            self._update_contact(doc_id, None)

    def _unfile(self, key: str, doc_id: str) -> None:
        ids = self.postings.get(key)
        if ids is not None:
            ids.discard(doc_id)
            if not ids:
                del self.postings[key]

    def _unwatch(self, submitter: str, doc_id: str) -> None:
        ids = self.private_by_submitter.get(submitter)
        if ids is not None:
            ids.discard(doc_id)
            if not ids:
                del self.private_by_submitter[submitter]

    def _update_contact(self, contact_id: str, new: ContactNode | None) -> None:
        old = self.nodes.get(contact_id)
        if old == new:
            return
        self.tree_version += 1
        self.history.node_changed(contact_id, self.ordinal, old)
        if old is not None and old.parent is not None and (new is None or new.parent != old.parent):
            self._drop(self.kids, old.parent, contact_id)
        if new is not None and new.parent is not None:
            self.kids.setdefault(new.parent, set()).add(contact_id)
        old_code = old.shortcode if old is not None else None
        new_code = new.shortcode if new is not None else None
        if old_code != new_code or (old is not None and new is not None and old.live != new.live):
            # Who holds a shortcode, and whether they live, decides what it names: every
            # doc keyed on it may change hands.
            if old_code is not None:
                self._drop(self.codes, old_code, contact_id)
                self._bump_key(old_code, contact_id)
            if new_code is not None:
                self.codes.setdefault(new_code, set()).add(contact_id)
                self._bump_key(new_code, contact_id)
        if new is None:
            del self.nodes[contact_id]
            return
        self.nodes[contact_id] = new
        if old is None or old.parent != new.parent:
            self._resequence_below(contact_id)

    @staticmethod
    def _drop(sets: dict[str, set[str]], key: str, member: str) -> None:
        found = sets.get(key)
        if found is not None:
            found.discard(member)
            if not found:
                del sets[key]

    def _bump_key(self, key: str, moved: str) -> None:
        for doc_id in list(self.postings.get(key, ())):
            self._bump(doc_id, moved)

    def _resequence_below(self, contact_id: str) -> None:
        """Docs keyed on this contact or any below it become changes again."""
        for entry in list(self.affected(contact_id)):
            self._bump(entry.id, contact_id)

    def _bump(self, doc_id: str, moved: str) -> None:
        """The doc becomes a change again, found under every one of its keys."""
        entry = self.entries[doc_id]
        if entry.id != moved or entry.ordinal != self.ordinal:  # the moved doc itself is fresh
            entry.ordinal = self._next()
        for key in entry.keys:
            self.key_max[key] = max(self.key_max.get(key, 0), entry.ordinal)

    def set_person_types(self, person_types: frozenset[str]) -> None:
        """From the settings' `contact_types`; contacts filed before keep their kind until
        their next change (the rules re-derive person/place from bodies on writes)."""
        self.person_types = person_types

    # -- queries ----------------------------------------------------------------------------

    def subjects_of(self, user: UserCtx, settings: AppSettings) -> Subjects:
        """The user's subjects, cached until the tree or the settings change."""
        hit = self._subjects.get(user)
        if hit is not None and hit[0] is settings and hit[1] == self.tree_version:
            self._subjects.move_to_end(user)
            return hit[2]
        subj = subjects(user, settings, self)
        self._subjects[user] = (settings, self.tree_version, subj)
        if len(self._subjects) > CACHED_USERS:
            self._subjects.popitem(last=False)
        return subj

    def _candidates(self, subj: Subjects, after: int) -> Iterator[str]:
        for key in subj.lookup_keys():
            if self.key_max.get(key, 0) > after:
                yield from self.postings.get(key, ())
        yield from self.globals

    def _readable(self, entry: Entry, user: UserCtx, settings: AppSettings, subj: Subjects) -> bool:
        return entry_readable(entry.id, entry.kind, entry.keys, entry.facts, user, settings, subj, self)

    def _scan(self, user: UserCtx, settings: AppSettings, ordinal: int) -> list[Entry]:
        """Readable entries above `ordinal`, found through the user's keys only."""
        subj = self.subjects_of(user, settings)
        found: dict[str, Entry] = {}
        for doc_id in self._candidates(subj, ordinal):
            entry = self.entries.get(doc_id)
            if entry is None or entry.ordinal <= ordinal or doc_id in found:
                continue
            if self._readable(entry, user, settings, subj):
                found[doc_id] = entry
        return sorted(found.values(), key=lambda e: e.ordinal)

    def _feed(self, user: UserCtx, settings: AppSettings) -> _UserFeed:
        feed = self._feeds.get(user)
        if feed is None or feed.settings is not settings or feed.tree_version != self.tree_version:
            feed = _UserFeed(settings, self.tree_version, self.ordinal, self._scan(user, settings, 0))
        elif feed.at < self.ordinal:
            # Only what changed since: entries touched since `at` leave their old place
            # (and come back in `newer` if still readable).
            newer = self._scan(user, settings, feed.at)
            kept = [e for e in feed.entries if e.ordinal <= feed.at and self.entries.get(e.id) is e]
            fresh = {e.id for e in newer}
            feed.entries = [e for e in kept if e.id not in fresh] + newer
            feed.at = self.ordinal
            feed.live = -1
        else:
            self._feeds.move_to_end(user)
            return feed
        feed.ordinals = [e.ordinal for e in feed.entries]
        self._feeds[user] = feed
        self._feeds.move_to_end(user)
        if len(self._feeds) > CACHED_USERS:
            self._feeds.popitem(last=False)
        return feed

    def changes_since(self, user: UserCtx, settings: AppSettings, ordinal: int) -> list[Entry]:
        """Readable entries (tombstones included) with an ordinal above `ordinal`, in order."""
        feed = self._feed(user, settings)
        return feed.entries[bisect.bisect_right(feed.ordinals, ordinal) :]

    def readable_entries(self, user: UserCtx, settings: AppSettings) -> list[Entry]:
        return self.changes_since(user, settings, 0)

    def readable_counts(self, user: UserCtx, settings: AppSettings) -> tuple[int, int]:
        """How many readable docs are live and how many are tombstones; counted once per
        change of the user's feed, not per call."""
        feed = self._feed(user, settings)
        if feed.live < 0:
            feed.live = sum(1 for e in feed.entries if not e.deleted)
        return feed.live, len(feed.entries) - feed.live

    def is_readable_id(self, doc_id: str, user: UserCtx, settings: AppSettings) -> bool:
        entry = self.entries.get(doc_id)
        if entry is None:
            return False
        return self._readable(entry, user, settings, self.subjects_of(user, settings))

    def readable_ids(self, ids: Iterable[str], user: UserCtx, settings: AppSettings) -> set[str]:
        subj = self.subjects_of(user, settings)
        found = set()
        for doc_id in ids:
            entry = self.entries.get(doc_id)
            if entry is not None and self._readable(entry, user, settings, subj):
                found.add(doc_id)
        return found

    def count_by_kind(self, user: UserCtx, settings: AppSettings) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.readable_entries(user, settings):
            if entry.deleted:
                continue
            kind = ("person" if entry.person else "place") if entry.person is not None else entry.kind
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    # -- what left a scope ------------------------------------------------------------------

    def settings_changed(self, before: AppSettings) -> None:
        """The app settings changed at the current ordinal (`before`: the old ones)."""
        self.history.settings_changed(self.ordinal, before)

    def left_scope(
        self,
        user: UserCtx,
        settings: AppSettings,
        then: UserCtx,
        ordinal: int,
        *,
        everything: bool,
        until: int | None = None,
    ) -> list[Entry]:
        """The docs `then` could read at `ordinal` that `user` cannot read now, live then
        (a device that synced up to `ordinal` holds them). `everything`: the scope inputs
        changed, so every doc readable then is a candidate, not only those changed since.
        `until`: the device's position lies somewhere in (`ordinal`, `until`] (placed from
        another process's token): a doc's versions begun in that span count as well, judged
        against the scope at `ordinal` (a doc created or moved in meanwhile, and gone now).
        Raises `TooOld` for an ordinal before the history's horizon.

        Cheap when nothing that decides this user's scope changed: only the docs that
        changed themselves, found under the user's keys, are judged again; otherwise the
        scope as it stood then is walked again over the tree as it stood then."""
        history = self.history
        if not history.covers(ordinal):
            raise TooOld(ordinal)
        if ordinal >= self.ordinal and not everything:
            return []
        nodes_then = history.nodes_at(ordinal)
        settings_then = history.settings_at(ordinal, settings)
        graph: ContactGraph = self
        if everything or settings_then is not settings or self._moves_scope(user, settings, nodes_then):
            graph = OverlayGraph(self, nodes_then)
            subj = subjects(then, settings_then, graph)
            changed_only = not everything
        else:
            subj = self.subjects_of(user, settings)  # the same as then: nothing in it moved
            changed_only = True
        now = self.subjects_of(user, settings)
        found: dict[str, Entry] = {}

        for key in subj.lookup_keys():
            if changed_only and self.key_max.get(key, 0) <= ordinal:
                ids: Iterable[str] = history.departed_from(key, ordinal)
            else:
                ids = (*self.postings.get(key, ()), *history.departed_from(key, ordinal))
            for doc_id in ids:
                entry = self.entries.get(doc_id)
                if entry is None or doc_id in found or (changed_only and entry.ordinal <= ordinal):
                    continue
                if self._readable(entry, user, settings, now):
                    continue
                current = Version(entry.deleted, entry.kind, entry.keys, entry.facts, entry.born)
                past = history.version_at(doc_id, ordinal, current)
                if past is None or past.deleted:
                    continue  # not there yet, or a tombstone: nothing to take off the device
                if entry_readable(doc_id, past.kind, past.keys, past.facts, then, settings_then, subj, graph):
                    found[doc_id] = as_held(entry, [past], current)
        if until is not None and until > ordinal:
            self._left_within(user, settings, then, ordinal, until, now, found)
        return sorted(found.values(), key=lambda e: e.ordinal)

    def _left_within(
        self,
        user: UserCtx,
        settings: AppSettings,
        then: UserCtx,
        after: int,
        until: int,
        now: Subjects,
        found: dict[str, Entry],
    ) -> None:
        """Add the docs `then` could read at some moment in (`after`, `until`] that `user`
        cannot read now: the scope is judged as it stood after each change of the tree or
        the settings in that span (it changes nowhere else), against every version of a
        doc that was current in it. Over-approximates (a version and a scope that were never
        current together may meet): a removal sent for a doc the device never held is a
        tombstone it ignores. Past WINDOW_POINTS such moments, evenly spread ones are
        judged (docs/removals.md: a scope that flapped in between may be missed)."""
        history = self.history
        judged: set[str] = set()
        moments = sorted(
            {t for t, _, _ in history.tree if after < t <= until}
            | {t for t, _ in history.settings if after < t <= until}
            | {until}
        )
        if len(moments) > WINDOW_POINTS:
            step = len(moments) / WINDOW_POINTS
            moments = sorted({moments[int(i * step)] for i in range(WINDOW_POINTS)} | {moments[-1]})
        for at in moments:
            graph = OverlayGraph(self, history.nodes_at(at))
            settings_at = history.settings_at(at, settings)
            subj = subjects(then, settings_at, graph)
            for key in subj.lookup_keys():
                for doc_id in (*self.postings.get(key, ()), *history.departed_from(key, after)):
                    entry = self.entries.get(doc_id)
                    if entry is None or doc_id in judged or self._readable(entry, user, settings, now):
                        continue
                    current = Version(entry.deleted, entry.kind, entry.keys, entry.facts, entry.born)
                    versions = [history.version_at(doc_id, after, current)]
                    versions += history.versions_born(doc_id, after, until, current)
                    held = [
                        v for v in versions
                        if v is not None and not v.deleted
                        and entry_readable(doc_id, v.kind, v.keys, v.facts, then, settings_at, subj, graph)
                    ]  # fmt: skip
                    if held:  # with what the exact judgement at `after` found
                        judged.add(doc_id)  # (one unreadable at this moment may be at a later one)
                        before = found.get(doc_id)
                        found[doc_id] = as_held(entry, held, current, before)

    def _moves_scope(
        self, user: UserCtx, settings: AppSettings, nodes_then: Mapping[str, ContactNode | None]
    ) -> bool:
        """Whether a contact changed since then may have moved this user's scope: it is in
        the scope now or was then, or its id or shortcode is one of the user's keys."""
        if not nodes_then:
            return False
        now = WalkScope(user, settings, self)
        then = WalkScope(user, settings, OverlayGraph(self, nodes_then))
        codes = self.subjects_of(user, settings).codes
        for contact_id, before in nodes_then.items():
            after = self.nodes.get(contact_id)
            named = {contact_id, *(n.shortcode for n in (before, after) if n is not None and n.shortcode)}
            if any(k in codes for k in named):
                return True
            if now.depth(contact_id) is not None or then.depth(contact_id) is not None:
                return True
        return False


class TooOld(Exception):
    """A position older than what the index remembers."""
