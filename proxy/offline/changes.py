"""`GET|POST /{db}/_changes` for offline users, read from the scope index.

Rows come from the user's own postings in the index, so a request costs the user's docs,
not the database's. `since` values are couchgate's own tokens (`proxy.offline.since`). A token of this
index's epoch resumes at its ordinal. One from another replica, or from before a restart
that lost the index's snapshot, is placed between two ordinals of this index by the
wall-clock times it carries (`UserView.place`): the feed resumes from the earlier (docs
changed in between are sent again, which a device ignores), and what left the scope is
judged at both. A token this index cannot place (older than its marks), for another user,
or from before a change of the user's scope inputs restarts the feed from the beginning
(a backfill, never a gap); a contact moving into the scope re-sequences the docs keyed on
it, so those arrive as changes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from proxy import observe
from proxy.access.config import UserCtx
from proxy.access.scope_index import TooOld
from proxy.couch.docs import Docs
from proxy.errors import BadRequest, PayloadTooLarge, dumps, json_response
from proxy.keys import COUCH, REMOVALS, SETTINGS
from proxy.logs import stamp_request_id
from proxy.offline import leaves, query
from proxy.offline.ledger import Ledger
from proxy.offline.removals import Removals, audit_removals, delivery_revs, leave_revs
from proxy.offline.since import Since, SinceCodec
from proxy.offline.view import Entry, UserView
from proxy.params import nonneg_int, read_json

MAX_TIMEOUT_MS = 5 * 60 * 1000
DEFAULT_TIMEOUT_MS = 60 * 1000


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
            body = await read_json(request, request.app[SETTINGS].max_changes_body_bytes, empty={})
            raw = body.get("doc_ids") if isinstance(body, dict) else None
        elif raw is not None:
            try:
                raw = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest("doc_ids must be a JSON array of strings") from exc
        if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
            raise BadRequest("filter=_doc_ids needs doc_ids, a JSON array of strings")
        limit = request.app[SETTINGS].max_bulk_items
        if len(raw) > limit:
            raise PayloadTooLarge(f"filter=_doc_ids takes at most {limit} ids")
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


@dataclass
class Page:
    entries: list[Entry]  # readable docs changed, oldest first
    removed: list[Entry]  # docs that left the user's scope since the device's position
    last_seq: str = ""
    # What each row's `seq` says (clients may resume from any row's, as PouchDB does): the
    # device's token with the removals sent so far, for removal rows; for change rows,
    # what left judged as of `judged` (when later than the row).
    since_in: Since | None = None
    judged: int = 0

    def __bool__(self) -> bool:
        return bool(self.entries or self.removed)


REMOVALS_PER_PAGE = 1000  # removal rows a page may hold whatever its `limit`
# A page that sends nothing answers the device's own token back as `last_seq` while that
# token is this young (and of this index, past the first pull, not inside a removals
# page): a token is sealed with a fresh nonce, so a new one for the same position would
# make PouchDB write its checkpoint on both sides at every no-op sync. Older, a new token
# is issued, so that what left is judged from a recent position, not from ever further back.
RESTING_TOKEN_SECONDS = 600


class Feed:
    """Computes pages of one user's changes, and what left their scope (`removals`)."""

    def __init__(
        self,
        view: UserView,
        codec: SinceCodec,
        params: FeedParams,
        removals: Removals | None = None,
        ahead: asyncio.Future[Ledger] | None = None,
    ) -> None:
        self.view = view
        self.codec = codec
        self.params = params
        self.user = view.user.name
        self.fingerprint = view.fingerprint
        self.removals = removals if removals is not None and removals.enabled else None
        # Where the device stands for removals: who the user was then, and when; `everything`:
        # their scope inputs changed since, so all they could read then is judged again.
        self.then: UserCtx | None = None
        self.then_at: tuple[int, ...] = ()  # one ordinal, or two bracketing a foreign token
        self.everything = False
        self.since_in: Since | None = None  # the device's token, while removals are being sent
        self.backlog: list[Entry] = []  # removals a `limit` held back (this request's next pages)
        self.fresh = params.since in (None, "", "0")  # the device holds nothing (yet)
        self.fresh_page = self.fresh  # ... as of the page being made
        # The device's own token, while nothing is sent to it: answered back as `last_seq`.
        self.resting: str | None = None
        self.ordinal = self._start_ordinal(params.since)
        self.ahead = ahead  # the user's ledger, read beside the sync, for the first page only

    async def ledger(self, needed: bool) -> Ledger | None:
        """The user's ledger as CouchDB holds it, if the page being made `needed` it: read
        ahead for the request's first page, if it came at once; read now for any later
        page (a live feed's, after a wait: one read ahead would be stale by then)."""
        ahead, self.ahead = self.ahead, None
        if self.removals is None or not needed:
            return None
        return await ahead if ahead is not None else await self.removals.ledger(self.user)

    def _start_ordinal(self, raw: str | None) -> int:
        if raw == "now":
            return self.view.current_ordinal
        if raw in (None, "", "0"):
            return 0
        since = self.codec.decode(self.user, raw)
        if since is None:
            return 0  # unknown: backfill everything readable (and no removals)
        at = since.ordinal if since.removals_at is None else max(since.ordinal, since.removals_at)
        ours = since.epoch == self.view.epoch or at <= self.view.sync.past_epochs.get(since.epoch, -1)
        if ours:
            self.then_at = (at,)  # numbered by this index (before a restart, maybe)
            start = since.ordinal
        else:
            span = self.view.place(since.level, since.issued)
            if span is None:
                return 0  # older than this index can vouch for: backfill, no removals
            self.then_at, start = span, span[0]
        self.then = UserCtx(self.user, since.roles, since.facilities, since.contact)
        self.since_in = since
        self.fresh = since.fresh
        if since.fingerprint != self.fingerprint:
            self.everything = True
            return 0  # the scope changed: backfill everything readable, remove what left
        young = time.time_ns() // 1_000_000 - since.issued < RESTING_TOKEN_SECONDS * 1000
        if young and since.level > 0 and not since.fresh and since.removed_to is None:
            # Also one numbered before a restart, or by another replica (placed by its times
            # at each request, for as long as it is young): a deploy, or a device that moves
            # to another replica, writes no checkpoint. Not one without a level (a row's seq
            # inside the index's first build, where PouchDB checkpoints after an initial
            # pull): another replica could not place it, and would backfill.
            self.resting = raw
        return start

    def resting_token(self) -> str:
        """`last_seq` while nothing was sent: the device's own token if it may keep it."""
        return self.resting if self.resting is not None else self.token(self.ordinal)

    def token(self, ordinal: int) -> str:
        return issue(self.view, self.codec, ordinal)

    def _token_after(self, ordinal: int, current: int) -> str:
        """The token after a page: changes sent up to `ordinal` (behind `current` when
        `limit` cut them short), and what left judged as of `then_at`, or of `current` for a
        device that had nothing (each doc it was sent is as it stood then, not as it stood
        at its own ordinal: judging from there would walk the index's whole history again
        at every page of an initial pull)."""
        judged = self.then_at[0] if self.then is not None and self.then_at else current
        self.fresh = self.fresh and ordinal < current  # caught up: no longer fresh
        return issue(self.view, self.codec, ordinal, judged if judged > ordinal else None, fresh=self.fresh)

    def left(self) -> list[Entry]:
        """What left the user's scope since the device's position (then moves to now)."""
        if self.removals is None or self.then is None:
            return []
        found: dict[str, Entry] = {}
        until = self.then_at[-1] if len(self.then_at) > 1 else None
        for at in self.then_at:
            try:
                found_then = self.view.left_scope(
                    self.then, at, everything=self.everything, until=until if at != until else None
                )
                for entry in found_then:
                    found.setdefault(entry.id, entry)
            except TooOld:  # older than the index remembers (docs/removals.md, the horizon)
                if self.everything:
                    # The user's scope changed at a moment the index no longer remembers:
                    # their old scope judged at its oldest memory would name docs made or
                    # moved there after they left it, which they never could read.
                    continue
                oldest = self.view.sync.index.history.since  # the same scope all along
                for entry in self.view.left_scope(self.then, oldest, everything=True):
                    found.setdefault(entry.id, entry)
        gone = sorted(found.values(), key=lambda e: (e.ordinal, e.id))
        sent = self._sent()
        if sent is not None:
            gone = [e for e in gone if (e.ordinal, e.id) > sent]
        self.then, self.then_at, self.everything = self.view.user, (self.view.current_ordinal,), False
        if self.params.doc_ids is not None:
            gone = [e for e in gone if e.id in self.params.doc_ids]
        return gone

    def _sent(self) -> tuple[int, str] | None:
        """How far a page cut short went in sending removals (`rc`), if this index numbered
        it: another replica's ordinals (or a crashed process's) say nothing here, and then
        every removal is sent again (a tombstone the device has is a no-op for it)."""
        since = self.since_in
        if since is None or since.removed_to is None or since.removed_by is None:
            return None
        sync = self.view.sync
        ordinal = since.removed_to[0]
        ours = since.removed_by == self.view.epoch or ordinal <= sync.past_epochs.get(since.removed_by, -1)
        return since.removed_to if ours else None

    def page(self) -> Page:
        """The next rows and the `last_seq` that follows them; advances the feed. Removals
        come first, up to `limit` or REMOVALS_PER_PAGE, whichever is more, and count against
        `limit`: a page they fill ends with a token of the same position that says how far
        they went. (A removal row is small, and each page judges what left and reads and
        writes the user's ledger again: PouchDB's pages of 100 made a pull removing 2,000
        docs cost more than pulling them.)"""
        self.fresh_page = self.fresh
        removed = self.backlog or self.left()
        if removed:
            self.fresh = False  # it holds made-up revisions from now on
            self.resting = None
        limit = self.params.limit
        cap = max(limit, REMOVALS_PER_PAGE) if limit is not None and limit > 0 else None
        if cap is not None and len(removed) > cap and self.since_in is not None:
            removed, self.backlog = removed[:cap], removed[cap:]
            last = removed[-1]
            held = replace(self.since_in, removed_to=(last.ordinal, last.id), removed_by=self.view.epoch,
                           fresh=False)  # fmt: skip
            return Page([], removed, self.codec.encode(self.user, held), since_in=self.since_in)
        since_in, self.backlog, self.since_in = self.since_in, [], None
        entries = self.view.entries_after(self.ordinal)
        if self.params.doc_ids is not None:
            entries = [e for e in entries if e.id in self.params.doc_ids]
        current = self.view.current_ordinal
        if self.params.descending:
            entries.reverse()
        room = max(limit - len(removed), 0) if limit is not None and limit > 0 else None
        if room is not None and len(entries) > room:
            entries = entries[:room]
            reached = entries[-1].ordinal if entries else self.ordinal
            end = current if self.params.descending else reached
        else:
            end = current
        self.ordinal = max(self.ordinal, end)
        judged = self.then_at[0] if self.then is not None and self.then_at else current
        if entries:
            self.resting = None  # the device moves on (as it does when sent removals)
        last_seq = self.resting if self.resting is not None else self._token_after(self.ordinal, current)
        return Page(entries, removed, last_seq, since_in, judged)

    def row_seq(self, page: Page, entry: Entry, removal: bool) -> str:
        if removal and page.since_in is not None:
            held = replace(page.since_in, removed_to=(entry.ordinal, entry.id), removed_by=self.view.epoch,
                           fresh=False)  # fmt: skip
            return self.codec.encode(self.user, held)
        judged = page.judged if page.judged > entry.ordinal else None
        # Never `fresh`: a client resuming from a row may have caught up by then.
        return issue(self.view, self.codec, entry.ordinal, judged)

    def rows(
        self,
        page: Page,
        docs: dict[str, dict[str, Any]] | None,
        leaves: dict[str, list[str]],
        ledger: Ledger | None,
    ) -> list[dict[str, Any]]:
        """The rows of a page: first the removals (made-up deletions, `proxy.offline.removals`),
        then the changes. With `docs` (include_docs), each row shows the body that was read
        and judged: its revision may be newer than the index's, and a doc whose body could
        not be served (it left the scope, or is gone) has no row in this page. With
        `style=all_docs`, a conflict leaf is named only if the user may see it (`leaves`).
        A doc couchgate made up revisions of before names those the ledger says."""
        rows = []
        now = time.time()
        for entry in page.removed:
            assert self.removals is not None and ledger is not None
            live = [entry.rev, *(leaf for leaf in entry.leaves if leaf != entry.rev)]
            revs = leave_revs(self.removals, ledger, entry.id, live, now)
            row: dict[str, Any] = {"seq": self.row_seq(page, entry, True), "id": entry.id,
                                   "changes": [{"rev": r} for r in revs], "deleted": True}  # fmt: skip
            if docs is not None:
                row["doc"] = tombstone(entry.id, revs[0])
            rows.append(row)
        for entry in page.entries:
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
            made = (
                delivery_revs(self.removals, ledger, entry.id, rev, now) if self.removals and ledger else None
            )
            if made is not None and not deleted:
                revs = [*made, *revs[1:]]
                if doc is not None and made[0] != rev:
                    doc = {**doc, "_rev": made[0]}
            row = {
                "seq": self.row_seq(page, entry, False),
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


async def page_rows(request: web.Request, feed: Feed, db_path: str, page: Page) -> list[dict[str, Any]]:
    """A page's rows, with the bodies and leaves the user may see, and its removals; the
    user's ledger is written before any made-up revision it names leaves couchgate."""
    entries = page.entries
    docs = (
        await fetch_docs(request, feed.view, db_path, entries, feed.params.conflicts)
        if feed.params.include_docs
        else None
    )
    # The ledger names the made-up revisions of removals and returns; a device still on its
    # first pull holds none, so its pages read it only to send removals.
    needed = page.removed or (page.entries and not feed.fresh_page)
    ledger = await feed.ledger(bool(needed))
    rows = feed.rows(page, docs, await page_leaves(request, feed, db_path, entries), ledger)
    if ledger is not None and ledger.dirty:
        assert feed.removals is not None
        await feed.removals.save(ledger)
    if page.removed:
        audit_removals(request, feed.view.sync.db, [e.id for e in page.removed])
        observe.removals_sent(len(page.removed))
    return rows


def issue(
    view: UserView, codec: SinceCodec, ordinal: int, removals_at: int | None = None, *, fresh: bool = False
) -> str:
    """The user's token for `ordinal`: where it stands in this index, who the user is, and
    between which times CouchDB's state lies that a device holding it has (`removals_at`:
    what left was sent as of that later ordinal)."""
    user = view.user
    since = Since(
        view.epoch, ordinal, view.fingerprint, user.facility_ids, user.roles, user.contact_id,
        level=view.level_at(ordinal), issued=time.time_ns() // 1_000_000, removals_at=removals_at,
        fresh=fresh,
    )  # fmt: skip
    return codec.encode(user.name, since)


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
    return json_response(
        {
            "db_name": db,
            "doc_count": live,
            "doc_del_count": deleted,
            "update_seq": issue(view, codec, view.current_ordinal),
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
    doc deleted upstream meanwhile: its tombstone; one CouchDB no longer has: no row). A
    failed read fails the request (`proxy.couch.docs`): a page is never sent with bodies
    missing or made up."""
    live = [e.id for e in entries if not e.deleted]
    if not live:
        return {}
    winners = await Docs(request.app[COUCH], db_path).winners(live, conflicts=conflicts)
    docs = {doc_id: doc for doc_id, doc in winners.live.items() if view.servable(doc)}
    for doc_id, rev in winners.deleted.items():
        if rev is not None:
            docs[doc_id] = tombstone(doc_id, rev)
    if conflicts:
        await leaves.filter_conflicts(request, view, db_path, docs.values())
    return docs


def _ledger_ahead(view: UserView, codec: SinceCodec, removals: Removals, raw: str | None) -> bool:
    """Whether the first page will likely name made-up revisions (`page_rows` reads the
    ledger for it): a device past its first pull that has changes waiting. Its read is
    started beside the index sync instead of after it (the ledger is as fresh either way:
    read during this request); a no-op sync or a first pull does not read it."""
    if not removals.enabled or raw in (None, "", "0", "now"):
        return False
    since = codec.decode(view.user.name, raw)
    return (
        since is not None
        and not since.fresh
        and (since.epoch != view.epoch or since.ordinal < view.current_ordinal)
    )


async def changes(
    request: web.Request, view: UserView, codec: SinceCodec, db_path: str
) -> web.StreamResponse:
    params = await parse_params(request)
    removals = request.app[REMOVALS]
    ahead = None
    if _ledger_ahead(view, codec, removals, params.since):
        ahead = asyncio.ensure_future(removals.ledger(view.user.name))
    try:
        await view.sync.sync()  # read-your-writes: the index is at least as new as CouchDB was now
        return await _answer(request, Feed(view, codec, params, removals, ahead), params, db_path)
    finally:
        _drop(ahead)  # a read no page took (one a page took is done: dropping it does nothing)


def _drop(task: asyncio.Future[Ledger] | None) -> None:
    """A ledger read started ahead and not needed: its outcome (even a failure) is moot."""
    if task is not None:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _answer(request: web.Request, feed: Feed, params: FeedParams, db_path: str) -> web.StreamResponse:
    if feed.ordinal == 0 and params.since not in (None, "", "0", "now"):
        observe.backfill_started()  # metrics: a since token that could not be resumed
    if params.feed == "continuous":
        return await _continuous(request, feed, db_path)
    if params.limit == 0 and params.feed == "normal":
        # CouchDB 3 answers no rows, and the position asked from as `last_seq`.
        resumed = feed.since_in is not None and feed.ordinal > 0 and params.since is not None
        last_seq = params.since if resumed else feed.token(feed.ordinal)
        return json_response({"results": [], "last_seq": last_seq, "pending": 0})
    page = feed.page()
    if params.feed == "longpoll" and not page:
        return await _longpoll(request, feed, db_path)
    results = await page_rows(request, feed, db_path, page)
    return json_response({"results": results, "last_seq": page.last_seq, "pending": 0})


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
    feed.ahead = None  # read before the wait: stale after it
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
    page = Page([], [], "")
    while not page and await _wait(feed, response, deadline):
        page = feed.page()
    page.last_seq = page.last_seq or feed.resting_token()  # made once the wait ends: not held by it
    body = {"results": await page_rows(request, feed, db_path, page), "last_seq": page.last_seq, "pending": 0}
    await response.write(dumps(body) + b"\n")
    await response.write_eof()
    return response


async def _continuous(request: web.Request, feed: Feed, db_path: str) -> web.StreamResponse:
    response = await _open_stream(request)
    deadline = time.monotonic() + feed.params.timeout_ms / 1000
    sent = 0
    limit = feed.params.limit
    last_seq = feed.resting_token()
    while True:
        if limit:
            feed.params.limit = limit - sent  # never let the page run past what may be sent
        page = feed.page()
        last_seq = page.last_seq
        if page:
            rows = await page_rows(request, feed, db_path, page)
            await response.write(b"".join(dumps(row) + b"\n" for row in rows))
            sent += len(page.entries)
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
