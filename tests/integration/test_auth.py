"""Each way of authenticating, through couchgate, against the real backend."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from proxy.devserver.backend import PouchServer

from support import (
    JWT_SECRET,
    Gateway,
    TestUser,
    assert_couch_error,
    gateway_settings,
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


async def test_basic_auth_good_and_bad(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    status, body, _ = await gateway.call("GET", f"/{db}", auth=users["alice"].auth)
    assert status == 200 and body["db_name"] == db
    status, body, headers = await gateway.call(
        "GET", f"/{db}", auth="Basic " + base64.b64encode(b"alice:nope").decode()
    )
    assert_couch_error(status, body, 401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")  # never Basic: no browser pop-ups
    status, body, _ = await gateway.call("GET", f"/{db}", auth="Basic %%%not-base64")
    assert_couch_error(status, body, 401, "unauthorized")


async def test_unauthenticated_requests_get_401_except_public_paths(gateway: Gateway, db: str) -> None:
    status, body, headers = await gateway.call("GET", f"/{db}/_all_docs")
    assert_couch_error(status, body, 401, "unauthorized")
    assert "WWW-Authenticate" in headers
    for path in ("/", "/_couchgate/health", "/_session"):
        status, body, _ = await gateway.call("GET", path)
        assert status == 200, (path, body)


async def test_cookie_session_lifecycle(gateway: Gateway, db: str, users: dict[str, TestUser]) -> None:
    alice = users["alice"]
    async with gateway.http.post(
        f"{gateway.url}/_session",
        json={"name": alice.name, "password": alice.password},
        headers={"Accept": "application/json"},
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["ok"] is True and body["name"] == "alice"
        set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith("AuthSession=")
    cookie = set_cookie.split(";", 1)[0]
    status, body, _ = await gateway.call("GET", "/_session", headers={"Cookie": cookie})
    assert status == 200 and body["userCtx"]["name"] == "alice"
    status, body, _ = await gateway.call("PUT", f"/{db}/by-cookie", json={"v": 1}, headers={"Cookie": cookie})
    assert status == 201, body
    status, body, _ = await gateway.call("DELETE", "/_session", headers={"Cookie": cookie})
    assert status == 200 and body["ok"] is True
    status, body, _ = await gateway.call("POST", "/_session", json={"name": "alice", "password": "wrong"})
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
    assert_couch_error(status, body, 403, "forbidden")


async def test_token_refused_for_wrong_password(gateway: Gateway, users: dict[str, TestUser]) -> None:
    status, body, _ = await gateway.call("POST", "/_couchgate/token", json={"name": "alice", "password": "x"})
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
