"""Who may use the conflict tools on which database (they act with the service account)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from integration.conflicts.test_conflicts import admin, leaf_revs, make_concurrent

from proxy.devserver.backend import PouchServer

from support import Gateway, TestUser, assert_couch_error, eventually

CONFLICTS = "/_couchgate/conflicts"


@pytest.fixture
def other_db(backend: PouchServer) -> Iterator[str]:
    name = f"t-other-{uuid.uuid4().hex[:8]}"
    assert backend.request("PUT", f"/{name}")[0] == 201
    yield name
    backend.request("DELETE", f"/{name}")


def grant(backend: PouchServer, db: str, *, offline: bool) -> None:
    """`member` (alice's role) holds can_resolve_conflicts, and is offline or online."""
    status, current = backend.request("GET", f"/{db}/settings")
    doc: dict[str, Any] = {
        "_id": "settings",
        "settings": {
            "roles": {"member": {"offline": offline}},
            "permissions": {"can_resolve_conflicts": ["member"]},
        },
    }
    if status == 200 and isinstance(current, dict):
        doc["_rev"] = current["_rev"]
    assert backend.request("PUT", f"/{db}/settings", doc)[0] == 201


async def test_system_databases_are_refused_and_left_alone(
    gateway: Gateway, backend: PouchServer, db: str
) -> None:
    a = admin(backend)
    for path in ("/_users" + CONFLICTS, "/_replicator" + CONFLICTS, "/_users" + CONFLICTS + "/x"):
        status, body, _ = await gateway.call("GET", path, auth=a)
        assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call(
        "POST", "/_users" + CONFLICTS + "/x/resolve", auth=a, json={"strategy": "auto"}
    )
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("GET", "/%5Fusers" + CONFLICTS, auth=a, raw_path=True)
    assert_couch_error(status, body, 403, "forbidden")
    assert backend.request("GET", "/_users/_design/couchgate-conflicts")[0] == 404


async def test_admins_may_use_other_databases_that_exist(
    gateway: Gateway, backend: PouchServer, db: str, other_db: str
) -> None:
    a = admin(backend)
    make_concurrent(backend, other_db)
    status, body, _ = await gateway.call("GET", f"/{other_db}{CONFLICTS}", auth=a)
    assert status == 200 and [c["id"] for c in body["conflicts"]] == ["shared"]
    status, body, _ = await gateway.call("GET", f"/t-missing-{uuid.uuid4().hex[:8]}{CONFLICTS}", auth=a)
    assert_couch_error(status, body, 404, "not_found")


async def test_holders_of_the_permission_online_on_the_main_database_only(
    gateway: Gateway, backend: PouchServer, db: str, other_db: str, users: dict[str, TestUser]
) -> None:
    alice = users["alice"].auth
    make_concurrent(backend, db)
    grant(backend, db, offline=False)

    async def allowed() -> bool:
        return (await gateway.call("GET", f"/{db}{CONFLICTS}", auth=alice))[0] == 200

    assert await eventually(allowed)
    status, body, _ = await gateway.call("GET", f"/{other_db}{CONFLICTS}", auth=alice)
    assert_couch_error(status, body, 403, "forbidden")
    # The same role made offline: refused, permission or not.
    grant(backend, db, offline=True)

    async def refused() -> bool:
        return (await gateway.call("GET", f"/{db}{CONFLICTS}", auth=alice))[0] == 403

    assert await eventually(refused)
    for method, suffix, payload in (
        ("GET", "/shared", None),
        ("POST", "/shared/resolve", {"strategy": "auto"}),
    ):
        status, body, _ = await gateway.call(method, f"/{db}{CONFLICTS}{suffix}", auth=alice, json=payload)
        assert_couch_error(status, body, 403, "forbidden")
        assert "online" in body["reason"]
    assert sorted(leaf_revs(backend, db, "shared")) == ["2-bbb", "2-ccc"]


@pytest.mark.parametrize(
    ("suffix", "payload"), [("/shared/resolve", {"strategy": "auto"}), ("/shared/split", {})]
)
async def test_writes_refused_without_the_permission_or_credentials(
    gateway: Gateway, backend: PouchServer, db: str, users: dict[str, TestUser], suffix: str, payload: Any
) -> None:
    make_concurrent(backend, db)
    path = f"/{db}{CONFLICTS}{suffix}?dry_run=false"
    status, body, _ = await gateway.call("POST", path, auth=users["alice"].auth, json=payload)
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gateway.call("POST", path, json=payload)
    assert_couch_error(status, body, 401, "unauthorized")
    assert sorted(leaf_revs(backend, db, "shared")) == ["2-bbb", "2-ccc"]
