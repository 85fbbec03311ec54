"""Bad input to the conflict endpoints is a CouchDB-shaped 400 or 404, and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from integration.conflicts.test_conflicts import admin, leaf, leaf_revs, make_concurrent, write

from proxy.conflicts.split import new_id
from proxy.conflicts.store import ConflictStore
from proxy.couch.client import CouchClient, new_session
from proxy.devserver.backend import PouchServer
from proxy.errors import BadRequest

from support import Gateway, assert_couch_error, gateway_settings

NEW = "<the person's new id>"  # replaced by the real one: a choice that is valid but misplaced


@pytest.mark.parametrize(
    "payload",
    [
        {"strategy": "auto", "leaves": 5},
        {"strategy": "auto", "leaves": [1, "a"]},
        {"strategy": "auto", "surprise": True},
        {"strategy": "guess"},
        {},
        ["pick"],
        {"strategy": "pick"},
        {"strategy": "pick", "rev": 5},
        {"strategy": "pick", "rev": "1-aaa"},  # an ancestor, not a leaf
        {"strategy": "merge"},
        {"strategy": "merge", "doc": "x"},
        {"strategy": "merge", "doc": {"type": "data_record", "_bad": 1}},
        {"strategy": "merge", "doc": {"_deleted": True}},
        {"strategy": "merge", "doc": {"_id": "someone-else"}},
    ],
)
async def test_bad_resolve_bodies(gateway: Gateway, backend: PouchServer, db: str, payload: Any) -> None:
    make_concurrent(backend, db)
    status, body, _ = await gateway.call(
        "POST", f"/{db}/_couchgate/conflicts/shared/resolve", auth=admin(backend), json=payload
    )
    assert_couch_error(status, body, 400, "bad_request")
    assert sorted(leaf_revs(backend, db, "shared")) == ["2-bbb", "2-ccc"]


@pytest.mark.parametrize(
    "payload",
    [
        {"references": {"rep1": "x"}},
        {"references": {"rep1": {"fields.patient_uuid": 5}}},
        {"references": []},
        {"references": {"rep1": {"fields.patient_uuid": "not-a-new-id"}}},
        {"references": {"rep1": {"fields.nowhere": NEW}}},
        {"references": {"nobody": {"fields.patient_uuid": NEW}}},
        {"keep": {"1-zz": "1-p0"}},
        {"keep": ["1-p0"]},
        {"surprise": True},
        "split",
    ],
)
async def test_bad_split_bodies(gateway: Gateway, backend: PouchServer, db: str, payload: Any) -> None:
    write(backend, db, leaf("X1", ["1-p0"], type="person"), leaf("X1", ["1-r0"], type="data_record"))
    assert (
        backend.request("PUT", f"/{db}/rep1", {"type": "data_record", "fields": {"patient_uuid": "X1"}})[0]
        == 201
    )
    if isinstance(payload, dict) and isinstance(payload.get("references"), dict):
        person = new_id("X1", "1-p0")
        payload = {"references": {d: {p: person if v == NEW else v for p, v in paths.items()}
                                  if isinstance(paths, dict) else paths
                                  for d, paths in payload["references"].items()}}  # fmt: skip
    for dry_run in ("true", "false"):
        status, body, _ = await gateway.call(
            "POST",
            f"/{db}/_couchgate/conflicts/X1/split?dry_run={dry_run}",
            auth=admin(backend),
            json=payload,
        )
        assert_couch_error(status, body, 400, "bad_request")
    assert sorted(leaf_revs(backend, db, "X1")) == ["1-p0", "1-r0"]
    assert backend.request("GET", f"/{db}/rep1")[1]["fields"]["patient_uuid"] == "X1"


async def test_malformed_json_and_bad_flags(gateway: Gateway, backend: PouchServer, db: str) -> None:
    make_concurrent(backend, db)
    a = admin(backend)
    base = f"/{db}/_couchgate/conflicts"
    status, body, _ = await gateway.call("POST", f"{base}/shared/resolve", auth=a, data=b"{",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
    assert_couch_error(status, body, 400, "bad_request")
    # `dry_run=1` is not `true`: refused rather than taken for a real write.
    for value in ("1", "yes", ""):
        status, body, _ = await gateway.call(
            "POST", f"{base}/shared/resolve?dry_run={value}", auth=a, json={"strategy": "auto"}
        )
        assert_couch_error(status, body, 400, "bad_request")
        status, body, _ = await gateway.call("POST", f"{base}/shared/split?dry_run={value}", auth=a, json={})
        assert_couch_error(status, body, 400, "bad_request")
    assert sorted(leaf_revs(backend, db, "shared")) == ["2-bbb", "2-ccc"]
    status, body, _ = await gateway.call("GET", f"{base}?update=soon", auth=a)
    assert_couch_error(status, body, 400, "bad_request")
    status, body, _ = await gateway.call("GET", f"{base}?update=lazy", auth=a)
    assert status == 200 and isinstance(body["conflicts"], list)


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("POST", "/resolve"), ("POST", "/split")])
async def test_unknown_doc_is_404(
    gateway: Gateway, backend: PouchServer, db: str, method: str, suffix: str
) -> None:
    payload = {"strategy": "auto"} if suffix == "/resolve" else {} if suffix else None
    status, body, _ = await gateway.call(
        method, f"/{db}/_couchgate/conflicts/nope{suffix}?dry_run=false" if suffix else f"/{db}/_couchgate/conflicts/nope",
        auth=admin(backend), json=payload,
    )  # fmt: skip
    assert_couch_error(status, body, 404, "not_found")


async def test_a_write_couchdb_refuses_is_the_callers_400(backend: PouchServer, db: str) -> None:
    """Past couchgate's own checks, CouchDB's refusal of a whole `_bulk_docs` (400, or
    pouchdb-server's 500 `doc_validation`) is still a 400, not a 502."""
    settings = gateway_settings(backend, db)
    session = new_session(settings)
    try:
        store = ConflictStore(CouchClient(session, settings), db)
        with pytest.raises(BadRequest):
            await store.bulk([{"_id": "x", "_bad": 1}])
    finally:
        await session.close()
