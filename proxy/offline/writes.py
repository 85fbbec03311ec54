"""Writes for offline users: `_bulk_docs`, doc PUT/POST/DELETE, attachment PUT/DELETE.

Every doc is judged by `proxy.access.batch.authorize_batch` with the other docs of the
same request applied (a new household, its people and their reports may arrive together).
What goes upstream is rebuilt from what was parsed and judged (the docs as parsed, the
parameters couchgate knows), written with the service account; refused docs are answered
per doc, in request order, never dropped silently: `forbidden`, or CouchDB's own
`conflict` where the stored doc is one the user may not see (`proxy.access.write` W4).
Every doc gets an audit entry, also when CouchDB refuses the whole request. A failed read
of the stored docs refuses the write (fail closed).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from proxy.access.batch import authorize_batch
from proxy.access.paths import CouchPath
from proxy.access.write import CONFLICT_REASON, OUTSIDE, Decision
from proxy.audit.recorder import Recorder, failed_outcome, planned, row_outcome
from proxy.couch.client import quote_id
from proxy.couch.docs import Docs, history
from proxy.errors import BadRequest, Conflict, NotFound, TooManyItems, WriteRefused, json_response
from proxy.forward.relay import forward
from proxy.keys import COUCH, SETTINGS
from proxy.offline import checked, leaves, query
from proxy.offline.reads import made_up
from proxy.offline.view import UserView
from proxy.params import read_json


async def stored_winners(
    request: web.Request, view: UserView, db_path: str, ids: list[str], *, sync: bool = False
) -> tuple[dict[str, dict[str, Any] | None], set[str]]:
    """The live winner of each id (None: missing or deleted), and the ids that are not the
    user's to write (None too): whose winner the index says they cannot read, or whose
    deleted winner's last version they could not. `sync`: bring the index level with
    CouchDB (read-your-writes) while the docs are read, not before (on CouchDB each is a
    round trip a push pays per batch).

    Only the docs the user may read are read upstream: an id the index, once level, does
    not know did not exist (a push of new docs reads nothing), and one it knows but the
    user may not read is refused as it stands in the index, unread, so that a foreign id
    and a missing one cost the same (no timing oracle) and no foreign body is fetched.
    What the index learnt while it was brought level is read after."""
    stored: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
    unique = list(dict.fromkeys(ids))
    index = view.sync.index

    foreign: set[str] = set()
    if sync:
        first = view.readable_ids(i for i in unique if i in index.entries)
        _, (found, deleted) = await asyncio.gather(view.sync.sync(), read_winners(request, db_path, first))
        view.settings = view.sync.settings
        known = [i for i in unique if i in index.entries]
        readable_now = view.readable_ids(known)
        more, more_deleted = await read_winners(
            request, db_path, [i for i in known if i in readable_now and i not in first]
        )
        found.update(more)
        deleted |= more_deleted
        foreign = {i for i in known if i not in readable_now and i not in first}
    else:
        found, deleted = await read_winners(request, db_path, unique)
    stored.update(found)
    readable = view.readable_ids(deleted)
    return stored, (deleted - readable) | foreign


async def read_winners(
    request: web.Request, db_path: str, ids: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """The live winner of each id that has one, and the ids whose winner is deleted (the
    others are missing): `_bulk_get` first, the ids its answer leaves unclear read again
    with `_all_docs` (`proxy.couch.docs`, `bulk_get=True`; a read that fails refuses)."""
    winners = await Docs(request.app[COUCH], db_path).winners(ids, bulk_get=True)
    return winners.live, set(winners.deleted)


def _rev(stored: Any) -> str | None:
    """The revision a write found stored (its audit entry's `rev_before`)."""
    return stored.get("_rev") if isinstance(stored, dict) else None


def _action(doc: dict[str, Any], stored: Any, winner: tuple[str, bool] | None) -> str:
    """What the audit log calls the write: a doc refused unread (the user may not read it,
    `stored_winners`) exists all the same, as the index knows (`winner`: the index's, taken
    before the write is forwarded, as the index files the write itself once it is done)."""
    if doc.get("_deleted"):
        return "delete"
    if stored is None:
        return "update" if winner is not None and not winner[1] else "create"
    return "update"


async def judge(
    request: web.Request,
    audit: Recorder,
    view: UserView,
    db: str,
    db_path: str,
    docs: list[dict[str, Any]],
    new_edits: bool,
    own: Awaitable[Mapping[tuple[str, str], object]] | None = None,
) -> tuple[list[dict[str, Any]], list[Decision], dict[str, Any]]:
    """The docs to judge, a decision for each, and the stored winners they were judged
    against. `own`: the (id, rev) pairs that are the device's own already (revisions
    couchgate made up, `reads.made_up`), read meanwhile and left out of what is judged.

    The index is brought level, the stored docs are read, `own` is read and, with the audit
    log's crash-proof mode, the intent naming every doc of the request is stored, all at
    once (they are independent: on CouchDB each is a round trip); this returns only once
    the intent is stored, so nothing is forwarded before it. A doc left out or refused is
    then announced and not written, which an intent allows (it names what a write *may*
    write). A request whose docs are all refused does not wait for its intent. A push whose
    revisions its `_revs_diff` announced (`Recorder.announce_push`) waits for those intents
    instead, most often stored already."""
    intent = asyncio.ensure_future(audit.intend_push(db, view.user.name, docs, new_edits))
    try:
        winners = stored_winners(request, view, db_path, [d["_id"] for d in docs], sync=True)
        if own is None:
            stored, hidden = await winners
        else:
            (stored, hidden), made = await asyncio.gather(winners, own)
            docs = [d for d in docs if (d["_id"], d["_rev"]) not in made]
        decisions = authorize_batch(
            view.user, view.settings, view.sync.index, docs, stored, hidden, edits=new_edits
        )
        decisions = await _off_hidden_leaves(request, view, db_path, docs, decisions, new_edits)
        if any(d.allowed for d in decisions):
            await intent  # crash-proof audit: stored before anything is written
    finally:
        if not intent.done():
            intent.cancel()  # refused, or failed: the intent (queued already) is not waited for
        elif not intent.cancelled():
            intent.exception()  # retrieved: a failure only matters to a write that waits for it
    return docs, decisions, stored


# A write building on a conflict leaf the user may not see: as for a revision CouchDB lacks.
ON_HIDDEN_LEAF = Decision(False, CONFLICT_REASON, "W4", error="conflict")


def built_on(doc: Mapping[str, Any], new_edits: bool) -> list[str]:
    """The revisions a write names as what it builds on: an edit's `_rev`, and the
    ancestors its `_revisions` lists (a push names its whole path; `check_revisions` has
    checked its shape)."""
    rev = doc.get("_rev")
    return ([rev] if new_edits and isinstance(rev, str) else []) + history(doc)[1:]


async def _off_hidden_leaves(
    request: web.Request,
    view: UserView,
    db_path: str,
    docs: list[dict[str, Any]],
    decisions: list[Decision],
    new_edits: bool,
) -> list[Decision]:
    """Allowed writes that build on a leaf other than the winner are refused when the user
    may not see that leaf (one placed outside their scope): CouchDB would write on that
    branch, maybe make it the winner, and fill attachment stubs from it. The winner itself
    was judged (W4); a leaf the user may see is theirs to build on (resolving a conflict)."""
    named: dict[tuple[str, str], list[int]] = {}
    for i, (doc, decision) in enumerate(zip(docs, decisions, strict=True)):
        if not decision.allowed:
            continue
        winner = view.winner_rev(doc["_id"])
        for rev in built_on(doc, new_edits):
            if rev != winner and view.is_leaf(doc["_id"], rev):
                named.setdefault((doc["_id"], rev), []).append(i)
    if not named:
        return decisions
    shown = await leaves.servable(request, view, db_path, named)
    refused = {i for pair, found in named.items() if pair not in shown for i in found}
    return [ON_HIDDEN_LEAF if i in refused else d for i, d in enumerate(decisions)]


def _refused_row(doc_id: str, decision: Decision, new_edits: bool) -> dict[str, Any]:
    """A refused doc's row. A replication push (`new_edits: false`) is only ever told
    `forbidden` (PouchDB stops replicating on any other error); it goes on."""
    if decision.error == "conflict" and new_edits:
        return {"id": doc_id, "error": "conflict", "reason": CONFLICT_REASON}
    if decision.error != "forbidden" and new_edits:
        return {"id": doc_id, "error": decision.error, "reason": decision.reason}
    return {"id": doc_id, "error": "forbidden", "reason": decision.why}


REV_HASH = re.compile(r"^[0-9a-zA-Z]{1,64}$")
MAX_REVISIONS = 1000


def check_revisions(doc: dict[str, Any], new_edits: bool) -> None:
    """`_rev` and `_revisions` as CouchDB must see them (400 otherwise): a malformed
    revision path has taken pouchdb-server down for everyone."""
    rev = doc.get("_rev")
    if rev is not None:
        if not isinstance(rev, str) or not query.REV.match(rev) or rev.startswith("0"):
            raise BadRequest("Invalid rev format")
    elif not new_edits:
        raise BadRequest("new_edits=false needs a _rev for every document")
    if "_revisions" not in doc:
        return
    revisions = doc["_revisions"]
    start = revisions.get("start") if isinstance(revisions, dict) else None
    ids = revisions.get("ids") if isinstance(revisions, dict) else None
    if (
        not isinstance(start, int) or isinstance(start, bool) or not isinstance(ids, list)
        or not 1 <= len(ids) <= min(start, MAX_REVISIONS)
        or not all(isinstance(i, str) and REV_HASH.match(i) for i in ids)
        or (rev is not None and rev != f"{start}-{ids[0]}")
    ):  # fmt: skip
        raise BadRequest("_revisions must be {start, ids} naming the document's _rev and its ancestors")


async def bulk_docs(request: web.Request, view: UserView, db: str, db_path: str) -> web.Response:
    body = await read_json(request, request.app[SETTINGS].max_json_bytes)
    limit = request.app[SETTINGS].max_bulk_items
    if isinstance(body, dict) and isinstance(body.get("docs"), list) and len(body["docs"]) > limit:
        raise TooManyItems(str(limit), error="max_bulk_docs_count_exceeded")  # before any doc is looked at
    audit = Recorder.of(request)
    docs, refused = checked.split_bulk(audit, db, body)  # docs CouchDB would refuse: rows of their own
    return checked.with_refused(await _bulk_docs(request, audit, view, db, db_path, body), docs, refused)


async def _bulk_docs(
    request: web.Request, audit: Recorder, view: UserView, db: str, db_path: str, body: Any
) -> web.Response:
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
        check_revisions(doc, new_edits)
        docs.append(doc)
    # A device pushing back a revision couchgate made up (proxy.offline.removals): it is the
    # device's own; nothing is written and nothing is wrong.
    own = None if new_edits else made_up(request, view, [(d["_id"], d["_rev"]) for d in docs])
    docs, decisions, stored = await judge(request, audit, view, db, db_path, docs, new_edits, own)
    if not docs:
        return json_response([], status=201)
    allowed = [d for d, ok in zip(docs, decisions, strict=True) if ok.allowed]
    index = view.sync.index
    winners = {doc_id: index.winner(doc_id) for doc_id in dict.fromkeys(d["_id"] for d in docs)}
    actions = [_action(doc, stored.get(doc["_id"]), winners[doc["_id"]]) for doc in docs]
    once = {doc_id for doc_id, n in Counter(d["_id"] for d in docs).items() if n == 1}
    upstream: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
    if allowed:
        result = await request.app[COUCH].json(
            "POST", f"{db_path}/_bulk_docs", body={"docs": allowed, "new_edits": new_edits}
        )
        if not isinstance(result.body, list):
            # The whole request failed upstream (a `_bogus` field, bad attachment data...):
            # every doc still gets its entry, the refused ones as refused.
            failure = failed_outcome(result.status, result.body)
            for doc, decision, action in zip(docs, decisions, actions, strict=True):
                before = stored.get(doc["_id"])
                what, why = failure if decision.allowed else ("forbidden", decision.why)
                audit.doc(action, what, db, doc, rev_before=_rev(before), reason=why)
            return json_response(result.body, status=result.status)
        for written in result.body:  # pouchdb-server does not keep request order: match by id
            if isinstance(written, dict) and isinstance(written.get("id"), str):
                upstream[written["id"]].append(written)
    answer: list[dict[str, Any]] = []
    row: dict[str, Any]
    # What CouchDB now stores under which revision, for the index to file without reading it
    # back: only a revision CouchDB made of this body (new_edits), of an id the request names
    # once. A device's own revision (new_edits: false) is never vouched for: CouchDB answers
    # nothing for it and keeps whichever body reached it first under that revision (the
    # same revision may come twice in a request, or from requests in flight on any replica).
    filed: list[tuple[dict[str, Any], str]] = []
    for doc, decision, action in zip(docs, decisions, actions, strict=True):
        doc_id = doc["_id"]
        before = stored.get(doc_id)
        if not decision.allowed:
            row = _refused_row(doc_id, decision, new_edits)
            audit.doc(action, "forbidden", db, doc, rev_before=_rev(before), reason=decision.why)
        elif upstream[doc_id]:
            row = same_conflict(upstream[doc_id].popleft())
            outcome, rev_after, reason = row_outcome(row)
            audit.doc(action, outcome, db, doc, rev_before=_rev(before), rev_after=rev_after, reason=reason)
            if new_edits and doc_id in once and row.get("ok") is True and isinstance(row.get("rev"), str):
                filed.append((doc, row["rev"]))
        else:
            # CouchDB answers nothing for a doc written with new_edits:false.
            audit.doc(action, "written", db, doc, rev_before=_rev(before), rev_after=doc.get("_rev"))
            continue
        if new_edits or "error" in row:
            answer.append(row)
    view.sync.wrote(filed)
    return json_response(answer, status=201)


def same_conflict(answer: Any) -> Any:
    """CouchDB 3's wording of a conflict, whatever the backend's (pouchdb-server drops the
    full stop): a conflict couchgate answers for a doc outside the scope (W4) and one the
    backend answers for a missing doc must read the same."""
    if isinstance(answer, dict) and answer.get("error") == "conflict":
        return {**answer, "reason": CONFLICT_REASON}
    return answer


def if_match_rev(request: web.Request) -> str | None:
    """The revision an `If-Match` header names (an ETag: the rev in quotes)."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    return query.rev("If-Match", raw.strip().strip('"'))


def _refusal(audit: Recorder, db: str, doc: dict[str, Any], stored: Any, decision: Decision,
             action: str) -> WriteRefused:  # fmt: skip
    audit.doc(action, "forbidden", db, doc, rev_before=_rev(stored), reason=decision.why)
    return WriteRefused(decision.status, decision.error, decision.reason)


async def write_doc(
    request: web.Request, view: UserView, path: CouchPath, db: str, db_path: str
) -> web.Response:
    """PUT /{db}/{id}, DELETE /{db}/{id}?rev=, POST /{db}."""
    params = query.parse(request.query, query.WRITE)
    header_rev = if_match_rev(request)
    query_rev = params.pop("rev", None)
    if query_rev is not None and header_rev is not None and query_rev != header_rev:
        raise BadRequest("Document rev and etag have different values")
    rev = query_rev or header_rev
    audit = Recorder.of(request)
    if request.method == "DELETE":
        if rev is None:
            # CouchDB's answer to a delete that names no revision (it never deletes "the winner").
            raise Conflict(CONFLICT_REASON)
        doc: dict[str, Any] = {"_id": path.doc_id, "_rev": rev, "_deleted": True}
    else:
        body = await read_json(request, request.app[SETTINGS].max_json_bytes)
        if not isinstance(body, dict):
            raise BadRequest("Document must be a JSON object")
        checked.check_doc(audit, request, db, body)
        doc = body
        if path.doc_id is not None:
            doc["_id"] = path.doc_id
        elif not isinstance(doc.get("_id"), str) or not doc["_id"]:
            doc["_id"] = uuid.uuid4().hex
        if rev is not None:
            if "_rev" in doc and doc["_rev"] != rev:
                raise BadRequest("Document rev from request body and query string have different values")
            doc["_rev"] = rev
        check_revisions(doc, params.get("new_edits", True))
    _, decisions, stored = await judge(
        request, audit, view, db, db_path, [doc], params.get("new_edits", True)
    )
    before = stored.get(doc["_id"])
    action = _action(doc, before, view.sync.index.winner(doc["_id"]))
    if not decisions[0].allowed:
        raise _refusal(audit, db, doc, before, decisions[0], action)
    couch = request.app[COUCH]
    target = f"{db_path}/{quote_id(doc['_id'])}"
    if request.method == "DELETE":
        result = await couch.json("DELETE", target, params={"rev": rev or ""})
    else:
        result = await couch.json("PUT", target, body=doc, params=query.encode(params))
    audit.answered(action, result.status, result.body, db, doc, rev_before=_rev(before))
    return json_response(same_conflict(result.body), status=result.status)


async def write_attachment(
    request: web.Request, view: UserView, path: CouchPath, db: str, db_path: str
) -> web.StreamResponse:
    """An attachment write changes no field the rules look at: judged as an update of its doc."""
    doc_id = path.doc_id or ""
    params = query.parse(request.query, query.ATTACHMENT)
    stored, hidden = await stored_winners(request, view, db_path, [doc_id])
    found = stored[doc_id]
    if found is None:
        decision = OUTSIDE  # the same answer as for a foreign doc: no existence oracle
    else:
        index = view.sync.index
        decision = authorize_batch(view.user, view.settings, index, [dict(found)], {doc_id: found}, hidden)[0]
    target_doc = found or {"_id": doc_id}
    audit = Recorder.of(request)
    if not decision.allowed:
        audit.doc("attachment", "forbidden", db, target_doc, rev_before=_rev(found), reason=decision.why)
        raise WriteRefused(
            403, "forbidden", OUTSIDE.reason if decision.rule in {"W3", "W4"} else decision.reason
        )

    def answered(status: int, raw: bytes) -> None:
        try:
            answer = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            answer = None
        audit.answered("attachment", status, answer, db, target_doc, rev_before=_rev(target_doc))

    rev = params.get("rev") or if_match_rev(request)
    if found is not None and rev != found.get("_rev"):
        # Only the winner the rules judged is written to: a conflict leaf (which may stand
        # outside the scope, and would become the winner), an older revision or none is
        # CouchDB's own conflict, as for a missing revision.
        audit.doc("attachment", "forbidden", db, target_doc, rev_before=_rev(found), reason=CONFLICT_REASON)
        raise Conflict(CONFLICT_REASON)
    attachments = found.get("_attachments") if found is not None else None
    if request.method == "DELETE" and ("/".join(path.rest) not in (attachments or {})):
        raise NotFound("Document is missing attachment")  # CouchDB's answer (pouchdb-server's: 500)
    await audit.intend(db, [planned({"_id": doc_id}, rev=rev)], "attachment")
    return await forward(
        request, path, {"Authorization": request.app[COUCH].service_auth}, on_answer=answered,
        query=query.encode(params),
    )  # fmt: skip
