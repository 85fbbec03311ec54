"""Reading the audit log: filters, newest first, paged by an opaque bookmark."""

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

    def selector(self) -> tuple[str, str]:
        """The most selective filter picks the index range; the others filter rows."""
        for kind, value in (
            ("doc", self.doc_id),
            ("user", self.user),
            ("action", self.action),
            ("outcome", self.outcome),
        ):
            if value is not None:
                return kind, value
        return "*", ""

    def matches(self, doc: dict[str, Any]) -> bool:
        return (
            (self.doc_id is None or doc.get("doc_id") == self.doc_id)
            and (self.user is None or doc.get("user") == self.user)
            and (self.action is None or doc.get("action") == self.action)
            and (self.outcome is None or doc.get("outcome") == self.outcome)
        )


def encode_bookmark(key: Any, doc_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([key, doc_id])).decode().rstrip("=")


def decode_bookmark(raw: str) -> tuple[Any, str]:
    try:
        key, doc_id = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError) as exc:
        raise BadRequest("next is not a bookmark this endpoint gave") from exc
    if not isinstance(doc_id, str) or not isinstance(key, list):
        raise BadRequest("next is not a bookmark this endpoint gave")
    return key, doc_id


async def search(couch: CouchClient, db: str, q: AuditQuery) -> dict[str, Any]:
    kind, value = q.selector()
    high: list[Any] = [kind, value, q.until_ms if q.until_ms is not None else {}]
    low: list[Any] = [kind, value, q.since_ms if q.since_ms is not None else 0]
    params: dict[str, str] = {
        "descending": "true",
        "include_docs": "true",
        "endkey": orjson.dumps(low).decode(),
    }
    start_key: Any = high
    start_id: str | None = None
    if q.bookmark:
        start_key, start_id = decode_bookmark(q.bookmark)
    found: list[dict[str, Any]] = []
    next_mark: str | None = None
    path = f"/{quote(db, safe='')}/{DESIGN_ID}/_view/index"
    for _ in range(PAGES):
        page = {**params, "startkey": orjson.dumps(start_key).decode(), "limit": str(q.limit + 1)}
        if start_id is not None:
            page["startkey_docid"] = start_id
            page["skip"] = "1"
        result = await couch.json("GET", path, params=page)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"the audit index answered {result.status}")
        rows = result.body.get("rows", [])
        for row in rows:
            doc = row.get("doc")
            if isinstance(doc, dict) and q.matches(doc):
                found.append(doc)
                if len(found) == q.limit:
                    next_mark = encode_bookmark(row["key"], row["id"])
                    break
        if next_mark is not None or len(rows) <= q.limit:
            break
        start_key, start_id = rows[-1]["key"], rows[-1]["id"]
    entries = [{k: v for k, v in d.items() if k not in ("_rev", "type")} for d in found]
    return {"entries": entries, "next": next_mark}
