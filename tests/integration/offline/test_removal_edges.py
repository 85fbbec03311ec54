"""Removals at the edges an attacker (or time) can reach: the upstream leaf a made-up
deletion grew from is gone, made-up revisions never reveal upstream revisions the user
may not read, and `limit` holds for removals too. Real gateway, real backend."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.devserver.backend import PouchServer
from proxy.offline import changes as changes_module

from offline_data import HOUSEHOLD, auth, lineage, move_house
from support import Gateway, eventually, index_level


async def changes(gw: Gateway, db: str, user: str, query: str = "") -> dict[str, Any]:
    status, body, _ = await gw.call("GET", f"/{db}/_changes?style=all_docs{query}", auth=auth(user))
    assert status == 200, body
    return dict(body)


async def bulk_get(gw: Gateway, db: str, user: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    docs = [{"id": i, "rev": r} for i, r in pairs]
    status, body, _ = await gw.call(
        "POST", f"/{db}/_bulk_get?revs=true&latest=true", auth=auth(user), json={"docs": docs}
    )
    assert status == 200, body
    return [item for row in body["results"] for item in row["docs"]]


async def test_a_removal_whose_upstream_leaf_is_gone_is_still_served(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """The revision a made-up deletion stands on is gone upstream (compacted here; stemmed
    past `_revs_limit`, 1000 revisions by default, after many edits): every device that is
    sent the deletion still gets it, never a not_found that stops PouchDB's pull for good."""
    first = await changes(gw, medic, "chw1")
    move_house(backend, medic, "area2", "hc1", "district1")
    await index_level(gw, backend, medic)
    away = await changes(gw, medic, "chw1", f"&since={first['last_seq']}")
    assert "house1" in {r["id"] for r in away["results"] if r.get("deleted")}
    move_house(backend, medic, "area1", "hc1", "district1")
    await index_level(gw, backend, medic)
    back = await changes(gw, medic, "chw1", f"&since={away['last_seq']}")
    status, house = backend.request("GET", f"/{medic}/house1")
    for n in range(4):  # later ordinary edits stem the revisions below
        status, body = backend.request("PUT", f"/{medic}/house1", {**house, "visits": n})
        assert status == 201, body
        house["_rev"] = body["rev"]
    assert backend.request("POST", f"/{medic}/_compact", {})[0] in (200, 202)

    async def compacted() -> bool:
        _, info = backend.request("GET", f"/{medic}")
        return not info.get("compact_running")

    assert await eventually(compacted, within=30)
    await index_level(gw, backend, medic)

    later = await changes(gw, medic, "chw1", f"&since={back['last_seq']}")  # the phone's next pull
    (row,) = [r for r in later["results"] if r["id"] == "house1"]
    revs = [c["rev"] for c in row["changes"]]
    assert len(revs) > 1, row  # the winner and the made-up deletion of the old chain
    served = await bulk_get(gw, medic, "chw1", [("house1", r) for r in revs])
    assert all("ok" in item for item in served), served
    made = [item["ok"] for item in served if item["ok"].get("_deleted")]
    assert made and made[0]["_revisions"]["ids"][0] == revs[1].partition("-")[2]


async def test_a_removal_never_names_the_revision_that_took_the_doc_away(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A revision id is a hash of its body: the made-up deletion of a household that moved
    away stands on the revision the device holds, and nothing the device is sent names
    the revision that moved it (its new parent would be a guess away)."""
    first = await changes(gw, medic, "chw1")
    (held,) = [r["changes"][0]["rev"] for r in first["results"] if r["id"] == "house1"]
    moved = move_house(backend, medic, "area2", "hc1", "district1")
    await index_level(gw, backend, medic)
    away = await changes(gw, medic, "chw1", f"&since={first['last_seq']}")
    (row,) = [r for r in away["results"] if r["id"] == "house1"]
    assert row["deleted"] and moved not in str(away), row
    (tombstone,) = await bulk_get(gw, medic, "chw1", [("house1", row["changes"][0]["rev"])])
    history = tombstone["ok"]["_revisions"]
    assert history["ids"][1] == held.partition("-")[2] and moved.partition("-")[2] not in history["ids"]
    assert history["start"] == int(held.partition("-")[0]) + 1

    # Back on the device's side: it comes back as the current upstream revision.
    move_house(backend, medic, "area1", "hc1", "district1")
    await index_level(gw, backend, medic)
    back = await changes(gw, medic, "chw1", f"&since={away['last_seq']}")
    (row,) = [r for r in back["results"] if r["id"] == "house1"]
    _, now = backend.request("GET", f"/{medic}/house1")
    assert not row.get("deleted") and row["changes"][0]["rev"] == now["_rev"], row


@pytest.mark.parametrize(("limit", "per_page"), [(1, 0), (2, 0), (5, 0), (1, 4), (2, 4)])
async def test_removals_page_and_paging_loses_none(
    gw: Gateway, medic: str, backend: PouchServer, monkeypatch: pytest.MonkeyPatch, limit: int, per_page: int
) -> None:
    """Six docs leave at once: pages of at most `limit` rows, or of REMOVALS_PER_PAGE
    removals where that is more, carry them all, each once, then the feed goes on with its
    changes from where the device stood."""
    monkeypatch.setattr(changes_module, "REMOVALS_PER_PAGE", per_page)
    cap = max(limit, per_page)
    first = await changes(gw, medic, "chw1")
    move_house(backend, medic, "area2", "hc1", "district1")
    backend.request("PUT", f"/{medic}/r_new", {"type": "data_record", "form": "visit",
                                               "contact": lineage("chw1_person", "area1", "hc1", "district1"),
                                               "fields": {"patient_uuid": "chw1_person"}})  # fmt: skip
    await index_level(gw, backend, medic)
    since, removed, changed = first["last_seq"], [], []
    for _ in range(20):
        page = await changes(gw, medic, "chw1", f"&since={since}&limit={limit}")
        assert len(page["results"]) <= cap, page
        if not removed:
            assert len(page["results"]) == cap  # the first page is full of removals
        removed += [r["id"] for r in page["results"] if r.get("deleted")]
        changed += [r["id"] for r in page["results"] if not r.get("deleted")]
        since = page["last_seq"]
        if not page["results"]:
            break
    assert sorted(removed) == sorted(HOUSEHOLD) and changed == ["r_new"], (removed, changed)
    assert (await changes(gw, medic, "chw1", f"&since={since}"))["results"] == []


async def test_a_doc_removed_during_a_first_pull_comes_back_on_it(
    gw: Gateway, medic: str, backend: PouchServer
) -> None:
    """A device on its first pull needs no ledger for what it is sent (it holds no made-up
    revision), until a page takes a doc it was sent off it: the household leaves between
    two of its pages and comes back before the pull ends. Its return must name the made-up
    revision above the removal the device holds, not the upstream one it already has
    (under which the removal would stand: the doc would stay off the device)."""
    everything = await changes(gw, medic, "chw1")
    order = [r["id"] for r in everything["results"]]
    cut = order.index("p1") + 1
    assert cut < len(order)  # the first page holds p1 and does not catch up
    first = await changes(gw, medic, "chw1", f"&since=0&limit={cut}")
    (held,) = [r["changes"][0]["rev"] for r in first["results"] if r["id"] == "p1"]
    move_house(backend, medic, "area2", "hc1", "district1")
    await index_level(gw, backend, medic)
    away = await changes(gw, medic, "chw1", f"&since={first['last_seq']}&limit=1")
    assert "p1" in {r["id"] for r in away["results"] if r.get("deleted")}, away
    move_house(backend, medic, "area1", "hc1", "district1")
    await index_level(gw, backend, medic)
    for since in (away["last_seq"], away["results"][-1]["seq"]):  # PouchDB resumes from a row's
        back = await changes(gw, medic, "chw1", f"&since={since}")
        (row,) = [r for r in back["results"] if r["id"] == "p1"]  # unchanged upstream meanwhile
        assert row["changes"][0]["rev"] != held, row  # a made-up return above the removal
