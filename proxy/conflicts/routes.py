"""`/{db}/_couchgate/conflicts[...]`: admins, and online users holding `can_resolve_conflicts`.

These endpoints read and write with couchgate's service account, so who may use them on
which database is decided here:
- server admins: the main database, or any other that exists (unknown: 404); never a
  system database (`_users`, `_replicator`, any name starting with `_`): 403;
- online users with `can_resolve_conflicts`: the main database only;
- a design doc (`_design/...`) is resolved or split only by db admins (server admins, or
  `_security.admins` of the database), as CouchDB lets only them write one: resolving
  writes the doc, and a design doc holds code (`validate_doc_update`, views);
- offline users are refused (403), permission or not. The leaves of one conflict can lie
  in different scopes (a collision of someone's patient with someone else's report), a
  split rewrites references in docs anywhere in the database, and the listing would have
  to judge every leaf against the user's scope; an offline user resolves conflicts through
  a supervisor who is online rather than through a partial view of them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.access.config import has_permission
from proxy.access.couch_security import DB_NAME, NOT_DB_ADMIN, is_db_admin
from proxy.audit.api import Outcome
from proxy.audit.recorder import Recorder, record
from proxy.conflicts import service, split
from proxy.conflicts.bodies import resolve_request, split_request
from proxy.conflicts.listing import describe, list_page
from proxy.conflicts.store import UPDATES, ConflictStore, Intend, bookmark, unbookmark
from proxy.errors import BadRequest, Forbidden, NotFound, json_response
from proxy.keys import CALLER, COUCH, INDEX, SECURITY, SETTINGS
from proxy.params import flag, limit_of, read_json


def intend_for(request: web.Request, db: str) -> Intend:
    """The crash-proof audit's intent of each resolution write, as this caller's."""
    audit = Recorder.of(request)

    async def intend(docs: list[dict[str, Any]], new_edits: bool) -> None:
        await audit.intend_docs(db, docs, new_edits)

    return intend


async def store_for(request: web.Request) -> ConflictStore:
    caller = request[CALLER]
    db = request.match_info["db"]
    main = request.app[SETTINGS].db
    if not caller.is_admin:
        if not has_permission(caller.user, caller.rules, "can_resolve_conflicts"):
            raise Forbidden("resolving conflicts needs the permission can_resolve_conflicts")
        if caller.offline:
            raise Forbidden(
                "the conflict tools are for online users: an offline user's scope cannot cover them"
            )
        if db != main:
            raise Forbidden(f"the conflict tools work on the main database only ({main})")
        return ConflictStore(request.app[COUCH], db, intend_for(request, db))
    if db.startswith("_"):
        raise Forbidden("the conflict tools do not work on system databases")
    store = ConflictStore(request.app[COUCH], db, intend_for(request, db))
    if db != main and (not DB_NAME.match(db) or not await store.exists()):
        raise NotFound("Database does not exist.")
    return store


def recorder(request: web.Request, db: str) -> service.Recorder:
    def audit(action: str, outcome: Outcome, **fields: Any) -> None:
        record(request, action, outcome, db=db, **fields)

    return audit


async def list_conflicts(request: web.Request) -> web.Response:
    """Conflicted docs, paged, each with its leaves and a classification.

    `update` (CouchDB's view parameter) defaults to `true`: the answer includes every
    conflict made so far, and costs little because the monitor keeps the index current.
    A caller that must never wait on the index (a dashboard polling a database whose
    index is still being built) passes `update=lazy`: CouchDB answers from the index as it
    is and updates it afterwards, so conflicts made since may be missing, and docs resolved
    since are dropped from the page (their leaves are read), which may make it short."""
    store = await store_for(request)
    limit = limit_of(request.query.get("limit"), 50, 500)
    update = request.query.get("update", "true")
    if update not in UPDATES:
        raise BadRequest("update must be true, lazy or false")
    found, after = await list_page(store, limit, unbookmark(request.query.get("next")), update)
    return json_response({"conflicts": found, "next": bookmark(after)})


async def show_conflict(request: web.Request) -> web.Response:
    """Every leaf, the common ancestor when still stored, and field diffs against it."""
    store = await store_for(request)
    return json_response(await describe(store, request.match_info["doc_id"]))


async def may_write(request: web.Request, store: ConflictStore, doc_id: str) -> None:
    """A resolution or split writes `doc_id`: a design doc only for db admins."""
    principal = request[CALLER].principal
    if doc_id.startswith("_design/") and not principal.is_admin:
        security = await request.app[SECURITY].get(store.db)
        if not is_db_admin(security, principal.name, principal.roles):
            raise Forbidden(NOT_DB_ADMIN)


async def resolve_conflict(request: web.Request) -> web.Response:
    """Pick a leaf, give a merged doc, or merge three-way (see service.resolve)."""
    store = await store_for(request)
    dry_run = flag(request.query, "dry_run", default=False)
    doc_id = request.match_info["doc_id"]
    resolution = resolve_request(
        await read_json(request, request.app[SETTINGS].max_conflicts_body_bytes), doc_id
    )
    await may_write(request, store, doc_id)
    answer = await service.resolve(store, doc_id, resolution, dry_run, recorder(request, store.db))
    return json_response(answer)


async def split_collision(request: web.Request) -> web.Response:
    """Give each doc of a UUID collision its own id and point references at it."""
    store = await store_for(request)
    dry_run = flag(request.query, "dry_run", default=True)
    doc_id = request.match_info["doc_id"]
    parsed = split_request(await read_json(request, request.app[SETTINGS].max_conflicts_body_bytes, empty={}))
    await may_write(request, store, doc_id)
    settings = await request.app[INDEX].current_settings()
    answer = await split.split(store, doc_id, parsed, dry_run, settings.person_types)
    if not dry_run and not answer.get("already_split"):
        record(request, "split", "written", db=store.db, doc_id=doc_id,
               details={"new_ids": [leaf["new_id"] for leaf in answer["leaves"]]})  # fmt: skip
    return json_response(answer)
