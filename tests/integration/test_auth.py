"""Each way of authenticating, through couchgate, against the real backend."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from proxy.auth.users import UserInfoCache
from proxy.couch.client import CouchClient, JsonResult, new_session
from proxy.devserver.backend import PouchServer
from proxy.keys import COUCH

from offline_data import auth
from support import (
    JWT_SECRET,
    ON_COUCHDB,
    Gateway,
    TestUser,
    assert_couch_error,
    basic,
    eventually,
    gateway_settings,
    index_level,
    start_gateway,
    stop_gateway,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def get_token(gateway: Gateway, user: TestUser) -> str:
    status, body, _ = await gateway.call(
        "POST", "/_couchgate/token", json={"name": user.name, "password": user.password}
    )
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["expires_in"] == gateway.settings.jwt_ttl_seconds
    return str(body["token"])


async def test_basic_auth_good_and_bad(gateway: Gateway, db: str, fresh_user: TestUser) -> None:
    status, body, _ = await gateway.call("GET", f"/{db}", auth=fresh_user.auth)
    assert status == 200 and body["db_name"] == db
    status, body, headers = await gateway.call("GET", f"/{db}", auth=basic(fresh_user.name, "nope"))
    assert_couch_error(status, body, 401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")  # never Basic: no browser pop-ups
    status, body, _ = await gateway.call("GET", f"/{db}", auth="Basic %%%not-base64")
    assert_couch_error(status, body, 401, "unauthorized")


@pytest.mark.backend("couchdb", reason="pouchdb-server does not lock accounts out after failed logins")
async def test_failed_logins_lock_the_account_out_only_for_the_address_they_came_from(
    gateway: Gateway, db: str, fresh_user: TestUser
) -> None:
    """CouchDB 3.4 locks (address, name) out after 5 failures. couchgate names the caller's
    address upstream; without it every caller would be couchgate's address, and a stranger
    could lock any user out everywhere."""
    wrong = {"Authorization": basic(fresh_user.name, "wrong"), "Accept": "application/json"}
    right = {"Authorization": fresh_user.auth, "Accept": "application/json"}
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as elsewhere:
        for _ in range(6):
            async with elsewhere.get(f"{gateway.url}/{db}", headers=wrong) as resp:
                assert resp.status in (401, 403)
        async with elsewhere.get(f"{gateway.url}/{db}", headers=right) as resp:
            body = await resp.json()
            assert_couch_error(resp.status, body, 403, "forbidden")  # CouchDB's own answer
            assert "locked" in body["reason"]
    status, body, _ = await gateway.call("GET", f"/{db}", auth=fresh_user.auth)  # from 127.0.0.1
    assert status == 200, body


async def test_unauthenticated_requests_get_401_except_public_paths(gateway: Gateway, db: str) -> None:
    status, body, headers = await gateway.call("GET", f"/{db}/_all_docs")
    assert_couch_error(status, body, 401, "unauthorized")
    assert "WWW-Authenticate" in headers
    for path in ("/", "/_couchgate/health", "/_session"):
        status, body, _ = await gateway.call("GET", path)
        assert status == 200, (path, body)


async def test_cookie_session_lifecycle(gateway: Gateway, db: str, fresh_user: TestUser) -> None:
    alice = fresh_user
    async with gateway.http.post(
        f"{gateway.url}/_session",
        json={"name": alice.name, "password": alice.password},
        headers={"Accept": "application/json"},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["ok"] is True and body["name"] == alice.name
        set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith("AuthSession=")
    cookie = set_cookie.split(";", 1)[0]
    status, body, _ = await gateway.call("GET", "/_session", headers={"Cookie": cookie})
    assert status == 200 and body["userCtx"]["name"] == alice.name
    status, body, _ = await gateway.call("PUT", f"/{db}/by-cookie", json={"v": 1}, headers={"Cookie": cookie})
    assert status == 201, body
    status, body, _ = await gateway.call("DELETE", "/_session", headers={"Cookie": cookie})
    assert status == 200 and body["ok"] is True
    status, body, _ = await gateway.call("POST", "/_session", json={"name": alice.name, "password": "wrong"})
    assert_couch_error(status, body, 401)
    status, body, _ = await gateway.call("GET", f"/{db}", headers={"Cookie": "AuthSession=forged"})
    assert_couch_error(status, body, 401, "unauthorized")


async def test_jwt_issue_and_use(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    token = await get_token(gateway, users["alice"])
    status, body, _ = await gateway.call("PUT", f"/{db}/by-token", auth=f"Bearer {token}", json={"v": 1})
    assert status == 201, body
    status, body, _ = await gateway.call("GET", f"/{db}/by-token", auth=f"Bearer {token}")
    assert status == 200 and body["v"] == 1
    status, body, _ = await gateway.call("GET", "/_session", auth=f"Bearer {token}")
    assert body["userCtx"] == {"name": "alice", "roles": ["member"]}


async def test_jwt_caller_gets_couchdb_security_rules(
    gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    mallory = await get_token(gateway, users["mallory"])
    status, body, _ = await gateway.call("GET", f"/{db}/_all_docs", auth=f"Bearer {mallory}")
    assert_couch_error(status, body, 403, "forbidden")
    alice = await get_token(gateway, users["alice"])
    status, body, _ = await gateway.call("PUT", f"/{db}/_design/x", auth=f"Bearer {alice}", json={})
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("GET", "/_all_dbs", auth=f"Bearer {alice}")
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("GET", "/_users/org.couchdb.user:alice", auth=f"Bearer {alice}")
    assert status == 200 and body["name"] == "alice"
    status, body, _ = await gateway.call("GET", "/_users/org.couchdb.user:mallory", auth=f"Bearer {alice}")
    assert_couch_error(status, body, 404, "not_found")  # as CouchDB: no existence oracle


async def test_token_refused_for_wrong_password(gateway: Gateway, fresh_user: TestUser) -> None:
    status, body, _ = await gateway.call(
        "POST", "/_couchgate/token", json={"name": fresh_user.name, "password": "x"}
    )
    assert_couch_error(status, body, 401, "unauthorized")
    status, body, _ = await gateway.call(
        "POST", "/_couchgate/token", data=b"not json", headers={"Content-Type": "application/json"}
    )
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gateway.call("POST", "/_couchgate/token", json=["name", "password"])
    assert_couch_error(status, body, 400, "bad_request")


def forged_tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "alice", "_couchdb.roles": ["member"], "exp": now + 600}
    header_none = b64url(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return {
        "alg none": f"{header_none}.{b64url(orjson.dumps(claims))}.",
        "wrong key": jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256"),
        "expired": jwt.encode({**claims, "exp": now - 3600}, JWT_SECRET, algorithm="HS256"),
        "no exp": jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256"),
        "malformed": "not.a.jwt",
        "garbage": "x",
        "alg not allowed": jwt.encode(claims, JWT_SECRET, algorithm="HS512"),
    }


@pytest.mark.parametrize("kind", list(forged_tokens()))
async def test_bad_tokens_get_401_with_challenge(gateway: Gateway, db: str, kind: str) -> None:
    token = forged_tokens()[kind]
    status, body, headers = await gateway.call("GET", f"/{db}", auth=f"Bearer {token}")
    assert_couch_error(status, body, 401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer"), headers


@pytest.fixture
async def audience_gateway(backend: PouchServer, db: str) -> AsyncIterator[Gateway]:
    gw = await start_gateway(gateway_settings(backend, db, jwt_audience="couchgate-test", jwt_issuer="tests"))
    yield gw
    await stop_gateway(gw)


async def test_audience_and_issuer_are_checked(
    audience_gateway: Gateway, db: str, users: dict[str, TestUser]
) -> None:
    token = await get_token(audience_gateway, users["alice"])
    assert jwt.get_unverified_claims(token)["aud"] == "couchgate-test"
    status, _, _ = await audience_gateway.call("GET", f"/{db}", auth=f"Bearer {token}")
    assert status == 200
    now = int(time.time())
    base = {"sub": "alice", "exp": now + 600, "iss": "tests"}
    for claims in ({**base, "aud": "someone-else"}, base, {**base, "aud": "couchgate-test", "iss": "evil"}):
        status, body, headers = await audience_gateway.call(
            "GET", f"/{db}", auth="Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")
        )
        assert_couch_error(status, body, 401, "unauthorized")
        assert headers["WWW-Authenticate"].startswith("Bearer")


@pytest.fixture
async def rsa_gateway(backend: PouchServer, db: str) -> AsyncIterator[tuple[Gateway, str]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = gateway_settings(
        backend, db, jwt_secret=None, jwt_algorithms=("RS256",), jwt_issue_algorithm="RS256",
        jwt_private_key=private, jwt_public_key=public,
    )  # fmt: skip
    gw = await start_gateway(settings)
    yield gw, public
    await stop_gateway(gw)


async def test_rs256_tokens_and_no_key_confusion(
    rsa_gateway: tuple[Gateway, str], db: str, users: dict[str, TestUser]
) -> None:
    gateway, public_pem = rsa_gateway
    token = await get_token(gateway, users["alice"])
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    status, _, _ = await gateway.call("GET", f"/{db}", auth=f"Bearer {token}")
    assert status == 200
    # The classic confusion attack: HMAC-sign with the public key. HS256 is not allowed here.
    header = b64url(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    payload = b64url(orjson.dumps({"sub": "alice", "exp": int(time.time()) + 600}))
    import hashlib
    import hmac

    sig = b64url(hmac.new(public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
    status, body, _ = await gateway.call("GET", f"/{db}", auth=f"Bearer {header}.{payload}.{sig}")
    assert_couch_error(status, body, 401, "unauthorized")


# -- token callers get exactly what CouchDB would give them ---------------------------------


def token_for(name: str, roles: list[str]) -> str:
    # Signed by the test: `iat` (a token without one counts as older than any logout of its
    # user) and couchgate's own issue time in ms (a logout earlier in the same second of
    # `iat` would otherwise end it), no password fingerprint (not checked when absent).
    now_ms = time.time_ns() // 1_000_000
    now = now_ms // 1000
    claims = {"sub": name, "_couchdb.roles": roles, "iat": now, "exp": now + 600, "cg": {"iat_ms": now_ms}}
    return "Bearer " + jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def design_doc_writes(db: str) -> list[tuple[str, str, object, dict[str, str]]]:
    """Every route by which a design doc (or an index, which is one) could be written."""
    return [
        ("PUT", f"/{db}/_design/x", {"views": {}}, {}),
        ("PUT", f"/{db}/_design%2Fx", {"views": {}}, {}),
        ("PUT", f"/{db}/_design/x/att.txt", None, {"Content-Type": "text/plain"}),
        ("POST", f"/{db}", {"_id": "_design/x"}, {}),
        ("POST", f"/{db}/_bulk_docs", {"docs": [{"_id": "fine"}, {"_id": "_design/x"}]}, {}),
        (
            "POST",
            f"/{db}/_bulk_docs",
            {"docs": [{"_id": "_design/x", "_rev": "1-a"}], "new_edits": False},
            {},
        ),
        ("COPY", f"/{db}/src", None, {"Destination": "_design/x"}),
        ("COPY", f"/{db}/src", None, {"Destination": "_design%2Fx"}),
        ("POST", f"/{db}/_index", {"index": {"fields": ["a"]}, "ddoc": "x"}, {}),
    ]


@pytest.mark.parametrize("route", range(9))
async def test_token_member_cannot_write_design_docs(
    gateway: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser], route: int
) -> None:
    assert backend.request("PUT", f"/{db}/src", {"a": 1})[0] == 201
    method, path, body, headers = design_doc_writes(db)[route]
    data = b"hello" if body is None and method == "PUT" else None
    status, answer, _ = await gateway.call(
        method, path, auth=token_for("alice", ["member"]), json=body, data=data, headers=headers
    )
    assert_couch_error(status, answer, 403, "forbidden")
    _, rows = backend.request("GET", f"/{db}/_all_docs")
    assert [r["id"] for r in rows["rows"]] == ["src"]  # nothing written, not even the other docs
    # Basic callers are judged by the backend itself with their own credentials.
    if "_index" not in path or ON_COUCHDB:  # pouchdb-server lets members create indexes
        status, answer, _ = await gateway.call(
            method, path, auth=users["alice"].auth, json=body, data=data, headers=headers
        )
        if "_index" in path:  # CouchDB 3.4 refuses a member's index with a 500, passed on as is
            assert_couch_error(status, answer, 500, "error_saving_ddoc")
        elif status == 201 and isinstance(answer, list):  # pouchdb-server: per-row refusals
            assert all(r.get("error") for r in answer if r["id"].startswith("_design/")), answer
        elif "%2F" not in headers.get("Destination", ""):  # CouchDB reads it literally: 400
            assert status in (401, 403), (status, answer)
        assert backend.request("GET", f"/{db}/_design/x")[0] == 404


async def test_token_db_admin_writes_design_docs_and_members_write_docs(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    security = {"admins": {"names": [], "roles": ["ops"]}, "members": {"names": [], "roles": ["member"]}}
    assert backend.request("PUT", f"/{db}/_security", security)[0] == 200
    # A token is honoured only while its user exists with the roles it grants.
    dba = {"_id": "org.couchdb.user:dba", "name": "dba", "password": "x", "type": "user", "roles": ["ops"]}
    assert backend.request("PUT", "/_users/org.couchdb.user:dba", dba)[0] in (201, 409)
    ops = token_for("dba", ["ops"])
    view = {"views": {"by_a": {"map": "function (doc) { if (doc.a) { emit(doc.a, null); } }"}}}
    status, body, _ = await gateway.call("PUT", f"/{db}/_design/x", auth=ops, json=view)
    assert status == 201, body
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_bulk_docs", auth=ops, json={"docs": [{"_id": "_design/y"}]}
    )
    assert status == 201 and "error" not in body[0], body
    member = token_for("alice", ["member"])
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_bulk_docs", auth=member, json={"docs": [{"_id": "m1", "a": 1}, {"_id": "_local/c"}]}
    )
    assert status == 201 and all("error" not in r for r in body), body
    status, body, _ = await gateway.call("POST", f"/{db}", auth=member, json={"_id": "m2", "a": 2})
    assert status == 201, body
    status, body, _ = await gateway.call("COPY", f"/{db}/m1", auth=member, headers={"Destination": "m3"})
    assert status == 201, body
    # Querying a view with POST is a read, for members too.
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_design/x/_view/by_a", auth=member, json={"keys": [2]}
    )
    assert status == 200 and [r["id"] for r in body["rows"]] == ["m2"], body
    status, body, _ = await gateway.call("DELETE", f"/{db}/_design/x", auth=member)
    assert_couch_error(status, body, 403, "forbidden")


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/{db}/_security"), ("POST", "/{db}/_compact"), ("POST", "/{db}/_view_cleanup"),
     ("POST", "/{db}/_purge"), ("PUT", "/{db}/_revs_limit"), ("PUT", "/t-created-by-token"),
     ("DELETE", "/{db}")],
)  # fmt: skip
async def test_token_member_cannot_administer_the_database(
    gateway: Gateway, backend: PouchServer, db: str, method: str, path: str
) -> None:
    body = {"admins": {"names": ["alice"]}} if path.endswith("_security") else {}
    status, answer, _ = await gateway.call(
        method, path.format(db=db), auth=token_for("alice", ["member"]), json=body
    )
    assert_couch_error(status, answer, 403, "forbidden")
    assert backend.request("GET", f"/{db}/_security")[1]["admins"] == {"names": [], "roles": []}
    assert backend.request("GET", f"/{db}")[0] == 200
    assert backend.request("GET", "/t-created-by-token")[0] == 404


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 200), ("GET", "/_uuids", 200), ("GET", "/_session", 200),
     ("GET", "/_all_dbs", 403), ("GET", "/_config", 403), ("GET", "/_node/_local/_config", 403),
     ("GET", "/_active_tasks", 403), ("GET", "/_replicator/_all_docs", 403), ("PUT", "/_replicator/r", 403),
     ("GET", "/_global_changes/_changes", 403), ("GET", "/_users/_all_docs", 403), ("POST", "/_users", 403)],
)  # fmt: skip
async def test_token_caller_server_paths_as_couchdb(
    gateway: Gateway, users: dict[str, TestUser], method: str, path: str, status: int
) -> None:
    got, body, _ = await gateway.call(
        method, path, auth=token_for("alice", ["member"]), json={} if method != "GET" else None
    )
    if status == 200:
        assert got == 200, body
    else:
        assert_couch_error(got, body, status, "forbidden")


async def test_token_caller_cannot_change_own_roles_but_may_change_password(
    gateway: Gateway, backend: PouchServer, users: dict[str, TestUser]
) -> None:
    name = "tokenuser"
    doc_id = f"org.couchdb.user:{name}"
    backend.request(
        "DELETE", f"/_users/{doc_id}?rev={backend.request('GET', f'/_users/{doc_id}')[1].get('_rev')}"
    )
    assert backend.request(
        "PUT", f"/_users/{doc_id}",
        {"_id": doc_id, "name": name, "password": "old-pass", "type": "user", "roles": ["member"]},
    )[0] == 201  # fmt: skip
    token = token_for(name, ["member"])
    path = f"/_users/{doc_id}"
    _, stored, _ = await gateway.call("GET", path, auth=token)
    for change in ({"roles": ["member", "_admin"]}, {"roles": ["member", "boss"]}, {"roles": []},
                   {"name": "other"}, {"type": "admin"}):  # fmt: skip
        status, body, _ = await gateway.call("PUT", path, auth=token, json={**stored, **change})
        assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("PUT", f"{path}?new_edits=false", auth=token, json=stored)
    assert_couch_error(status, body, 403, "forbidden")
    assert backend.request("GET", path)[1]["_rev"] == stored["_rev"]
    status, body, _ = await gateway.call("PUT", path, auth=token, json={**stored, "password": "new-pass"})
    assert status == 201, body
    after = backend.request("GET", path)[1]
    assert after["roles"] == ["member"] and after["name"] == name
    status, body, _ = await gateway.call(
        "GET", "/_session", auth=basic(name, "new-pass"), headers={"Accept": "application/json"}
    )
    assert body["userCtx"]["name"] == name


async def test_token_caller_sees_other_users_docs_as_missing(
    gateway: Gateway, users: dict[str, TestUser]
) -> None:
    alice = token_for("alice", ["member"])
    status, body, _ = await gateway.call("GET", "/_users/org.couchdb.user:mallory", auth=alice)
    assert_couch_error(status, body, 404, "not_found")
    status, body, _ = await gateway.call(
        "PUT", "/_users/org.couchdb.user:mallory", auth=alice,
        json={"name": "mallory", "type": "user", "roles": [], "password": "x"},
    )  # fmt: skip
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("GET", "/_users/org.couchdb.user:alice", auth=alice)
    assert status == 200 and body["name"] == "alice"


async def test_invalid_database_name_from_a_token_caller_is_400(gateway: Gateway) -> None:
    status, body, _ = await gateway.call("GET", "/Not_A_DB/doc", auth=token_for("alice", ["member"]))
    assert_couch_error(status, body, 400, "illegal_database_name")


@pytest.mark.parametrize("header", ["Basic %%%not-base64", "Basic: " + base64.b64encode(b"alice:x").decode()])
async def test_session_with_an_unreadable_authorization_is_anonymous(gateway: Gateway, header: str) -> None:
    """CouchDB 3.4 answers `Basic %%%` with a 500 `badarg` on `/_session` too: couchgate
    sends it no header it could not read, and the caller is anonymous as on `GET /`."""
    status, body, _ = await gateway.call("GET", "/_session", headers={"Authorization": header})
    assert status == 200 and body["userCtx"]["name"] is None, body
    status, body, _ = await gateway.call("GET", "/", headers={"Authorization": header})
    assert status == 200 and "version" in body, body


async def test_a_users_docs_are_read_once_for_requests_that_need_them_together(
    backend: PouchServer, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `_users` doc and the user-settings doc are read together, once for the requests
    that need the user while they are read; a change of the user (the index follower's
    `invalidate`) while they are read makes the next request read them again, and the read
    begun before the change is not kept."""
    settings = gateway_settings(backend, medic)
    session = new_session(settings)
    try:
        couch = CouchClient(session, settings)
        cache = UserInfoCache(couch, medic, ttl=60)
        reads: list[str] = []
        real = couch.json
        release = asyncio.Event()

        async def counted(method: str, path: str, **kw: Any) -> JsonResult:
            reads.append(path)
            await release.wait()  # both docs asked for before either answers: read together
            return await real(method, path, **kw)

        def asked(n: int) -> Any:
            async def check() -> bool:
                return len(reads) == n

            return check

        monkeypatch.setattr(couch, "json", counted)
        waiting = [asyncio.ensure_future(cache.get("chw1")) for _ in range(5)]
        assert await eventually(asked(2))
        release.set()
        infos = await asyncio.gather(*waiting)
        assert len(reads) == 2 and {i.facility_ids for i in infos} == {("area1",)}, reads

        release.clear()
        before = asyncio.ensure_future(cache.get("supervisor"))
        assert await eventually(asked(4))
        cache.invalidate("supervisor")  # the user changed while their docs were read
        after = asyncio.ensure_future(cache.get("supervisor"))
        assert await eventually(asked(6))  # read again, not joined to the older read
        release.set()
        await asyncio.gather(before, after)
        release.clear()
        stale = asyncio.ensure_future(cache.get("clerk"))
        assert await eventually(asked(8))
        cache.invalidate("clerk")
        release.set()
        await stale
        await cache.get("clerk")
        assert len(reads) == 10, reads  # the read begun before the change was not kept
        await cache.get("clerk")
        assert len(reads) == 10, reads  # the one after it is
        await cache.get("clerk", fresh=True)
        assert len(reads) == 12
    finally:
        await session.close()


async def test_a_users_docs_are_read_beside_their_password_check(
    backend: PouchServer, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Basic credential not cached yet costs CouchDB's password check and the user's two
    docs; the docs are asked for while the check is under way, not after it answered. Here
    the check answers only once they have been asked for (or after 5 s, and the test fails)."""
    gw = await start_gateway(gateway_settings(backend, medic))
    try:
        couch = gw.server.app[COUCH]
        real = couch.json
        asked: list[str] = []
        docs_before_check: list[bool] = []
        user_doc = "/_users/org.couchdb.user%3Achw1"

        async def docs_asked() -> bool:
            return user_doc in asked

        async def watched(method: str, path: str, **kw: Any) -> JsonResult:
            asked.append(path)
            if path == "/_session":
                docs_before_check.append(await eventually(docs_asked, within=5))
            return await real(method, path, **kw)

        monkeypatch.setattr(couch, "json", watched)
        status, body, _ = await gw.call("GET", f"/{medic}/_changes?limit=1", auth=auth("chw1"))
        assert status == 200, body
        assert docs_before_check == [True], asked
        assert f"/{medic}/org.couchdb.user%3Achw1" in asked, asked
    finally:
        await stop_gateway(gw)


async def test_the_welcome_does_not_wait_for_the_users_docs(
    backend: PouchServer, medic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CouchDB's welcome needs nothing of its caller but that their credentials are right:
    a first `GET /` answers while the user's docs are still being read (held here until it
    has answered), and the request after it finds them read, once."""
    gw = await start_gateway(gateway_settings(backend, medic))
    release = asyncio.Event()
    try:
        await index_level(gw, backend, medic)  # the index's first round changes no user after this
        couch = gw.server.app[COUCH]
        real = couch.json
        docs_read: list[str] = []

        async def held(method: str, path: str, **kw: Any) -> JsonResult:
            if "org.couchdb.user" in path:
                docs_read.append(path)
                await release.wait()
            return await real(method, path, **kw)

        monkeypatch.setattr(couch, "json", held)
        status, body, _ = await asyncio.wait_for(gw.call("GET", "/", auth=auth("chw1")), 10)
        assert status == 200 and "version" in body, body
        assert len(docs_read) == 2, docs_read  # asked for, not answered yet
        release.set()
        status, body, _ = await gw.call("GET", f"/{medic}/_changes?limit=1", auth=auth("chw1"))
        assert status == 200, body
        assert len(docs_read) == 2, docs_read
        # (a name of no account: CouchDB locks a real one out after a few wrong passwords)
        wrong = basic(f"nobody-{uuid.uuid4().hex[:8]}", "not-the-password")
        status, body, _ = await gw.call("GET", "/", headers={"Authorization": wrong})
        assert status == 401, body  # the credentials are still checked
    finally:
        release.set()
        await stop_gateway(gw)


async def test_the_user_cache_forgets_the_least_recent_user_first(backend: PouchServer, medic: str) -> None:
    """Past its bound the cache of users' docs lets the least recently used go, one at a
    time; it no longer empties itself (at national scale, 20,000 users, every user's next
    request would read their docs again at once)."""
    settings = gateway_settings(backend, medic)
    session = new_session(settings)
    try:
        couch = CouchClient(session, settings)
        cache = UserInfoCache(couch, medic, ttl=60, kept=2)
        reads: list[str] = []
        real = couch.json

        async def counted(method: str, path: str, **kw: Any) -> JsonResult:
            reads.append(path)
            return await real(method, path, **kw)

        couch.json = counted  # type: ignore[method-assign]
        for name in ("chw1", "chw2", "chw1", "supervisor"):
            await cache.get(name)
        assert len(reads) == 6, reads  # chw1 read once, chw2 and supervisor once each
        await cache.get("chw1")
        await cache.get("supervisor")
        assert len(reads) == 6, reads  # the two most recent are kept
        await cache.get("chw2")
        assert len(reads) == 8, reads  # the least recent went
    finally:
        await session.close()
