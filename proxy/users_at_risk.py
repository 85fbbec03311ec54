"""`GET /_couchgate/users` (admins): every offline user, with how many docs they replicate,
the warning flag, and their sync activity on this replica; sortable and filterable.

Counting a user's docs costs that user's docs (a walk of the scope index); at 20,000 users
that is far too much for a request. So the counts are kept here and refreshed by one
background task, a user at a time, within a CPU budget (`BUDGET` of one core: after each
slice of work it sleeps long enough to stay under it; a large scope is counted in steps,
`ScopeIndex.counting`, so no user's count holds the event loop for long), and a user is
recounted only when the settings changed since their count, or the index changed under it:
a contact in or above the user's scope, or a doc under the keys their count looked under
(`still_exact`; a write elsewhere recounts nobody). The request
path only filters and sorts what is kept (`python -m bench.users_at_risk`: docs/benchmarks.md). Each row says
when it was counted; `?refresh=true` waits for a pass that starts after the request
(with the index brought level with CouchDB first).

Counting never touches the index's per-user caches (its feeds and subjects, which serve
the users syncing now): `count_scope` walks the user's keys itself.

The users come from CouchDB's `_users` database, read incrementally from its `_changes`
feed; a user whose `_users` doc lacks a facility or contact gets them from their
`user-settings` doc in the main database, as at login (`proxy.auth.users.merge_user_docs`).
Sync activity is this replica's (proxy/activity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from proxy.access.config import AppSettings, UserCtx, is_offline
from proxy.access.scope_index import Looked, ScopeIndex
from proxy.activity import ACTIVITY, Activity
from proxy.audit.log import iso
from proxy.auth.users import merge_user_docs
from proxy.couch.client import CouchClient
from proxy.couch.docs import Docs
from proxy.errors import BadRequest, CouchgateError, Forbidden, UpstreamError, json_response
from proxy.keys import CALLER, COUCH, INDEX, SETTINGS
from proxy.offline.sync import IndexSync
from proxy.params import flag, limit_of, nonneg_int

log = logging.getLogger("couchgate.users")

BUDGET = 0.25  # share of one core the background counting may take
SLICE = 0.02  # seconds of counting between two yields to the event loop
PAGE = 1000
USER_PREFIX = "org.couchdb.user:"
SORTS = ("docs", "name", "last_sync", "errors", "refusals")
MAX_LIMIT = 5000


def count_scope(index: ScopeIndex, user: UserCtx, settings: AppSettings) -> dict[str, int]:
    """The user's readable live docs by kind, as `ScopeIndex.count_by_kind` counts them,
    without filling the index's per-user caches."""
    return index.count_uncached(user, settings)


@dataclass
class Counted:
    """A user's count and what it was counted against: exact as of `ordinal` (-1: of no
    single state), for these settings and this user; `looked`: the index keys it looked under."""

    by_kind: dict[str, int]
    total: int
    at: float  # wall clock: when it was counted
    ordinal: int
    settings: AppSettings
    user: UserCtx
    looked: Looked


def still_exact(
    counted: Counted, user: UserCtx, settings: AppSettings, index: ScopeIndex, touched: frozenset[str] | None
) -> bool:
    """Whether `counted` is still what counting `user` now would give: same user and
    settings, no contact changed in or above their scope (`touched`: the index's
    `touched_since` an ordinal at or before the count's), no doc under the keys it looked
    under changed or left since (`ScopeIndex.unchanged_under`)."""
    return (
        counted.ordinal >= 0
        and counted.user == user
        and counted.settings == settings
        and touched is not None
        and touched.isdisjoint((*user.facility_ids, user.contact_id))
        and index.unchanged_under(counted.looked, counted.ordinal)
    )


class Directory:
    """The `_users` docs, followed through the `_users` `_changes` feed."""

    def __init__(self, couch: CouchClient, db: str) -> None:
        self.couch = couch
        self.db_path = "/" + quote(db, safe="")
        self.since: Any = 0
        self.docs: dict[str, dict[str, Any]] = {}

    async def pull(self) -> None:
        while True:
            since = self.since if isinstance(self.since, str) else orjson.dumps(self.since).decode()
            params = {"since": since, "include_docs": "true", "limit": str(PAGE)}
            result = await self.couch.json("GET", "/_users/_changes", params=params)
            if not result.ok or not isinstance(result.body, dict):
                raise UpstreamError(f"CouchDB answered {result.status} to the _users changes read")
            rows = result.body.get("results")
            rows = rows if isinstance(rows, list) else []
            for row in rows:
                doc_id = row.get("id") if isinstance(row, dict) else None
                if not isinstance(doc_id, str) or not doc_id.startswith(USER_PREFIX):
                    continue
                name = doc_id[len(USER_PREFIX) :]
                doc = row.get("doc")
                if row.get("deleted") or not isinstance(doc, dict) or doc.get("_deleted"):
                    self.docs.pop(name, None)
                else:
                    self.docs[name] = doc
            self.since = result.body.get("last_seq", self.since)
            if len(rows) < PAGE:
                return

    async def users(self) -> dict[str, UserCtx]:
        """Every user, facility and contact filled from their user-settings doc if needed."""
        await self.pull()
        lacking = [n for n, d in self.docs.items() if not d.get("facility_id") or not d.get("contact_id")]
        settings_docs: dict[str, Any] = {}
        docs = Docs(self.couch, self.db_path)
        for start in range(0, len(lacking), PAGE):
            keys = [USER_PREFIX + n for n in lacking[start : start + PAGE]]
            winners = await docs.winners(keys, what="to the user-settings read")
            for key, doc in winners.live.items():
                settings_docs[key[len(USER_PREFIX) :]] = doc
        found = {}
        for name, doc in self.docs.items():
            info = merge_user_docs(doc, settings_docs.get(name))
            found[name] = UserCtx(name, info.roles, info.facility_ids, info.contact_id)
        return found


class UsersAtRisk:
    """Per-user doc counts, refreshed in the background within a CPU budget."""

    def __init__(
        self, sync: IndexSync, directory: Directory, interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.sync = sync
        self.directory = directory
        self.interval = interval
        self.clock = clock
        self.users: dict[str, UserCtx] = {}
        self.counts: dict[str, Counted] = {}
        self.warn_limit = 0
        self.refreshed_at: float | None = None
        self.error: str | None = None
        self._offline: tuple[dict[str, UserCtx], AppSettings, dict[str, UserCtx]] | None = None
        self._passes_started = 0
        self._passes_done = 0
        self._done = asyncio.Condition()
        self._wake = asyncio.Event()

    # -- what the route and the metrics read -------------------------------------------------

    def offline_users(self) -> dict[str, UserCtx]:
        """The users with an offline role, worked out again only when the users or the
        settings changed."""
        settings = self.sync.settings
        if self._offline is None or self._offline[0] is not self.users or self._offline[1] != settings:
            offline = {n: u for n, u in self.users.items() if is_offline(u, settings)}
            self._offline = (self.users, settings, offline)
        return self._offline[2]

    def totals(self) -> tuple[int, int, int]:
        offline = self.offline_users()
        counted = [self.counts[n] for n in offline if n in self.counts]
        return len(offline), len(counted), sum(1 for c in counted if c.total > self.warn_limit)

    # -- refreshing -------------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: wait for the interval or a wake-up, then a pass. The first pass
        too waits: the minute after a start belongs to the devices that sync then (counting
        everyone competed with their first pulls), unless an admin asks (`fresh`)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.refresh_pass()
            except CouchgateError as exc:
                self.error = exc.reason
                log.warning("users-at-risk refresh failed: %s", exc.reason)
            except Exception:
                self.error = "couchgate could not count the users' docs"
                log.exception("users-at-risk refresh failed")
            finally:
                async with self._done:
                    self._passes_done = self._passes_started
                    self._done.notify_all()

    async def fresh(self) -> None:
        """Return once a pass that started after this call has ended."""
        wanted = self._passes_started + 1
        async with self._done:
            self._wake.set()
            await self._done.wait_for(lambda: self._passes_done >= wanted)

    async def refresh_pass(self) -> None:
        self._passes_started += 1
        self.users = await self.directory.users()
        await self.sync.sync()  # counts as of CouchDB's state at the start of the pass
        index = self.sync.index
        started = time.perf_counter()
        oldest = min((c.ordinal for c in self.counts.values() if c.ordinal >= 0), default=index.ordinal)
        touched: tuple[int, frozenset[str] | None] | None = None  # (tree version, contacts)
        for name, user in list(self.offline_users().items()):
            settings = self.sync.settings
            old = self.counts.get(name)
            if old is not None and old.ordinal >= 0:
                if touched is None or touched[0] != index.tree_version:  # once a pass, unless the tree moved
                    touched = (index.tree_version, index.touched_since(oldest))
                if still_exact(old, user, settings, index, touched[1]):
                    old.ordinal = index.ordinal
                    continue
            at = (index.ordinal, index.tree_version)
            keys: list[str] = []
            steps = index.counting(user, settings, keys=keys)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    by_kind: dict[str, int] = done.value
                    break
                worked = time.perf_counter() - started
                if worked >= SLICE:
                    await asyncio.sleep(worked * (1 - BUDGET) / BUDGET)
                    started = time.perf_counter()
            total = sum(by_kind.values())
            counted = Counted(by_kind, total, self.clock(), at[0], settings, user, index.looked_under(keys))
            if (index.ordinal, index.tree_version) != at:
                # Counted while the index moved on between steps: exact if nothing it read
                # changed meanwhile, else shown and counted again at the next pass.
                moved = index.touched_since(at[0])
                exact = still_exact(counted, user, self.sync.settings, index, moved)
                counted.ordinal = index.ordinal if exact else -1
            self.counts[name] = counted
        for gone in set(self.counts) - set(self.offline_users()):
            del self.counts[gone]
        self.refreshed_at = self.clock()
        self.error = None


RISK = web.AppKey("users_at_risk", UsersAtRisk)


async def users_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sync activity of offline users, and the background counting of their docs."""
    settings = app[SETTINGS]
    app[ACTIVITY] = Activity(settings.users_activity_window)
    risk = UsersAtRisk(app[INDEX], Directory(app[COUCH], settings.db), settings.users_refresh_interval)
    risk.warn_limit = settings.scope_warn_docs
    app[RISK] = risk
    task = asyncio.create_task(risk.run(), name="users-at-risk")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the route ----------------------------------------------------------------------------------


def row(name: str, user: UserCtx, counted: Counted | None, activity: Activity, limit: int) -> dict[str, Any]:
    seen = activity.summary(name)
    return {
        "name": name,
        "roles": list(user.roles),
        "facility_ids": list(user.facility_ids),
        "contact_id": user.contact_id,
        "docs": counted.total if counted else None,
        "warning": counted.total > limit if counted else None,
        "counted_at": iso(int(counted.at * 1000)) if counted else None,
        "last_sync": iso(int(seen.last_sync * 1000)) if seen.last_sync else None,
        "errors": seen.errors,
        "refusals": seen.refusals,
        "last_error": (
            {"at": iso(int(seen.last_error * 1000)), "route": seen.last_error_route}
            if seen.last_error
            else None
        ),
    }


async def list_users(request: web.Request) -> web.Response:
    """Offline users with their docs in scope, warning flag and sync activity."""
    if not request[CALLER].is_admin:
        raise Forbidden("You are not a server admin.")
    q = request.query
    sort = q.get("sort", "docs")
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}")
    query = Query(
        sort=sort,
        descending=flag(q, "descending", default=sort != "name"),
        warning=flag(q, "warning", default=False) if "warning" in q else None,
        name=q.get("name", "").lower(),
        limit=limit_of(q.get("limit"), 100, MAX_LIMIT),
        skip=nonneg_int(q.get("skip"), "skip") or 0,
    )
    risk = request.app[RISK]
    if flag(q, "refresh", default=False):
        await risk.fresh()
    return json_response(users_page(risk, request.app[ACTIVITY], query))


@dataclass(frozen=True)
class Query:
    sort: str = "docs"
    descending: bool = True
    warning: bool | None = None
    name: str = ""
    limit: int = 100
    skip: int = 0


def users_page(risk: UsersAtRisk, activity: Activity, query: Query) -> dict[str, Any]:
    """The answer of `GET /_couchgate/users`, from what is kept (no counting here). Users
    are filtered and sorted on what the query needs; rows are built for the page only."""
    picked: list[tuple[str, UserCtx, Counted | None]] = []
    for name, user in risk.offline_users().items():
        if query.name and query.name not in name.lower():
            continue
        counted = risk.counts.get(name)
        if query.warning is not None and (
            counted is None or (counted.total > risk.warn_limit) is not query.warning
        ):
            continue
        picked.append((name, user, counted))
    picked.sort(key=sort_key(query.sort, activity), reverse=query.descending)
    page = picked[query.skip : query.skip + query.limit]
    offline, counted_users, over = risk.totals()
    return {
        "total_rows": len(picked),
        "offset": query.skip,
        "users": [row(name, user, counted, activity, risk.warn_limit) for name, user, counted in page],
        "warn_limit": risk.warn_limit,
        "offline_users": offline,
        "counted": counted_users,
        "over_warn_limit": over,
        "complete": counted_users == offline and risk.refreshed_at is not None,
        "refreshed_at": iso(int(risk.refreshed_at * 1000)) if risk.refreshed_at else None,
        "error": risk.error,
        "activity": {
            "replica": socket.gethostname(),
            "since": iso(int(activity.since * 1000)),
            "window_seconds": activity.window,
        },
    }


def sort_key(sort: str, activity: Activity) -> Callable[[tuple[str, UserCtx, Counted | None]], Any]:
    """Names in order; numbers and times with the users that have none as the smallest."""
    if sort == "name":
        return lambda p: p[0]
    if sort == "docs":
        return lambda p: (p[2] is not None, p[2].total if p[2] else 0, p[0])

    def by_activity(p: tuple[str, UserCtx, Counted | None]) -> Any:
        value = getattr(activity.summary(p[0]), sort)
        return (value is not None, value or 0, p[0])

    return by_activity
