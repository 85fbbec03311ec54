"""Reading conflicts from CouchDB and writing resolutions (service account)."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import orjson

from proxy.conflicts.model import classify, common_ancestor, references
from proxy.couch.client import CouchClient, quote_id
from proxy.errors import BadRequest, NotFound, UpstreamError

DESIGN_ID = "_design/couchgate-conflicts"
DESIGN = {
    "_id": DESIGN_ID,
    "language": "javascript",
    "views": {
        # Its own design doc: creating it rebuilds no other index.
        "conflicts": {
            "map": "function (doc) { if (doc._conflicts || doc._deleted_conflicts) { "
                   "emit(doc._id, {type: doc.type || null, conflicts: doc._conflicts || [], "
                   "deleted: doc._deleted_conflicts || []}); } }",
            "reduce": "_count",
        }
    },
}  # fmt: skip


class ConflictStore:
    def __init__(self, couch: CouchClient, db: str) -> None:
        self.couch = couch
        self.db = db
        self.path = "/" + quote(db, safe="")
        self._ready = False

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
        result = await self.couch.json("GET", f"{self.path}/{DESIGN_ID}/_view/conflicts")
        rows = result.body.get("rows", []) if result.ok and isinstance(result.body, dict) else []
        return int(rows[0]["value"]) if rows else 0

    async def page(self, limit: int, after: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Candidate docs (live or deleted conflicting leaves), in id order."""
        await self.ensure_view()
        params = {"reduce": "false", "limit": str(limit + 1)}
        if after is not None:
            params["startkey"] = orjson.dumps(after).decode()
            params["skip"] = "1"
        result = await self.couch.json("GET", f"{self.path}/{DESIGN_ID}/_view/conflicts", params=params)
        if not result.ok or not isinstance(result.body, dict):
            raise UpstreamError(f"the conflicts view answered {result.status}")
        rows = result.body.get("rows", [])
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1]["id"] if more and rows else None)

    async def leaves(self, doc_id: str) -> list[dict[str, Any]]:
        result = await self.couch.json(
            "GET", f"{self.path}/{quote_id(doc_id)}", params={"open_revs": "all", "revs": "true"}
        )
        if result.status == 404 or (result.ok and not result.body):
            raise NotFound("missing")
        if not result.ok or not isinstance(result.body, list):
            raise UpstreamError(f"CouchDB answered {result.status} for the leaves of a doc")
        return [row["ok"] for row in result.body if isinstance(row, dict) and isinstance(row.get("ok"), dict)]

    async def winner(self, doc_id: str) -> dict[str, Any] | None:
        result = await self.couch.json("GET", f"{self.path}/{quote_id(doc_id)}", params={"conflicts": "true"})
        return result.body if result.ok and isinstance(result.body, dict) else None

    async def revision(self, doc_id: str, rev: str) -> dict[str, Any] | None:
        result = await self.couch.json("GET", f"{self.path}/{quote_id(doc_id)}", params={"rev": rev})
        return result.body if result.ok and isinstance(result.body, dict) else None

    async def describe(self, doc_id: str) -> dict[str, Any]:
        leaves = await self.leaves(doc_id)
        if len(leaves) < 2:
            raise NotFound(f"{doc_id} has no conflicts")
        winner = await self.winner(doc_id)
        live = [leaf for leaf in leaves if not leaf.get("_deleted")]
        ancestor_rev = common_ancestor(live) if len(live) > 1 else common_ancestor(leaves)
        ancestor = await self.revision(doc_id, ancestor_rev) if ancestor_rev else None
        return {
            "id": doc_id,
            "winner": (winner or {}).get("_rev"),
            "classification": classify(leaves),
            "leaves": leaves,
            "ancestor": {"rev": ancestor_rev, "available": ancestor is not None, "doc": ancestor},
        }

    async def bulk(self, docs: list[dict[str, Any]], *, new_edits: bool = True) -> list[dict[str, Any]]:
        result = await self.couch.json(
            "POST", f"{self.path}/_bulk_docs", body={"docs": docs, "new_edits": new_edits}
        )
        if not isinstance(result.body, list):
            raise UpstreamError(f"CouchDB answered {result.status} to a resolution write")
        return [row for row in result.body if isinstance(row, dict)]

    async def all_docs_with_reference(self, target: str) -> list[dict[str, Any]]:
        """Every live doc that mentions `target` anywhere: a streamed scan of `_all_docs`
        (the cost of a split is one pass over the database; splits are rare)."""
        found: list[dict[str, Any]] = []
        start: str | None = None
        while True:
            params = {"include_docs": "true", "limit": "1001"}
            if start is not None:
                params["startkey"] = orjson.dumps(start).decode()
            result = await self.couch.json("GET", f"{self.path}/_all_docs", params=params)
            rows = result.body.get("rows", []) if result.ok and isinstance(result.body, dict) else []
            for row in rows[:1000]:
                doc = row.get("doc")
                if (
                    isinstance(doc, dict)
                    and doc.get("_id") != target
                    and not str(doc.get("_id")).startswith("_design/")
                ) and references(doc, target):
                    found.append(doc)
            if len(rows) <= 1000:
                return found
            start = rows[1000]["id"]


def bookmark(after: str | None) -> str | None:
    return base64.urlsafe_b64encode(after.encode()).decode() if after else None


def unbookmark(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        return base64.urlsafe_b64decode(raw.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("next is not a bookmark this endpoint gave") from exc
