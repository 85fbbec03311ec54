"""Issue 11, item 7: CouchDB's DELETE semantics on every backend, for forwarded callers.

pouchdb-server deletes the winner when a DELETE names no revision or a wrong `If-Match`.
couchgate sends the revision the client named (`rev`, or `If-Match`) and answers a DELETE
naming none with CouchDB's 409 (404 for a doc that does not exist).
"""

from __future__ import annotations

import pytest
from identity_support import new_user, token_of

from proxy.devserver.backend import PouchServer

from support import ON_COUCHDB, Gateway, assert_couch_error, basic

CONFLICT = {"error": "conflict", "reason": "Document update conflict."}


async def callers(gateway: Gateway, backend: PouchServer) -> dict[str, str]:
    user = new_user(backend)
    return {
        "basic": user.auth,
        "token": await token_of(gateway, user.name, user.password),
        "admin": basic(backend.admin_user, backend.admin_password),
    }


def put(backend: PouchServer, db: str, doc_id: str) -> str:
    status, body = backend.request("PUT", f"/{db}/{doc_id}", {"v": 1})
    assert status == 201, body
    return str(body["rev"])  # type: ignore[index]


def exists(backend: PouchServer, db: str, doc_id: str) -> bool:
    return backend.request("GET", f"/{db}/{doc_id}")[0] == 200


@pytest.mark.parametrize("kind", ["basic", "token", "admin"])
async def test_delete_without_a_revision_is_refused(
    gateway: Gateway, backend: PouchServer, db: str, kind: str
) -> None:
    auth = (await callers(gateway, backend))[kind]
    put(backend, db, "kept")
    status, body, _ = await gateway.call("DELETE", f"/{db}/kept", auth=auth)
    assert (status, body) == (409, CONFLICT)
    assert exists(backend, db, "kept")
    status, body, _ = await gateway.call("DELETE", f"/{db}/no-such-doc", auth=auth)
    assert_couch_error(status, body, 404, "not_found")
    status, body, _ = await gateway.call("DELETE", f"/{db}/_design/nope", auth=auth)
    assert status in (403, 404), body  # members may not touch design docs; admins see it missing


@pytest.mark.parametrize("kind", ["basic", "token", "admin"])
async def test_if_match_is_the_revision_deleted(
    gateway: Gateway, backend: PouchServer, db: str, kind: str
) -> None:
    auth = (await callers(gateway, backend))[kind]
    rev = put(backend, db, "target")
    status, body, _ = await gateway.call(
        "DELETE", f"/{db}/target", auth=auth, headers={"If-Match": "1-wrong"}
    )
    assert (status, body) == (409, CONFLICT)
    assert exists(backend, db, "target")
    status, body, _ = await gateway.call(
        "DELETE", f"/{db}/target?rev={rev}", auth=auth, headers={"If-Match": "1-other"}
    )
    assert_couch_error(status, body, 400, "bad_request")
    assert exists(backend, db, "target")
    status, body, _ = await gateway.call(
        "DELETE", f"/{db}/target", auth=auth, headers={"If-Match": f'"{rev}"'}
    )
    assert status == 200 and body["ok"] is True, body
    assert not exists(backend, db, "target")
    rev = put(backend, db, "target2")
    status, body, _ = await gateway.call("DELETE", f"/{db}/target2?rev=1-wrong", auth=auth)
    assert_couch_error(status, body, 409, "conflict")
    status, body, _ = await gateway.call("DELETE", f"/{db}/target2?rev={rev}", auth=auth)
    assert status == 200, body


async def test_attachments_too(gateway: Gateway, backend: PouchServer, db: str) -> None:
    auth = (await callers(gateway, backend))["basic"]
    rev = put(backend, db, "with-att")
    status, body, _ = await gateway.call(
        "PUT",
        f"/{db}/with-att/a.txt?rev={rev}",
        auth=auth,
        data=b"hi",
        headers={"Content-Type": "text/plain"},
    )
    assert status == 201, body
    rev = body["rev"]
    for headers in ({}, {"If-Match": "1-wrong"}):
        status, body, _ = await gateway.call("DELETE", f"/{db}/with-att/a.txt", auth=auth, headers=headers)
        if ON_COUCHDB and headers:  # CouchDB 3.4 reads a wrong If-Match here as a missing revision
            assert (status, body) == (409, {"error": "not_found", "reason": "missing_rev"})
        else:
            assert (status, body) == (409, CONFLICT)
    assert backend.request("GET", f"/{db}/with-att")[1]["_attachments"]  # type: ignore[index]
    status, body, _ = await gateway.call(
        "DELETE", f"/{db}/with-att/a.txt", auth=auth, headers={"If-Match": rev}
    )
    assert status == 200, body


async def test_a_non_member_gets_couchdbs_refusal_not_a_conflict(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    put(backend, db, "private")
    stranger = new_user(backend, roles=("stranger",))
    status, body, _ = await gateway.call("DELETE", f"/{db}/private", auth=stranger.auth)
    assert status in (401, 403), (status, body)  # pouchdb-server: 401, CouchDB: 403; never 409
    assert exists(backend, db, "private")
