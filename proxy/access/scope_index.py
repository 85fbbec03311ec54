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
from proxy.access.graph import ContactNode, Subjects, subjects
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
        if old is not None:
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
        if kind in CONTACT_KINDS and not deleted:
            self._update_contact(doc_id, contact_node(doc))
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
        stack, seen = [contact_id], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self.kids.get(current, ()))
            node = self.nodes.get(current)
            for key in (current, node.shortcode if node else None):
                if key is not None:
                    self._bump_key(key, contact_id)
            for doc_id in list(self.private_by_submitter.get(current, ())):
                self._bump(doc_id, contact_id)

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
