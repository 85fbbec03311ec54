"""The scope index: from which one user's readable docs and changes are found in time
proportional to that user's docs, never the database's (pure, no I/O).

Fed one upstream change at a time (`apply`). It keeps, in compact columns rather than an
object per doc (docs/design.md, "Index representation"; `Entry` objects are made when
asked for):
- per doc its id, winning rev, leaves, deleted, kind, keys, report facts and an
  ordinal, the index's own change counter (upstream seqs are opaque and never compared);
- postings: replication key -> doc ids, and per key the highest ordinal filed under it,
  so a user's incremental feed skips untouched keys;
- the contact tree (parent pointers, children, live shortcode holders), which is the
  `ContactGraph` the rules walk.
A contact that is created, moves or stops being a contact re-sequences every doc keyed on
it or on any contact below it, and a change of who holds a shortcode (or of whether they
live) every doc keyed on that shortcode: for users who gain those docs they arrive as
changes, without a full backfill.
A deleted doc keeps the keys of its last live version, and a deleted contact its place in
the tree (its shortcode then names nobody), so a tombstone reaches the users who could
read the doc.
"""

from __future__ import annotations

import bisect
import operator
from array import array
from collections import OrderedDict
from collections.abc import Collection, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pickle import PickleBuffer
from typing import Any, SupportsIndex

from proxy.access.columns import Strings, pack_rev, unpack_rev
from proxy.access.config import AppSettings, UserCtx
from proxy.access.graph import ContactGraph, ContactNode, OverlayGraph, Subjects, WalkScope, subjects
from proxy.access.history import History, Version
from proxy.access.kinds import (
    CONTACT,
    CONTACT_KINDS,
    DESIGN,
    GLOBAL,
    OTHER,
    PERSON,
    PLACE,
    REPORT,
    TARGET,
    TASK,
    USER_SETTINGS,
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
        # A plain tuple: a slotted dataclass's own pickling walks its fields in Python.
        return Entry, (self.id, self.rev, self.deleted, self.ordinal, self.leaves, self.kind, self.keys,
                       self.facts, self.person, self.born)  # fmt: skip


@dataclass
class _UserFeed:
    """One user's readable docs (numbers) in ordinal order, as of index ordinal `at`."""

    settings: AppSettings
    tree_version: int
    at: int
    nums: array[int]
    ordinals: array[int] = field(default_factory=lambda: array("q"))
    live: int = -1  # how many docs are not deleted; -1: not counted since the last change
    tail: list[Entry] | None = None  # the entries of nums[tail_from:], made for a page
    tail_from: int = 0


CACHED_USERS = 512
COUNTED_USERS = 100_000  # users whose last counts are kept (about 250 bytes each)
COUNT_STEP = 2000  # docs `counting` judges between two yields (about 12 ms)


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


KINDS = (PLACE, PERSON, CONTACT, REPORT, TASK, TARGET, USER_SETTINGS, GLOBAL, DESIGN, OTHER)
KIND_CODE = {kind: code for code, kind in enumerate(KINDS, start=1)}  # 0: no doc
CONTACT_CODES = frozenset(KIND_CODE[k] for k in CONTACT_KINDS)
# Per-doc flags.
DELETED, PERSON_KNOWN, IS_PERSON, CODE_FIELD, PRIVATE, NO_SUBJECT = 1, 2, 4, 8, 16, 32
FACT_FLAGS = CODE_FIELD | PRIVATE | NO_SUBJECT
# Per-contact node flags.
HAS_NODE, LIVE = 1, 2
EMPTY_DIGEST = bytes(16)
CACHED_NODES = 1 << 16  # contact nodes kept made (the tree's hot ones)
CACHED_MADE = 1 << 14  # keys tuples, report facts
# Never saved, but for the subjects of the current tree (`__reduce_ex__`): a user's first
# sync after a restart would otherwise walk their whole area (a supervisor's: ~15 ms).
CACHES = ("_subjects", "_feeds", "_tails", "_nodes", "_made_keys", "_made_facts")
TAIL_KEPT = 256  # a feed's tail this long is kept materialized for the pages after it
TAILS_KEPT = 16  # users whose feed's tail is kept
NO_TUPLE: tuple[int, ...] = ()


class ScopeIndex:
    """Columns, not objects (docs/design.md, "Index representation"): every doc id and
    replication key is a number (`Strings`), and what the index keeps of it sits at that
    number in compact arrays. `Entry` objects are made when asked for."""

    def __init__(self) -> None:
        self._s = Strings()
        # Per string number: the doc of that id, if any.
        self._rgen = array("I")  # revision generation; 0: the revision is in `_odd_revs`
        self._rdig = bytearray()  # revision digest, 16 bytes each
        self._ord = array("q")  # 0: no doc
        self._born = array("q")
        self._kind = bytearray()  # KIND_CODE; 0: no doc
        self._flags = bytearray()
        self._key0 = array("i")  # first replication key (-1: none)
        self._next = array("i")  # the next doc filed first under the same key (-1: none)
        self._subm = array("i")  # a report's submitter (-1: none)
        self._sign = array("i")  # a report's signoff lineage: an index into `_tuples`
        # Per string number as a replication key.
        self._kmax = array("q")  # the last ordinal a doc was filed under it or left it
        self._head = array("i")  # the first doc filed first under it (-1: none)
        self._hold = array("i")  # as a shortcode: its first holder (-1: none)
        # Per string number as a contact of the tree.
        self._node = bytearray()  # HAS_NODE | LIVE
        self._parent = array("i")
        self._code = array("i")  # its shortcode (-1: none)
        self._kid = array("i")  # its first child (-1: none)
        self._sib = array("i")  # its parent's next child (-1: none)
        self._hnext = array("i")  # the next holder of its shortcode (-1: none)
        # Aside, for the few.
        self._odd_revs: dict[int, str] = {}  # revisions not shaped `N-<32 hex>`
        self._leaves: dict[int, tuple[str, ...]] = {}  # when not just the winning revision
        self._extra: dict[int, array[int]] = {}  # key -> docs filed under it not first
        self._tuples: list[tuple[int, ...]] = [NO_TUPLE]
        self._tuple_ids: dict[tuple[int, ...], int] = {NO_TUPLE: 0}
        self._globals: set[int] = set()
        self._globals_at = 0  # the last ordinal at which a global doc changed, came or went
        # Private reports by submitter: whether one is readable depends on where its
        # submitter sits, so a submitter's move re-sequences them too.
        self._private: dict[int, set[int]] = {}
        self._docs = 0
        self.ordinal = 0
        # Bumped on every change to the contact tree: subjects and feeds computed for an
        # older tree are recomputed, others are refreshed with just the newer changes.
        self.tree_version = 0
        self._subjects: OrderedDict[UserCtx, tuple[AppSettings, int, Subjects]] = OrderedDict()
        self._feeds: OrderedDict[UserCtx, _UserFeed] = OrderedDict()
        self._tails: OrderedDict[UserCtx, _UserFeed] = OrderedDict()
        # Each user's readable counts (live, tombstones) as of an ordinal, tree version and
        # settings: what `GET /{db}` answers while nothing changed since and no feed of the
        # user is kept (after a restart: they are kept in snapshots; after an eviction).
        self._counted: OrderedDict[UserCtx, tuple[int, int, AppSettings, int, int]] = OrderedDict()
        self.counts_recorded = 0  # how often counts were recorded (a snapshot is due)
        self.person_types: frozenset[str] = frozenset({"person"})
        self.history = History()
        self.entries = Entries(self)
        self._columns()

    _COLUMNS = (
        ("_rgen", 0), ("_ord", 0), ("_born", 0), ("_key0", -1), ("_next", -1), ("_subm", -1),
        ("_sign", 0), ("_kmax", 0), ("_head", -1), ("_hold", -1), ("_parent", -1), ("_code", -1),
        ("_kid", -1), ("_sib", -1), ("_hnext", -1),
    )  # fmt: skip
    _BYTES = ("_kind", "_flags", "_node")

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        """What a snapshot keeps (proxy.offline.snapshot): the columns as raw buffers; not
        the caches, but for the users' subjects of the current tree (each stands only while
        its settings are the very object the restored index sync holds: pickled with them
        in one state, so they are); not the strings' table (rebuilt on load). With pickle
        protocol 5 the buffers are written from the columns themselves, never copied first
        (a save in a forked process then costs little memory)."""
        raw = operator.index(protocol) >= 5
        skip = (*CACHES, "entries", "_s", "_fills", *self._BYTES, "_rdig")
        state: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k not in skip}
        state["_subjects"] = OrderedDict(
            (user, kept) for user, kept in self._subjects.items() if kept[1] == self.tree_version
        )
        blob, ends = self._s.raw()
        for name in ("_rdig", *self._BYTES):
            state[name] = _buffer(getattr(self, name), raw)
        for name, _ in self._COLUMNS:
            column = getattr(self, name)
            state[name] = (column.typecode, _buffer(column, raw))
        state["_strs"] = (_buffer(blob, raw), (ends.typecode, _buffer(ends, raw)))
        return (_new_index, (), state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        blob, ends = state.pop("_strs")
        for name, _ in self._COLUMNS:
            state[name] = _column(*state[name])
        for name in ("_rdig", *self._BYTES):
            state[name] = bytearray(state[name])
        self.__dict__.update(state)
        self.__dict__.setdefault("_counted", OrderedDict())  # (a snapshot from before they were kept)
        self.__dict__.setdefault("counts_recorded", 0)
        self.__dict__.setdefault("_globals_at", self.ordinal)
        self._s = Strings(bytearray(blob), _column(*ends))
        self._subjects = state.get("_subjects") or OrderedDict()  # (a snapshot from before they were kept)
        self._feeds, self._tails = OrderedDict(), OrderedDict()
        self.entries = Entries(self)
        self._columns()

    # -- numbers ------------------------------------------------------------------------------

    def _num(self, s: str) -> int:
        """The string's number, given one (and room in every column) if it had none."""
        strings = self._s
        size = len(strings)
        n = strings.add(s)
        if n == size:
            for column, fill in self._fills:
                column.append(fill)
            self._rdig += EMPTY_DIGEST
        return n

    def _columns(self) -> None:
        """The per-string columns and what a new string starts with in each."""
        self._fills: list[tuple[array[int] | bytearray, int]] = [
            *((getattr(self, name), fill) for name, fill in self._COLUMNS),
            *((getattr(self, name), 0) for name in self._BYTES),
        ]
        self._nodes: dict[int, ContactNode | None] = {}  # made when read, bounded
        # Keys and report facts made when read, by what they are made of (bounded): many
        # docs share them (a person's reports, a submitter's lineage).
        self._made_keys: dict[tuple[int, int], tuple[str, ...]] = {}
        self._made_facts: dict[tuple[int, int, int, int], ReportFacts] = {}

    def _doc(self, doc_id: str) -> int:
        """The doc's number, or -1 when the index holds no such doc."""
        n = self._s.find(doc_id)
        return n if n >= 0 and self._kind[n] else -1

    def _rev(self, n: int) -> str:
        generation = self._rgen[n]
        if not generation:
            return self._odd_revs.get(n, "")
        return unpack_rev(generation, self._rdig[16 * n : 16 * n + 16])

    def _set_rev(self, n: int, rev: str) -> None:
        packed = pack_rev(rev)
        if packed is None:
            self._rgen[n] = 0
            self._odd_revs[n] = rev
        else:
            self._rgen[n] = packed[0]
            self._rdig[16 * n : 16 * n + 16] = packed[1]
            self._odd_revs.pop(n, None)

    def _key_nums(self, n: int) -> tuple[int, ...]:
        key0 = self._key0[n]
        if key0 < 0:
            return NO_TUPLE
        sign = self._tuples[self._sign[n]]
        if not sign:
            return (key0,)
        return tuple(dict.fromkeys((key0, *sign)))

    def _keys(self, n: int) -> tuple[str, ...]:
        found = (self._key0[n], self._sign[n])
        keys = self._made_keys.get(found)
        if keys is None:
            strs = self._s
            keys = tuple(strs[k] for k in self._key_nums(n))
            if len(self._made_keys) >= CACHED_MADE:
                self._made_keys.clear()
            self._made_keys[found] = keys
        return keys

    def _facts(self, n: int) -> ReportFacts | None:
        if self._kind[n] != KIND_CODE[REPORT]:
            return None
        flags, submitter = self._flags[n] & FACT_FLAGS, self._subm[n]
        found = (self._key0[n], submitter, self._sign[n], flags)
        facts = self._made_facts.get(found)
        if facts is None:
            strs = self._s
            facts = ReportFacts(
                None if flags & NO_SUBJECT else strs[self._key0[n]],
                bool(flags & CODE_FIELD),
                strs[submitter] if submitter >= 0 else None,
                bool(flags & PRIVATE),
                tuple(strs[k] for k in self._tuples[self._sign[n]]),
            )
            if len(self._made_facts) >= CACHED_MADE:
                self._made_facts.clear()
            self._made_facts[found] = facts
        return facts

    def _person(self, n: int) -> bool | None:
        flags = self._flags[n]
        return bool(flags & IS_PERSON) if flags & PERSON_KNOWN else None

    def _entry(self, n: int) -> Entry:
        generation, flags = self._rgen[n], self._flags[n]
        rev = unpack_rev(generation, self._rdig[16 * n : 16 * n + 16]) if generation else self._rev(n)
        return Entry(
            self._s[n], rev, bool(flags & DELETED), self._ord[n],
            self._leaves.get(n) or (rev,), KINDS[self._kind[n] - 1], self._keys(n), self._facts(n),
            bool(flags & IS_PERSON) if flags & PERSON_KNOWN else None, self._born[n],
        )  # fmt: skip

    def _judged(self, n: int, user: UserCtx, settings: AppSettings, subj: Subjects) -> bool:
        """Whether the user may read doc `n` (as `entry_readable` judges its entry)."""
        doc_id, kind = self._s[n], KINDS[self._kind[n] - 1]
        return entry_readable(doc_id, kind, self._keys(n), self._facts(n), user, settings, subj, self)

    # -- ContactGraph -----------------------------------------------------------------------

    def _node_of(self, n: int) -> ContactNode | None:
        try:
            return self._nodes[n]
        except KeyError:
            pass
        if len(self._nodes) >= CACHED_NODES:
            self._nodes.clear()
        node = self._nodes[n] = self._make_node(n)
        return node

    def _make_node(self, n: int) -> ContactNode | None:
        flags = self._node[n]
        if not flags & HAS_NODE:
            return None
        strs, parent, code = self._s, self._parent[n], self._code[n]
        parent_id = strs[parent] if parent >= 0 else None
        return ContactNode(strs[n], parent_id, strs[code] if code >= 0 else None, bool(flags & LIVE))

    def contact(self, contact_id: str) -> ContactNode | None:
        n = self._s.find(contact_id)
        return self._node_of(n) if n >= 0 else None

    def _chain(self, first: int, links: array[int]) -> Iterator[int]:
        while first >= 0:
            yield first
            first = links[first]

    def _named_chain(self, name: str, heads: array[int], links: array[int]) -> list[str]:
        """The names on the chain that starts at `name`'s slot of `heads`."""
        n = self._s.find(name)
        if n < 0:
            return []
        strs = self._s
        return [strs[k] for k in self._chain(heads[n], links)]

    def children(self, contact_id: str) -> Iterable[str]:
        return self._named_chain(contact_id, self._kid, self._sib)

    def holders(self, code: str) -> Collection[str]:
        return self._named_chain(code, self._hold, self._hnext)

    def _filed(self, key: int) -> Iterator[int]:
        """The docs filed under key number `key`."""
        yield from self._chain(self._head[key], self._next)
        yield from self._extra.get(key, ())

    def filed(self, key: str) -> Iterator[Entry]:
        n = self._s.find(key)
        if n >= 0:
            for doc in list(self._filed(n)):
                yield self._entry(doc)

    def _affected(self, contact: int) -> Iterator[int]:
        seen: set[int] = set()
        stack = [contact]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            stack.extend(self._chain(self._kid[current], self._sib))
            yield from self._filed(current)
            code = self._code[current] if self._node[current] & HAS_NODE else -1
            if code >= 0:
                yield from self._filed(code)
            yield from self._private.get(current, ())

    def affected(self, contact_id: str) -> Iterator[Entry]:
        n = self._s.find(contact_id)
        if n >= 0:
            for doc in list(self._affected(n)):
                yield self._entry(doc)

    # -- feeding ----------------------------------------------------------------------------

    def _next_ordinal(self) -> int:
        self.ordinal += 1
        return self.ordinal

    def apply(self, doc: Mapping[str, Any], seq: object = None, leaves: tuple[str, ...] = ()) -> None:
        """One upstream change: the doc's winning revision (a deleted doc: its tombstone)."""
        doc_id = doc.get("_id")
        if not isinstance(doc_id, str):
            return
        rev = str(doc.get("_rev", ""))
        n = self._num(doc_id)
        known = self._kind[n] != 0
        deleted = doc.get("_deleted") is True
        old_kind = KINDS[self._kind[n] - 1] if known else None
        old_keys = self._key_nums(n) if known else NO_TUPLE
        old_facts = self._facts(n) if known else None
        if deleted and known:
            kind, key_nums, facts, person = old_kind or OTHER, old_keys, old_facts, self._person(n)
            new = False
        else:
            keys: tuple[str, ...] = ()
            if deleted:
                kind, facts, person = OTHER, None, None
            else:
                kind = kind_of(doc)
                facts = report_facts(doc) if kind == REPORT else None
                keys = replication_keys(doc, kind, facts)
                person = contact_is_person(doc, self.person_types) if kind in CONTACT_KINDS else None
            key_nums = tuple(self._num(k) for k in keys)
            new = True
        ordinal = self._next_ordinal()
        born = ordinal
        node = contact_node(doc) if kind in CONTACT_KINDS and not deleted else None
        if known:
            old_deleted = bool(self._flags[n] & DELETED)
            # A contact's place in the tree is part of what the rules read of it: a move
            # starts a new version too (so a removal stands on the revision before it).
            moved = node is not None and old_kind in CONTACT_KINDS and self._node_of(n) != node
            if (old_kind, old_keys, old_facts, old_deleted) == (kind, key_nums, facts, deleted) and not moved:
                born = self._born[n]
            else:
                strs = self._s
                past = Version(old_deleted, old_kind or OTHER, tuple(strs[k] for k in old_keys), old_facts,
                               self._born[n], self._rev(n))  # fmt: skip
                self.history.replaced(doc_id, ordinal, past, (strs[k] for k in key_nums))
            if old_facts is not None and old_facts.private and old_facts.submitter:
                self._unwatch(self._s.find(old_facts.submitter), n)
        else:
            self._docs += 1
        if old_keys != key_nums:
            self._unfile(n, old_keys)
            self._file(n, key_nums)
        if new:
            self._store(n, kind, key_nums, facts, person)
        self._flags[n] = (self._flags[n] & ~DELETED) | (DELETED if deleted else 0)
        self._set_rev(n, rev)
        if leaves and leaves != (rev,):
            self._leaves[n] = leaves
        else:
            self._leaves.pop(n, None)
        self._ord[n], self._born[n] = ordinal, born
        if facts is not None and facts.private and facts.submitter:
            self._private.setdefault(self._num(facts.submitter), set()).add(n)
        kmax = self._kmax
        for key in (*old_keys, *key_nums):  # a doc that left a key changed under it too
            kmax[key] = ordinal
        if kind == GLOBAL:
            self._globals.add(n)  # a deleted global doc's tombstone reaches everyone
            self._globals_at = ordinal
        elif n in self._globals:
            self._globals.discard(n)
            self._globals_at = ordinal
        if node is not None:
            self._update_contact(n, node)
        elif kind in CONTACT_KINDS:
            # A deleted contact keeps its place in the tree, so its tombstone (and the docs
            # below it) stay with the users who could read it; its shortcode names nobody.
            before = self._node_of(n)
            if before is not None:
                self._update_contact(n, ContactNode(doc_id, before.parent, before.shortcode, live=False))
        elif old_kind in CONTACT_KINDS:
            self._update_contact(n, None)

    def _store(
        self, n: int, kind: str, key_nums: tuple[int, ...], facts: ReportFacts | None, person: bool | None
    ) -> None:
        """What the rules read of doc `n`, in its columns."""
        self._kind[n] = KIND_CODE[kind]
        flags = self._flags[n] & DELETED
        if person is not None:
            flags |= PERSON_KNOWN | (IS_PERSON if person else 0)
        self._key0[n] = key_nums[0] if key_nums else -1
        if facts is None:
            self._subm[n], self._sign[n] = -1, 0
        else:
            flags |= (CODE_FIELD if facts.code_field else 0) | (PRIVATE if facts.private else 0)
            flags |= NO_SUBJECT if facts.subject is None else 0
            self._subm[n] = self._num(facts.submitter) if facts.submitter else -1
            sign = tuple(self._num(k) for k in facts.signoff)
            found = self._tuple_ids.get(sign)
            if found is None:
                found = self._tuple_ids[sign] = len(self._tuples)
                self._tuples.append(sign)
            self._sign[n] = found
        self._flags[n] = flags

    def _file(self, n: int, key_nums: tuple[int, ...]) -> None:
        if not key_nums:
            return
        first = key_nums[0]
        self._next[n], self._head[first] = self._head[first], n
        for key in key_nums[1:]:
            self._extra.setdefault(key, array("i")).append(n)

    def _unfile(self, n: int, key_nums: tuple[int, ...]) -> None:
        if not key_nums:
            return
        self._unlink(self._head, self._next, key_nums[0], n)
        for key in key_nums[1:]:
            docs = self._extra.get(key)
            if docs is not None and n in docs:
                docs.remove(n)
                if not docs:
                    del self._extra[key]

    @staticmethod
    def _unlink(heads: array[int], links: array[int], owner: int, member: int) -> None:
        """Take `member` out of the chain that starts at `heads[owner]`."""
        previous, current = -1, heads[owner]
        while current >= 0 and current != member:
            previous, current = current, links[current]
        if current < 0:
            return
        if previous < 0:
            heads[owner] = links[member]
        else:
            links[previous] = links[member]
        links[member] = -1

    def _unwatch(self, submitter: int, n: int) -> None:
        docs = self._private.get(submitter)
        if docs is not None:
            docs.discard(n)
            if not docs:
                del self._private[submitter]

    def _update_contact(self, n: int, new: ContactNode | None) -> None:
        old = self._node_of(n)
        if old == new:
            return
        self._nodes.pop(n, None)
        self.tree_version += 1
        self.history.node_changed(self._s[n], self.ordinal, old)
        old_parent = self._parent[n] if old is not None else -1
        new_parent = self._num(new.parent) if new is not None and new.parent is not None else -1
        if old_parent >= 0 and old_parent != new_parent:
            self._unlink(self._kid, self._sib, old_parent, n)
        if new_parent >= 0 and old_parent != new_parent:
            self._sib[n], self._kid[new_parent] = self._kid[new_parent], n
        old_code = self._code[n] if old is not None else -1
        new_code = self._num(new.shortcode) if new is not None and new.shortcode is not None else -1
        if old_code != new_code or (old is not None and new is not None and old.live != new.live):
            # Who holds a shortcode, and whether they live, decides what it names: every
            # doc keyed on it may change hands.
            if old_code >= 0:
                self._unlink(self._hold, self._hnext, old_code, n)
                self._bump_key(old_code, n)
            if new_code >= 0:
                self._hnext[n], self._hold[new_code] = self._hold[new_code], n
                self._bump_key(new_code, n)
        if new is None:
            # No longer a contact: its id names nobody now, and the contacts below it hang
            # from nothing; what is filed under it or below it is judged anew.
            self._node[n], self._parent[n], self._code[n] = 0, -1, -1
            self._resequence_below(n)
            return
        self._node[n] = HAS_NODE | (LIVE if new.live else 0)
        self._parent[n], self._code[n] = new_parent, new_code
        if old is None or old.parent != new.parent:
            self._resequence_below(n)

    def _bump_key(self, key: int, moved: int) -> None:
        for doc in list(self._filed(key)):
            self._bump(doc, moved)

    def _resequence_below(self, contact: int) -> None:
        """Docs keyed on this contact or any below it become changes again."""
        for doc in list(self._affected(contact)):
            self._bump(doc, contact)

    def _bump(self, n: int, moved: int) -> None:
        """The doc becomes a change again, found under every one of its keys."""
        if n != moved or self._ord[n] != self.ordinal:  # the moved doc itself is fresh
            self._ord[n] = self._next_ordinal()
        ordinal, kmax = self._ord[n], self._kmax
        for key in self._key_nums(n):
            if kmax[key] < ordinal:
                kmax[key] = ordinal

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

    def _key_max(self, key: str) -> int:
        n = self._s.find(key)
        return self._kmax[n] if n >= 0 else 0

    def _candidates(self, subj: Subjects, after: int) -> Iterator[int]:
        find, kmax = self._s.find, self._kmax
        if subj.numbered is None:
            held: list[int] = []
            unheld: list[str] = []
            for key in subj.lookup_keys():
                n = find(key)
                if n >= 0:
                    held.append(n)
                else:
                    unheld.append(key)
            subj.numbered = (held, unheld)
        held, unheld = subj.numbered
        for n in (*held, *(n for key in unheld if (n := find(key)) >= 0)):
            if kmax[n] > after:
                yield from self._filed(n)
        yield from self._globals

    def _scan(self, user: UserCtx, settings: AppSettings, ordinal: int) -> tuple[list[int], list[Entry]]:
        """Readable docs above `ordinal`, found through the user's keys only, in order:
        their numbers and their entries (made once, to judge them)."""
        subj = self.subjects_of(user, settings)
        found: dict[int, Entry] = {}
        ords = self._ord
        for n in self._candidates(subj, ordinal):
            if ords[n] <= ordinal or n in found:
                continue
            e = self._entry(n)
            if entry_readable(e.id, e.kind, e.keys, e.facts, user, settings, subj, self):
                found[n] = e
        nums = sorted(found, key=ords.__getitem__)
        return nums, [found[n] for n in nums]

    def _kept(self, user: UserCtx, settings: AppSettings) -> _UserFeed | None:
        """The user's feed if one is kept for these settings and this tree (it may lag
        behind the index's ordinal: `_feed` brings it up to date)."""
        feed = self._feeds.get(user)
        if feed is None or feed.settings is not settings or feed.tree_version != self.tree_version:
            return None
        return feed

    def _feed(self, user: UserCtx, settings: AppSettings) -> _UserFeed:
        feed = self._kept(user, settings)
        ords = self._ord
        if feed is None:
            self._drop_tail(user)
            nums, entries = self._scan(user, settings, 0)
            feed = _UserFeed(settings, self.tree_version, self.ordinal, array("i", nums))
            self._keep_tail(user, feed, entries, 0)
        elif feed.at < self.ordinal:
            # Only what changed since: docs touched since `at` leave their old place (and
            # come back in `newer` if still readable).
            self._drop_tail(user)
            newer, _ = self._scan(user, settings, feed.at)
            kept = [n for n, o in zip(feed.nums, feed.ordinals, strict=True) if ords[n] == o]
            feed.nums = array("i", kept + newer)
            feed.at = self.ordinal
            feed.live = -1
        else:
            self._feeds.move_to_end(user)
            return feed
        feed.ordinals = array("q", [ords[n] for n in feed.nums])
        self._feeds[user] = feed
        self._feeds.move_to_end(user)
        if len(self._feeds) > CACHED_USERS:
            gone, _ = self._feeds.popitem(last=False)
            self._drop_tail(gone)
        return feed

    def _keep_tail(self, user: UserCtx, feed: _UserFeed, entries: list[Entry], start: int) -> None:
        """Keep the entries of `feed.nums[start:]`, for the pages of a pull that follow
        (the TAILS_KEPT most recent users' only: they weigh ~400 bytes an entry)."""
        feed.tail, feed.tail_from = entries, start
        self._tails[user] = feed
        self._tails.move_to_end(user)
        if len(self._tails) > TAILS_KEPT:
            _, oldest = self._tails.popitem(last=False)
            oldest.tail = None

    def _drop_tail(self, user: UserCtx) -> None:
        feed = self._tails.pop(user, None)
        if feed is not None:
            feed.tail = None

    def changes_since(self, user: UserCtx, settings: AppSettings, ordinal: int) -> list[Entry]:
        """Readable entries (tombstones included) with an ordinal above `ordinal`, in order.

        A device resuming while no feed of its user is kept current (after a restart, a
        change of the tree, or once CACHED_USERS others came after it) is answered from
        the docs filed under keys changed since its ordinal, not by building the feed of its
        whole scope; the feed is built once that finds more than a page's worth to send."""
        if ordinal > 0 and self._kept(user, settings) is None:
            _, entries = self._scan(user, settings, ordinal)
            if len(entries) <= TAIL_KEPT:
                return entries
        feed = self._feed(user, settings)
        start = bisect.bisect_right(feed.ordinals, ordinal)
        if feed.tail is not None and start >= feed.tail_from:
            return feed.tail[start - feed.tail_from :]
        entries = [self._entry(n) for n in feed.nums[start:]]
        if len(entries) > TAIL_KEPT:  # pages of it follow: made once, not once a page
            self._keep_tail(user, feed, entries, start)
            return entries[:]
        return entries

    def readable_entries(self, user: UserCtx, settings: AppSettings) -> list[Entry]:
        return self.changes_since(user, settings, 0)

    def readable_counts(self, user: UserCtx, settings: AppSettings) -> tuple[int, int]:
        """How many readable docs are live and how many are tombstones; counted once per
        change of the user's feed, not per call. With no feed of the user kept (after a
        restart, or an eviction), the counts of the last time, if nothing changed since."""
        counted = self._counted.get(user)
        if (
            counted is not None
            and user not in self._feeds
            and counted[2:] == (settings, self.tree_version, self.ordinal)
        ):
            return counted[0], counted[1]
        feed = self._feed(user, settings)
        if feed.live < 0:
            flags = self._flags
            feed.live = sum(1 for n in feed.nums if not flags[n] & DELETED)
        live, dead = feed.live, len(feed.nums) - feed.live
        now = (live, dead, settings, self.tree_version, self.ordinal)
        if now != counted:  # (recorded again only when they change: each makes a snapshot due)
            self._counted[user] = now
            self.counts_recorded += 1
        self._counted.move_to_end(user)
        if len(self._counted) > COUNTED_USERS:
            self._counted.popitem(last=False)
        return live, dead

    def winner(self, doc_id: str) -> tuple[str, bool] | None:
        """The doc's winning revision and whether it is deleted, or None for a doc the index
        does not hold (what `entries[doc_id]` says of them, without making the entry)."""
        n = self._doc(doc_id)
        return (self._rev(n), bool(self._flags[n] & DELETED)) if n >= 0 else None

    def is_leaf(self, doc_id: str, rev: str) -> bool:
        """Whether `rev` is one of the doc's leaves (`rev in entries[doc_id].leaves`)."""
        n = self._doc(doc_id)
        if n < 0:
            return False
        leaves = self._leaves.get(n)
        return rev in leaves if leaves else rev == self._rev(n)

    def is_readable_id(self, doc_id: str, user: UserCtx, settings: AppSettings) -> bool:
        n = self._doc(doc_id)
        return n >= 0 and self._judged(n, user, settings, self.subjects_of(user, settings))

    def readable_ids(self, ids: Iterable[str], user: UserCtx, settings: AppSettings) -> set[str]:
        subj = self.subjects_of(user, settings)
        found = set()
        for doc_id in ids:
            n = self._doc(doc_id)
            if n >= 0 and self._judged(n, user, settings, subj):
                found.add(doc_id)
        return found

    def count_by_kind(self, user: UserCtx, settings: AppSettings) -> dict[str, int]:
        return self._count(self._feed(user, settings).nums)

    def count_uncached(self, user: UserCtx, settings: AppSettings) -> dict[str, int]:
        """What `count_by_kind` counts, without filling the per-user caches."""
        steps = self.counting(user, settings)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                counts: dict[str, int] = done.value
                return counts

    def counting(
        self, user: UserCtx, settings: AppSettings, step: int = COUNT_STEP, keys: list[str] | None = None
    ) -> Generator[None, None, dict[str, int]]:
        """`count_uncached` in steps: it yields after every `step` docs judged (and once
        the user's docs are found), so that a caller counting a large scope lets others
        run in between, and returns the counts. The index may change between steps: the
        counts are then of no single state, unless nothing the count read changed
        (`unchanged_under`, `touched_since`). `keys` gets the keys the count looked under."""
        subj = subjects(user, settings, self)
        if keys is not None:
            keys.extend(subj.lookup_keys())
        candidates = list(set(self._candidates(subj, 0)))
        yield
        flags = self._flags
        readable: list[int] = []
        for start in range(0, len(candidates), step):
            readable.extend(
                n for n in candidates[start : start + step]
                if not flags[n] & DELETED and self._judged(n, user, settings, subj)
            )  # fmt: skip
            yield
        return self._count(readable)

    def looked_under(self, keys: Iterable[str]) -> Looked:
        """`keys` as `unchanged_under` reads them: by number (4 bytes each) where the
        index has one, as text where it has none yet."""
        find = self._s.find
        nums, names = array("i"), []
        for key in keys:
            n = find(key)
            if n >= 0:
                nums.append(n)
            else:
                names.append(key)
        return Looked(nums, tuple(names))

    def unchanged_under(self, looked: Looked, ordinal: int) -> bool:
        """Whether no doc filed under these keys, and no global doc, changed after
        `ordinal`, and none left those keys since (False when the history does not reach
        back to it). With the scope the same (`touched_since`), what a user's count judged
        is then what it would judge now: a doc's judgement changes only with a new ordinal
        of its own (a contact's move or a shortcode's new holder re-sequences the docs it
        concerns, as a device's resumed `_changes` relies on too)."""
        if ordinal >= self.ordinal:
            return True
        if not self.history.covers(ordinal) or self._globals_at > ordinal:
            return False
        kmax = self._kmax
        return all(kmax[n] <= ordinal for n in looked.nums) and all(
            self._key_max(key) <= ordinal for key in looked.names
        )

    def touched_since(self, ordinal: int) -> frozenset[str] | None:
        """Every contact changed after `ordinal` and every contact above one, in the tree
        now and in the tree as it stood then: a user none of whose facilities (nor their own
        contact) is among them has the same scope as then. None when the history does not
        reach back to `ordinal`."""
        if not self.history.covers(ordinal):
            return None
        changed = self.history.nodes_at(ordinal)
        if not changed:
            return frozenset()
        then = OverlayGraph(self, changed)
        touched: set[str] = set()
        for graph in (self, then):
            for contact_id in changed:
                seen: set[str] = set()  # a malformed tree may loop
                current: str | None = contact_id
                while current is not None and current not in seen:
                    seen.add(current)
                    touched.add(current)
                    node = graph.contact(current)
                    current = node.parent if node is not None else None
        return frozenset(touched)

    def _count(self, nums: Iterable[int]) -> dict[str, int]:
        """Live docs by kind (contacts as person or place)."""
        counts: dict[str, int] = {}
        flags = self._flags
        for n in nums:
            if flags[n] & DELETED:
                continue
            person = self._person(n)
            kind = ("person" if person else "place") if person is not None else KINDS[self._kind[n] - 1]
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
        # What a report names is read on the tree as it stood then, even when the scope
        # did not move: a contact outside it may have taken a shortcode or an id that
        # reports name since (one that makes a private report the user's own, or a
        # shortcode one of theirs shares now).
        overlay = OverlayGraph(self, nodes_then) if nodes_then else None
        graph: ContactGraph = overlay or self
        if everything or settings_then is not settings or self._moves_scope(user, settings, overlay):
            subj = subjects(then, settings_then, graph)
            changed_only = not everything
        else:
            subj = self.subjects_of(user, settings)  # the same as then: nothing in it moved
            changed_only = True
        now = self.subjects_of(user, settings)
        found: dict[str, Entry] = {}

        for key in subj.lookup_keys():
            if changed_only and self._key_max(key) <= ordinal:
                ids: Iterable[str] = history.departed_from(key, ordinal)
            else:
                ids = (*self._filed_ids(key), *history.departed_from(key, ordinal))
            for doc_id in ids:
                n = self._doc(doc_id)
                if n < 0 or doc_id in found or (changed_only and self._ord[n] <= ordinal):
                    continue
                if self._judged(n, user, settings, now):
                    continue
                entry = self._entry(n)
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
        cannot read now: the scope is judged as it stood at `after` and after each change
        of the tree or the settings in that span (it changes nowhere else), against every
        version of a doc that was current in it (one born in the span under the scope at
        `after` too). Over-approximates (a version and a scope that were never
        current together may meet): a removal sent for a doc the device never held is a
        tombstone it ignores. Past WINDOW_POINTS such moments, evenly spread ones are
        judged (docs/removals.md: a scope that flapped in between may be missed)."""
        history = self.history
        judged: set[str] = set()
        moments = sorted(
            {after, until}
            | {t for t, _, _ in history.tree if after < t <= until}
            | {t for t, _ in history.settings if after < t <= until}
        )
        if len(moments) > WINDOW_POINTS:
            step = len(moments) / WINDOW_POINTS
            moments = sorted({moments[int(i * step)] for i in range(WINDOW_POINTS)} | {moments[-1]})
        for at in moments:
            graph = OverlayGraph(self, history.nodes_at(at))
            settings_at = history.settings_at(at, settings)
            subj = subjects(then, settings_at, graph)
            for key in subj.lookup_keys():
                for doc_id in (*self._filed_ids(key), *history.departed_from(key, after)):
                    n = self._doc(doc_id)
                    if n < 0 or doc_id in judged or self._judged(n, user, settings, now):
                        continue
                    entry = self._entry(n)
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

    def _filed_ids(self, key: str) -> list[str]:
        n = self._s.find(key)
        strs = self._s
        return [strs[doc] for doc in self._filed(n)] if n >= 0 else []

    def _moves_scope(self, user: UserCtx, settings: AppSettings, then_graph: OverlayGraph | None) -> bool:
        """Whether a contact changed since then may have moved this user's scope (its
        contacts, their depths and shortcodes): it is in the scope now or was then. What a
        changed contact outside it does to what reports name is read on the tree as it
        stood then (`left_scope`), not here. `then_graph`: the tree then, the contacts
        changed since laid over it (None: none changed)."""
        if then_graph is None:
            return False
        now = WalkScope(user, settings, self)
        then = WalkScope(user, settings, then_graph)
        return any(now.depth(c) is not None or then.depth(c) is not None for c in then_graph.nodes)


def _new_index() -> ScopeIndex:
    return ScopeIndex.__new__(ScopeIndex)


def _buffer(data: array[int] | bytearray, raw: bool) -> PickleBuffer | bytes:
    return PickleBuffer(data) if raw else data.tobytes() if isinstance(data, array) else bytes(data)


def _column(typecode: str, data: bytes | bytearray) -> array[int]:
    column = array(typecode)
    column.frombytes(data)
    return column


@dataclass(frozen=True, slots=True)
class Looked:
    """The keys a count looked under (`ScopeIndex.looked_under`)."""

    nums: array[int]
    names: tuple[str, ...] = ()


class TooOld(Exception):
    """A position older than what the index remembers."""


class Entries(Mapping[str, Entry]):
    """The index's docs by id, each `Entry` made when asked for (a read-only view)."""

    def __init__(self, index: ScopeIndex) -> None:
        self._index = index

    def __getitem__(self, doc_id: str) -> Entry:
        n = self._index._doc(doc_id)
        if n < 0:
            raise KeyError(doc_id)
        return self._index._entry(n)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self._index._doc(doc_id) >= 0

    def __len__(self) -> int:
        return self._index._docs

    def __iter__(self) -> Iterator[str]:
        index = self._index
        strs, kinds = index._s, index._kind
        return (strs[n] for n in range(len(strs)) if kinds[n])
