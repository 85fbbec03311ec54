"""Findings of an attacker's review (2026-11-29): conflict leaves outside the scope named
through `latest` and `_revs_diff`, an attachment written to such a leaf, another user's
`org.couchdb.user:*` id planted in the database, the user's own `_users` doc read with any
query, and a backend 500 passed through. Each test showed its hole working (the first two
on CouchDB only: pouchdb-server sends no `possible_ancestors` and answers the leaf write
409 itself), and passes on both backends now."""

from __future__ import annotations

import base64
import uuid

import orjson

from proxy.devserver.backend import PouchServer
from proxy.keys import USERS

from offline_data import CHW1_LINE, auth, conflicted_house, report
from support import Gateway, assert_couch_error, basic, delete_user, eventually, put_user

CHW1 = auth("chw1")


async def test_a_hidden_leaf_is_not_named_by_latest_or_revs_diff(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    base, away = conflicted_house(backend, medic)
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    answers = [
        await gw.call("GET", f'/{medic}/house1?open_revs=["{base}"]&latest=true', auth=CHW1),
        await gw.call(
            "POST",
            f"/{medic}/_bulk_get?latest=true",
            auth=CHW1,
            json={"docs": [{"id": "house1", "rev": base}]},
        ),
        await gw.call("GET", f"/{medic}/house1?rev={base}&latest=true", auth=CHW1),
        await gw.call("POST", f"/{medic}/_revs_diff", auth=CHW1, json={"house1": ["9-" + "a" * 32]}),
    ]
    for status, body, _ in answers:
        assert status < 500, body
        assert away["_rev"] not in orjson.dumps(body).decode(), body


async def test_an_attachment_is_written_only_to_the_winner_judged(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """Written to the hidden leaf, the attachment made that leaf (outside the scope) the
    winner: a move the rules refuse, and chw1's attachment in district2's docs."""
    _, away = conflicted_house(backend, medic)
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    text = {"Content-Type": "text/plain"}
    for how in ({"rev": away["_rev"]}, {"If-Match": f'"{away["_rev"]}"'}):
        query = f"?rev={how['rev']}" if "rev" in how else ""
        headers = {**text, **({"If-Match": how["If-Match"]} if "If-Match" in how else {})}
        status, body, _ = await gw.call(
            "PUT", f"/{medic}/house1/note.txt{query}", auth=CHW1, data=b"hello", headers=headers
        )
        assert_couch_error(status, body, 409, "conflict")
    status, body, _ = await gw.call("DELETE", f"/{medic}/house1/note.txt?rev={away['_rev']}", auth=CHW1)
    assert_couch_error(status, body, 409, "conflict")
    winner = backend.request("GET", f"/{medic}/house1")[1]
    assert winner["_rev"] == "2-" + "f" * 32 and "_attachments" not in winner, winner
    status, body, _ = await gw.call(
        "PUT", f"/{medic}/house1/note.txt?rev={winner['_rev']}", auth=CHW1, data=b"hello", headers=text
    )
    assert status == 201, body  # the winner itself, as ever


async def test_no_one_plants_another_users_user_settings_id(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A report under `org.couchdb.user:supervisor` was judged as a report about p1 and
    written; its `contact_id` and `facility_id` then became the supervisor's. Now the write
    is refused, and such a doc, written by anyone, fills in no one's rights."""
    planted = {**report("org.couchdb.user:supervisor", CHW1_LINE, patient_uuid="p1"), "contact_id": "p9"}
    status, body, _ = await gw.call("POST", f"/{medic}", auth=CHW1, json=planted)
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [planted]})
    assert status == 201 and body[0]["error"] == "forbidden", body
    name = f"chwx-{uuid.uuid4().hex[:6]}"
    put_user(backend, {"name": name, "password": "pw-x", "roles": ["chw"]})  # no facility of its own
    try:
        doc = {**report(f"org.couchdb.user:{name}", CHW1_LINE, patient_uuid="p1"), "facility_id": "house3"}
        assert backend.request("PUT", f"/{medic}/org.couchdb.user:{name}", doc)[0] == 201  # by anyone
        assert (await gw.server.app[USERS].get(name, fresh=True)).facility_ids == ()
        victim = basic(name, "pw-x")

        async def reads_p9() -> bool:
            return (await gw.call("GET", f"/{medic}/p9", auth=victim))[0] == 200

        assert not await eventually(reads_p9, within=1)
    finally:
        delete_user(backend, name)


async def test_the_own_users_doc_is_read_with_no_query_but_its_rev(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """Forwarded with the client's whole query and the service account, `open_revs` with
    `latest` for a missing revision took pouchdb-server down for everyone."""
    for query in ('?open_revs=["9-dead"]&latest=true', "?rev=9-dead&latest=true", "?revs_info=true"):
        status, body, _ = await gw.call("GET", f"/_users/org.couchdb.user:chw1{query}", auth=CHW1)
        assert status < 500, body
        assert backend.request("GET", "/")[0] == 200
    status, body, _ = await gw.call("GET", "/_users/org.couchdb.user:chw1", auth=CHW1)
    assert status == 200 and body["name"] == "chw1", body
    status, body, _ = await gw.call("GET", f"/_users/org.couchdb.user:chw1?rev={body['_rev']}", auth=CHW1)
    assert status == 200 and body["name"] == "chw1", body


async def test_deleting_an_attachment_the_doc_lacks_is_not_found(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    rev = backend.request("GET", f"/{medic}/p1")[1]["_rev"]
    status, body, _ = await gw.call("DELETE", f"/{medic}/p1/nothing.txt?rev={rev}", auth=CHW1)
    assert_couch_error(status, body, 404, "not_found")


async def test_no_write_builds_on_a_hidden_leaf(gw: Gateway, medic: str, backend: PouchServer) -> None:
    """Found by the review of those fixes: a doc write named the hidden leaf as its `_rev`
    (PUT, If-Match, `_bulk_docs`, DELETE) or in its `_revisions` (a push), and CouchDB wrote
    on that branch (made it the winner, filled stubs from it, deleted it). Each is now the
    answer to a revision CouchDB lacks."""
    base, away = conflicted_house(backend, medic)
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    body = {k: v for k, v in backend.request("GET", f"/{medic}/house1")[1].items() if k != "_rev"}
    status, answer, _ = await gw.call("PUT", f"/{medic}/house1?rev={away['_rev']}", auth=CHW1, json=body)
    assert_couch_error(status, answer, 409, "conflict")
    headers = {"If-Match": f'"{away["_rev"]}"'}
    status, answer, _ = await gw.call("PUT", f"/{medic}/house1", auth=CHW1, json=body, headers=headers)
    assert_couch_error(status, answer, 409, "conflict")
    status, rows, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [{**body, "_rev": away["_rev"]}]}
    )
    assert status == 201 and rows[0]["error"] == "conflict", rows
    supervisor = auth("supervisor")
    assert (await gw.call("GET", f"/{medic}/_changes", auth=supervisor))[0] == 200
    status, answer, _ = await gw.call("DELETE", f"/{medic}/house1?rev={away['_rev']}", auth=supervisor)
    assert_couch_error(status, answer, 409, "conflict")
    ancestor = base.split("-", 1)[1]
    pushed = {**body, "_rev": "3-" + "e" * 32,
              "_revisions": {"start": 3, "ids": ["e" * 32, "0" * 32, ancestor]}}  # fmt: skip
    status, rows, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=CHW1, json={"docs": [pushed], "new_edits": False}
    )
    assert status == 201 and [r.get("error") for r in rows] == ["forbidden"], rows
    status, leaves = backend.request("GET", f"/{medic}/house1?open_revs=all")
    assert sorted(row["ok"]["_rev"] for row in leaves) == [away["_rev"], "2-" + "f" * 32], leaves


async def test_an_attachment_stub_carries_the_digest_of_the_one_stored(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """CouchDB fills a stub from the revision a write builds on: a stub without a digest
    could take another revision's bytes under the winner's attachment name."""
    doc = backend.request("GET", f"/{medic}/p1")[1]
    inline = {"content_type": "text/plain", "data": base64.b64encode(b"public").decode()}
    status, body = backend.request("PUT", f"/{medic}/p1", {**doc, "_attachments": {"photo.txt": inline}})
    assert status == 201, body
    doc = backend.request("GET", f"/{medic}/p1")[1]
    assert (await gw.call("GET", f"/{medic}/_changes", auth=CHW1))[0] == 200
    stub = {"stub": True, "content_type": "text/plain"}
    status, answer, _ = await gw.call(
        "PUT", f"/{medic}/p1", auth=CHW1, json={**doc, "note": 1, "_attachments": {"photo.txt": stub}}
    )
    assert status == 412 and answer["error"] == "missing_stub", answer
    stub["digest"] = doc["_attachments"]["photo.txt"]["digest"]
    status, answer, _ = await gw.call(
        "PUT", f"/{medic}/p1", auth=CHW1, json={**doc, "note": 1, "_attachments": {"photo.txt": stub}}
    )
    assert status == 201, answer
