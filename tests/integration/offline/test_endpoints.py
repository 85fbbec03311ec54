"""Every endpoint a PouchDB client uses, for offline users, in scope and out of scope."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from proxy.devserver.backend import PouchServer
from proxy.keys import COUCH, INDEX, SINCE_CODEC

from offline_data import CHW1_READS, SUPERVISOR_READS, auth, person, place, report
from support import (
    Gateway,
    assert_couch_error,
    basic,
    eventually,
    gateway_settings,
    start_gateway,
    stop_gateway,
)

MISSING = {"error": "not_found", "reason": "missing"}


async def test_db_info_and_doc_reads(gw: Gateway, medic: str) -> None:
    status, body, _ = await gw.call("GET", f"/{medic}", auth=auth("chw1"))
    assert status == 200 and body["db_name"] == medic
    status, body, _ = await gw.call("GET", f"/{medic}/p1", auth=auth("chw1"))
    assert status == 200 and body["patient_id"] == "1001"
    status, body, _ = await gw.call("GET", f"/{medic}/p1?revs=true&conflicts=true", auth=auth("chw1"))
    assert body["_revisions"]["start"] == 1


@pytest.fixture
async def warm_gw(backend: PouchServer, medic: str) -> AsyncIterator[Gateway]:
    """A gateway whose credential cache outlives a slow machine's pauses (the `gw` one
    expires in half a second: a re-read user would count as an upstream request)."""
    gateway = await start_gateway(gateway_settings(backend, medic, auth_cache_seconds=60))
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


async def test_db_info_is_the_users_own_view_answered_without_upstream(
    warm_gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = warm_gw
    await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1"))  # the index is built
    # Building the index files chw1's user docs, which drops the cached user info: one more
    # request re-reads it, so the counted request below finds every cache warm.
    await gw.call("GET", f"/{medic}", auth=auth("chw1"))
    couch = gw.server.app[COUCH]
    upstream: list[str] = []
    real_json, real_stream = couch.json, couch.stream

    def counting(real: Any) -> Any:
        def call(method: str, path: str, **kwargs: Any) -> Any:
            upstream.append(f"{method} {path}")
            return real(method, path, **kwargs)

        return call

    monkeypatch.setattr(couch, "json", counting(real_json))
    monkeypatch.setattr(couch, "stream", counting(real_stream))
    status, info, _ = await gw.call("GET", f"/{medic}", auth=auth("chw1"))
    assert status == 200 and upstream == []
    assert info["db_name"] == medic
    assert (info["doc_count"], info["doc_del_count"]) == (len(CHW1_READS), 0)
    status, body, headers = await gw.call("HEAD", f"/{medic}", auth=auth("chw1"))
    assert status == 200 and body is None and headers["Content-Type"].startswith("application/json")
    # `update_seq` is the user's own since token: a feed from it resumes, it does not backfill.
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?since={info['update_seq']}", auth=auth("chw1"))
    assert status == 200 and feed["results"] == []
    _, doc = backend.request("GET", f"/{medic}/p2")
    backend.request("DELETE", f"/{medic}/p2?rev={doc['_rev']}")
    status, feed, _ = await gw.call("GET", f"/{medic}/_changes?since={info['update_seq']}", auth=auth("chw1"))
    assert [(r["id"], r.get("deleted")) for r in feed["results"]] == [("p2", True)]
    _, info, _ = await gw.call("GET", f"/{medic}", auth=auth("chw1"))
    assert (info["doc_count"], info["doc_del_count"]) == (len(CHW1_READS) - 1, 1)
    codec = gw.server.app[SINCE_CODEC]  # tokens are sealed afresh each time: compare what they hold
    held, last = codec.decode("chw1", info["update_seq"]), codec.decode("chw1", feed["last_seq"])
    assert held is not None and last is not None
    assert replace(held, issued=0, level=0) == replace(last, issued=0, level=0)  # the same position, later
    _, theirs, _ = await gw.call("GET", f"/{medic}", auth=auth("supervisor"))
    assert theirs["doc_count"] == len(SUPERVISOR_READS) - 1
    # Another user's token is not this user's: it restarts the feed from the beginning.
    status, feed, _ = await gw.call(
        "GET", f"/{medic}/_changes?since={theirs['update_seq']}", auth=auth("chw1")
    )
    assert {r["id"] for r in feed["results"]} == CHW1_READS


async def test_welcome_is_couchdbs_kept_for_a_while(
    gw: Gateway, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, upstream_welcome = backend.request("GET", "/")
    status, body, _ = await gw.call("GET", "/", auth=auth("chw1"))
    assert (status, body) == (200, upstream_welcome)
    couch = gw.server.app[COUCH]

    def no_welcome(real: Any) -> Any:
        def call(method: str, path: str, **kwargs: Any) -> Any:
            assert path.split("?")[0] != "/", "the welcome was asked for again"
            return real(method, path, **kwargs)

        return call

    monkeypatch.setattr(couch, "json", no_welcome(couch.json))
    monkeypatch.setattr(couch, "stream", no_welcome(couch.stream))
    assert (await gw.call("GET", "/", auth=auth("supervisor")))[:2] == (200, upstream_welcome)
    status, body, _ = await gw.call("HEAD", "/", auth=auth("chw1"))
    assert (status, body) == (200, None)
    status, body, _ = await gw.call("POST", "/", auth=auth("chw1"), json={})
    assert_couch_error(status, body, 403, "forbidden")


async def test_welcome_is_read_at_start_and_again_beside_the_answers(
    gw: Gateway, backend: PouchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device's first `GET /` after a start is answered from the copy read at start; a
    copy past its minute answers while a fresh one is read beside it; one past a second
    minute is read again before the answer."""
    _, upstream_welcome = backend.request("GET", "/")
    welcome = gw.server.app[INDEX].welcome

    async def kept() -> bool:
        return welcome._kept is not None and welcome._kept[1] == upstream_welcome

    assert await eventually(kept)  # read at start, before any device asked
    couch = gw.server.app[COUCH]
    asked: list[str] = []
    real = couch.json

    async def counted(method: str, path: str, **kwargs: Any) -> Any:
        if path.split("?")[0] == "/":
            asked.append(path)
        return await real(method, path, **kwargs)

    monkeypatch.setattr(couch, "json", counted)
    assert (await gw.call("GET", "/", auth=auth("chw1")))[:2] == (200, upstream_welcome)
    assert asked == []
    old = {**upstream_welcome, "version": "an older copy"}
    welcome._kept = (time.monotonic() - 1, old)  # past its minute
    assert (await gw.call("GET", "/", auth=auth("chw1")))[:2] == (200, old)
    assert await eventually(kept) and asked == ["/"]  # read again beside the answer
    welcome._kept = (time.monotonic() - welcome.ttl - 1, old)  # past the second minute
    assert (await gw.call("GET", "/", auth=auth("chw1")))[:2] == (200, upstream_welcome)
    assert asked == ["/", "/"]


async def test_foreign_doc_looks_exactly_like_a_missing_one(gw: Gateway, medic: str) -> None:
    foreign = await gw.call("GET", f"/{medic}/p9", auth=auth("chw1"))
    missing = await gw.call("GET", f"/{medic}/no-such-doc", auth=auth("chw1"))
    assert (foreign[0], foreign[1]) == (missing[0], missing[1]) == (404, MISSING)
    _, p9, _ = await gw.call("GET", f"/{medic}/p9", auth=auth("supervisor"))
    status, body, _ = await gw.call(
        "GET", f'/{medic}/p9?open_revs=["{p9 if False else "1-x"}"]', auth=auth("chw1")
    )
    assert (status, body) == (404, MISSING)


async def test_open_revs_and_latest(gw: Gateway, medic: str, backend: PouchServer) -> None:
    _, doc = backend.request("GET", f"/{medic}/p1")
    rev = doc["_rev"]
    status, body, _ = await gw.call(
        "GET", f'/{medic}/p1?revs=true&latest=true&open_revs=["{rev}"]', auth=auth("chw1")
    )
    assert status == 200 and body[0]["ok"]["_id"] == "p1"
    # A rev CouchDB lacks must not be asked with latest=true (it kills pouchdb-server).
    status, body, _ = await gw.call(
        "GET", f'/{medic}/p1?latest=true&open_revs=["{rev}","9-deadbeef"]', auth=auth("chw1")
    )
    assert status == 200 and body[-1] == {"missing": "9-deadbeef"} and body[0]["ok"]["_rev"] == rev
    status, body, _ = await gw.call("GET", "/" + medic + "/p1?open_revs=[1]", auth=auth("chw1"))
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1"))
    assert status == 200  # the backend survived


async def test_attachments_in_and_out_of_scope(gw: Gateway, medic: str, backend: PouchServer) -> None:
    for doc_id in ("p1", "p9"):
        _, doc = backend.request("GET", f"/{medic}/{doc_id}")
        doc["_attachments"] = {
            "photo.txt": {"content_type": "text/plain", "data": base64.b64encode(b"hi").decode()}
        }
        backend.request("PUT", f"/{medic}/{doc_id}", doc)
    async with gw.http.get(f"{gw.url}/{medic}/p1/photo.txt", headers={"Authorization": auth("chw1")}) as resp:
        assert resp.status == 200 and await resp.read() == b"hi"
    status, body, _ = await gw.call("GET", f"/{medic}/p9/photo.txt", auth=auth("chw1"))
    assert (status, body) == (404, MISSING)


async def test_all_docs_only_readable_and_key_probing_finds_nothing(gw: Gateway, medic: str) -> None:
    status, body, _ = await gw.call("GET", f"/{medic}/_all_docs", auth=auth("chw1"))
    assert status == 200 and {r["id"] for r in body["rows"]} == CHW1_READS
    assert body["total_rows"] == len(CHW1_READS)
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_all_docs", auth=auth("chw1"), json={"keys": ["p1", "p9", "nope"]}
    )
    assert [r.get("id") for r in body["rows"]] == ["p1", None, None]
    assert body["rows"][1] == {"key": "p9", "error": "not_found"} and body["rows"][2] == {
        "key": "nope",
        "error": "not_found",
    }
    status, body, _ = await gw.call(
        "GET",
        f'/{medic}/_all_docs?startkey="p"&endkey="p\ufff0"&include_docs=true&limit=1&skip=1',
        auth=auth("chw1"),
    )
    assert [r["id"] for r in body["rows"]] == ["p2"] and body["rows"][0]["doc"]["_id"] == "p2"
    status, body, _ = await gw.call("GET", f"/{medic}/_all_docs?descending=true&limit=2", auth=auth("chw1"))
    assert [r["id"] for r in body["rows"]] == sorted(CHW1_READS, reverse=True)[:2]


async def test_bulk_get_hides_foreign_docs(gw: Gateway, medic: str, backend: PouchServer) -> None:
    _, p1 = backend.request("GET", f"/{medic}/p1")
    _, p9 = backend.request("GET", f"/{medic}/p9")
    asked = [{"id": "p1", "rev": p1["_rev"]}, {"id": "p9", "rev": p9["_rev"]}, {"id": "p1", "rev": "7-abc"}]
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_get?revs=true&latest=true", auth=auth("chw1"), json={"docs": asked}
    )
    assert status == 200
    first, second, third = body["results"]
    assert first["docs"][0]["ok"]["_id"] == "p1"
    assert second["docs"][0]["error"]["error"] == "not_found"
    assert third["docs"][0]["error"]["error"] == "not_found"
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_get", auth=auth("chw1"), json={"docs": "p1"})
    assert_couch_error(status, body, 400, "bad_request")


async def test_revs_diff_reports_foreign_ids_missing(gw: Gateway, medic: str, backend: PouchServer) -> None:
    _, p1 = backend.request("GET", f"/{medic}/p1")
    _, p9 = backend.request("GET", f"/{medic}/p9")
    # `_revs_diff` answers from the index as it stands (an id it does not know yet is all
    # missing, by design): let it catch up with the docs loaded for this test first.
    assert (await gw.call("GET", f"/{medic}/_changes", auth=auth("chw1")))[0] == 200
    status, body, _ = await gw.call(
        "POST",
        f"/{medic}/_revs_diff",
        auth=auth("chw1"),
        json={"p1": [p1["_rev"], "2-new"], "p9": [p9["_rev"]]},
    )
    assert status == 200
    # CouchDB adds the revs it holds that may be ancestors (pouchdb-server never does):
    # never passed on, as they may name leaves outside the scope; a foreign doc is all missing.
    assert body == {"p1": {"missing": ["2-new"]}, "p9": {"missing": [p9["_rev"]]}}
    status, body, _ = await gw.call("POST", f"/{medic}/_revs_diff", auth=auth("chw1"), json={"p1": "1-abc"})
    assert_couch_error(status, body, 400, "bad_request")


async def test_local_docs_are_private_per_user(gw: Gateway, medic: str) -> None:
    status, body, _ = await gw.call(
        "PUT", f"/{medic}/_local/checkpoint", auth=auth("chw1"), json={"last_seq": "a"}
    )
    assert status == 201 and body["id"] == "_local/checkpoint"
    status, body, _ = await gw.call("GET", f"/{medic}/_local/checkpoint", auth=auth("chw2"))
    assert (status, body["error"]) == (404, "not_found")
    status, body, _ = await gw.call(
        "PUT", f"/{medic}/_local/checkpoint", auth=auth("chw2"), json={"last_seq": "b"}
    )
    assert status == 201
    status, body, _ = await gw.call("GET", f"/{medic}/_local/checkpoint", auth=auth("chw1"))
    assert status == 200 and body["last_seq"] == "a" and body["_id"] == "_local/checkpoint"
    status, body, _ = await gw.call("GET", f"/{medic}/_local%2Fcheckpoint", auth=auth("chw2"), raw_path=True)
    assert status == 200 and body["last_seq"] == "b"


FORBIDDEN = [
    ("POST", "/{db}/_find"),
    ("GET", "/{db}/_design/medic/_view/contacts"),
    ("GET", "/{db}/_design%2Fmedic/_view/contacts"),
    ("GET", "/{db}/_design/medic"),
    ("GET", "/{db}/_security"),
    ("PUT", "/{db}/_security"),
    ("POST", "/{db}/_purge"),
    ("POST", "/{db}/_compact"),
    ("GET", "/{db}/_local_docs"),
    ("GET", "/{db}/_design_docs"),
    ("GET", "/_all_dbs"),
    ("GET", "/%5Fall_dbs"),
    ("GET", "/_config"),
    ("GET", "/_node/_local/_config"),
    ("POST", "/_replicate"),
    ("GET", "/_users/_all_docs"),
    ("GET", "/_users/org.couchdb.user:chw2"),
    ("GET", "/_users/org.couchdb.user%3Achw2"),
    ("GET", "/other-db/_all_docs"),
    ("PUT", "/{db}"),
    ("DELETE", "/{db}"),
    ("GET", "//{db}//_find"),
    ("POST", "/{db}/%5Ffind"),
    # `_design/medic-client` is readable, but what runs inside it sees every doc.
    ("GET", "/{db}/_design/medic-client/_view/all"),
    ("GET", "/{db}/_design/medic-client/_view/all?include_docs=true"),
    ("POST", "/{db}/_design/medic-client/_view/all"),
    ("GET", "/{db}/_design%2Fmedic-client/_view/all"),
    ("GET", "/{db}/_design/medic-client/%5Fview/all"),
    ("GET", "/{db}/_design/medic-client//_view//all"),
    ("GET", "/{db}/_design/medic-client/_info"),
    ("GET", "/{db}/_design/medic-client/_show/one/p9"),
    ("GET", "/{db}/_design/medic-client/_list/each/all"),
    ("POST", "/{db}/_design/medic-client/_update/stamp/p9"),
    ("GET", "/{db}/_design/medic-client/_rewrite/anything"),
    ("PUT", "/{db}/_design/medic-client"),
    ("DELETE", "/{db}/_design/medic-client"),
    ("PUT", "/{db}/_design/medic-client/logo.txt"),
    ("GET", "/{db}/p1/_anything"),
    # Users may read their own `_users` doc, never write their rights into it.
    ("POST", "/_users"),
    ("DELETE", "/_users/org.couchdb.user:chw1"),
    ("PUT", "/_users/org.couchdb.user:chw1/avatar.png"),
]

MEDIC_CLIENT = {
    "views": {"all": {"map": "function (doc) { emit(doc._id); }"}},
    "shows": {"one": "function (doc) { return JSON.stringify(doc); }"},
    "lists": {"each": "function () { var r; while ((r = getRow())) { send(r.id); } }"},
    "updates": {"stamp": "function (doc) { doc.stamped = true; return [doc, 'ok']; }"},
    "rewrites": [{"from": "anything", "to": "../../p9"}],
}


@pytest.mark.parametrize(("method", "path"), FORBIDDEN)
async def test_everything_else_is_403(
    gw: Gateway, medic: str, backend: PouchServer, method: str, path: str
) -> None:
    # A real design doc, so a view path that slipped through would answer with its rows.
    assert backend.request("PUT", f"/{medic}/_design/medic-client", MEDIC_CLIENT)[0] == 201
    status, body, _ = await gw.call(
        method, path.format(db=medic), auth=auth("chw1"), json={} if method != "GET" else None, raw_path=True
    )
    assert_couch_error(status, body, 403, "forbidden")


async def test_own_user_doc_and_medic_client_ddoc_are_allowed(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    status, body, _ = await gw.call("GET", "/_users/org.couchdb.user:chw1", auth=auth("chw1"))
    assert status == 200 and body["name"] == "chw1"
    backend.request("PUT", f"/{medic}/_design/medic-client", {"views": {}})
    status, body, _ = await gw.call("GET", f"/{medic}/_design/medic-client", auth=auth("chw1"))
    assert status == 200 and body["_id"] == "_design/medic-client"


async def test_online_users_and_admins_pass_through(gw: Gateway, medic: str, backend: PouchServer) -> None:
    status, body, _ = await gw.call("GET", f"/{medic}/p9", auth=auth("clerk"))
    assert status == 200 and body["_id"] == "p9"
    status, body, _ = await gw.call(
        "GET", f"/{medic}/_all_docs", auth=basic(backend.admin_user, backend.admin_password)
    )
    assert status == 200 and "p9" in {r["id"] for r in body["rows"]}


def new_household() -> list[dict[str, Any]]:
    return [
        place("house9", "clinic", "area1", "hc1", "district1"),
        person("p99", "house9", "area1", "hc1", "district1"),
        report("r_p99", ("chw1_person", "area1", "hc1", "district1"), patient_id="p99"),
    ]


async def test_bulk_docs_same_request_rule_and_per_doc_forbidden(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    docs = [
        *new_household(),
        report("r_foreign", ("chw1_person", "area1"), patient_uuid="p9"),
        {"_id": "settings", "x": 1},
    ]
    status, body, _ = await gw.call("POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": docs})
    assert status == 201
    assert [r["id"] for r in body] == ["house9", "p99", "r_p99", "r_foreign", "settings"]
    assert all(r.get("ok") for r in body[:3]), body
    assert body[3]["error"] == "forbidden" and body[4]["error"] == "forbidden"
    assert body[3]["reason"] and body[4]["reason"]
    assert backend.request("GET", f"/{medic}/r_p99")[0] == 200
    assert backend.request("GET", f"/{medic}/r_foreign")[0] == 404
    _, settings = backend.request("GET", f"/{medic}/settings")
    assert "x" not in settings


async def test_bulk_docs_new_edits_false_answers_only_failures(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    ok = {**report("r_replicated", ("chw1_person", "area1"), patient_id="1001"), "_rev": "1-abc"}
    bad = {**report("r_bad", ("chw1_person", "area1"), patient_uuid="p9"), "_rev": "1-def"}
    status, body, _ = await gw.call(
        "POST", f"/{medic}/_bulk_docs", auth=auth("chw1"), json={"docs": [ok, bad], "new_edits": False}
    )
    assert status == 201
    assert body == [{"id": "r_bad", "error": "forbidden", "reason": body[0]["reason"]}]
    _, stored = backend.request("GET", f"/{medic}/r_replicated")
    assert stored["_rev"] == "1-abc"


async def test_single_doc_writes(gw: Gateway, medic: str, backend: PouchServer) -> None:
    status, body, _ = await gw.call(
        "PUT", f"/{medic}/r_single", auth=auth("chw1"), json=report("x", ("chw1_person",), patient_id="1001")
    )
    assert status == 201 and body["id"] == "r_single"
    status, body, _ = await gw.call(
        "PUT", f"/{medic}/p9", auth=auth("chw1"), json={"type": "person", "name": "hijack"}
    )
    assert_couch_error(status, body, 403, "forbidden")
    _, r = backend.request("GET", f"/{medic}/r_p1")
    status, body, _ = await gw.call("DELETE", f"/{medic}/r_p1?rev={r['_rev']}", auth=auth("chw1"))
    assert_couch_error(status, body, 403, "forbidden")  # chw lacks can_delete_reports
    status, body, _ = await gw.call("DELETE", f"/{medic}/r_p1?rev={r['_rev']}", auth=auth("supervisor"))
    assert status == 200 and body["ok"] is True
    status, body, _ = await gw.call(
        "POST", f"/{medic}", auth=auth("chw1"), json=report("ignored", ("chw1_person",), patient_id="1001")
    )
    assert status == 201 and body["ok"] is True


async def test_admin_scope_report(gw: Gateway, medic: str, backend: PouchServer) -> None:
    admin = basic(backend.admin_user, backend.admin_password)
    status, body, _ = await gw.call("GET", "/_couchgate/users/chw1/scope", auth=admin)
    assert status == 200 and body["total"] == len(CHW1_READS) and body["warning"] is False
    assert body["by_kind"]["person"] == 3 and body["offline"] is True
    status, body, _ = await gw.call("GET", "/_couchgate/users/chw1/scope", auth=auth("chw1"))
    assert_couch_error(status, body, 403, "forbidden")
    status, body, _ = await gw.call("GET", "/_couchgate/users/nobody/scope", auth=admin)
    assert_couch_error(status, body, 404, "not_found")


async def test_scope_report_warns_above_the_configured_limit(medic: str, backend: PouchServer) -> None:
    gateway = await start_gateway(gateway_settings(backend, medic, scope_warn_docs=len(CHW1_READS) - 1))
    admin = basic(backend.admin_user, backend.admin_password)
    try:
        _, chw1, _ = await gateway.call("GET", "/_couchgate/users/chw1/scope", auth=admin)
        _, chw2, _ = await gateway.call("GET", "/_couchgate/users/chw2/scope", auth=admin)
    finally:
        await stop_gateway(gateway)
    assert (chw1["total"], chw1["warn_limit"], chw1["warning"]) == (
        len(CHW1_READS),
        len(CHW1_READS) - 1,
        True,
    )
    assert chw2["total"] < len(CHW1_READS) - 1 and chw2["warning"] is False
