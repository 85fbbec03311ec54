"""Writes for offline users: `_bulk_docs`, doc PUT/POST/DELETE, attachment PUT/DELETE.

Every doc is judged by `proxy.access.decide.authorize_batch` with the other docs of the same
request applied (a new household, its people and their reports may arrive together).
Permitted docs are written with the service account; refused ones are answered per doc as
`{"id", "error": "forbidden", "reason"}` in request order, never dropped silently. Every
doc gets an audit entry, also when CouchDB refuses the whole request.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from typing import Any

import orjson
from aiohttp import web

from proxy.access.decide import OUTSIDE, Decision, authorize_batch
from proxy.access.paths import CouchPath
from proxy.audit import capture
from proxy.audit.api import Outcome
from proxy.audit.events import RECORDED
from proxy.couch.client import quote_id
from proxy.errors import BadRequest, Forbidden, json_response
from proxy.keys import COUCH, SETTINGS
from proxy.offline import checked
from proxy.offline.view import UserView
from proxy.params import read_json
from proxy.passthrough import forward


async def stored_winners(
    request: web.Request, db_path: str, ids: list[str]
) -> dict[str, dict[str, Any] | None]:
    """The current winning revision of each doc (None: missing or deleted)."""
    stored: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
    unique = list(dict.fromkeys(ids))
    if not unique:
        return stored
    result = await request.app[COUCH].json(
        "POST", f"{db_path}/_all_docs", body={"keys": unique}, params={"include_docs": "true"}
    )
    rows = result.body.get("rows", []) if result.ok and isinstance(result.body, dict) else []
    for row in rows:
        if isinstance(row, dict) and isinstance(row.get("doc"), dict):
            stored[row["key"]] = row["doc"]
    return stored


def _audit(request: web.Request, db: str, doc: dict[str, Any], stored: Any, outcome: Outcome,
           rev_after: str | None, reason: str | None, action: str) -> None:  # fmt: skip
    doc_id = doc.get("_id")
    capture.record(
        request, action, outcome, db=db, doc_id=doc_id if isinstance(doc_id, str) else None,
        rev_before=stored.get("_rev") if isinstance(stored, dict) else None, rev_after=rev_after,
        doc_type=doc.get("type") if isinstance(doc.get("type"), str) else None, reason=reason,
    )  # fmt: skip


def _reason(body: object) -> str | None:
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason) if reason is not None else None


def _action(doc: dict[str, Any], stored: Any) -> str:
    if doc.get("_deleted"):
        return "delete"
    return "update" if stored is not None else "create"


async def judge(
    request: web.Request, view: UserView, db_path: str, docs: list[dict[str, Any]]
) -> tuple[list[Decision], dict[str, Any]]:
    stored = await stored_winners(request, db_path, [d["_id"] for d in docs])
    decisions = authorize_batch(view.user, view.settings, view.sync.index, docs, stored)
    return decisions, stored


async def bulk_docs(request: web.Request, view: UserView, db: str, db_path: str) -> web.Response:
    body = await read_json(request, request.app[SETTINGS].max_json_bytes)
    docs, refused = checked.split_bulk(request, db, body)  # docs CouchDB would refuse: rows of their own
    return checked.with_refused(await _bulk_docs(request, view, db, db_path, body), docs, refused)


async def _bulk_docs(request: web.Request, view: UserView, db: str, db_path: str, body: Any) -> web.Response:
    if not isinstance(body, dict) or not isinstance(body.get("docs"), list):
        raise BadRequest("POST body must include `docs` parameter.")
    new_edits = body.get("new_edits", True) is not False
    docs: list[dict[str, Any]] = []
    for doc in body["docs"]:
        if not isinstance(doc, dict):
            raise BadRequest("Document must be a JSON object")
        if "_id" not in doc and new_edits:
            doc["_id"] = uuid.uuid4().hex
        if not isinstance(doc.get("_id"), str) or not doc["_id"]:
            raise BadRequest("every document needs a string _id")
        docs.append(doc)
    decisions, stored = await judge(request, view, db_path, docs)
    allowed = [d for d, ok in zip(docs, decisions, strict=True) if ok.allowed]
    upstream: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
    if allowed:
        await capture.intend_docs(request, db, allowed, new_edits)  # crash-proof audit: stored first
        result = await request.app[COUCH].json(
            "POST", f"{db_path}/_bulk_docs", body={"docs": allowed, "new_edits": new_edits}
        )
        if not isinstance(result.body, list):
            # The whole request failed upstream (a `_bogus` field, bad attachment data...):
            # every doc still gets its entry, the refused ones as refused.
            for doc, decision in zip(docs, decisions, strict=True):
                before = stored.get(doc["_id"])
                refused: tuple[Outcome, str | None] = ("forbidden", decision.reason)
                failed = (capture.outcome_of(result.status), _reason(result.body))
                what, why = failed if decision.allowed else refused
                _audit(request, db, doc, before, what, None, why, _action(doc, before))
            return json_response(result.body, status=result.status)
        for written in result.body:  # pouchdb-server does not keep request order: match by id
            if isinstance(written, dict) and isinstance(written.get("id"), str):
                upstream[written["id"]].append(written)
    answer: list[dict[str, Any]] = []
    row: dict[str, Any]
    for doc, decision in zip(docs, decisions, strict=True):
        doc_id = doc["_id"]
        action = _action(doc, stored.get(doc_id))
        if not decision.allowed:
            row = {"id": doc_id, "error": "forbidden", "reason": decision.reason}
            _audit(request, db, doc, stored.get(doc_id), "forbidden", None, decision.reason, action)
        elif upstream[doc_id]:
            row = upstream[doc_id].popleft()
            if "error" in row:
                outcome: Outcome = "conflict" if row["error"] == "conflict" else "invalid"
                _audit(request, db, doc, stored.get(doc_id), outcome, None, str(row.get("reason")), action)
            else:
                _audit(request, db, doc, stored.get(doc_id), "written", row.get("rev"), None, action)
        else:
            # CouchDB answers nothing for a doc written with new_edits:false.
            _audit(request, db, doc, stored.get(doc_id), "written", doc.get("_rev"), None, action)
            continue
        if new_edits or "error" in row:
            answer.append(row)
    return json_response(answer, status=201)


async def write_doc(
    request: web.Request, view: UserView, path: CouchPath, db: str, db_path: str
) -> web.Response:
    """PUT /{db}/{id}, DELETE /{db}/{id}?rev=, POST /{db}."""
    if request.method == "DELETE":
        doc: dict[str, Any] = {"_id": path.doc_id, "_deleted": True}
        rev = request.query.get("rev") or request.headers.get("If-Match")
        if rev:
            doc["_rev"] = rev
    else:
        body = await read_json(request, request.app[SETTINGS].max_json_bytes)
        if not isinstance(body, dict):
            raise BadRequest("Document must be a JSON object")
        checked.check_doc(request, db, body)
        doc = body
        if path.doc_id is not None:
            doc["_id"] = path.doc_id
        elif not isinstance(doc.get("_id"), str):
            doc["_id"] = uuid.uuid4().hex
        if "rev" in request.query and "_rev" not in doc:
            doc["_rev"] = request.query["rev"]
    decisions, stored = await judge(request, view, db_path, [doc])
    action = _action(doc, stored.get(doc["_id"]))
    if not decisions[0].allowed:
        _audit(request, db, doc, stored.get(doc["_id"]), "forbidden", None, decisions[0].reason, action)
        request[RECORDED] = True
        raise Forbidden(decisions[0].reason)
    couch = request.app[COUCH]
    target = f"{db_path}/{quote_id(doc['_id'])}"
    params = {k: v for k, v in request.query.items() if k in {"rev", "batch", "new_edits"}}
    await capture.intend_docs(request, db, [doc], params.get("new_edits") != "false")
    if request.method == "DELETE":
        result = await couch.json("DELETE", target, params=params)
    else:
        result = await couch.json("PUT", target, body=doc, params=params)
    rev_after = result.body.get("rev") if result.ok and isinstance(result.body, dict) else None
    reason = None if result.ok else _reason(result.body)
    outcome = capture.outcome_of(result.status)
    _audit(request, db, doc, stored.get(doc["_id"]), outcome, rev_after, reason, action)
    return json_response(result.body, status=result.status)


async def write_attachment(
    request: web.Request, view: UserView, path: CouchPath, db: str, db_path: str
) -> web.StreamResponse:
    """An attachment write changes no field the rules look at: judged as an update of its doc."""
    doc_id = path.doc_id or ""
    found = (await stored_winners(request, db_path, [doc_id]))[doc_id]
    if found is None:
        decision = OUTSIDE  # the same answer as for a foreign doc: no existence oracle
    else:
        index = view.sync.index
        decision = authorize_batch(view.user, view.settings, index, [dict(found)], {doc_id: found})[0]
    stored = found or {"_id": doc_id}
    if not decision.allowed:
        _audit(request, db, stored, found, "forbidden", None, decision.reason, "attachment")
        request[RECORDED] = True
        raise Forbidden(decision.reason)

    def answered(status: int, raw: bytes) -> None:
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            answer = None
        rev_after = answer.get("rev") if status < 300 and isinstance(answer, dict) else None
        reason = None if status < 300 else _reason(answer)
        _audit(request, db, stored, stored, capture.outcome_of(status), rev_after, reason, "attachment")

    rev = request.query.get("rev") or request.headers.get("If-Match")
    await capture.intend(request, db, [capture.planned({"_id": doc_id}, rev=rev)], "attachment")
    return await forward(
        request, path, {"Authorization": request.app[COUCH].service_auth}, on_answer=answered
    )
