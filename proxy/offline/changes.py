"""`GET|POST /{db}/_changes` for offline users, read from the scope index.

Rows come from the user's own postings in the index, so a request costs the user's docs,
not the database's. `since` values are couchgate's own tokens (`proxy.offline.since`):
a token from another epoch, for another user, or from before a change of the user's
scope inputs restarts the feed from the beginning (a backfill, never a gap); a contact
moving into the scope re-sequences the docs keyed on it, so those arrive as changes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from proxy import observe
from proxy.errors import BadRequest, dumps, json_response
from proxy.keys import COUCH
from proxy.logs import stamp_request_id
from proxy.offline import leaves, query
from proxy.offline.revisions import failed
from proxy.offline.since import Since, SinceCodec
from proxy.offline.view import Entry, UserView
from proxy.params import nonneg_int, read_json

MAX_TIMEOUT_MS = 5 * 60 * 1000
DEFAULT_TIMEOUT_MS = 60 * 1000
MAX_DOC_IDS = 100_000


@dataclass
class FeedParams:
    since: str | None
    limit: int | None
    all_docs: bool
    include_docs: bool
    conflicts: bool
    descending: bool
    feed: str
    heartbeat_ms: int | None
    timeout_ms: int
    doc_ids: set[str] | None


async def parse_params(request: web.Request) -> FeedParams:
    q = query.parse(request.query, query.CHANGES)
    feed = q.get("feed", "normal")
    if feed not in {"normal", "longpoll", "continuous"}:
        raise BadRequest(f"feed={feed} is not supported; use normal, longpoll or continuous")
    style = q.get("style", "main_only")
    if style not in {"main_only", "all_docs"}:
        raise BadRequest("style must be main_only or all_docs")
    doc_ids: set[str] | None = None
    filter_name = q.get("filter")
    if filter_name not in (None, "", "_doc_ids"):
        raise BadRequest("only filter=_doc_ids is available")
    if filter_name == "_doc_ids":
        raw: Any = q.get("doc_ids")
        if request.method == "POST":
            body = await read_json(request, 16 * 1024 * 1024, empty={})
            raw = body.get("doc_ids") if isinstance(body, dict) else None
        elif raw is not None:
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest("doc_ids must be a JSON array of strings") from exc
        if not isinstance(raw, list) or len(raw) > MAX_DOC_IDS or not all(isinstance(i, str) for i in raw):
            raise BadRequest("filter=_doc_ids needs doc_ids, a JSON array of strings")
        doc_ids = set(raw)
    heartbeat = q.get("heartbeat")
    heartbeat_ms = None
    if heartbeat is not None:
        heartbeat_ms = 60_000 if heartbeat == "true" else nonneg_int(heartbeat, "heartbeat")
        if heartbeat_ms is not None:
            heartbeat_ms = max(heartbeat_ms, 100)
    timeout = q.get("timeout")
    return FeedParams(
        since=q.get("since"),
        limit=q.get("limit"),
        all_docs=style == "all_docs",
        include_docs=q.get("include_docs", False),
        conflicts=q.get("conflicts", False),
        descending=q.get("descending", False),
        feed=feed,
        heartbeat_ms=heartbeat_ms,
        timeout_ms=min(timeout if timeout is not None else DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS),
        doc_ids=doc_ids,
    )


class Feed:
    """Computes pages of one user's changes."""

    def __init__(self, view: UserView, codec: SinceCodec, params: FeedParams) -> None:
        self.view = view
        self.codec = codec
        self.params = params
        self.user = view.user.name
        self.fingerprint = view.fingerprint
        self.ordinal = self._start_ordinal(params.since)

    def _start_ordinal(self, raw: str | None) -> int:
        if raw == "now":
            return self.view.current_ordinal
        if raw in (None, "", "0"):
            return 0
        since = self.codec.decode(self.user, raw)
        if since is None or since.epoch != self.view.epoch or since.fingerprint != self.fingerprint:
            return 0  # unknown, foreign, or the scope changed: backfill everything readable
        return since.ordinal

    def token(self, ordinal: int) -> str:
        return self.codec.encode(self.user, Since(self.view.epoch, ordinal, self.fingerprint))

    def page(self) -> tuple[list[Entry], str]:
        """The next rows and the `last_seq` that follows them; advances the feed."""
        entries = self.view.entries_after(self.ordinal)
        if self.params.doc_ids is not None:
            entries = [e for e in entries if e.id in self.params.doc_ids]
        current = self.view.current_ordinal
        if self.params.descending:
            entries.reverse()
        limit = self.params.limit
        if limit is not None and limit > 0 and len(entries) > limit:
            entries = entries[:limit]
            end = current if self.params.descending else entries[-1].ordinal
        else:
            end = current
        self.ordinal = max(self.ordinal, end)
        return entries, self.token(self.ordinal)

    def rows(
        self, entries: list[Entry], docs: dict[str, dict[str, Any]] | None, leaves: dict[str, list[str]]
    ) -> list[dict[str, Any]]:
        """The rows of a page. With `docs` (include_docs), each row shows the body that was
        read and judged: its revision may be newer than the index's, and a doc whose body
        could not be served (it left the scope, or is gone) has no row in this page. With
        `style=all_docs`, a conflict leaf is named only if the user may see it (`leaves`)."""
        rows = []
        for entry in entries:
            rev, deleted = entry.rev, entry.deleted
            doc: dict[str, Any] | None = None
            if docs is not None:
                doc = tombstone(entry.id, entry.rev) if entry.deleted else docs.get(entry.id)
                if doc is None:
                    continue
                rev, deleted = str(doc["_rev"]), doc.get("_deleted") is True
            revs = [rev]
            if self.params.all_docs:
                revs += [leaf for leaf in leaves.get(entry.id, ()) if leaf not in (rev, entry.rev)]
            row: dict[str, Any] = {
                "seq": self.token(entry.ordinal),
                "id": entry.id,
                "changes": [{"rev": r} for r in revs],
            }
            if deleted:
                row["deleted"] = True
            if doc is not None:
                row["doc"] = doc
            rows.append(row)
        return rows


async def page_leaves(
    request: web.Request, feed: Feed, db_path: str, entries: list[Entry]
) -> dict[str, list[str]]:
    """The conflict leaves of a page the user may be told of (`style=all_docs` only)."""
    if not feed.params.all_docs:
        return {}
    conflicted = {e.id: list(e.leaves) for e in entries if len(e.leaves) > 1}
    return await leaves.visible_leaves(request, feed.view, db_path, conflicted) if conflicted else {}


async def page_rows(
    request: web.Request, feed: Feed, db_path: str, entries: list[Entry]
) -> list[dict[str, Any]]:
    """A page's rows, with the bodies and leaves the user may see."""
    docs = (
        await fetch_docs(request, feed.view, db_path, entries, feed.params.conflicts)
        if feed.params.include_docs
        else None
    )
    return feed.rows(entries, docs, await page_leaves(request, feed, db_path, entries))


def tombstone(doc_id: str, rev: str) -> dict[str, Any]:
    return {"_id": doc_id, "_rev": rev, "_deleted": True}


def db_info(view: UserView, codec: SinceCodec, db: str) -> web.Response:
    """`GET /{db}` for an offline user: the database as that user sees it, from the index,
    without a call upstream (PouchDB asks for it at the start of every replication and
    after every batch).

    It is not synced first, and need not be for read-your-writes: it names no doc and
    serves no doc body. Its `update_seq` is this user's own token for the index's
    current position, and a `_changes` read from it (which syncs) returns every change
    after that position, so a position a few milliseconds behind CouchDB can only make a
    client look again, never miss a doc. (Passing CouchDB's own `update_seq` through, as
    before, handed out a seq this feed cannot resume from: a full backfill.) The counts
    are this user's readable docs as of the index's last sync, not the database's."""
    live, deleted = view.counts()
    since = Since(view.epoch, view.current_ordinal, view.fingerprint)
    return json_response(
        {
            "db_name": db,
            "doc_count": live,
            "doc_del_count": deleted,
            "update_seq": codec.encode(view.user.name, since),
            "purge_seq": 0,
            "compact_running": False,
            "sizes": {"active": 0, "external": 0, "file": 0},
            "props": {},
            "instance_start_time": "0",
        }
    )


async def fetch_docs(
    request: web.Request, view: UserView, db_path: str, entries: list[Entry], conflicts: bool
) -> dict[str, dict[str, Any]]:
    """The current bodies of a page's live docs, each judged before it may be served (a
    doc deleted upstream meanwhile: its tombstone). A failed read fails the request: a
    page is never sent with bodies missing or made up."""
    live = [e.id for e in entries if not e.deleted]
    if not live:
        return {}
    params = {"include_docs": "true", **({"conflicts": "true"} if conflicts else {})}
    result = await request.app[COUCH].json("POST", f"{db_path}/_all_docs", body={"keys": live}, params=params)
    rows = result.body.get("rows") if result.ok and isinstance(result.body, dict) else None
    if not isinstance(rows, list):
        raise failed(result)
    docs: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            continue
        doc, value = row.get("doc"), row.get("value")
        if isinstance(doc, dict) and isinstance(doc.get("_rev"), str):
            if view.servable(doc):
                docs[row["id"]] = doc
        elif isinstance(value, dict) and value.get("deleted") is True and isinstance(value.get("rev"), str):
            docs[row["id"]] = tombstone(row["id"], value["rev"])
    if conflicts:
        await leaves.filter_conflicts(request, view, db_path, docs.values())
    return docs


async def changes(
    request: web.Request, view: UserView, codec: SinceCodec, db_path: str
) -> web.StreamResponse:
    params = await parse_params(request)
    feed = Feed(view, codec, params)
    if feed.ordinal == 0 and params.since not in (None, "", "0", "now"):
        observe.backfill_started()  # metrics: a since token that could not be resumed
    if params.feed == "continuous":
        return await _continuous(request, feed, db_path)
    entries, last_seq = feed.page()
    if params.feed == "longpoll" and not entries:
        return await _longpoll(request, feed, db_path)
    results = await page_rows(request, feed, db_path, entries)
    return json_response({"results": results, "last_seq": last_seq, "pending": 0})


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "application/json", "Cache-Control": "must-revalidate"}
    )
    response.enable_chunked_encoding()
    stamp_request_id(request, response)
    await response.prepare(request)
    return response


async def _wait(feed: Feed, response: web.StreamResponse, deadline: float) -> bool:
    """Wait for a change in the index until the deadline, writing heartbeats meanwhile."""
    heartbeat = (feed.params.heartbeat_ms or 0) / 1000
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        step = min(remaining, heartbeat) if heartbeat else remaining
        if await feed.view.sync.wait_for_change(step):
            return True
        if heartbeat and time.monotonic() < deadline:
            await response.write(b"\n")


async def _longpoll(request: web.Request, feed: Feed, db_path: str) -> web.StreamResponse:
    response = await _open_stream(request)
    deadline = time.monotonic() + feed.params.timeout_ms / 1000
    entries: list[Entry] = []
    last_seq = feed.token(feed.ordinal)
    while not entries and await _wait(feed, response, deadline):
        entries, last_seq = feed.page()
    body = {"results": await page_rows(request, feed, db_path, entries), "last_seq": last_seq, "pending": 0}
    await response.write(dumps(body) + b"\n")
    await response.write_eof()
    return response


async def _continuous(request: web.Request, feed: Feed, db_path: str) -> web.StreamResponse:
    response = await _open_stream(request)
    deadline = time.monotonic() + feed.params.timeout_ms / 1000
    sent = 0
    limit = feed.params.limit
    last_seq = feed.token(feed.ordinal)
    while True:
        if limit:
            feed.params.limit = limit - sent  # never let the page run past what may be sent
        entries, last_seq = feed.page()
        if entries:
            rows = await page_rows(request, feed, db_path, entries)
            await response.write(b"".join(dumps(row) + b"\n" for row in rows))
            sent += len(entries)
            if limit and sent >= limit:
                break
            deadline = max(deadline, time.monotonic() + feed.params.timeout_ms / 1000)
            continue
        if not await _wait(feed, response, deadline):
            break
        await asyncio.sleep(0)
    await response.write(orjson.dumps({"last_seq": last_seq}) + b"\n")
    await response.write_eof()
    return response
