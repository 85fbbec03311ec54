"""Which endpoints an offline user may reach, decided on the decoded, normalised path.

Offline users are never proxied raw to CouchDB for the main database: each endpoint a
PouchDB client needs is answered here with the service account after the rules apply, and
everything else is 403.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from proxy.access.paths import CouchPath
from proxy.auth.caller import Caller
from proxy.errors import Forbidden, MethodNotAllowed, json_response
from proxy.forward.relay import forward
from proxy.keys import COUCH, INDEX, SINCE_CODEC
from proxy.offline import changes, local_docs, own_user, query, reads, revisions, writes
from proxy.offline.view import UserView

READ = {"GET", "HEAD"}
GLOBAL_DESIGN = "_design/medic-client"
# Endpoints answered from the index's view of what exists: they wait for it to be level
# with CouchDB. Reads of given ids (`_bulk_get`, docs) sync only when an id is not readable
# yet; `_revs_diff` never needs to (an id it cannot see is reported missing, and a second
# push of a doc CouchDB already has is a no-op). Doc writes (`_bulk_docs`, PUT, POST,
# DELETE) sync while they read the stored docs (`writes.judge`).
SYNCED_ENDPOINTS = {"_changes", "_all_docs"}


def refuse() -> Forbidden:
    return Forbidden("Offline users may not access this endpoint.")


async def serve_offline(request: web.Request, path: CouchPath, caller: Caller) -> web.StreamResponse:
    db = request.app[INDEX].db
    if not path.segments:
        if request.method in READ:
            return await request.app[INDEX].welcome.answer()
        raise refuse()
    if path.db == "_users":
        own = caller.user.user_doc_id
        if path.doc_id == own and not path.rest:
            if request.method in READ:
                # With the service account, as its writes are (`own_user`): CouchDB 3 makes
                # `_users` admin-only by default, where the user's own credentials get 403.
                # Only a `rev` of the query goes along (what `open_revs`, `latest` and the
                # like would ask of the backend is not the user's to ask with its account).
                params = query.encode(query.parse(request.query, query.LOCAL))
                return await forward(
                    request, path, {"Authorization": request.app[COUCH].service_auth}, query=params
                )
            if request.method == "PUT":
                return await own_user.change_password(request, path, own)
        raise refuse()
    if path.db != db or path.is_server:
        raise refuse()
    sync = request.app[INDEX]
    if not sync.built.is_set():
        await sync.sync()  # the index's first build: nothing to answer from before it
    db_path = "/" + quote(db, safe="")
    name = caller.user.name
    method = request.method
    second = path.segments[1] if len(path.segments) > 1 else None
    if second is None:
        if method in READ:
            return changes.db_info(UserView.of(sync, caller), request.app[SINCE_CODEC], db)
        if method == "POST":
            return await writes.write_doc(request, UserView.of(sync, caller), path, db, db_path)
        raise refuse()
    doc_id = path.doc_id
    if doc_id is not None and doc_id.startswith(local_docs.LOCAL):
        if path.rest:
            raise refuse()
        return await local_docs.local_doc(request, db_path, name, doc_id)
    if doc_id is None:
        if len(path.segments) > 2:
            raise refuse()  # `_all_docs/queries` and the like: not answered as the endpoint
        if second in SYNCED_ENDPOINTS and second != "_changes":  # `_changes` syncs in `changes`
            await sync.sync()  # read-your-writes: the index is at least as new as CouchDB was now
        return await _db_endpoint(request, UserView.of(sync, caller), second, db, db_path)
    if request.method not in READ and path.rest:
        await sync.sync()  # an attachment's write (a doc's syncs in `writes.judge`)
    view = UserView.of(sync, caller)
    if doc_id.startswith("_design/") and (doc_id != GLOBAL_DESIGN or method not in READ):
        raise refuse()
    if path.rest and path.rest[0].startswith("_"):
        # Views, `_show`, `_list`, `_update`, `_rewrite`, `_info` run over every doc in the
        # database; attachment names never start with `_` in CouchDB.
        raise refuse()
    if path.rest:
        if method in READ:
            return await reads.get_attachment(request, view, path, db_path)
        if method in {"PUT", "DELETE"}:
            return await writes.write_attachment(request, view, path, db, db_path)
        raise MethodNotAllowed("Only GET, HEAD, PUT and DELETE are allowed for attachments.")
    if method in READ:
        return await revisions.get_doc(request, view, path, db_path)
    if method in {"PUT", "DELETE"}:
        return await writes.write_doc(request, view, path, db, db_path)
    raise refuse()


async def _db_endpoint(
    request: web.Request, view: UserView, endpoint: str, db: str, db_path: str
) -> web.StreamResponse:
    method = request.method
    if endpoint == "_changes" and method in {"GET", "POST"}:
        return await changes.changes(request, view, request.app[SINCE_CODEC], db_path)
    if endpoint == "_all_docs" and method in {"GET", "POST"}:
        return await reads.all_docs(request, view, db_path)
    if endpoint == "_bulk_get" and method == "POST":
        return await reads.bulk_get(request, view, db_path)
    if endpoint == "_revs_diff" and method == "POST":
        return await reads.revs_diff(request, view, db_path)
    if endpoint == "_bulk_docs" and method == "POST":
        return await writes.bulk_docs(request, view, db, db_path)
    if endpoint == "_ensure_full_commit" and method == "POST":
        return json_response({"ok": True, "instance_start_time": "0"}, status=201)
    raise refuse()
