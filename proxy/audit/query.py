"""Reading the audit log: filters, newest first, paged by an opaque bookmark.

Entries live inside batch docs (see proxy/audit/log.py). A page reads rows of the `index`
view (one row per entry, its value the entry's `[writer, seq]`) and then the entries
themselves from the `chain` view by those keys: like `include_docs`, but one entry each
rather than its whole batch doc."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from proxy.audit.log import DESIGN_ID
from proxy.couch.client import CouchClient
from proxy.errors import BadRequest, UpstreamError

MAX_LIMIT = 1000
PAGES = 20  # upstream pages scanned at most per answer when secondary filters drop rows
SCAN_PAGE = 200  # rows per upstream page when some filter is not part of the index key


@dataclass(frozen=True)
class AuditQuery:
    doc_id: str | None = None
    user: str | None = None
    action: str | None = None
    outcome: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = 100
    bookmark: str | None = None
    db: str | None = None

    def selector(self) -> tuple[list[Any], bool]:
        """The index range to read (the key prefix) and whether that prefix covers every
        filter; filters it does not cover are applied to the rows read."""
        doc, user, action, outcome = self.doc_id, self.user, self.action, self.outcome
        if doc is not None and action == "intent":
            prefix: list[Any] = ["intent", doc]  # intents stay out of a doc's history
            action = None
        elif doc is not None:
            prefix = ["doc", doc]
        elif user is not None and action is not None:
            prefix = ["user+action", user, action]
        elif user is not None and outcome is not None:
            prefix = ["user+outcome", user, outcome]
        elif user is not None:
            prefix = ["user", user]
        elif action is not None and outcome is not None:
            prefix = ["action+outcome", action, outcome]
        elif action is not None:
            prefix = ["action", action]
        elif outcome is not None:
            prefix = ["outcome", outcome]
        else:
            prefix = ["*", ""]
        filters = sum(v is not None for v in (doc, user, action, outcome, self.db))
        return prefix, filters == (0 if prefix[0] == "*" else len(prefix) - 1)

    def matches(self, doc: dict[str, Any]) -> bool:
        return (
            (self.doc_id is None or self.doc_id in names_of(doc))
            and (self.user is None or doc.get("user") == self.user)
            and (self.action is None or doc.get("action") == self.action)
            and (self.outcome is None or doc.get("outcome") == self.outcome)
            and (self.db is None or doc.get("db") == self.db)
        )


def names_of(entry: dict[str, Any]) -> set[Any]:
    """The doc ids an entry is about: its `doc_id`, or each doc an intent announced."""
    if entry.get("action") != "intent":
        return {entry.get("doc_id")}
    details = entry.get("details")
    writes = details.get("writes") if isinstance(details, dict) else None
    return {w[0] for w in writes if isinstance(w, list) and w} if isinstance(writes, list) else set()


def encode_bookmark(key: list[Any]) -> str:
    """The index key the next page starts at (inclusive)."""
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


NOT_OURS = "next is not a bookmark this endpoint gave for this query"


def decode_bookmark(raw: str, q: AuditQuery) -> list[Any]:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError) as exc:
        raise BadRequest(NOT_OURS) from exc
    prefix, _ = q.selector()
    if not isinstance(key, list) or len(key) != len(prefix) + 2 or key[: len(prefix)] != prefix:
        raise BadRequest(NOT_OURS)
    ts, doc_id = key[-2:]
    if not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(doc_id, str):
        raise BadRequest(NOT_OURS)
    if (q.since_ms is not None and ts < q.since_ms) or (q.until_ms is not None and ts > q.until_ms):
        raise BadRequest(NOT_OURS)
    return key


async def search(couch: CouchClient, db: str, q: AuditQuery) -> dict[str, Any]:
    """A page of entries, newest first, and the bookmark of the next page (None at the end).
    At most PAGES upstream pages are read per answer: when filters the index key does not
    cover drop that many rows, the page may be short (even empty) but `next` goes on."""
    prefix, covered = q.selector()
    if q.until_ms is not None and q.until_ms < (q.since_ms or 0):
        return {"entries": [], "next": None}  # before the first entry could be (1970): nothing
    high = [*prefix, q.until_ms, {}] if q.until_ms is not None else [*prefix, {}]
    low = [*prefix, q.since_ms if q.since_ms is not None else 0]
    params: dict[str, str] = {"descending": "true", "endkey": orjson.dumps(low).decode()}
    start_key: list[Any] = decode_bookmark(q.bookmark, q) if q.bookmark else high
    page_size = q.limit if covered else max(q.limit, SCAN_PAGE)
    found: list[dict[str, Any]] = []
    next_mark: str | None = None
    path = f"/{quote(db, safe='')}/{DESIGN_ID}/_view/index"
    for _ in range(PAGES):
        page = {**params, "startkey": orjson.dumps(start_key).decode(), "limit": str(page_size + 1)}
        result = await couch.json("GET", path, params=page)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"the audit index answered {result.status}")
        rows = result.body.get("rows", [])
        by_key = await entries_at(couch, db, [row.get("value") for row in rows[:page_size]])
        filled_at = None
        for i, row in enumerate(rows[:page_size]):
            doc = by_key.get(orjson.dumps(row.get("value")))
            if doc is not None and q.matches(doc):
                found.append(doc)
                if len(found) == q.limit:
                    filled_at = i
                    break
        if filled_at is not None:
            if filled_at + 1 < len(rows):
                next_mark = encode_bookmark(rows[filled_at + 1]["key"])
            break
        if len(rows) <= page_size:
            break  # the range is exhausted
        start_key = rows[page_size]["key"]
    else:
        next_mark = encode_bookmark(start_key)  # the scan budget ran out here
    entries = [{k: v for k, v in d.items() if k not in ("_rev", "type")} for d in found]
    return {"entries": entries, "next": next_mark}


async def entries_at(couch: CouchClient, db: str, keys: list[Any]) -> dict[bytes, dict[str, Any]]:
    """The entries at `keys` (`[writer, seq]`, as the index rows give them), by their JSON
    key. An entry gone since its index row was read (retention) is simply absent."""
    wanted = list({orjson.dumps(k): k for k in keys if isinstance(k, list)}.values())
    if not wanted:
        return {}
    path = f"/{quote(db, safe='')}/{DESIGN_ID}/_view/chain"
    result = await couch.json("POST", path, body={"keys": wanted})
    if not result.ok or not isinstance(result.body, dict):
        raise UpstreamError(f"the audit index answered {result.status}")
    return {
        orjson.dumps(row.get("key")): row["value"]
        for row in result.body.get("rows", [])
        if isinstance(row, dict) and isinstance(row.get("value"), dict)
    }
