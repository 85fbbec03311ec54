"""Issue 11, item 4: online users keep CouchDB's rules on every backend.

pouchdb-server lets a user change their own roles in `_users`; Basic and cookie callers
are held to CouchDB's `_users` rules as token callers are. Design docs written through the
conflict tools (`resolve`, `split`) are for db admins only.
"""

from __future__ import annotations

from typing import Any

import pytest
from identity_support import new_user, user_doc
from integration.conflicts.test_conflicts import admin, leaf, write
from integration.conflicts.test_conflicts_access import grant

from proxy.devserver.backend import PouchServer

from support import ON_COUCHDB, Gateway, TestUser, assert_couch_error, eventually


async def cookie_of(gw: Gateway, user: TestUser) -> str:
    async with gw.http.post(
        f"{gw.url}/_session", json={"name": user.name, "password": user.password}
    ) as resp:
        assert resp.status == 200
        return resp.headers["Set-Cookie"].split(";", 1)[0]


@pytest.mark.parametrize("method", ["basic", "cookie"])
async def test_own_roles_cannot_be_changed(gateway: Gateway, backend: PouchServer, method: str) -> None:
    user = new_user(backend)
    auth = {"Authorization": user.auth} if method == "basic" else {"Cookie": await cookie_of(gateway, user)}
    path = f"/_users/org.couchdb.user:{user.name}"
    status, stored, _ = await gateway.call("GET", path, headers=auth)
    if ON_COUCHDB:  # CouchDB 3.4 keeps `_users` admin-only (its default security): no own doc either
        assert_couch_error(status, stored, 403, "forbidden")
        stored = user_doc(backend, user.name)
    else:
        assert status == 200, stored
    for change in ({"roles": ["member", "_admin"]}, {"roles": ["member", "chw_supervisor"]}, {"roles": []},
                   {"name": "someone"}, {"type": "admin"}):  # fmt: skip
        status, body, _ = await gateway.call("PUT", path, headers=auth, json={**stored, **change})
        assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("PUT", f"{path}?new_edits=false", headers=auth, json=stored)
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call(
        "POST", "/_users/_bulk_docs", headers=auth, json={"docs": [{**stored, "roles": ["_admin"]}]}
    )
    assert_couch_error(status, body, 403, "forbidden")
    assert user_doc(backend, user.name)["roles"] == ["member"]
    # Still theirs to change the password of, where the backend lets users write their own doc.
    status, body, _ = await gateway.call("PUT", path, headers=auth, json={**stored, "password": "new-pass-1"})
    if ON_COUCHDB:
        assert_couch_error(status, body, 403, "forbidden")
    else:
        assert status == 201, body
    assert user_doc(backend, user.name)["roles"] == ["member"]


async def test_other_users_docs_are_missing_and_not_writable(gateway: Gateway, backend: PouchServer) -> None:
    user, other = new_user(backend), new_user(backend)
    path = f"/_users/org.couchdb.user:{other.name}"
    status, body, _ = await gateway.call("GET", path, auth=user.auth)
    assert_couch_error(status, body, 404, "not_found")  # CouchDB's answer (pouchdb-server: 500)
    status, body, _ = await gateway.call(
        "PUT", path, auth=user.auth, json={"name": other.name, "type": "user", "roles": [], "password": "x"}
    )
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("DELETE", f"{path}?rev={user_doc(backend, other.name)['_rev']}",
                                         auth=user.auth)  # fmt: skip
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("GET", "/_users/_all_docs", auth=user.auth)
    assert_couch_error(status, body, 403, "forbidden")
    assert user_doc(backend, other.name)["name"] == other.name


async def test_server_admins_still_edit_users(gateway: Gateway, backend: PouchServer) -> None:
    user = new_user(backend)
    path = f"/_users/org.couchdb.user:{user.name}"
    stored = user_doc(backend, user.name)
    status, body, _ = await gateway.call("PUT", path, auth=admin(backend), json={**stored, "roles": ["boss"]})
    assert status == 201, body


# -- design docs through the conflict tools --------------------------------------------------

VALIDATE = "function (newDoc, oldDoc, userCtx) { if (userCtx.name !== 'x') throw({forbidden: 'no'}); }"


def conflicted_design(backend: PouchServer, db: str, doc_id: str) -> None:
    write(backend, db, leaf(doc_id, ["1-aaa"], views={}))
    write(backend, db, leaf(doc_id, ["2-bbb", "1-aaa"], views={}, note="b"),
          leaf(doc_id, ["2-ccc", "1-aaa"], views={}, other="c"))  # fmt: skip


def design_leaves(backend: PouchServer, db: str, doc_id: str) -> list[Any]:
    status, rows = backend.request("GET", f"/{db}/{doc_id}?open_revs=all")
    assert status == 200, rows
    return sorted(row["ok"]["_rev"] for row in rows if "ok" in row and not row["ok"].get("_deleted"))


async def test_conflict_tools_write_design_docs_only_for_db_admins(
    gateway: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    conflicted_design(backend, db, "_design/app")
    conflicted_design(backend, db, "ordinary")
    grant(backend, db, offline=False)

    async def allowed() -> bool:
        return (await gateway.call("GET", f"/{db}/_couchgate/conflicts", auth=alice))[0] == 200

    assert await eventually(allowed)
    before = design_leaves(backend, db, "_design/app")
    merged = {"strategy": "merge", "doc": {"views": {}, "validate_doc_update": VALIDATE}}
    for route, payload in (("resolve", merged), ("resolve", {"strategy": "auto"}),
                           ("resolve", {"strategy": "pick", "rev": "2-bbb"}), ("split?dry_run=false", {})):  # fmt: skip
        for path in (f"/{db}/_couchgate/conflicts/_design/app/{route}",
                     f"/{db}/_couchgate/conflicts/_design%2Fapp/{route}"):  # fmt: skip
            status, body, _ = await gateway.call("POST", path, auth=alice, json=payload)
            assert_couch_error(status, body, 403, "forbidden")
    assert design_leaves(backend, db, "_design/app") == before
    assert "validate_doc_update" not in backend.request("GET", f"/{db}/_design/app")[1]
    # Ordinary docs stay theirs to resolve.
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/ordinary/resolve", auth=alice, json={"strategy": "auto"}
    )
    assert status == 200, body
    # A db admin (by role in `_security.admins`) may.
    security = {"admins": {"names": [], "roles": ["member"]}, "members": {"names": [], "roles": ["member"]}}
    assert backend.request("PUT", f"/{db}/_security", security)[0] == 200

    async def db_admin_resolves() -> bool:
        status, _, _ = await gateway.call(
            "POST", f"/{db}/_couchgate/conflicts/_design/app/resolve", auth=alice, json={"strategy": "auto"}
        )
        return status == 200

    assert await eventually(db_admin_resolves)
    assert len(design_leaves(backend, db, "_design/app")) == 1


async def test_server_admins_resolve_design_doc_conflicts(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    conflicted_design(backend, db, "_design/app")
    status, body, _ = await gateway.call(
        "POST",
        f"/{db}/_couchgate/conflicts/_design/app/resolve",
        auth=admin(backend),
        json={"strategy": "auto"},
    )
    assert status == 200, body
