"""Helpers of the identity tests: users of their own, tokens, and a design doc that shows
what the backend received."""

from __future__ import annotations

import uuid
from typing import Any

from proxy.devserver.backend import PouchServer

from support import MEMBER_ROLE, Gateway, TestUser

# A `_show` function that answers with the request headers the backend itself received.
ECHO_DDOC = {"shows": {"headers": "function (doc, req) { return {json: req.headers}; }"}}
ECHO_PATH = "/_design/echo/_show/headers"


def new_user(backend: PouchServer, roles: tuple[str, ...] = (MEMBER_ROLE,), prefix: str = "u") -> TestUser:
    """A user of the test's own, so that changing it disturbs no other test."""
    user = TestUser(f"{prefix}{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex[:8], roles)
    put_user(backend, user.name, password=user.password, roles=list(roles))
    return user


def user_doc(backend: PouchServer, name: str) -> dict[str, Any]:
    status, body = backend.request("GET", f"/_users/org.couchdb.user:{name}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def put_user(backend: PouchServer, name: str, **fields: Any) -> None:
    doc_id = f"org.couchdb.user:{name}"
    status, current = backend.request("GET", f"/_users/{doc_id}")
    doc = dict(current) if status == 200 and isinstance(current, dict) else {"_id": doc_id}
    doc.update({"name": name, "type": "user", **fields})
    status, body = backend.request("PUT", f"/_users/{doc_id}", doc)
    assert status == 201, body


def delete_user(backend: PouchServer, name: str) -> None:
    doc = user_doc(backend, name)
    status, body = backend.request("DELETE", f"/_users/org.couchdb.user:{name}?rev={doc['_rev']}")
    assert status == 200, body


async def token_of(gw: Gateway, name: str, password: str) -> str:
    status, body, _ = await gw.call("POST", "/_couchgate/token", json={"name": name, "password": password})
    assert status == 200, body
    return "Bearer " + str(body["token"])


def install_echo(backend: PouchServer, db: str) -> None:
    status, body = backend.request("PUT", f"/{db}/_design/echo", ECHO_DDOC)
    assert status == 201, body
