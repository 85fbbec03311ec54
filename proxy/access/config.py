"""The CHT `settings` doc and the user, as the access rules see them (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ADMIN_ROLE = "_admin"
ONLINE_ROLE = "mm-online"


@dataclass(frozen=True)
class DepthRule:
    role: str
    depth: int | None  # None: unlimited (-1 in the settings doc)
    report_depth: int | None


@dataclass(frozen=True)
class AppSettings:
    """The parts of `settings.settings` the rules use. Malformed parts count as absent."""

    offline_roles: frozenset[str] = frozenset()
    permissions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    depth_rules: tuple[DepthRule, ...] = ()
    unallocated_access: bool = False
    person_types: frozenset[str] = frozenset({"person"})
    # What was malformed and how it was read (fail closed), for the caller to log.
    problems: tuple[str, ...] = ()

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> AppSettings:
        inner = doc.get("settings") if isinstance(doc, Mapping) else None
        if not isinstance(inner, Mapping):
            return cls()
        roles = inner.get("roles")
        offline = frozenset(
            name
            for name, conf in (roles.items() if isinstance(roles, Mapping) else [])
            if isinstance(name, str) and isinstance(conf, Mapping) and conf.get("offline") is True
        )
        perms_raw = inner.get("permissions")
        permissions = {
            name: frozenset(r for r in holders if isinstance(r, str))
            for name, holders in (perms_raw.items() if isinstance(perms_raw, Mapping) else [])
            if isinstance(name, str) and isinstance(holders, list)
        }
        rules: list[DepthRule] = []
        problems: list[str] = []
        depth_raw = inner.get("replication_depth")
        for entry in depth_raw if isinstance(depth_raw, list) else []:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("role"), str):
                continue
            depths = [_depth(entry, name, problems) for name in ("depth", "report_depth")]
            rules.append(DepthRule(entry["role"], depths[0], depths[1]))
        types_raw = inner.get("contact_types")
        person_types = frozenset(
            t["id"]
            for t in (types_raw if isinstance(types_raw, list) else [])
            if isinstance(t, Mapping) and isinstance(t.get("id"), str) and t.get("person") is True
        ) or frozenset({"person"})
        return cls(
            person_types=person_types,
            offline_roles=offline,
            permissions=permissions,
            depth_rules=tuple(rules),
            unallocated_access=inner.get("district_admins_access_unallocated_messages") is True,
            problems=tuple(problems),
        )

    def scope_fingerprint(self, user: UserCtx) -> tuple[object, ...]:
        """The settings-derived inputs of a user's read scope (for since-token checks)."""
        return (
            is_offline(user, self),
            replication_depths(user, self),
            self.unallocated_access and has_permission(user, self, "can_view_unallocated_data_records"),
        )


def _depth(entry: Mapping[str, Any], name: str, problems: list[str]) -> int | None:
    """A depth of a `replication_depth` entry: absent or -1 is unlimited (None), as in CHT.
    Anything else that is not a non-negative integer ("2", 2.0, -5, null) reads as 0, the
    narrowest scope: a typo in the settings must never widen what users replicate."""
    if name not in entry:
        return None
    value = entry[name]
    if isinstance(value, int) and not isinstance(value, bool) and value >= -1:
        return None if value == -1 else value
    shown = repr(value)[:40]
    problems.append(f"replication_depth {name}={shown} for role {entry['role'][:40]!r} is invalid; read as 0")
    return 0


@dataclass(frozen=True)
class UserCtx:
    name: str
    roles: tuple[str, ...] = ()
    facility_ids: tuple[str, ...] = ()
    contact_id: str | None = None
    is_admin: bool = False

    @property
    def user_doc_id(self) -> str:
        return f"org.couchdb.user:{self.name}"


def is_offline(user: UserCtx, settings: AppSettings) -> bool:
    """Offline: a role configured `offline: true`, not a CouchDB admin, no `mm-online` role."""
    if user.is_admin or ADMIN_ROLE in user.roles or ONLINE_ROLE in user.roles:
        return False
    return any(role in settings.offline_roles for role in user.roles)


def has_permission(user: UserCtx, settings: AppSettings, permission: str) -> bool:
    """CHT semantics: a `!` prefix means the user must not hold it; admins hold everything."""
    negate = permission.startswith("!")
    name = permission[1:] if negate else permission
    if user.is_admin or ADMIN_ROLE in user.roles:
        return not negate
    holds = any(role in settings.permissions.get(name, frozenset()) for role in user.roles)
    return holds != negate


def replication_depths(user: UserCtx, settings: AppSettings) -> tuple[int | None, int | None]:
    """(depth, report_depth); None is unlimited. The largest depth among the user's roles'
    entries wins (-1 unlimited; no entry at all: unlimited); report_depth comes from the
    winning entry, and on a tie in depth the largest report_depth (None counting largest).
    Asked once per report judged: the answer is kept per set of roles, for these rules."""
    kept = _DEPTHS.get(user.roles)
    if kept is not None and kept[0] is settings.depth_rules:
        return kept[1]
    found = _depths(user.roles, settings.depth_rules)
    if len(_DEPTHS) >= DEPTHS_KEPT:
        _DEPTHS.clear()
    _DEPTHS[user.roles] = (settings.depth_rules, found)  # (held: its id is not reused while kept)
    return found


DEPTHS_KEPT = 1024
_DEPTHS: dict[tuple[str, ...], tuple[tuple[DepthRule, ...], tuple[int | None, int | None]]] = {}


def _depths(roles: tuple[str, ...], depth_rules: tuple[DepthRule, ...]) -> tuple[int | None, int | None]:
    rules = [r for r in depth_rules if r.role in roles]
    if not rules:
        return None, None

    def rank(rule: DepthRule) -> tuple[int, int]:
        depth = 1 << 30 if rule.depth is None else rule.depth
        report = 1 << 30 if rule.report_depth is None else rule.report_depth
        return depth, report

    best = max(rules, key=rank)
    return best.depth, best.report_depth
