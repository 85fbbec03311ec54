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

from proxy.errors import BadRequest, json_response
from proxy.keys import COUCH
from proxy.logs import stamp_request_id
from proxy.offline.since import Since, SinceCodec
from proxy.offline.view import Entry, UserView
from proxy.params import nonneg_int, read_json, true

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
    q = request.query
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
    timeout = nonneg_int(q.get("timeout"), "timeout")
    return FeedParams(
        since=q.get("since"),
        limit=nonneg_int(q.get("limit"), "limit"),
        all_docs=style == "all_docs",
        include_docs=true(q.get("include_docs")),
        conflicts=true(q.get("conflicts")),
        descending=true(q.get("descending")),
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

    def row(self, entry: Entry, docs: dict[str, Any]) -> dict[str, Any]:
        revs = list(entry.leaves) if self.params.all_docs and entry.leaves else [entry.rev]
        row: dict[str, Any] = {
            "seq": self.token(entry.ordinal),
            "id": entry.id,
            "changes": [{"rev": r} for r in revs],
        }
        if entry.deleted:
            row["deleted"] = True
        if self.params.include_docs:
            row["doc"] = docs.get(entry.id) or {"_id": entry.id, "_rev": entry.rev, "_deleted": True}
        return row


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
    request: web.Request, db_path: str, entries: list[Entry], conflicts: bool
) -> dict[str, Any]:
    live = [e.id for e in entries if not e.deleted]
    if not live:
        return {}
    params = {"include_docs": "true"}
    if conflicts:
        params["conflicts"] = "true"
    result = await request.app[COUCH].json("POST", f"{db_path}/_all_docs", body={"keys": live}, params=params)
    docs: dict[str, Any] = {}
    if result.ok and isinstance(result.body, dict):
        for row in result.body.get("rows", []):
            if isinstance(row, dict) and isinstance(row.get("doc"), dict):
                docs[row["id"]] = row["doc"]
    return docs


async def changes(
    request: web.Request, view: UserView, codec: SinceCodec, db_path: str
) -> web.StreamResponse:
    params = await parse_params(request)
    feed = Feed(view, codec, params)
    if params.feed == "continuous":
        return await _continuous(request, feed, db_path)
    entries, last_seq = feed.page()
    if params.feed == "longpoll" and not entries:
        return await _longpoll(request, feed, db_path)
    docs = await fetch_docs(request, db_path, entries, params.conflicts) if params.include_docs else {}
    results = [feed.row(e, docs) for e in entries]
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
    docs = (
        await fetch_docs(request, db_path, entries, feed.params.conflicts) if feed.params.include_docs else {}
    )
    body = {"results": [feed.row(e, docs) for e in entries], "last_seq": last_seq, "pending": 0}
    await response.write(orjson.dumps(body) + b"\n")
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
            docs = (
                await fetch_docs(request, db_path, entries, feed.params.conflicts)
                if feed.params.include_docs
                else {}
            )
            await response.write(b"".join(orjson.dumps(feed.row(e, docs)) + b"\n" for e in entries))
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
