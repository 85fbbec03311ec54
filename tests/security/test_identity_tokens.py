"""Issue 11, item 1: bearer tokens follow their user.

A token is honoured only while its user exists with the roles it grants and the password
it was issued under, and not after a logout or a revocation: on every replica, within
COUCHGATE_AUTH_CACHE_SECONDS (2 s in these gateways), and across restarts.
"""

from __future__ import annotations

import uuid

from identity_support import delete_user, new_user, put_user, token_of, user_doc

from proxy.devserver.backend import PouchServer

from support import (
    ON_COUCHDB,
    Gateway,
    TestUser,
    assert_couch_error,
    basic,
    eventually,
    gateway_settings,
    start_gateway,
    stop_gateway,
)

# Where the backend keeps its server config (pouchdb-server still answers CouchDB 1's path).
CONFIG = "/_node/_local/_config" if ON_COUCHDB else "/_config"


async def refused(gw: Gateway, path: str, token: str) -> bool:
    status, body, headers = await gw.call("GET", path, auth=token)
    if status == 200:
        return False
    assert_couch_error(status, body, 401, "unauthorized")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    return True


async def test_token_of_a_deleted_user_stops_writing(gateway: Gateway, backend: PouchServer, db: str) -> None:
    user = new_user(backend)
    token = await token_of(gateway, user.name, user.password)
    status, body, _ = await gateway.call("PUT", f"/{db}/before", auth=token, json={"v": 1})
    assert status == 201, body
    delete_user(backend, user.name)

    async def write_refused() -> bool:
        status, body, _ = await gateway.call(
            "PUT", f"/{db}/after-{uuid.uuid4().hex[:6]}", auth=token, json={}
        )
        if status == 201:
            return False
        assert_couch_error(status, body, 401, "unauthorized")
        return True

    assert await eventually(write_refused)
    assert "no longer exists" in (await gateway.call("GET", f"/{db}", auth=token))[1]["reason"]


async def test_password_change_ends_earlier_tokens_only(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    user = new_user(backend)
    old = await token_of(gateway, user.name, user.password)
    assert not await refused(gateway, f"/{db}", old)
    put_user(backend, user.name, password="a-new-password")
    assert await eventually(lambda: refused(gateway, f"/{db}", old))
    new = await token_of(gateway, user.name, "a-new-password")
    assert not await refused(gateway, f"/{db}", new)
    assert await refused(gateway, f"/{db}", old)


async def test_password_change_by_the_user_through_couchgate(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    user = new_user(backend)
    token = await token_of(gateway, user.name, user.password)
    path = f"/_users/org.couchdb.user:{user.name}"
    _, stored, _ = await gateway.call("GET", path, auth=token)
    status, body, _ = await gateway.call("PUT", path, auth=token, json={**stored, "password": "changed-here"})
    assert status == 201, body
    assert await eventually(lambda: refused(gateway, f"/{db}", token))


async def test_removed_role_ends_the_tokens_that_grant_it(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    user = new_user(backend)
    token = await token_of(gateway, user.name, user.password)
    put_user(backend, user.name, roles=["someone-else"])
    assert await eventually(lambda: refused(gateway, f"/{db}", token))
    assert "roles" in (await gateway.call("GET", f"/{db}", auth=token))[1]["reason"]


async def test_demoted_server_admin_loses_admin_through_the_token(
    gateway: Gateway, backend: PouchServer
) -> None:
    name = f"boss{uuid.uuid4().hex[:6]}"
    assert backend.request("PUT", f"{CONFIG}/admins/{name}", "boss-pass")[0] == 200

    async def backend_knows_them() -> bool:  # CouchDB hashes a new admin's password after it answers
        async with gateway.http.get(
            f"{backend.url}/_session", headers={"Authorization": basic(name, "boss-pass")}
        ) as r:
            return (await r.json(content_type=None)).get("userCtx", {}).get("name") == name

    try:
        assert await eventually(backend_knows_them)
        token = await token_of(gateway, name, "boss-pass")
        status, body, _ = await gateway.call("GET", "/_all_dbs", auth=token)
        assert status == 200, body
        assert backend.request("DELETE", f"{CONFIG}/admins/{name}")[0] == 200
        assert await eventually(lambda: refused(gateway, "/_all_dbs", token))
    finally:
        backend.request("DELETE", f"{CONFIG}/admins/{name}")


async def test_revoke_ends_own_tokens_at_once_and_later_tokens_work(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    user, other = new_user(backend), new_user(backend)
    token_a = await token_of(gateway, user.name, user.password)
    token_b = await token_of(gateway, user.name, user.password)
    others = await token_of(gateway, other.name, other.password)
    status, body, _ = await gateway.call("POST", "/_couchgate/token/revoke", auth=token_a)
    assert status == 200 and body["ok"] is True and body["name"] == user.name, body
    assert await refused(gateway, f"/{db}", token_a)  # this replica: at once, no cache window
    assert await refused(gateway, f"/{db}", token_b)
    assert not await refused(gateway, f"/{db}", others)
    second = await token_of(gateway, user.name, user.password)
    assert not await refused(gateway, f"/{db}", second)


async def test_only_admins_revoke_other_users_tokens(gateway: Gateway, backend: PouchServer, db: str) -> None:
    user, victim = new_user(backend), new_user(backend)
    victims = await token_of(gateway, victim.name, victim.password)
    status, body, _ = await gateway.call(
        "POST", "/_couchgate/token/revoke", auth=user.auth, json={"name": victim.name}
    )
    assert_couch_error(status, body, 403, "forbidden")
    assert not await refused(gateway, f"/{db}", victims)
    admin = TestUser(backend.admin_user, backend.admin_password, ("_admin",)).auth
    status, body, _ = await gateway.call(
        "POST", "/_couchgate/token/revoke", auth=admin, json={"name": victim.name}
    )
    assert status == 200, body
    assert await refused(gateway, f"/{db}", victims)
    status, body, _ = await gateway.call("POST", "/_couchgate/token/revoke")
    assert_couch_error(status, body, 401, "unauthorized")
    for bad in (["x"], {"name": 3}, {"name": ""}):
        status, body, _ = await gateway.call("POST", "/_couchgate/token/revoke", auth=admin, json=bad)
        assert_couch_error(status, body, 400, "bad_request")


async def test_logout_ends_tokens_on_every_replica_and_after_restart(backend: PouchServer, db: str) -> None:
    user = new_user(backend)
    one = await start_gateway(gateway_settings(backend, db))
    two = await start_gateway(gateway_settings(backend, db))
    try:
        token = await token_of(one, user.name, user.password)
        assert not await refused(two, f"/{db}", token)  # the other replica has it cached now
        # A cookie session's logout ends the user's tokens too.
        async with one.http.post(
            f"{one.url}/_session", json={"name": user.name, "password": user.password}
        ) as resp:
            assert resp.status == 200
            cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
        status, body, _ = await one.call("DELETE", "/_session", headers={"Cookie": cookie})
        assert status == 200 and body["ok"] is True, body
        assert await refused(one, f"/{db}", token)
        assert await eventually(lambda: refused(two, f"/{db}", token))
    finally:
        await stop_gateway(one)
        await stop_gateway(two)
    restarted = await start_gateway(gateway_settings(backend, db))
    try:
        assert await refused(restarted, f"/{db}", token)  # kept in CouchDB, not in a process
        fresh = await token_of(restarted, user.name, user.password)
        assert not await refused(restarted, f"/{db}", fresh)
    finally:
        await stop_gateway(restarted)


async def test_token_caller_logout_ends_its_token(gateway: Gateway, backend: PouchServer, db: str) -> None:
    user = new_user(backend)
    token = await token_of(gateway, user.name, user.password)
    status, body, _ = await gateway.call("DELETE", "/_session", auth=token)
    assert status == 200, body
    assert await refused(gateway, f"/{db}", token)


async def test_revocation_store_is_admin_only(gateway: Gateway, backend: PouchServer) -> None:
    user = new_user(backend)
    token = await token_of(gateway, user.name, user.password)
    assert (await gateway.call("POST", "/_couchgate/token/revoke", auth=token))[0] == 200
    auth_db = gateway.settings.auth_db
    for auth in (user.auth, (await token_of(gateway, user.name, user.password))):
        status, body, _ = await gateway.call("GET", f"/{auth_db}/revoked:{user.name}", auth=auth)
        assert status in (401, 403), (status, body)
        status, body, _ = await gateway.call("DELETE", f"/{auth_db}/revoked:{user.name}", auth=auth)
        assert status in (401, 403), (status, body)
    assert user_doc(backend, user.name)["name"] == user.name
