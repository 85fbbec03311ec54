"""Index snapshots on disk: what one installation saved for one database instance is taken
up again only by the same, and nothing is unpickled that the key did not vouch for."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from proxy.access import scope_index
from proxy.access.config import AppSettings, UserCtx
from proxy.access.scope_index import ScopeIndex
from proxy.offline import snapshot
from proxy.offline.snapshot import Snapshots
from proxy.seed.generator import SETTINGS, preset


def store(tmp_path: Path, key: bytes = b"k" * 32, db: str = "medic") -> Snapshots:
    return Snapshots(tmp_path, db, key)


def test_a_saved_state_loads_back(tmp_path: Path) -> None:
    size = store(tmp_path).save("instance-1", {"index": [1, 2, 3], "epoch": "e"})
    assert size == store(tmp_path).path.stat().st_size
    assert store(tmp_path).load("instance-1") == {"index": [1, 2, 3], "epoch": "e"}


def test_nothing_saved_is_none(tmp_path: Path) -> None:
    assert store(tmp_path).load("instance-1") is None


@pytest.mark.parametrize(
    "other",
    [
        lambda p: store(p, key=b"x" * 32),  # another installation's secret
        lambda p: store(p, db="other"),  # another database (another file too)
    ],
)
def test_another_key_or_database_is_refused(tmp_path: Path, other: object) -> None:
    store(tmp_path).save("instance-1", {"a": 1})
    assert other(tmp_path).load("instance-1") is None  # type: ignore[operator]


def test_another_instance_or_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store(tmp_path).save("instance-1", {"a": 1})
    assert store(tmp_path).load("instance-2") is None  # the database was created again
    monkeypatch.setattr(snapshot, "version", lambda: "99.0")
    assert store(tmp_path).load("instance-1") is None


def test_a_forged_payload_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = store(tmp_path)
    s.save("instance-1", {"a": 1})
    raw = s.path.read_bytes()
    forged = raw[: raw.index(b"instance=instance-1\n") + 20 + 32] + pickle.dumps({"a": 2})
    s.path.write_bytes(forged)
    calls: list[bytes] = []
    monkeypatch.setattr(snapshot.pickle, "loads", lambda data: calls.append(bytes(data)))
    assert s.load("instance-1") is None and calls == []


@pytest.mark.parametrize("cut", [0, 5, 30, -1])
def test_a_truncated_or_foreign_file_is_refused(tmp_path: Path, cut: int) -> None:
    s = store(tmp_path)
    s.save("instance-1", {"a": list(range(100))})
    raw = s.path.read_bytes()
    s.path.write_bytes(raw[:cut] if cut >= 0 else b"not a snapshot at all")
    assert s.load("instance-1") is None


def test_a_save_replaces_the_file_whole(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.save("instance-1", {"v": 1})
    s.save("instance-1", {"v": 2})
    assert s.load("instance-1") == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == [s.path.name]  # no temporary file left


def test_a_saved_index_is_the_same_index(tmp_path: Path) -> None:
    """The index's columns come back whole through a snapshot (pickle protocol 5, raw
    buffers) and through a plain pickle (protocol 4): every entry, every contact, the
    users' feeds; and it goes on from there exactly as the original does."""
    settings = AppSettings.from_doc(SETTINGS)
    index = ScopeIndex()
    docs = list(preset("small").docs())
    for n, doc in enumerate(docs):
        rev = f"{n % 3 + 1}-{n:032x}" if n % 5 else f"odd-rev-{n}"  # both shapes of revision
        index.apply({**doc, "_rev": rev}, n, leaves=(rev, "9-" + "a" * 32) if n % 7 == 0 else (rev,))
    index.apply({"_id": docs[40]["_id"], "_rev": "2-" + "b" * 32, "_deleted": True})
    users = [
        UserCtx("chw1", ("chw",), ("d0-hc0-a0",), "d0-hc0-a0-chw"),
        UserCtx("supervisor", ("chw_supervisor",), ("d0-hc0",), "d0-hc0-sup"),
    ]

    def seen(ix: ScopeIndex) -> object:
        return (
            {doc_id: ix.entries[doc_id] for doc_id in ix.entries},
            {d["_id"]: ix.contact(d["_id"]) for d in docs},
            {d["_id"]: sorted(ix.children(d["_id"])) for d in docs},
            [[(e.id, e.ordinal) for e in ix.readable_entries(u, settings)] for u in users],
            (ix.ordinal, ix.tree_version, len(ix.entries)),
        )

    store(tmp_path).save("instance-1", {"index": index})
    loaded = store(tmp_path).load("instance-1")
    assert loaded is not None
    copies = [loaded["index"], pickle.loads(pickle.dumps(index, protocol=4))]
    for copy in copies:
        assert seen(copy) == seen(index)
    moved = {**docs[30], "_rev": "3-" + "c" * 32, "parent": {"_id": "d0-hc0-a1"}, "name": "moved"}
    for ix in (index, *copies):
        ix.apply(moved)
        ix.apply(
            {"_id": "a-new-doc", "_rev": "1-" + "d" * 32, "type": "person", "parent": {"_id": "d0-hc0-a0"}}
        )
    for copy in copies:
        assert seen(copy) == seen(index)


def test_a_users_counts_come_back_with_the_index_while_nothing_changed(tmp_path: Path) -> None:
    """`GET /{db}`'s counts after a restart: the ones counted before it, without reading the
    user's whole scope again, as long as the index stands where they were counted."""
    settings = AppSettings.from_doc(SETTINGS)
    index = ScopeIndex()
    docs = list(preset("small").docs())
    for n, doc in enumerate(docs):
        index.apply({**doc, "_rev": f"1-{n:032x}"}, n)
    user = UserCtx("supervisor", ("chw_supervisor",), ("d0-hc0",), "d0-hc0-sup")
    counts = index.readable_counts(user, settings)
    assert counts[0] > 100
    recorded = index.counts_recorded
    assert index.readable_counts(user, settings) == counts
    assert index.counts_recorded == recorded  # the same counts again make no snapshot due
    store(tmp_path).save("instance-1", {"index": index})
    loaded = store(tmp_path).load("instance-1")
    assert loaded is not None
    restored: ScopeIndex = loaded["index"]
    assert restored.readable_counts(user, AppSettings.from_doc(SETTINGS)) == counts
    assert user not in restored._feeds  # answered without building the user's feed
    person = next(d for d in docs if d.get("contact_type") == "person" and d["_id"].startswith("d0-hc0-a0-"))
    restored.apply({**person, "_rev": "2-" + "e" * 32, "_deleted": True})
    assert restored.readable_counts(user, settings) == (counts[0] - 1, counts[1] + 1)  # counted again


def test_a_users_subjects_come_back_with_the_settings_they_were_made_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's first sync after a restart does not walk their area again: the subjects
    of the current tree are saved with the settings object the index sync holds, in one
    state, so they stand only for those settings (not for other ones that compare equal)
    and only until the tree changes."""
    settings = AppSettings.from_doc(SETTINGS)
    index = ScopeIndex()
    docs = list(preset("small").docs())
    for n, doc in enumerate(docs):
        index.apply({**doc, "_rev": f"1-{n:032x}"}, n)
    supervisor = UserCtx("supervisor", ("chw_supervisor",), ("d0-hc0",), "d0-hc0-sup")
    chw = UserCtx("chw1", ("chw",), ("d0-hc0-a0",), "d0-hc0-a0-chw")
    made = {u: index.subjects_of(u, settings) for u in (supervisor, chw)}
    index.apply({**docs[0], "_rev": "2-" + "f" * 32, "name": "renamed"})  # no move: same tree
    store(tmp_path).save("instance-1", {"index": index, "settings": settings})
    loaded = store(tmp_path).load("instance-1")
    assert loaded is not None
    restored: ScopeIndex = loaded["index"]
    walks: list[UserCtx] = []
    real = scope_index.subjects

    def walked(user: UserCtx, *args: object) -> object:
        walks.append(user)
        return real(user, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(scope_index, "subjects", walked)
    for user in (supervisor, chw):
        assert restored.subjects_of(user, loaded["settings"]) == made[user]
    assert walks == []  # kept, for the settings restored with them
    assert restored.subjects_of(chw, AppSettings.from_doc(SETTINGS)) == made[chw]
    assert walks == [chw]  # other settings (equal or not): walked again
    person = next(d for d in docs if d.get("contact_type") == "person" and d["_id"].startswith("d0-hc0-a0-"))
    restored.apply({**person, "_rev": "2-" + "e" * 32, "parent": {"_id": "d0-hc0-a1"}})  # a move
    restored.subjects_of(supervisor, loaded["settings"])
    assert walks == [chw, supervisor]  # the tree changed: walked again
