"""Conflict classification, diffs, the three-way merge and reference finding (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from proxy.conflicts.model import (
    MergeConflict,
    classify,
    common_ancestor,
    conflicting,
    diff,
    history,
    merge3,
    references,
    set_path,
    winner,
)  # fmt: skip
from proxy.errors import BadRequest
from proxy.params import flag


def leaf(revs: list[str], **fields: Any) -> dict[str, Any]:
    start = int(revs[0].split("-")[0])
    return {"_rev": revs[0], "_revisions": {"start": start, "ids": [r.split("-")[1] for r in revs]}, **fields}


def test_history_and_common_ancestor() -> None:
    a, b = leaf(["3-c", "2-b", "1-a"]), leaf(["2-x", "1-a"])
    assert history(a) == ["3-c", "2-b", "1-a"]
    assert common_ancestor([a, b]) == "1-a"
    assert common_ancestor([a, leaf(["4-d", "3-c", "2-b", "1-a"])]) == "3-c"
    assert common_ancestor([leaf(["1-p"]), leaf(["1-r"])]) is None


def test_classify() -> None:
    assert classify([leaf(["2-b", "1-a"]), leaf(["2-c", "1-a"])]) == "concurrent_edit"
    assert classify([leaf(["1-p"], type="person"), leaf(["1-r"], type="data_record")]) == "uuid_collision"
    assert classify([leaf(["2-b", "1-a"]), leaf(["2-c", "1-a"], _deleted=True)]) == "delete_vs_edit"
    resolved = leaf(["2-c", "1-a"], _deleted=True, couchgate_resolved=True)
    assert classify([leaf(["2-b", "1-a"]), leaf(["2-d", "1-a"]), resolved]) == "concurrent_edit"


def test_diff_paths_and_ops() -> None:
    before = {"a": 1, "n": {"x": 1, "y": [1]}, "gone": True, "_rev": "1-a"}
    after = {"a": 2, "n": {"x": 1, "y": [1, 2], "z": 0}, "_rev": "2-b"}
    assert diff(before, after) == [
        {"path": ["a"], "op": "changed", "before": 1, "after": 2},
        {"path": ["gone"], "op": "removed", "before": True},
        {"path": ["n", "y"], "op": "changed", "before": [1], "after": [1, 2]},
        {"path": ["n", "z"], "op": "added", "after": 0},
    ]


def test_merge_combines_one_sided_changes_and_unions_grown_arrays() -> None:
    base = {"read": ["admin"], "v": 1, "w": 1, "deep": {"a": 1, "b": 1}}
    left = {"read": ["admin", "some_user"], "v": 2, "w": 1, "deep": {"a": 2, "b": 1}}
    right = {"read": ["admin", "other"], "v": 1, "w": 3, "deep": {"a": 1, "b": 5}, "new": True}
    assert merge3(base, left, right) == {
        "read": ["admin", "some_user", "other"], "v": 2, "w": 3, "deep": {"a": 2, "b": 5}, "new": True,
    }  # fmt: skip
    assert merge3({"a": 1, "b": 1}, {"b": 1}, {"a": 1, "b": 2}) == {"b": 2}  # removed on one side


def test_merge_refuses_true_conflicts_with_their_paths() -> None:
    with pytest.raises(MergeConflict) as info:
        merge3(
            {"v": 1, "n": {"x": 1}, "l": [1, 2]},
            {"v": 2, "n": {"x": 2}, "l": [1]},
            {"v": 3, "n": {"x": 3}, "l": [1, 2, 3]},
        )
    assert info.value.paths == [["v"], ["n", "x"], ["l"]]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text("ab", max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text("xyz", min_size=1, max_size=1), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(json_values, json_values)
def test_merge_with_one_unchanged_side_takes_the_other(base: Any, edited: Any) -> None:
    assert merge3(base, base, edited) == edited
    assert merge3(base, edited, base) == edited


@given(st.dictionaries(st.text("abc", min_size=1, max_size=1), st.integers(0, 3), max_size=3), st.data())
def test_clean_merges_are_symmetric(base: dict[str, int], data: st.DataObject) -> None:
    keys = sorted(base)
    left_keys = data.draw(st.sets(st.sampled_from(keys))) if keys else set()
    left = {k: (v + 10 if k in left_keys else v) for k, v in base.items()}
    right = {k: (v + 20 if k not in left_keys else v) for k, v in base.items()}
    assert merge3(base, left, right) == merge3(base, right, left)


def test_references_at_any_depth_and_rewriting() -> None:
    doc = {"_id": "r1", "fields": {"patient_id": "X", "inputs": {"contact": {"_id": "X", "parent": {"_id": "hh"}}}},
           "list": ["a", "X"], "contact": {"_id": "chw"}}  # fmt: skip
    paths = references(doc, "X")
    assert paths == [["fields", "patient_id"], ["fields", "inputs", "contact", "_id"], ["list", 1]]
    for path in paths:
        set_path(doc, path, "Y")
    assert references(doc, "X") == [] and doc["list"] == ["a", "Y"]
    assert references({"_id": "X"}, "X") == []  # a doc's own id is not a reference


def test_json_values_compare_with_their_type() -> None:
    assert diff({"a": 1}, {"a": True}) == [{"path": ["a"], "op": "changed", "before": 1, "after": True}]
    assert diff({"a": [0]}, {"a": [False]}) != []
    assert diff({"a": 1}, {"a": 1.0}) == []  # one JSON number
    assert merge3({"a": 1, "b": 0}, {"a": True, "b": 0}, {"a": 1, "b": 2}) == {"a": True, "b": 2}
    with pytest.raises(MergeConflict):
        merge3({"a": 1}, {"a": True}, {"a": 2})
    assert merge3({"l": [1]}, {"l": [1, True]}, {"l": [1, 2]}) == {"l": [1, True, 2]}


def test_leaves_that_count_and_the_winner() -> None:
    edit, other = leaf(["2-b", "1-a"], v=1), leaf(["2-c", "1-a"], v=2)
    mine = leaf(["3-d", "2-c", "1-a"], _deleted=True, couchgate_resolved=True)
    theirs = leaf(["2-e", "1-a"], _deleted=True)
    assert conflicting([edit, mine]) == [edit]  # a resolution's tombstone does not count
    assert conflicting([edit, theirs]) == [edit, theirs]  # a person's deletion does
    assert conflicting([mine, theirs]) == []  # deleted either way
    assert winner([edit, other, mine]) is other  # live first, then longest, then highest rev
    assert winner([leaf(["10-a"]), leaf(["9-z"])])["_rev"] == "10-a"
    assert classify([edit, theirs]) == "delete_vs_edit"
    assert classify([edit, other, mine]) == "concurrent_edit"


def test_boolean_flags_are_true_or_false_and_given_once() -> None:
    assert flag(MultiDict(), "dry_run", True) is True
    assert flag(MultiDict(dry_run="FALSE"), "dry_run", True) is False
    for value in ("1", "yes", ""):
        with pytest.raises(BadRequest):
            flag(MultiDict(dry_run=value), "dry_run", False)
    with pytest.raises(BadRequest):  # the first value must not quietly win (it did: a real write)
        flag(MultiDict([("dry_run", "true"), ("dry_run", "false")]), "dry_run", True)
