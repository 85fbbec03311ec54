"""The contact tree as the rules see it, and a user's place in it (pure, no I/O).

A contact is in a user's scope at distance d when walking up its parents from it reaches
one of the user's facilities after d steps (the nearest one), and d is within the user's
depth. Two ways to answer that, which agree (a property test checks it):
- `subjects` walks down from the facilities once and keeps every contact it reaches: the
  index uses it to find a user's docs through their keys;
- `WalkScope` walks up from the one contact asked about: writes and served bodies use it,
  so judging a doc costs the height of the tree, not the size of the user's scope, and
  a graph with a request's own contacts laid over it (`OverlayGraph`) costs nothing to
  build.

A deleted contact keeps its place in the tree (its tombstone, and the docs below and
about it, stay with the users who could read them), but its shortcode names nobody: a
shortcode held by a deleted contact, or by more than one, resolves to nothing
(`resolve`), so a planted shortcode stops nothing and grants nothing once deleted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from proxy.access.config import AppSettings, UserCtx, has_permission, replication_depths
from proxy.access.kinds import UNASSIGNED, ReportFacts, reserved

# How far up a walk goes before it gives up on a tree that loops or never ends.
MAX_HEIGHT = 256


@dataclass(frozen=True, slots=True)
class ContactNode:
    id: str
    parent: str | None
    shortcode: str | None  # never a reserved value
    live: bool = True

    def __reduce__(self) -> tuple[type[ContactNode], tuple[object, ...]]:  # a plain tuple (snapshots)
        return ContactNode, (self.id, self.parent, self.shortcode, self.live)


class ContactGraph(Protocol):
    def contact(self, contact_id: str) -> ContactNode | None: ...
    def children(self, contact_id: str) -> Iterable[str]: ...
    def holders(self, code: str) -> Collection[str]:
        """The contacts (deleted ones too) whose shortcode is `code`."""
        ...

    def filed(self, key: str) -> Iterable[Filed]:
        """The stored docs filed under `key` (a contact id or a shortcode)."""
        ...

    def affected(self, contact_id: str) -> Iterable[Filed]:
        """The stored docs whose readability may follow this contact's place: those filed
        under it or any contact below it (by id or shortcode), the contacts below it, and
        the private reports they submitted."""
        ...


class Filed(Protocol):
    """What the index holds of a stored doc (`proxy.access.scope_index.Entry`)."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def keys(self) -> tuple[str, ...]: ...
    @property
    def facts(self) -> ReportFacts | None: ...


def resolve(value: str, code_field: bool, graph: ContactGraph) -> str | None:
    """The contact a report's subject value names, or None.

    An id field (`patient_uuid`, the submitter) names the contact with that id. A value
    from a shortcode field (`code_field`) may name a contact by its shortcode or by its
    id: it names one only when exactly one contact answers to it either way, and a
    contact answering by its shortcode must be live. A value held as a shortcode by
    several contacts, by a deleted one, or by one contact while it is another's id,
    names nobody; reserved values (`_unassigned`, user doc ids) name nobody. So no
    shortcode, planted or not, takes the reports of a contact it is not."""
    if reserved(value):
        return None
    by_id = graph.contact(value) is not None
    if not code_field:
        return value if by_id else None
    holders = set(graph.holders(value))
    answering = holders | ({value} if by_id else set())
    if len(answering) != 1:
        return None
    (found,) = answering
    node = graph.contact(found)
    return found if node is not None and (node.live or found not in holders) else None


class Scope(Protocol):
    """Where contacts sit relative to one user's facilities."""

    @property
    def unassigned(self) -> bool:
        """Whether the user may see unallocated reports."""
        ...

    def depth(self, contact_id: str) -> int | None:
        """Distance below the nearest facility, or None when outside the user's depth."""
        ...


@dataclass
class Subjects:
    """A user's contacts in scope, found by walking down from the facilities; `codes` are
    the shortcodes they hold (keys the index looks under; `resolve` decides what they
    name), `own` the user's doc id (keys tasks and user-settings, never a contact)."""

    contacts: dict[str, int]
    codes: dict[str, int]
    own: str
    unassigned: bool
    # The numbers an index gave the keys it held (`ScopeIndex._candidates`: numbers never
    # change), and the keys it did not hold then (looked up again each time).
    numbered: tuple[list[int], list[str]] | None = field(default=None, compare=False, repr=False)

    def depth(self, contact_id: str) -> int | None:
        return self.contacts.get(contact_id)

    def lookup_keys(self) -> Iterator[str]:
        yield from self.contacts
        yield from self.codes
        yield self.own
        if self.unassigned:
            yield UNASSIGNED


def unassigned_access(user: UserCtx, settings: AppSettings) -> bool:
    return settings.unallocated_access and has_permission(user, settings, "can_view_unallocated_data_records")


def subjects(user: UserCtx, settings: AppSettings, graph: ContactGraph) -> Subjects:
    depth_limit, _ = replication_depths(user, settings)
    found: dict[str, int] = {}
    codes: dict[str, int] = {}
    frontier = [(facility, 0) for facility in user.facility_ids]
    while frontier:
        next_frontier: list[tuple[str, int]] = []
        for contact_id, depth in frontier:
            if found.get(contact_id, depth + 1) <= depth:
                continue
            found[contact_id] = depth
            node = graph.contact(contact_id)
            if node is not None and node.live and node.shortcode is not None:
                codes[node.shortcode] = min(codes.get(node.shortcode, depth), depth)
            if depth_limit is None or depth < depth_limit:
                next_frontier += [(child, depth + 1) for child in graph.children(contact_id)]
        frontier = next_frontier
    return Subjects(found, codes, user.user_doc_id, unassigned_access(user, settings))


@dataclass
class WalkScope:
    """A user's scope answered one contact at a time, walking up (see the module doc)."""

    user: UserCtx
    settings: AppSettings
    graph: ContactGraph
    _known: dict[str, int | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.limit, _ = replication_depths(self.user, self.settings)
        self.facilities = frozenset(self.user.facility_ids)
        self.unassigned = unassigned_access(self.user, self.settings)

    def depth(self, contact_id: str) -> int | None:
        if contact_id in self._known:
            return self._known[contact_id]
        path: list[str] = []
        current: str | None = contact_id
        found: int | None = None
        while current is not None and len(path) < MAX_HEIGHT:
            if current in self.facilities:
                found = 0
                break
            if current in self._known:
                below = self._known[current]
                found = None if below is None else below
                break
            if current in path:  # a loop that reaches no facility
                break
            path.append(current)
            node = self.graph.contact(current)
            current = node.parent if node is not None else None
        # Distances below the nearest facility, for the contact and those walked through.
        for steps_up, walked in enumerate(reversed(path), start=1):
            self._known[walked] = None if found is None else found + steps_up
        distance = self._known.get(contact_id, found)
        if distance is not None and self.limit is not None and distance > self.limit:
            return None
        return distance


def ancestors(graph: ContactGraph, contact_id: str) -> list[str]:
    """The contact's parents, nearest first, as far as the tree goes."""
    found: list[str] = []
    node = graph.contact(contact_id)
    while node is not None and node.parent is not None and node.parent not in found:
        if len(found) >= MAX_HEIGHT:
            break
        found.append(node.parent)
        node = graph.contact(node.parent)
    return found


class OverlayGraph:
    """A graph with some contacts laid over it: a request's new versions, or the tree as
    it stood at an earlier ordinal (None: the contact was not there)."""

    def __init__(self, base: ContactGraph, contacts: Mapping[str, ContactNode | None]) -> None:
        self.base = base
        self.nodes = dict(contacts)
        self.extra: dict[str, set[str]] = {}
        self.coded: dict[str, set[str]] = {}  # shortcode -> the laid-over contacts holding it
        for node in self.nodes.values():
            if node is not None and node.parent is not None:
                self.extra.setdefault(node.parent, set()).add(node.id)
            if node is not None and node.shortcode is not None:
                self.coded.setdefault(node.shortcode, set()).add(node.id)

    def contact(self, contact_id: str) -> ContactNode | None:
        if contact_id in self.nodes:
            return self.nodes[contact_id]
        return self.base.contact(contact_id)

    def children(self, contact_id: str) -> Iterable[str]:
        kept = [c for c in self.base.children(contact_id) if c not in self.nodes]
        return [*kept, *self.extra.get(contact_id, ())]

    def holders(self, code: str) -> Collection[str]:
        kept = {c for c in self.base.holders(code) if c not in self.nodes}
        kept.update(self.coded.get(code, ()))
        return kept

    def filed(self, key: str) -> Iterable[Filed]:
        return self.base.filed(key)

    def affected(self, contact_id: str) -> Iterable[Filed]:
        return self.base.affected(contact_id)
