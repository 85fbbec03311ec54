"""CouchDB's documents as couchgate reads them: one vocabulary, one failure policy.

    Docs(couch, db_path, auth=None)    the reads of one database, as the service account
                                       (or as the caller whose headers `auth` holds)
    winners(ids)         each id's winning revision: live (its body), deleted (its rev) or
                         missing; `_all_docs?keys&include_docs` (one round trip), or
                         `bulk_get=True`: `_bulk_get` first (about 4x faster on CouchDB 3.4,
                         docs/benchmarks.md), the ids its answer leaves unclear read again
                         with `_all_docs` (pouchdb-server answers `{}` for a missing and a
                         deleted doc alike; CouchDB answers every leaf of a doc with conflicts)
    revisions(pairs)     given (id, rev) pairs: each revision's body, or None where CouchDB
                         does not have it (`_bulk_get`, `revs=true` for the histories)
    revision(id, rev)    one revision (`GET ?rev=`), None where CouchDB does not have it
    leaves(id)           every leaf of a doc with its history (`open_revs=all&revs=true`),
                         None for a missing doc
    revs_diff(wanted)    `_revs_diff`: which of these revisions CouchDB lacks
    scan(start, end)     the live docs of an id range, in id order, a page at a time

  and, for the offline endpoints that answer a client's own query row by row:

    all_docs_rows(keys, params)     `_all_docs` for these keys: each key's row
    bulk_get_rows(items, params)    `_bulk_get`: one row per item, in the order asked
    doc(id, params)                 `GET /{db}/{id}` (`open_revs`: its rows); None if missing

The failure policy: fail closed. A decision (may this user read it, write it, is it
missing) is never made on a read that failed, so every read here either answers what
CouchDB holds or raises an `UpstreamError`:

- CouchDB unreachable, silent, or sending what is not JSON: the client's `UpstreamError`s
  (503, 504, 502; `proxy.couch.client`);
- any other status than 2xx, save the 404 that says a doc (or revision) read by itself does
  not exist: `ReadFailed` (502, with CouchDB's status and body);
- an answer of the wrong shape (no `rows`/`results`, a row missing for an id asked, a row
  for one not asked, a body that is not of the doc asked for) or a row carrying an error
  other than CouchDB's "no such doc" (`not_found`; `illegal_docid`, an id CouchDB cannot
  hold): `ReadFailed`.

"No such doc" comes in both backends' shapes: CouchDB's `{"error": {"error":
"not_found", ...}}` and `{"key", "error": "not_found"}`, pouchdb-server's `{}` (an id
asked without a rev) and `{"missing": rev}` (a revision it lacks). CouchDB keeps a
`_bulk_get`'s rows in request order; pouchdb-server groups the rows of one id together,
so rows are matched to what was asked by id, in order within each id.

Nothing is copied: the bodies returned are the parsed answer's own.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.couch.client import CouchClient, quote_id
from proxy.errors import UpstreamError

NEEDED = "to a read couchgate needed"
# The errors a row may carry that say "no such doc" (`illegal_docid`: one CouchDB cannot hold).
NO_SUCH_DOC = frozenset({"not_found", "illegal_docid"})
PAGE = 1000


def history(doc: Mapping[str, Any]) -> list[str]:
    """A revision's path as its `_revisions` gives it (`revs=true`, or a push's body), newest
    first: the revision, then its ancestors; without `_revisions`, the `_rev` alone."""
    revisions = doc.get("_revisions")
    if not isinstance(revisions, Mapping):
        return [str(doc.get("_rev"))]
    start = int(revisions.get("start", 0))
    return [f"{start - i}-{rev_id}" for i, rev_id in enumerate(revisions.get("ids") or [])]


class ReadFailed(UpstreamError):
    """A read of docs that CouchDB did not answer as it answers that read (502). `what`
    completes the reason: "CouchDB answered 500 to a read couchgate needed"."""

    def __init__(self, status: int, body: Any, what: str = NEEDED) -> None:
        super().__init__(f"CouchDB answered {status} {what}")
        self.upstream_status = status
        self.upstream_body = body


@dataclass(slots=True)
class Winners:
    """What `Docs.winners` found: an id in neither is missing."""

    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the winner's body
    deleted: dict[str, str | None] = field(default_factory=dict)  # id -> its rev (None: not told)


class Docs:
    """The reads of one database (`db_path`: `/medic`), as the service account, or with the
    caller's own credentials (`auth`: their headers) where CouchDB's `_security` decides."""

    __slots__ = ("auth", "couch", "path")

    def __init__(self, couch: CouchClient, db_path: str, auth: Mapping[str, str] | None = None) -> None:
        self.couch = couch
        self.path = db_path
        self.auth = auth

    async def _read(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        result = await self.couch.json(
            method,
            self.path + path,
            body=body,
            params=params,
            headers=self.auth,
            use_service=self.auth is None,
        )
        if not result.ok and result.status != 404:
            raise ReadFailed(result.status, result.body, what)
        return result.status, result.body

    # -- winners -----------------------------------------------------------------------

    async def winners(
        self, ids: Iterable[str], *, conflicts: bool = False, attachments: bool = False,
        bulk_get: bool = False, what: str = NEEDED,
    ) -> Winners:  # fmt: skip
        """Each id's winning revision; `conflicts`: the live bodies with `_conflicts`;
        `attachments`: with attachment data inline (both `_all_docs` only)."""
        keys = list(dict.fromkeys(ids))
        found = Winners()
        if bulk_get:
            if conflicts or attachments:
                raise ValueError("a _bulk_get read of winners takes no conflicts or attachments")
            keys = await self._bulk_get_winners(keys, found, what)
        if not keys:
            return found
        params = {"include_docs": "true"}
        if conflicts:
            params["conflicts"] = "true"
        if attachments:
            params["attachments"] = "true"
        for key, row in (await self.all_docs_rows(keys, params, what=what)).items():
            value = row.get("value")
            if value is None:
                continue  # not_found
            if value.get("deleted") is True:
                found.deleted[key] = value["rev"]
            else:
                found.live[key] = row["doc"]
        return found

    async def _bulk_get_winners(self, keys: list[str], found: Winners, what: str) -> list[str]:
        """Read `keys` with `_bulk_get` into `found`; the ids whose answer is not clear."""
        if not keys:
            return []
        rows = await self.bulk_get_rows([{"id": k} for k in keys], what=what)
        unclear = []
        for key, row in zip(keys, rows, strict=True):
            answers = row["docs"]
            answer = answers[0] if len(answers) == 1 else {}  # several: every leaf of a conflict
            doc, error = answer.get("ok"), answer.get("error")
            if doc is not None:
                if doc.get("_id") != key or not isinstance(doc.get("_rev"), str):
                    raise ReadFailed(200, row, what)
                if doc.get("_deleted") is True:
                    found.deleted[key] = doc["_rev"]
                else:
                    found.live[key] = doc
            elif error is not None and error.get("reason") == "deleted":
                found.deleted[key] = None
            elif error is None or (error.get("reason") != "missing" and error["error"] != "illegal_docid"):
                unclear.append(key)  # pouchdb-server's `{}`, a conflict's leaves: `_all_docs` tells
        return unclear

    async def all_docs_rows(
        self, keys: Sequence[str], params: Mapping[str, str] | None = None, *, what: str = NEEDED
    ) -> dict[str, dict[str, Any]]:
        """`POST _all_docs` for these keys: each key's row as CouchDB answers it (a live
        doc `{"id", "key", "value": {"rev"}, "doc"}` with `include_docs`, a deleted one
        with `"value": {"rev", "deleted": true}`, a missing one `{"key", "error": "not_found"}`)."""
        if not keys:
            return {}
        status, body = await self._read("POST", "/_all_docs", what, body={"keys": keys}, params=params)
        rows = body.get("rows") if status != 404 and isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ReadFailed(status, body, what)
        with_docs = params is not None and params.get("include_docs") == "true"
        asked = set(keys)
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            if not _all_docs_row(row, with_docs) or row["key"] not in asked:
                raise ReadFailed(status, row, what)
            found[row["key"]] = row
        if len(found) != len(asked):
            raise ReadFailed(status, {"error": "not every key was answered"}, what)
        return found

    # -- revisions ---------------------------------------------------------------------

    async def revisions(
        self, pairs: Iterable[tuple[str, str]], *, revs: bool = False, attachments: bool = False,
        att_encoding_info: bool = False, what: str = NEEDED,
    ) -> dict[tuple[str, str], dict[str, Any] | None]:  # fmt: skip
        """Each (id, rev) pair's body (`revs`: with `_revisions`), or None where CouchDB does
        not have that revision; one `_bulk_get`."""
        wanted = list(dict.fromkeys(pairs))
        if not wanted:
            return {}
        params = {
            name: "true"
            for name, asked in (
                ("revs", revs),
                ("attachments", attachments),
                ("att_encoding_info", att_encoding_info),
            )
            if asked
        }
        rows = await self.bulk_get_rows([{"id": i, "rev": r} for i, r in wanted], params or None, what=what)
        found: dict[tuple[str, str], dict[str, Any] | None] = {}
        for (doc_id, rev), row in zip(wanted, rows, strict=True):
            answers = row["docs"]
            doc: dict[str, Any] | None = answers[0].get("ok")
            if len(answers) != 1 or (
                doc is not None and (doc.get("_id") != doc_id or doc.get("_rev") != rev)
            ):
                raise ReadFailed(200, row, what)
            found[(doc_id, rev)] = doc
        return found

    async def bulk_get_rows(
        self,
        items: Sequence[Mapping[str, Any]],
        params: Mapping[str, str] | None = None,
        *,
        what: str = NEEDED,
    ) -> list[dict[str, Any]]:
        """`POST _bulk_get` for these items (`{"id", "rev"?, "atts_since"?}`, no two alike):
        one row `{"id", "docs": [...]}` per item, in the order asked; each of a row's docs is
        `{"ok": body}` or a "no such doc" (see the module's docstring)."""
        if not items:
            return []
        status, body = await self._read("POST", "/_bulk_get", what, body={"docs": items}, params=params)
        rows = body.get("results") if status != 404 and isinstance(body, dict) else None
        if not isinstance(rows, list) or len(rows) != len(items):
            raise ReadFailed(status, body, what)
        for row in rows:
            if not _bulk_get_row(row):
                raise ReadFailed(status, row, what)
        if all(row["id"] == item["id"] for row, item in zip(rows, items, strict=True)):
            return rows
        by_id: defaultdict[str, deque[dict[str, Any]]] = defaultdict(deque)
        for row in rows:
            by_id[row["id"]].append(row)
        try:
            return [by_id[item["id"]].popleft() for item in items]
        except IndexError:
            raise ReadFailed(status, body, what) from None

    async def revision(self, doc_id: str, rev: str, *, what: str = NEEDED) -> dict[str, Any] | None:
        """One revision of a doc, or None where CouchDB does not have it."""
        doc: dict[str, Any] | None = await self.doc(doc_id, {"rev": rev}, what=what)
        return doc

    async def leaves(self, doc_id: str, *, what: str = NEEDED) -> list[dict[str, Any]] | None:
        """Every leaf of a doc, deleted ones too, each with its `_revisions`; None: no such doc."""
        rows = await self.doc(doc_id, {"open_revs": "all", "revs": "true"}, what=what)
        leaves = [row["ok"] for row in rows or () if "ok" in row]
        return leaves or None

    async def doc(self, doc_id: str, params: Mapping[str, str], *, what: str = NEEDED) -> Any:
        """`GET /{db}/{id}` with these parameters: the doc, or with `open_revs` its rows
        (`{"ok": body}` or `{"missing": rev}`); None: no such doc (or revision)."""
        status, body = await self._read("GET", "/" + quote_id(doc_id), what, params=params)
        if status == 404:
            return None
        if "open_revs" in params:
            if not isinstance(body, list) or not all(_open_revs_row(row) for row in body):
                raise ReadFailed(status, body, what)
        elif not isinstance(body, dict) or body.get("_id") != doc_id:
            raise ReadFailed(status, body, what)
        return body

    async def revs_diff(
        self, wanted: Mapping[str, list[str]], *, what: str = NEEDED
    ) -> dict[str, dict[str, Any]]:
        """`POST _revs_diff`: for each id with revisions CouchDB lacks, `{"missing": [...], ...}`."""
        if not wanted:
            return {}
        status, body = await self._read("POST", "/_revs_diff", what, body=wanted)
        if status == 404 or not isinstance(body, dict) or not all(_revs_diff_entry(e) for e in body.values()):
            raise ReadFailed(status, body, what)
        return body

    # -- ranges ------------------------------------------------------------------------

    async def scan(
        self, startkey: str | None = None, endkey: str | None = None, *, page: int = PAGE, what: str = NEEDED
    ) -> AsyncIterator[dict[str, Any]]:
        """The live docs whose ids lie between `startkey` and `endkey` (inclusive), in id
        order: `_all_docs?include_docs`, `page` rows a request."""
        start = startkey
        while True:
            params = {"include_docs": "true", "limit": str(page + 1)}
            if start is not None:
                params["startkey"] = orjson.dumps(start).decode()
            if endkey is not None:
                params["endkey"] = orjson.dumps(endkey).decode()
            status, body = await self._read("GET", "/_all_docs", what, params=params)
            rows = body.get("rows") if status != 404 and isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise ReadFailed(status, body, what)
            for row in rows:
                if not _all_docs_row(row, True) or not isinstance(row.get("doc"), dict):  # live docs only
                    raise ReadFailed(status, row, what)
            for row in rows[:page]:
                yield row["doc"]
            if len(rows) <= page:
                return
            start = rows[page]["key"]


def _all_docs_row(row: Any, with_docs: bool) -> bool:
    """An `_all_docs` row of one of the three shapes (live, deleted, missing)."""
    if not isinstance(row, dict) or not isinstance(row.get("key"), str):
        return False
    if "error" in row:
        return bool(row["error"] == "not_found")
    value = row.get("value")
    if row.get("id") != row["key"] or not isinstance(value, dict) or not isinstance(value.get("rev"), str):
        return False
    if not with_docs or value.get("deleted") is True:
        return True
    doc = row.get("doc")
    return isinstance(doc, dict) and bool(doc.get("_rev") == value["rev"])


def _bulk_get_row(row: Any) -> bool:
    """A `_bulk_get` row whose every answer is a body or a "no such doc"."""
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        return False
    answers = row.get("docs")
    return isinstance(answers, list) and bool(answers) and all(_bulk_get_answer(a) for a in answers)


def _bulk_get_answer(answer: Any) -> bool:
    if not isinstance(answer, dict):
        return False
    if "ok" in answer:
        return isinstance(answer["ok"], dict)
    if "error" in answer:
        error = answer["error"]
        return isinstance(error, dict) and error.get("error") in NO_SUCH_DOC
    if "missing" in answer:
        return isinstance(answer["missing"], str)
    return not answer  # pouchdb-server's `{}`


def _open_revs_row(row: Any) -> bool:
    return isinstance(row, dict) and (
        isinstance(row.get("ok"), dict) or ("ok" not in row and isinstance(row.get("missing"), str))
    )


def _revs_diff_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("missing", []), list)
