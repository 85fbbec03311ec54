"""Reading conflicts from CouchDB and writing resolutions (service account)."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

import orjson

from proxy.conflicts.model import references
from proxy.couch.client import CouchClient
from proxy.couch.docs import Docs
from proxy.errors import BadRequest, Conflict, CouchgateError, Forbidden, NotFound, UpstreamError

DESIGN_ID = "_design/couchgate-conflicts"
# Which docs the view lists: those with live `_conflicts`, as CouchDB (and CHT's
# medic-conflicts view) define a conflicted doc. `_deleted_conflicts` alone does not list a
# doc: every doc couchgate ever resolved keeps its resolution's tombstones there, and a map
# function sees only their revs, not the `couchgate_resolved` mark in their bodies, so
# counting them would keep every resolved doc listed (and the gauge up) forever. A live doc
# whose only other leaf is a user's deletion is therefore not listed (CouchDB already shows
# the edit); GET .../conflicts/{id} still classifies it `delete_vs_edit`. A listed doc with
# deleted leaves too has them read and checked for the mark. The value carries what a
# listing needs, so that a page costs one view read and one `_bulk_get`.
DESIGN = {
    "_id": DESIGN_ID,
    "language": "javascript",
    "views": {
        # Its own design doc: creating it rebuilds no other index.
        "conflicts": {
            "map": "function (doc) { if (doc._conflicts && doc._conflicts.length) { "
                   "emit(doc._id, {rev: doc._rev, type: doc.type || null, conflicts: doc._conflicts, "
                   "deleted: doc._deleted_conflicts || []}); } }",
            "reduce": "_count",
        }
    },
}  # fmt: skip
VIEW = f"{DESIGN_ID}/_view/conflicts"
# CouchDB's `update` view parameter: `true` waits for the index to take in every change
# before answering; `lazy` answers from the index as it is and updates it afterwards.
UPDATES = ("true", "lazy", "false")


def row_revs(row: dict[str, Any]) -> list[str]:
    """Every leaf rev a view row names (winner, live conflicts, deletions)."""
    value = row.get("value")
    if not isinstance(value, dict):
        return []
    revs = [value.get("rev"), *(value.get("conflicts") or []), *(value.get("deleted") or [])]
    return [rev for rev in revs if isinstance(rev, str)]


# Stores the intent of a write before it is made (the crash-proof audit, proxy/audit/recorder.py).
Intend = Callable[[list[dict[str, Any]], bool], Awaitable[None]]


class ConflictStore:
    def __init__(self, couch: CouchClient, db: str, intend: Intend | None = None) -> None:
        self.couch = couch
        self.db = db
        self.path = "/" + quote(db, safe="")
        self.docs = Docs(couch, self.path)
        self._ready = False
        self.intend = intend

    async def exists(self) -> bool:
        result = await self.couch.json("GET", self.path)
        if result.status == 404:
            return False
        if not result.ok:
            raise UpstreamError(f"CouchDB answered {result.status} for a database")
        return True

    async def ensure_view(self) -> None:
        if self._ready:
            return
        current = await self.couch.json("GET", f"{self.path}/{DESIGN_ID}")
        body = current.body if current.ok and isinstance(current.body, dict) else None
        if current.status == 404 or (body is not None and body.get("views") != DESIGN["views"]):
            doc = {**DESIGN, **({"_rev": body["_rev"]} if body else {})}
            result = await self.couch.json("PUT", f"{self.path}/{DESIGN_ID}", body=doc)
            if not result.ok and result.status != 409:
                raise UpstreamError(f"cannot create the conflicts view ({result.status})")
        elif not current.ok:
            raise UpstreamError(f"cannot read the conflicts view ({current.status})")
        self._ready = True

    async def count(self) -> int:
        await self.ensure_view()
        result = await self.couch.json("GET", f"{self.path}/{VIEW}")
        rows = result.body.get("rows", []) if result.ok and isinstance(result.body, dict) else []
        return int(rows[0]["value"]) if rows else 0

    async def page(
        self, limit: int, after: str | None, update: str = "true"
    ) -> tuple[list[dict[str, Any]], str | None]:
        """View rows `{id, value: {rev, type, conflicts, deleted}}`, in id order."""
        await self.ensure_view()
        params = {"reduce": "false", "limit": str(limit + 1), "update": update}
        if after is not None:
            params["startkey"] = orjson.dumps(after).decode()
            params["skip"] = "1"
        result = await self.couch.json("GET", f"{self.path}/{VIEW}", params=params)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"the conflicts view answered {result.status}")
        rows = [row for row in result.body.get("rows", []) if isinstance(row, dict)]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1]["id"] if more and rows else None)

    async def leaves(self, doc_id: str) -> list[dict[str, Any]]:
        found = await self.docs.leaves(doc_id, what="for the leaves of a doc")
        if found is None:
            raise NotFound("missing")
        return found

    async def revisions(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Bodies and histories of many (id, rev) pairs in one `_bulk_get`; what CouchDB no
        longer has is left out."""
        found = await self.docs.revisions(wanted, revs=True, what="to a _bulk_get")
        return {pair: doc for pair, doc in found.items() if doc is not None}

    async def winners(self, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The current winning bodies of some docs (missing and deleted ones left out)."""
        return (await self.docs.winners(doc_ids, what="to _all_docs")).live

    async def revision(self, doc_id: str, rev: str) -> dict[str, Any] | None:
        """One revision, or None where CouchDB no longer has it (compacted)."""
        return await self.docs.revision(doc_id, rev)

    async def bulk(self, docs: list[dict[str, Any]], *, new_edits: bool = True) -> list[dict[str, Any]]:
        """One `_bulk_docs`; its rows (CouchDB writes each doc on its own: some rows may
        fail while others succeed). A refusal of the whole request is the caller's fault
        (400) unless CouchDB says otherwise."""
        if self.intend is not None:
            await self.intend(docs, new_edits)
        result = await self.couch.json(
            "POST", f"{self.path}/_bulk_docs", body={"docs": docs, "new_edits": new_edits}
        )
        if isinstance(result.body, list):
            return [row for row in result.body if isinstance(row, dict)]
        error = result.body.get("error") if isinstance(result.body, dict) else None
        if result.status == 400 or error in ("bad_request", "doc_validation"):
            raise BadRequest(f"CouchDB refused the write: {_reason(result.body)}")
        raise UpstreamError(f"CouchDB answered {result.status} to a resolution write")

    async def all_docs_with_reference(self, target: str) -> list[dict[str, Any]]:
        """Every live doc that mentions `target` anywhere: a scan of `_all_docs`, a page at
        a time (the cost of a split is one pass over the database; splits are rare)."""
        return [
            doc
            async for doc in self.docs.scan(what="to _all_docs")
            if doc.get("_id") != target
            and not str(doc.get("_id")).startswith("_design/")
            and references(doc, target)
        ]


def row_error(row: dict[str, Any]) -> CouchgateError:
    """The error a refused `_bulk_docs` row stands for."""
    reason = _reason(row)
    if row.get("error") == "conflict":
        return Conflict(reason)
    if row.get("error") in ("forbidden", "unauthorized"):
        return Forbidden(reason)
    return BadRequest(reason)


def _reason(body: Any) -> str:
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else "refused"


def bookmark(after: str | None) -> str | None:
    return base64.urlsafe_b64encode(after.encode()).decode() if after else None


def unbookmark(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        return base64.urlsafe_b64decode(raw.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("next is not a bookmark this endpoint gave") from exc
