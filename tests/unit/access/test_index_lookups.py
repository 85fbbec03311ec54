"""The index's light lookups (`winner`, `is_leaf`) say what its entries say, without
making them: for both shapes of revision, conflict leaves, deletions and unknown ids; and
a string missed before it was added is found after."""

from __future__ import annotations

from proxy.access.columns import CACHED_STRINGS, Strings
from proxy.access.config import AppSettings, UserCtx
from proxy.access.scope_index import ScopeIndex
from proxy.seed.generator import SETTINGS, preset


def test_winner_and_leaves_agree_with_the_entries() -> None:
    index = ScopeIndex()
    docs = list(preset("small").docs())[:400]
    for n, doc in enumerate(docs):
        rev = f"{n % 3 + 1}-{n:032x}" if n % 5 else f"odd-rev-{n}"  # both shapes of revision
        index.apply({**doc, "_rev": rev}, n, leaves=(rev, "9-" + "a" * 32) if n % 7 == 0 else (rev,))
    for n in range(0, 400, 11):  # deletions, one of them of a doc with a conflict
        index.apply({"_id": docs[n]["_id"], "_rev": f"5-{n:032x}", "_deleted": True})
    strangers = ["9-" + "a" * 32, "1-" + "f" * 32, "odd-rev-x", ""]
    for doc_id in index.entries:
        entry = index.entries[doc_id]
        assert index.winner(doc_id) == (entry.rev, entry.deleted)
        for rev in {*entry.leaves, entry.rev, *strangers}:
            assert index.is_leaf(doc_id, rev) == (rev in entry.leaves), (doc_id, rev)
    assert sum(1 for d in index.entries if index.entries[d].deleted) >= 36
    assert sum(1 for d in index.entries if len(index.entries[d].leaves) > 1) >= 50
    assert index.winner("no-such-doc") is None
    assert not index.is_leaf("no-such-doc", "1-" + "f" * 32)


def test_a_string_looked_up_before_it_was_added_is_found_after() -> None:
    """`Strings.find` remembers misses (a write's new ids are looked up several times before
    they are filed): adding the string must end the miss, also once the caches were emptied."""
    strings = Strings()
    for round_ in range(3):
        words = [f"w{round_}-{i}" for i in range(CACHED_STRINGS + 10)]
        assert all(strings.find(w) == -1 for w in words)  # more misses than a cache holds
        numbers = [strings.add(w) for w in words]
        assert [strings.find(w) for w in words] == numbers
    index = ScopeIndex()
    assert index.winner("new-doc") is None and "new-doc" not in index.entries
    index.apply({"_id": "new-doc", "_rev": "1-" + "a" * 32, "type": "data_record"})
    assert index.winner("new-doc") == ("1-" + "a" * 32, False) and "new-doc" in index.entries


def test_a_key_a_user_looked_under_before_it_was_held_is_found_once_held() -> None:
    """A user's keys are numbered once (numbers never change); a key the index did not hold
    then (the user's own doc id, `_unassigned`) is looked up again at every feed, so a doc
    first filed under it later reaches the user."""
    settings = AppSettings.from_doc(SETTINGS)
    index = ScopeIndex()
    for n, doc in enumerate(preset("small").docs()):
        index.apply({**doc, "_rev": f"1-{n:032x}"}, n)
    chw = UserCtx("chw9", ("chw",), ("d0-hc0-a0",), "d0-hc0-a0-chw")  # no doc of theirs yet
    assert index._s.find(chw.user_doc_id) == -1
    before = index.ordinal
    assert index.changes_since(chw, settings, before) == []
    assert index.subjects_of(chw, settings).numbered is not None
    index.apply({"_id": chw.user_doc_id, "_rev": "1-" + "a" * 32, "type": "user-settings", "name": "chw9"})
    assert [e.id for e in index.changes_since(chw, settings, before)] == [chw.user_doc_id]
