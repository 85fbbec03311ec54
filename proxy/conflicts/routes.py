"""`/{db}/_couchgate/conflicts[...]`: admins, and users holding `can_resolve_conflicts`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.access.config import UserCtx, has_permission
from proxy.audit.capture import record
from proxy.conflicts import service
from proxy.conflicts.model import body, classify, diff
from proxy.conflicts.store import ConflictStore, bookmark, unbookmark
from proxy.errors import BadRequest, Forbidden, Unauthorized, json_response
from proxy.keys import COUCH, INDEX, PRINCIPAL
from proxy.params import nonneg_int, read_json


async def store_for(request: web.Request) -> ConflictStore:
    principal = request[PRINCIPAL]
    if not principal.authenticated:
        raise Unauthorized("You are not authorized to access this resource.")
    if not principal.is_admin:
        settings = await request.app[INDEX].current_settings()
        user = UserCtx(principal.name or "", principal.roles, principal.facility_ids, principal.contact_id)
        if not has_permission(user, settings, "can_resolve_conflicts"):
            raise Forbidden("resolving conflicts needs the permission can_resolve_conflicts")
    return ConflictStore(request.app[COUCH], request.match_info["db"])


async def list_conflicts(request: web.Request) -> web.Response:
    """Conflicted docs, paged, each with its leaves and a classification."""
    store = await store_for(request)
    limit = min(nonneg_int(request.query.get("limit"), "limit") or 50, 500)
    rows, after = await store.page(limit, unbookmark(request.query.get("next")))
    found: list[dict[str, Any]] = []
    for row in rows:
        leaves = await store.leaves(row["id"])
        kind = classify(leaves)
        live = [leaf["_rev"] for leaf in leaves if not leaf.get("_deleted")]
        if len(live) < 2 and kind != "delete_vs_edit":
            continue  # only the marked leftovers of a resolution: not a conflict any more
        winner = await store.winner(row["id"])
        found.append({
            "id": row["id"],
            "type": (row.get("value") or {}).get("type"),
            "winner": (winner or {}).get("_rev"),
            "conflicts": [rev for rev in live if rev != (winner or {}).get("_rev")],
            "deleted": [leaf["_rev"] for leaf in leaves if leaf.get("_deleted")],
            "classification": kind,
        })  # fmt: skip
    return json_response({"conflicts": found, "next": bookmark(after)})


async def show_conflict(request: web.Request) -> web.Response:
    """Every leaf, the common ancestor when still stored, and field diffs against it."""
    store = await store_for(request)
    described = await store.describe(request.match_info["doc_id"])
    base_doc = described["ancestor"]["doc"]
    winner = next((leaf for leaf in described["leaves"] if leaf["_rev"] == described["winner"]), None)
    against = "ancestor" if base_doc is not None else "winner"
    base = body(base_doc if base_doc is not None else winner)
    described["diffs"] = {
        leaf["_rev"]: {"against": against, "changes": diff(base, body(leaf))} for leaf in described["leaves"]
    }
    return json_response(described)


async def resolve_conflict(request: web.Request) -> web.Response:
    """Pick a leaf, give a merged doc, or merge three-way; one `_bulk_docs` or nothing."""
    store = await store_for(request)
    payload = await read_json(request, 8 * 1024 * 1024)
    if not isinstance(payload, dict):
        raise BadRequest("the body must be an object with a strategy")
    doc_id = request.match_info["doc_id"]
    dry_run = request.query.get("dry_run") == "true"
    try:
        answer = await service.resolve(store, doc_id, payload, dry_run)
    except service.Unmergeable as exc:
        return json_response({"error": exc.error, "reason": exc.reason, "fields": exc.paths}, status=409)
    if not dry_run:
        record(request, "resolve", "written", db=store.db, doc_id=doc_id, rev_after=answer.get("rev"),
               details={"strategy": payload.get("strategy")})  # fmt: skip
    return json_response(answer)


async def split_collision(request: web.Request) -> web.Response:
    """Give each leaf of a UUID collision its own id and point references at it."""
    store = await store_for(request)
    payload = await read_json(request, 8 * 1024 * 1024, empty={})
    if not isinstance(payload, dict):
        raise BadRequest("the body must be an object")
    doc_id = request.match_info["doc_id"]
    dry_run = request.query.get("dry_run", "true") != "false"
    settings = await request.app[INDEX].current_settings()
    answer = await service.split(store, doc_id, payload, dry_run, settings.person_types)
    if not dry_run and not answer.get("already_split"):
        record(request, "split", "written", db=store.db, doc_id=doc_id,
               details={"new_ids": [leaf["new_id"] for leaf in answer["leaves"]]})  # fmt: skip
    return json_response(answer)
