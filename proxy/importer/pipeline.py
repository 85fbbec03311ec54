"""The import pipeline: the input in chunks, each chunk's stored docs read (`_bulk_get`),
what must change written with `_bulk_docs`, every doc answered in input order with its
status and audited; nothing stops at the first problem. What may be written, and why not,
is the policy's (`proxy.importer.policy`).

Whose eyes look: admins and offline users read with the service account (an offline
user's docs are judged by the policy); online users read and write with their own
credentials, so CouchDB's `_security` applies to both.

Every chunk is read first, then only what must change is written. The read is `_bulk_get`
(`Docs.winners(bulk_get=True)`; about 4x faster than `_all_docs?keys&include_docs` on
CouchDB 3.4, which made an import 0.25x of a plain `_bulk_docs` there, now 0.6-0.9x:
docs/benchmarks.md), and `_all_docs` when attachments are wanted inline. Writing
optimistically (the whole chunk to `_bulk_docs`, reading back only the conflicts) was
measured slower: a conflicting row costs the backend about as much as a read, so the
existing half was paid for twice (bench/import_throughput.py).

When CouchDB fails during a chunk, that chunk's unanswered docs get the status `error`
(it may or may not be written: importing again is safe); after a few chunks in a row
failed, the rest is answered `error` without trying.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy import observe
from proxy.access.config import UserCtx
from proxy.audit.api import Outcome
from proxy.audit.recorder import Recorder, error_outcome
from proxy.couch.client import CouchClient, JsonResult
from proxy.couch.docs import Docs, ReadFailed
from proxy.errors import CouchgateError
from proxy.importer.docs import Invalid, Prepared, branch_would_win, needs_attachment_data, prepare
from proxy.importer.policy import SKIPPED, Mode, placement, policy_for, unchanged
from proxy.importer.source import BadLine
from proxy.keys import INDEX

log = logging.getLogger("couchgate.import")

CHUNK = 500
IN_FLIGHT = 3
RETRIES = 3
GIVE_UP_AFTER = 3  # chunks failing upstream in a row before the rest is not even tried

UPSTREAM_FAILED = (
    "CouchDB failed while this doc was imported; it may or may not be written: import again (safe)"
)
NOT_TRIED = "not imported: CouchDB failed for the chunks before this one; import again (safe)"
INTERNAL = "couchgate failed while importing this doc; it may or may not be written: import again (safe)"


@dataclass
class Plan:
    db_path: str
    mode: Mode
    dry_run: bool
    user: UserCtx | None  # set for offline users: the access rules judge each doc
    credentials: dict[str, str]  # whose authority CouchDB applies to the writes
    is_admin: bool
    max_doc_bytes: int
    max_attachment_bytes: int
    read_as: dict[str, str] | None = None  # online users' own credentials for reads; None: service
    summary: dict[str, int] = field(default_factory=dict)


class UpstreamFailed(Exception):
    """CouchDB answered a chunk's read or write with an error for the whole request."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.error = str(body.get("error", "error")) if isinstance(body, dict) else "error"
        self.reason = str(body.get("reason", "")) if isinstance(body, dict) else ""


@dataclass
class ChunkState:
    """A chunk's answers so far (kept when a later step fails) and what the audit needs."""

    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    rev_before: dict[int, str] = field(default_factory=dict)


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


class Importer:
    def __init__(self, request: web.Request, couch: CouchClient, plan: Plan, audit: Recorder) -> None:
        self.request = request
        self.couch = couch
        self.plan = plan
        self.audit = audit
        self.policy = policy_for(plan.user, request.app[INDEX], plan.dry_run)
        self.failed_chunks = 0

    async def run(self, items: AsyncIterator[Any]) -> AsyncGenerator[list[dict[str, Any]]]:
        """Rows in input order, a chunk at a time, as soon as each chunk is done: reading the
        input runs apart from answering, so the first rows go out while the rest is still
        arriving. Up to IN_FLIGHT chunks are worked on at once, unless the policy needs them
        in order (an offline user's: contacts created by one are in the tree when the next
        is judged).

        If the body cannot be read on, what was read is still answered, then the error is
        raised. Chunks already started always finish (and are audited), even when the
        client has gone or the request is cancelled."""
        sequential = self.policy.in_order
        # Started chunks: the one being answered, the queued ones, the one waiting to queue.
        queue: asyncio.Queue[asyncio.Task[list[dict[str, Any]]] | Exception | None] = asyncio.Queue(
            maxsize=max(1, IN_FLIGHT - 2)
        )
        running: set[asyncio.Task[list[dict[str, Any]]]] = set()

        def start(chunk: list[tuple[int, Any]], after: asyncio.Task[Any] | None) -> asyncio.Task[Any]:
            task = asyncio.create_task(self.chunk(chunk, after if sequential else None))
            running.add(task)
            task.add_done_callback(running.discard)
            return task

        async def read() -> None:
            chunk: list[tuple[int, Any]] = []
            previous: asyncio.Task[Any] | None = None
            index = 0
            try:
                async for item in items:
                    chunk.append((index, item))
                    index += 1
                    if len(chunk) == CHUNK:
                        previous = start(chunk, previous)
                        chunk = []
                        await queue.put(previous)
            except Exception as exc:  # answered after the rows of what was read
                if chunk:
                    await queue.put(start(chunk, previous))
                await queue.put(exc)
                return
            if chunk:
                await queue.put(start(chunk, previous))
            await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            while (got := await queue.get()) is not None:
                if isinstance(got, Exception):
                    raise got
                # Shielded: a cancelled request must not stop a chunk mid-write.
                yield await asyncio.shield(got)
        finally:
            reader.cancel()
            if running:
                await asyncio.shield(asyncio.gather(*running, return_exceptions=True))

    async def chunk(
        self, items: list[tuple[int, Any]], after: asyncio.Task[Any] | None = None
    ) -> list[dict[str, Any]]:
        if after is not None:
            await asyncio.wait([after])  # offline users: the chunk before is written first
        state = ChunkState()
        answers = state.answers
        prepared: list[Prepared] = []
        seen: set[str] = set()
        plan = self.plan
        for index, item in items:
            try:
                if isinstance(item, BadLine):
                    raise Invalid(item.reason)
                doc = prepare(
                    index,
                    item,
                    is_admin=plan.is_admin,
                    max_doc_bytes=plan.max_doc_bytes,
                    max_attachment_bytes=plan.max_attachment_bytes,
                )
            except Invalid as exc:
                answers[index] = result(index, _id_of(item), "invalid", reason=str(exc))
                continue
            except (ValueError, TypeError, RecursionError):
                answers[index] = result(index, _id_of(item), "invalid", reason="the doc cannot be read")
                continue
            if doc.id in seen:
                answers[index] = result(
                    index, doc.id, "invalid", reason="the same _id appears twice in one chunk"
                )
                continue
            seen.add(doc.id)
            prepared.append(doc)
        if prepared:
            await self._guarded(prepared, state)
        rows = [answers[index] for index, _ in items]
        self._account(rows, state, prepared)
        return rows

    async def _guarded(self, docs: list[Prepared], state: ChunkState) -> None:
        """`_import`, with a failure turned into rows for the docs not answered yet."""
        if self.failed_chunks >= GIVE_UP_AFTER:
            status, reason = "error", NOT_TRIED
        else:
            try:
                if not self.plan.dry_run:
                    # The audit log's backpressure: each doc gets an entry, so a fast import
                    # must not outrun the audit writer (memory stays bounded).
                    await self.audit.admit()
                await self._import(docs, state)
                self.failed_chunks = 0
                return
            except UpstreamFailed as exc:
                if exc.status in (401, 403):
                    status, reason = "forbidden", exc.reason or exc.error
                else:
                    self.failed_chunks += 1
                    log.warning("import chunk failed upstream: %s %s", exc.status, exc.error)
                    status, reason = "error", UPSTREAM_FAILED
            except CouchgateError as exc:
                self.failed_chunks += 1
                log.warning("import chunk failed upstream: %s", exc.reason)
                status, reason = "error", UPSTREAM_FAILED
            except Exception:
                log.exception("import chunk failed")
                status, reason = "error", INTERNAL
        for doc in docs:
            if doc.index not in state.answers:
                state.answers[doc.index] = result(doc.index, doc.id, status, reason=reason)

    async def _import(self, docs: list[Prepared], state: ChunkState, attempt: int = 0) -> None:
        answers = state.answers
        stored, deleted = await self._stored([d.id for d in docs])
        with_data = [d.id for d in docs if needs_attachment_data(d.doc, stored.get(d.id))]
        if with_data:  # compared by their bytes, read again with the attachments inline
            stored.update((await self._stored(with_data, attachments=True))[0])
        for doc in docs:
            current = stored.get(doc.id)
            if current is not None:
                state.rev_before[doc.index] = current["_rev"]
        visible, hidden = await self.policy.visible(stored, deleted)
        changed = []
        for doc in docs:
            current = stored.get(doc.id)
            if current is not None and unchanged(doc, current, visible):
                answers[doc.index] = result(doc.index, doc.id, "unchanged", rev=current.get("_rev"))
            else:
                changed.append(doc)
        refused = await self.policy.refusals(changed, stored, hidden)
        writes: list[tuple[Prepared, dict[str, Any], str]] = []  # (doc, body, status if written)
        branches: list[tuple[Prepared, dict[str, Any]]] = []
        for doc in changed:
            if doc.index in refused:
                status, reason = refused[doc.index]
                answers[doc.index] = result(doc.index, doc.id, status, reason=reason)
                continue
            how, body = placement(self.plan.mode, doc, stored.get(doc.id))
            if how == "skipped":
                answers[doc.index] = result(
                    doc.index, doc.id, "skipped", rev=body.get("_rev"), reason=SKIPPED
                )
            elif how == "branch":
                branches.append((doc, body))
            else:
                writes.append((doc, body, how))
        if self.plan.dry_run:
            for doc, _, status in writes:
                answers[doc.index] = result(doc.index, doc.id, status)
            for doc, body in branches:
                answers[doc.index] = branched(doc, body, "would be stored as a conflicting branch")
            return
        retry: list[Prepared] = []
        if branches:
            branches = await self._settle_winners(branches, stored, retry, answers)
        if writes:
            rows = await self._bulk([body for _, body, _ in writes], new_edits=True)
            for doc, _, status in writes:
                row = rows.get(doc.id) or {"error": "unknown", "reason": "CouchDB answered no row"}
                if "error" not in row:
                    answers[doc.index] = result(doc.index, doc.id, status, rev=row.get("rev"))
                elif row["error"] == "conflict" and attempt < RETRIES:
                    retry.append(doc)  # someone wrote it meanwhile: look again
                else:
                    answers[doc.index] = result(
                        doc.index, doc.id, error_outcome(row["error"]), reason=str(row.get("reason"))
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
                    answers[doc.index] = result(doc.index, doc.id, error_outcome(error), reason=why)
        if retry:
            await self._import(retry, state, attempt + 1)

    async def _settle_winners(
        self,
        branches: list[tuple[Prepared, dict[str, Any]]],
        stored: Mapping[str, dict[str, Any] | None],
        retry: list[Prepared],
        answers: dict[int, dict[str, Any]],
    ) -> list[tuple[Prepared, dict[str, Any]]]:
        """keep_both must leave the stored version visible: a winner that is a first revision
        and sorts below the branch is first written again, unchanged, as a second revision."""
        winners = {doc.id: stored.get(doc.id) or {} for doc, _ in branches}
        bump = [
            (doc, body)
            for doc, body in branches
            if branch_would_win(body["_rev"], winners[doc.id].get("_rev"))
        ]
        if not bump:
            return branches
        rows = await self._bulk([winners[doc.id] for doc, _ in bump], new_edits=True)
        failed = set()
        for doc, _ in bump:
            row = rows.get(doc.id) or {"error": "unknown"}
            if "error" in row:
                failed.add(doc.index)
                if row["error"] == "conflict":
                    retry.append(doc)
                else:
                    answers[doc.index] = result(
                        doc.index, doc.id, error_outcome(row["error"]), reason=str(row.get("reason"))
                    )
        return [(doc, body) for doc, body in branches if doc.index not in failed]

    async def _stored(
        self, ids: list[str], attachments: bool = False
    ) -> tuple[dict[str, dict[str, Any] | None], set[str]]:
        """The current winner of each id (None: missing or deleted) and the deleted ids,
        read as the caller (online users) or the service account (admins; offline users,
        judged here); `attachments`: with their data inline."""
        found: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
        deleted: set[str] = set()
        if not ids:
            return found, deleted
        docs = Docs(self.couch, self.plan.db_path, self.plan.read_as)

        async def read(keys: list[str]) -> None:
            try:
                winners = await docs.winners(keys, attachments=attachments, bulk_get=not attachments)
            except ReadFailed as exc:  # CouchDB's refusal of the caller is theirs (forbidden)
                raise UpstreamFailed(exc.upstream_status, exc.upstream_body) from exc
            found.update(winners.live)
            deleted.update(winners.deleted)

        sync = self.request.app[INDEX]
        if self.plan.db_path == sync.path and sync.built.is_set() and not self.policy.reads_every_id:
            # The scope index knows every id of its database: once it is level with
            # CouchDB as of now, an id it does not know does not exist, and is not read (a
            # fresh import reads nothing); an id it learnt meanwhile is read after. When
            # the index cannot be brought level, every id is read (and always when the
            # policy says so); members and admins may read every doc anyway.
            known = [i for i in ids if i in sync.index.entries]
            level, first = await asyncio.gather(sync.sync(), read(known), return_exceptions=True)
            if isinstance(first, BaseException):
                raise first
            learnt = set(known)
            rest = [i for i in ids if i not in learnt]
            await read(
                rest if isinstance(level, BaseException) else [i for i in rest if i in sync.index.entries]
            )
        else:
            await read(ids)
        return found, deleted

    async def _bulk(self, docs: list[dict[str, Any]], *, new_edits: bool) -> dict[str, dict[str, Any]]:
        """CouchDB's row for each doc, by id. A request CouchDB refuses as a whole for its
        content (400) is split until the doc at fault answers alone."""
        # The crash-proof audit: the intent is stored before the write (proxy/audit/recorder.py).
        await self.audit.intend_docs(self.plan.db_path.strip("/"), docs, new_edits)
        answer = await self._post(f"{self.plan.db_path}/_bulk_docs", {"docs": docs, "new_edits": new_edits})
        if isinstance(answer.body, list):
            return {row["id"]: row for row in answer.body if isinstance(row, dict) and "id" in row}
        if answer.status == 400 and len(docs) > 1:
            half = len(docs) // 2
            return {
                **await self._bulk(docs[:half], new_edits=new_edits),
                **await self._bulk(docs[half:], new_edits=new_edits),
            }
        if answer.status == 400:
            failed = UpstreamFailed(answer.status, answer.body)
            return {docs[0]["_id"]: {"id": docs[0]["_id"], "error": failed.error, "reason": failed.reason}}
        raise UpstreamFailed(answer.status, answer.body)

    async def _post(self, path: str, body: dict[str, Any]) -> JsonResult:
        """A chunk's one write upstream, with the caller's authority (where faults are
        injected in the tests)."""
        credentials = self.plan.credentials
        return await self.couch.json("POST", path, body=body, headers=credentials, use_service=False)

    def _account(self, rows: list[dict[str, Any]], state: ChunkState, docs: list[Prepared]) -> None:
        """Counts for the summary, and one audit entry per doc (before the rows are sent)."""
        summary = self.plan.summary
        for row in rows:
            summary[row["status"]] = summary.get(row["status"], 0) + 1
        observe.imported(rows, self.plan.dry_run)  # metrics
        if self.plan.dry_run:
            return
        types = {d.index: t for d in docs if isinstance(t := d.doc.get("type"), str)}
        db = self.plan.db_path.strip("/")
        for row in rows:
            status, index = row["status"], row["index"]
            written = status in ("created", "updated") or (status == "conflict" and "rev" in row)
            outcome: Outcome = "written" if written else AUDIT_OUTCOMES[status]
            self.audit.record(
                "import",
                outcome,
                db=db,
                doc_id=row["id"],
                rev_before=state.rev_before.get(index),
                rev_after=row.get("rev") if written else None,
                doc_type=types.get(index),
                reason=row.get("reason") or (None if written else status),
                details={"status": status, "index": index},
            )


# The audit outcome of each import status when nothing was written (a keep_both branch
# that was stored, like created and updated, is `written`). A doc CouchDB refused has the
# status its row's outcome names (`proxy.audit.recorder.error_outcome`).
AUDIT_OUTCOMES: dict[str, Outcome] = {
    "unchanged": "success",
    "skipped": "success",
    "conflict": "conflict",
    "forbidden": "forbidden",
    "invalid": "invalid",
    "error": "error",
}


def _id_of(item: Any) -> str | None:
    if isinstance(item, dict):
        doc = item.get("doc")
        inner: dict[str, Any] = doc if isinstance(doc, dict) else item
        value = inner.get("_id", item.get("id", item.get("key")))
        return value if isinstance(value, str) else None
    return None
