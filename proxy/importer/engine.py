"""Import chunks of docs: existence checks with `_all_docs?keys`, writes with `_bulk_docs`,
every doc answered in input order; nothing stops at the first problem."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from proxy.access.config import UserCtx
from proxy.access.decide import authorize_batch
from proxy.audit.api import Outcome
from proxy.audit.capture import record
from proxy.couch.client import CouchClient
from proxy.importer.docs import Invalid, Prepared, branch_rev, prepare, same_content
from proxy.importer.source import BadLine
from proxy.keys import INDEX

Mode = Literal["skip", "overwrite", "keep_both"]
AUDIT_OUTCOMES: dict[str, Outcome] = {
    "created": "written",
    "updated": "written",
    "conflict": "conflict",
    "forbidden": "forbidden",
    "invalid": "invalid",
}
CHUNK = 500
IN_FLIGHT = 3
RETRIES = 3


@dataclass
class Plan:
    db_path: str
    mode: Mode
    dry_run: bool
    user: UserCtx | None  # set for offline users: the access rules judge each doc
    credentials: dict[str, str]  # whose authority CouchDB applies to the writes
    is_admin: bool
    max_doc_bytes: int
    summary: dict[str, int] = field(default_factory=dict)


def result(
    index: int, doc_id: str | None, status: str, rev: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {"index": index, "id": doc_id, "status": status}
    if rev is not None:
        row["rev"] = rev
    if reason is not None:
        row["reason"] = reason
    return row


def branched(doc: Prepared, body: dict[str, Any], reason: str) -> dict[str, Any]:
    """keep_both's answer: `conflict`, with the rev of the branch holding the import."""
    return result(doc.index, doc.id, "conflict", rev=body["_rev"], reason=reason)


async def stored_winners(
    couch: CouchClient, db_path: str, ids: list[str]
) -> dict[str, dict[str, Any] | None]:
    found: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
    if not ids:
        return found
    answer = await couch.json(
        "POST", f"{db_path}/_all_docs", body={"keys": ids}, params={"include_docs": "true"}
    )
    for row in answer.body.get("rows", []) if answer.ok and isinstance(answer.body, dict) else []:
        if isinstance(row, dict) and isinstance(row.get("doc"), dict):
            found[row["key"]] = row["doc"]
    return found


class Importer:
    def __init__(self, request: web.Request, couch: CouchClient, plan: Plan) -> None:
        self.request = request
        self.couch = couch
        self.plan = plan

    async def run(self, items: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
        """Results in input order, chunk by chunk, as they are known. For admins and online
        users a few chunks are in flight at once; an offline user's chunks go one after the
        other, so contacts created by one are in the tree when the next is judged."""
        in_flight = 1 if self.plan.user is not None else IN_FLIGHT
        pending: deque[asyncio.Task[list[dict[str, Any]]]] = deque()
        chunk: list[tuple[int, Any]] = []
        index = 0
        try:
            async for item in items:
                chunk.append((index, item))
                index += 1
                if len(chunk) == CHUNK:
                    pending.append(asyncio.create_task(self.chunk(chunk)))
                    chunk = []
                    while len(pending) >= in_flight:
                        for row in await pending.popleft():
                            yield row
            if chunk:
                pending.append(asyncio.create_task(self.chunk(chunk)))
            while pending:
                for row in await pending.popleft():
                    yield row
        finally:
            for task in pending:
                task.cancel()

    async def chunk(self, items: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        answers: dict[int, dict[str, Any]] = {}
        prepared: list[Prepared] = []
        seen: set[str] = set()
        for index, item in items:
            try:
                if isinstance(item, BadLine):
                    raise Invalid(item.reason)
                doc = prepare(index, item, is_admin=self.plan.is_admin, max_doc_bytes=self.plan.max_doc_bytes)
            except Invalid as exc:
                answers[index] = result(index, _id_of(item), "invalid", reason=str(exc))
                continue
            if doc.id in seen:
                answers[index] = result(
                    index, doc.id, "invalid", reason="the same _id appears twice in one chunk"
                )
                continue
            seen.add(doc.id)
            prepared.append(doc)
        if prepared:
            answers.update(await self._import(prepared))
        rows = [answers[index] for index, _ in items]
        self._account(rows)
        return rows

    async def _import(self, docs: list[Prepared], attempt: int = 0) -> dict[int, dict[str, Any]]:
        stored = await stored_winners(self.couch, self.plan.db_path, [d.id for d in docs])
        answers: dict[int, dict[str, Any]] = {}
        changed = []
        for doc in docs:
            current = stored.get(doc.id)
            if same_content(doc.doc, current):  # nothing to write, so nothing to permit
                answers[doc.index] = result(doc.index, doc.id, "unchanged", rev=(current or {}).get("_rev"))
            else:
                changed.append(doc)
        allowed = await self._judge(changed, stored, answers)
        writes: list[tuple[Prepared, dict[str, Any], str]] = []  # (doc, body, status if written)
        branches: list[tuple[Prepared, dict[str, Any]]] = []
        for doc in allowed:
            current = stored.get(doc.id)
            if current is None:
                writes.append((doc, doc.doc, "created"))
            elif self.plan.mode == "skip":
                answers[doc.index] = result(
                    doc.index,
                    doc.id,
                    "skipped",
                    rev=current.get("_rev"),
                    reason="a doc with this _id exists (on_conflict=skip)",
                )
            elif self.plan.mode == "overwrite":
                writes.append((doc, {**doc.doc, "_rev": current["_rev"]}, "updated"))
            else:
                branches.append((doc, {**doc.doc, "_rev": branch_rev(doc.doc)}))
        if self.plan.dry_run:
            for doc, _, status in writes:
                answers[doc.index] = result(doc.index, doc.id, status)
            for doc, body in branches:
                answers[doc.index] = branched(doc, body, "would be stored as a conflicting branch")
            return answers
        retry: list[Prepared] = []
        if writes:
            rows = await self._bulk([body for _, body, _ in writes], new_edits=True)
            for doc, _, status in writes:
                row = rows.get(doc.id) or {}
                if "error" not in row:
                    answers[doc.index] = result(doc.index, doc.id, status, rev=row.get("rev"))
                elif row["error"] == "conflict" and attempt < RETRIES:
                    retry.append(doc)  # someone wrote it meanwhile: look again
                else:
                    answers[doc.index] = result(
                        doc.index, doc.id, _status(row["error"]), reason=str(row.get("reason"))
                    )
        if branches:
            rows = await self._bulk([body for _, body in branches], new_edits=False)
            for doc, body in branches:
                branch_row = rows.get(doc.id)
                if branch_row is None or "error" not in branch_row:
                    answers[doc.index] = branched(
                        doc, body, "stored as a conflicting branch (on_conflict=keep_both)"
                    )
                else:
                    error, why = branch_row["error"], str(branch_row.get("reason"))
                    answers[doc.index] = result(doc.index, doc.id, _status(error), reason=why)
        if retry:
            answers.update(await self._import(retry, attempt + 1))
        return answers

    async def _judge(
        self,
        docs: list[Prepared],
        stored: Mapping[str, dict[str, Any] | None],
        answers: dict[int, dict[str, Any]],
    ) -> list[Prepared]:
        """Offline users: the access rules, with this chunk's permitted contacts applied."""
        if self.plan.user is None or not docs:
            return docs
        sync = self.request.app[INDEX]
        await sync.sync()  # contacts written by earlier chunks are in the tree now
        decisions = authorize_batch(self.plan.user, sync.settings, sync.index, [d.doc for d in docs], stored)
        allowed = []
        for doc, decision in zip(docs, decisions, strict=True):
            if decision.allowed:
                allowed.append(doc)
            else:
                answers[doc.index] = result(doc.index, doc.id, "forbidden", reason=decision.reason)
        return allowed

    async def _bulk(self, docs: list[dict[str, Any]], *, new_edits: bool) -> dict[str, dict[str, Any]]:
        answer = await self.couch.json(
            "POST",
            f"{self.plan.db_path}/_bulk_docs",
            body={"docs": docs, "new_edits": new_edits},
            headers=self.plan.credentials,
            use_service=False,
        )
        if not isinstance(answer.body, list):
            error = answer.body.get("error", "error") if isinstance(answer.body, dict) else "error"
            reason = answer.body.get("reason", "") if isinstance(answer.body, dict) else ""
            return {d["_id"]: {"id": d["_id"], "error": error, "reason": reason} for d in docs}
        return {row["id"]: row for row in answer.body if isinstance(row, dict) and "id" in row}

    def _account(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.plan.summary[row["status"]] = self.plan.summary.get(row["status"], 0) + 1
            if not self.plan.dry_run:
                outcome = AUDIT_OUTCOMES.get(row["status"])
                if outcome is not None:
                    record(
                        self.request,
                        "import",
                        outcome,
                        db=self.plan.db_path.strip("/"),
                        doc_id=row["id"],
                        rev_after=row.get("rev"),
                        reason=row.get("reason"),
                    )


def _status(error: str) -> str:
    return {"conflict": "conflict", "forbidden": "forbidden", "unauthorized": "forbidden"}.get(
        error, "invalid"
    )


def _id_of(item: Any) -> str | None:
    if isinstance(item, dict):
        doc = item.get("doc")
        inner: dict[str, Any] = doc if isinstance(doc, dict) else item
        value = inner.get("_id", item.get("id"))
        return value if isinstance(value, str) else None
    return None
