"""Offline users cannot raise their own rights: not through their `_users` doc, not through
their user-settings doc, not by filing a doc under their own user id."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from proxy.devserver.backend import PouchServer

from offline_data import auth, lineage
from support import Gateway, assert_couch_error, basic

OWN = "/_users/org.couchdb.user:{}"


async def test_own_users_doc_is_readable_but_rights_are_not_writable(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    status, user, _ = await gw.call("GET", OWN.format("chw2"), auth=auth("chw2"))
    assert status == 200 and user["facility_id"] == "area2"
    for change in ({"facility_id": "house3"}, {"roles": ["chw", "_admin"]}, {"contact_id": "p9"}, {}):
        status, body, _ = await gw.call("PUT", OWN.format("chw2"), auth=auth("chw2"), json={**user, **change})
        assert_couch_error(status, body, 403, "forbidden")
    _, stored = backend.request("GET", OWN.format("chw2"))
    assert (stored["facility_id"], stored["roles"], stored["_rev"]) == ("area2", ["chw"], user["_rev"])
    await asyncio.sleep(0.6)  # past the gateway's user cache: nothing changed anyway
    status, body, _ = await gw.call("GET", f"/{medic}/p9", auth=auth("chw2"))
    assert status == 404


async def test_a_token_caller_cannot_change_its_roles(gw: Gateway, backend: PouchServer) -> None:
    status, body, _ = await gw.call("POST", "/_couchgate/token", json={"name": "chw1", "password": "pw-chw1"})
    assert status == 200, body
    bearer = f"Bearer {body['token']}"
    status, user, _ = await gw.call("GET", OWN.format("chw1"), auth=bearer)
    assert status == 200
    status, body, _ = await gw.call(
        "PUT", OWN.format("chw1"), auth=bearer, json={**user, "roles": ["chw", "national_admin"]}
    )
    assert_couch_error(status, body, 403, "forbidden")
    assert backend.request("GET", OWN.format("chw1"))[1]["roles"] == ["chw"]


@pytest.fixture
def pw_user(backend: PouchServer) -> Iterator[str]:
    """A user of its own, whose password the test may change."""
    name = "pwchanger"
    doc = {"_id": f"org.couchdb.user:{name}", "name": name, "type": "user", "password": "old-pw",
           "roles": ["chw"], "facility_id": "area1"}  # fmt: skip
    status, current = backend.request("GET", OWN.format(name))
    if status == 200:
        doc["_rev"] = current["_rev"]
    assert backend.request("PUT", OWN.format(name), doc)[0] == 201
    yield name
    _, current = backend.request("GET", OWN.format(name))
    backend.request("DELETE", f"{OWN.format(name)}?rev={current['_rev']}")


async def test_password_change_keeps_every_right_from_the_stored_doc(
    gw: Gateway, medic: str, backend: PouchServer, pw_user: str
) -> None:
    old = basic(pw_user, "old-pw")
    status, user, _ = await gw.call("GET", OWN.format(pw_user), auth=old)
    assert status == 200
    status, body, _ = await gw.call(
        "PUT", OWN.format(pw_user), auth=old, json={**user, "password": "new-pw", "facility_id": "hc1"}
    )
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call("PUT", OWN.format(pw_user), auth=old, json={**user, "password": "new-pw"})
    assert status == 201 and body["ok"] is True, body
    _, stored = backend.request("GET", OWN.format(pw_user))
    assert (stored["roles"], stored["facility_id"], stored["type"]) == (["chw"], "area1", "user")
    assert "password" not in stored  # hashed by the server, never stored in clear
    status, body, _ = await gw.call("GET", f"/{medic}/p1", auth=basic(pw_user, "new-pw"))
    assert status == 200 and body["_id"] == "p1"
    status, body, _ = await gw.call("PUT", OWN.format(pw_user), auth=basic(pw_user, "new-pw"),
                                    json={**user, "password": "again"})  # fmt: skip
    assert_couch_error(status, body, 409, "conflict")  # a stale `_rev` is still a conflict


async def test_own_user_settings_doc_cannot_change_facility_contact_or_roles(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    _, doc = backend.request("GET", f"/{medic}/org.couchdb.user:chw1")
    path = f"/{medic}/org.couchdb.user:chw1"
    for change in ({"facility_id": "hc1"}, {"facility_id": ["area1", "area3"]}, {"contact_id": "p9"},
                   {"roles": ["chw_supervisor"]}):  # fmt: skip
        status, body, _ = await gw.call("PUT", path, auth=auth("chw1"), json={**doc, **change})
        assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call("DELETE", f"{path}?rev={doc['_rev']}", auth=auth("chw1"))
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call("PUT", path, auth=auth("chw1"), json={**doc, "language": "fr"})
    assert status == 201, body


@pytest.mark.parametrize("user", ["chw1", "chw2"])
async def test_a_doc_with_the_users_own_id_cannot_be_placed_anywhere(
    gw: Gateway, medic: str, backend: PouchServer, user: str
) -> None:
    doc_id = f"org.couchdb.user:{user}"
    _, current = backend.request("GET", f"/{medic}/{doc_id}")
    # The user's rights stay as they are: only the place in the tree is at stake.
    rights = {k: current[k] for k in ("facility_id", "contact_id") if k in current}
    person = {"_id": doc_id, "_rev": current["_rev"], "type": "person", "name": "x", **rights,
              "parent": lineage("house3", "area3", "hc2", "district2")}  # fmt: skip
    status, body, _ = await gw.call("PUT", f"/{medic}/{doc_id}", auth=auth(user), json=person)
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=auth(user), json={"docs": [person]})
    assert status == 201 and body[0]["error"] == "forbidden"
    assert backend.request("GET", f"/{medic}/{doc_id}")[1]["type"] == "user-settings"
