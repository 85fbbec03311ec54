"""The demo data set: deterministic, CHT-shaped, consistent lineages, streamed."""

from __future__ import annotations

import itertools
import tracemalloc
from collections import Counter

import pytest

from proxy.access.kinds import kind_of, lineage_ids
from proxy.seed.generator import PRESETS, DemoData, approx_docs, for_size, preset


def test_same_seed_same_docs_other_seed_other_docs() -> None:
    assert list(preset("tiny", seed=7).docs()) == list(preset("tiny", seed=7).docs())
    assert list(preset("tiny", seed=7).docs()) != list(preset("tiny", seed=8).docs())


def test_sizes_are_as_requested() -> None:
    assert 250 <= sum(1 for _ in preset("tiny").docs()) <= 400
    assert 1500 <= sum(1 for _ in preset("small").docs()) <= 3500
    shape = for_size(20_000)
    n = sum(1 for _ in preset("20000").docs())
    assert 15_000 <= n <= 25_000, (shape, n)


def test_every_kind_is_present_and_ids_and_shortcodes_unique() -> None:
    docs = list(preset("small").docs())
    ids = [d["_id"] for d in docs]
    assert len(ids) == len(set(ids))
    codes = [d.get("patient_id") or d.get("place_id") for d in docs if kind_of(d) == "contact"]
    assert len(codes) == len(set(codes)) and all(codes)
    kinds = Counter(kind_of(d) for d in docs)
    assert {"global", "contact", "report", "task", "target", "user_settings"} <= set(kinds)
    reports = [d for d in docs if kind_of(d) == "report"]
    assert any(r["fields"].get("private") for r in reports)
    assert any(r["fields"].get("needs_signoff") for r in reports)
    assert any("contact" not in r for r in reports)  # unallocated SMS


def test_lineages_match_the_tree() -> None:
    docs = {d["_id"]: d for d in preset("small").docs()}
    for doc in docs.values():
        if doc.get("type") != "contact" or "parent" not in doc:
            continue
        stored = lineage_ids(doc["parent"])
        walked = []
        parent = doc["parent"]["_id"]
        while parent is not None:
            walked.append(parent)
            parent = (docs[parent].get("parent") or {}).get("_id")
        assert stored == walked, doc["_id"]


def test_users_and_their_facilities() -> None:
    data = preset("small")
    by_name = {u.name: u for u in data.users}
    assert by_name["supervisor"].facility_ids == ("d0-hc0",)
    assert by_name["chw1"].facility_ids == ("d0-hc0-a0",)
    assert len(by_name["chw2"].facility_ids) == 2
    assert by_name["chw2"].user_doc()["facility_id"] == list(by_name["chw2"].facility_ids)
    assert "password" not in by_name["chw1"].settings_doc()
    docs = {d["_id"] for d in data.docs()}
    assert all(by_name[n].contact_id in docs for n in ("supervisor", "chw1"))


def test_a_million_docs_are_streamed_not_built() -> None:
    assert PRESETS["1m"]
    tracemalloc.start()
    first = list(itertools.islice(preset("1m").docs(), 5000))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(first) == 5000 and peak < 20 * 1024 * 1024


@pytest.mark.parametrize("n", [300, 500, 1_000, 2_500, 5_000, 20_000, 33_333, 100_000, 250_000, 1_000_000])
def test_for_size_lands_near_the_request(n: int) -> None:
    assert abs(approx_docs(for_size(n)) - n) <= 0.25 * n, (n, for_size(n))


@pytest.mark.parametrize("shape", [PRESETS["tiny"], PRESETS["small"], for_size(300), for_size(5_000)])
def test_approx_docs_is_the_exact_count(shape) -> None:  # type: ignore[no-untyped-def]
    data = DemoData(shape)
    assert data.approx_docs == sum(1 for _ in data.docs())


def test_presets_keep_their_shape() -> None:
    # Benchmarks compare runs over time: a preset's tree must not change under them.
    assert approx_docs(PRESETS["100k"]) == 98_183 and approx_docs(PRESETS["1m"]) == 981_639


def test_an_admin_user_with_both_docs() -> None:
    data = preset("tiny")
    admin = next(u for u in data.users if u.server_admin)
    assert (admin.name, admin.password, admin.roles) == ("administrator", "administrator-pass", ("admin",))
    assert "facility_id" not in admin.user_doc()
    settings = {d["_id"]: d for d in data.docs()}[f"org.couchdb.user:{admin.name}"]
    assert settings["type"] == "user-settings" and "password" not in settings
    assert [u.name for u in data.users if not u.server_admin][:2] == ["supervisor", "chw1"]
