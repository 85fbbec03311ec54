"""CouchDB's own authorization, for callers couchgate forwards with its service account.

Basic and cookie callers are forwarded with their own credentials and CouchDB decides.
Token callers have no CouchDB credentials, so couchgate applies CouchDB 3's rules itself
before using the service account; the order is CouchDB's:

1. server admins (`_admin` role) may do anything;
2. server-level paths: only `GET /`, `/_uuids`, `/_up`, `/_session` for everyone else
   (`_all_dbs` too is admin-only: CouchDB 3's default `admin_only_all_dbs = true`);
3. a database name CouchDB would refuse is 400 `illegal_database_name`;
4. `_users`: a user may read, update and delete only their own `org.couchdb.user:<name>`
   doc, and an update may not change `roles`, `name` or `type` (CouchDB's `_users`
   validation); other users' docs read as missing, writing them is forbidden;
   `_replicator` and `_global_changes` are admin-only;
5. creating or deleting a database is for server admins;
6. members (`_security.members` by name or role) may use the database; a `members`
   section with no names and no roles makes it public;
7. database admins (`_security.admins` by name or role) may do anything in it;
8. only database admins write design docs, by any route: `PUT/DELETE/COPY` on the doc or
   its attachments, a `Destination: _design/...` copy, `_id`s in `POST /db` and
   `_bulk_docs` bodies (checked by `design_ids_in`), `_index`; and only they use
   `_security` writes and maintenance (`_compact`, `_purge`, `_view_cleanup`, ...).

Known limitation: upstream `validate_doc_update` functions then run with the service
account's userCtx (an admin), so a design doc's own per-user checks do not apply to token
callers; rules couchgate must enforce are enforced here. `_update` and `_rewrite` handlers
are therefore db-admin-only for token callers (they would run and write as that admin).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from proxy.access.paths import CouchPath

PUBLIC_SERVER_PATHS = {"", "_uuids", "_up", "_session"}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
SYSTEM_DBS = {"_users", "_replicator", "_global_changes"}
# Endpoints of a database that only its admins may write to (GET stays a member's read).
ADMIN_DB_ENDPOINTS = {
    "_security", "_compact", "_purge", "_view_cleanup", "_revs_limit", "_purged_infos_limit",
    "_index", "_sync_shards",
}  # fmt: skip
# Design doc handlers that only read, POST included (`_view` with `keys`, `_list`, `_show`).
DESIGN_READS = {"_view", "_list", "_show", "_info", "_search", "_search_info", "_nouveau", "_geo"}
DB_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")
ILLEGAL_DB_REASON = (
    "Name: '{}'. Only lowercase characters (a-z), digits (0-9), and any of the characters "
    "_, $, (, ), +, -, and / are allowed. Must begin with a letter."
)
NOT_SERVER_ADMIN = "You are not a server admin."
NOT_DB_ADMIN = "You are not a db or server admin."

BodyCheck = Literal["design_ids", "user_doc"]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""
    needs_security: bool = False  # the caller must supply the db's `_security` object to decide
    status: int = 403
    error: str = "forbidden"
    # Allowed, provided the request body passes this check (the caller reads the body).
    body_check: BodyCheck | None = None


ALLOW = Verdict(True)
NEEDS_SECURITY = Verdict(False, needs_security=True)


def refuse(reason: str) -> Verdict:
    return Verdict(False, reason)


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


def is_db_admin(security: Mapping[str, object], name: str | None, roles: tuple[str, ...]) -> bool:
    return _holds(security.get("admins"), name, roles)


def destination_id(header: str | None) -> str | None:
    """The doc id a COPY writes to: CouchDB reads `Destination` as `<id>[?rev=...]`."""
    if header is None:
        return None
    return unquote_plus(header.split("?", 1)[0])  # as CouchDB does: a raw `+` is a space


def decide(
    method: str,
    path: CouchPath,
    name: str | None,
    roles: tuple[str, ...],
    security: Mapping[str, object] | None = None,
    *,
    destination: str | None = None,
) -> Verdict:
    """May this caller do this? `needs_security` asks for the db's `_security` first;
    `destination` is a COPY's `Destination` header."""
    if "_admin" in roles:
        return ALLOW
    if path.is_server:
        first = path.segments[0] if path.segments else ""
        return ALLOW if first in PUBLIC_SERVER_PATHS else refuse(NOT_SERVER_ADMIN)
    db = path.db or ""
    if db not in SYSTEM_DBS and not DB_NAME.match(db):
        return Verdict(False, ILLEGAL_DB_REASON.format(db), status=400, error="illegal_database_name")
    if db in SYSTEM_DBS and db != "_users":
        return refuse(NOT_SERVER_ADMIN)
    if len(path.segments) == 1 and method not in READ_METHODS and method != "POST":
        return refuse(NOT_SERVER_ADMIN)  # PUT/DELETE /db: create and delete databases
    if security is None:
        return NEEDS_SECURITY
    if is_db_admin(security, name, roles):
        return ALLOW
    if db == "_users":
        return _users(method, path, name)
    member = _is_public(security.get("members")) or _holds(security.get("members"), name, roles)
    if not member:
        return refuse("You are not allowed to access this db.")
    return _member(method, path, destination)


def _member(method: str, path: CouchPath, destination: str | None) -> Verdict:
    """What a member who is not a db admin may do in a database."""
    writes = method not in READ_METHODS
    if len(path.segments) == 1:
        # `POST /db` creates the doc its body names: a design doc is an admin's.
        return Verdict(True, body_check="design_ids") if method == "POST" else ALLOW
    second = path.segments[1]
    if writes and second in ADMIN_DB_ENDPOINTS:
        return refuse(NOT_DB_ADMIN)
    if method == "POST" and second == "_bulk_docs":
        return Verdict(True, body_check="design_ids")
    if method == "COPY" and (destination_id(destination) or "").startswith("_design/"):
        return refuse(NOT_DB_ADMIN)
    doc_id = path.doc_id or ""
    if doc_id.startswith("_design/") and writes:
        handler = path.rest[0] if path.rest else ""
        if method == "POST" and handler in DESIGN_READS:
            return ALLOW
        if method == "COPY" and not path.rest:
            return ALLOW  # copying *from* a design doc reads it; the destination was checked
        return refuse(NOT_DB_ADMIN)
    return ALLOW


def _users(method: str, path: CouchPath, name: str | None) -> Verdict:
    """CouchDB's `_users` database for a caller who is not its admin: each user sees and
    edits only their own doc."""
    doc_id = path.doc_id
    own = f"org.couchdb.user:{name}" if name else None
    if doc_id is None or path.rest or doc_id.startswith("_local/"):
        return refuse("Only admins may access this part of the users database.")
    if doc_id.startswith("_design/"):
        return refuse("Only administrators can view design docs in the users database.")
    if doc_id != own:
        if method in READ_METHODS:
            return Verdict(False, "missing", status=404, error="not_found")
        return refuse("You may only update your own user document.")
    if method in READ_METHODS or method == "DELETE":
        return ALLOW
    if method == "PUT":
        return Verdict(True, body_check="user_doc")
    return refuse("Only admins may do that.")


def design_ids_in(body: object, *, bulk: bool) -> list[str]:
    """The design doc ids a `_bulk_docs` (`bulk`) or `POST /db` body would write."""
    if bulk:
        docs = body.get("docs") if isinstance(body, dict) else None
        candidates = docs if isinstance(docs, list) else []
    else:
        candidates = [body]
    found = []
    for doc in candidates:
        doc_id = doc.get("_id") if isinstance(doc, dict) else None
        if isinstance(doc_id, str) and doc_id.startswith("_design/"):
            found.append(doc_id)
    return found


def user_doc_problem(new: object, stored: Mapping[str, object] | None, name: str, doc_id: str) -> str | None:
    """Why CouchDB's `_users` validation would refuse this update by its own user, or None.

    `stored` is the current doc (None when there is none). As in CouchDB, a deletion by the
    doc's own user is not checked further."""
    if not isinstance(new, dict):
        return "doc must be a JSON object"
    if new.get("_deleted") is True:
        return None
    if new.get("_id", doc_id) != doc_id:
        return "Doc ID must be of the form org.couchdb.user:name"
    if new.get("type") != "user":
        return "doc.type must be user"
    if new.get("name") != name:
        return "Usernames can not be changed."
    new_roles = new.get("roles")
    if not isinstance(new_roles, list) or not all(isinstance(r, str) for r in new_roles):
        return "doc.roles must be an array of strings"
    old_roles = stored.get("roles") if stored is not None else []
    if not isinstance(old_roles, list):
        old_roles = []
    if sorted(new_roles) != sorted(r for r in old_roles if isinstance(r, str)):
        return "Only _admin may edit roles" if stored is not None else "Only _admin may set roles"
    return None
