"""CouchDB's own authorization, for callers couchgate forwards with its service account.

Basic and cookie callers are forwarded with their own credentials and CouchDB decides.
Token callers have no CouchDB credentials, so couchgate applies CouchDB's rules itself
before using the service account; the order is CouchDB's:

1. server admins (`_admin` role) may do anything;
2. server-level paths: only `/`, `/_uuids`, `/_up`, `/_session` for everyone else;
3. `_users`: a user may read and write only their own `org.couchdb.user:<name>` doc;
   other system databases are admin-only;
4. creating or deleting a database is for server admins;
5. database admins (`_security.admins` by name or role) may do anything in the db;
6. `_design/*` writes, `_security` writes and maintenance (`_compact`, `_purge`,
   `_view_cleanup`, `_revs_limit` writes) need a database admin;
7. members (`_security.members` by name or role) may read and write documents; a
   `members` section with no names and no roles makes the database public.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from proxy.access.paths import CouchPath

PUBLIC_SERVER_PATHS = {"", "_uuids", "_up", "_session"}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
ADMIN_DB_ENDPOINTS = {"_security", "_compact", "_purge", "_view_cleanup", "_revs_limit"}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""
    needs_security: bool = False  # the caller must supply the db's `_security` object to decide


ALLOW = Verdict(True)


def _holds(section: object, name: str | None, roles: tuple[str, ...]) -> bool:
    if not isinstance(section, Mapping):
        return False
    names = section.get("names") or []
    section_roles = section.get("roles") or []
    return (name is not None and isinstance(names, list) and name in names) or (
        isinstance(section_roles, list) and any(r in section_roles for r in roles)
    )


def _is_public(members: object) -> bool:
    if not isinstance(members, Mapping):
        return True
    return not (members.get("names") or members.get("roles"))


def decide(
    method: str,
    path: CouchPath,
    name: str | None,
    roles: tuple[str, ...],
    security: Mapping[str, object] | None = None,
) -> Verdict:
    """May this caller do this? `needs_security` asks for the db's `_security` first."""
    if "_admin" in roles:
        return ALLOW
    if path.is_server:
        first = path.segments[0] if path.segments else ""
        if first in PUBLIC_SERVER_PATHS:
            return ALLOW
        return Verdict(False, "You are not a server admin.")
    db = path.db or ""
    if db == "_users":
        own = f"org.couchdb.user:{name}" if name else None
        if own is not None and path.doc_id == own and not path.rest:
            return ALLOW if method in READ_METHODS | {"PUT"} else Verdict(False, "Only admins may do that.")
        return Verdict(False, "Only admins may access other users' documents.")
    if db.startswith("_"):
        return Verdict(False, "You are not a server admin.")
    if len(path.segments) == 1 and method not in READ_METHODS and method != "POST":
        return Verdict(False, "You are not a server admin.")
    if security is None:
        return Verdict(False, needs_security=True)
    if _holds(security.get("admins"), name, roles):
        return ALLOW
    second = path.segments[1] if len(path.segments) > 1 else ""
    writes = method not in READ_METHODS
    if writes and second in ADMIN_DB_ENDPOINTS:
        return Verdict(False, "You are not a db or server admin.")
    if writes and (path.doc_id or "").startswith("_design/"):
        return Verdict(False, "You are not a db or server admin.")
    if _is_public(security.get("members")) or _holds(security.get("members"), name, roles):
        return ALLOW
    return Verdict(False, "You are not allowed to access this db.")
