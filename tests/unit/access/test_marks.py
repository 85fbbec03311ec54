"""Marks: where the scope index stood against CouchDB over time, used to place a position
that another replica or an earlier process handed out (proxy/access/history.py)."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from proxy.access.history import Marks


def marks(*rows: tuple[int, int, int], grain: int = 0) -> Marks:
    m = Marks(grain_ms=grain)
    for ordinal, level, applied in rows:
        m.mark(ordinal, level, applied)
    return m


def test_floor_is_the_newest_ordinal_applied_by_then() -> None:
    m = marks((10, 1000, 1100), (20, 2000, 2100), (30, 3000, 3100))
    assert m.floor(999) is None  # the marks do not reach back that far
    assert m.floor(1100) == 10
    assert m.floor(2099) == 10
    assert m.floor(5000) == 30


def test_ceiling_is_the_oldest_ordinal_level_since_then() -> None:
    m = marks((10, 1000, 1100), (20, 2000, 2100), (30, 3000, 3100))
    assert m.ceiling(500) == 10
    assert m.ceiling(1001) == 20
    assert m.ceiling(3000) == 30
    assert m.ceiling(3001) is None  # not level since


def test_a_mark_at_the_same_ordinal_moves_its_level_only() -> None:
    m = marks((10, 1000, 1100), (10, 5000, 5100))
    assert len(m) == 1 and m.ceiling(4000) == 10 and m.floor(1100) == 10


def test_marks_within_the_grain_merge_into_the_later_one() -> None:
    m = marks((1, 0, 0), (2, 100, 100), (3, 200, 200), (4, 6000, 6000), grain=5000)
    assert list(m.ordinals) == [1, 3, 4]
    assert m.floor(150) == 1  # coarser: placed earlier, never later than it was


def test_a_clock_stepped_back_reads_as_the_last_time_seen() -> None:
    m = marks((1, 5000, 5000), (2, 1000, 1000))
    assert list(m.levels) == [5000, 5000] and list(m.applied) == [5000, 5000]


def test_forgetting_keeps_the_newest_old_mark_as_a_floor() -> None:
    m = marks((10, 1000, 1000), (20, 2000, 2000), (30, 3000, 3000))
    assert m.forget_before(500) is None and len(m) == 3
    assert m.forget_before(2500) == 20
    assert list(m.ordinals) == [20, 30]


def test_marks_survive_a_snapshot() -> None:
    m = marks((10, 1000, 1100), (20, 2000, 2100))
    copy = pickle.loads(pickle.dumps(m))
    assert (list(copy.ordinals), list(copy.levels), list(copy.applied)) == (
        list(m.ordinals), list(m.levels), list(m.applied)
    )  # fmt: skip


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10_000), st.integers(0, 10_000)), max_size=40))
def test_placing_never_claims_more_than_the_index_held(rows: list[tuple[int, int, int]]) -> None:
    """For any history of marks (ordinals and times only go forward): the floor of a time
    was applied by then, and the ceiling was level by then (the two facts placing relies on)."""
    rows.sort()
    m = Marks(grain_ms=100)
    seen: list[tuple[int, int, int]] = []
    level = applied = 0
    for ordinal, lv, ap in rows:
        level, applied = max(level, lv), max(applied, ap, lv)
        m.mark(ordinal, level, applied)
        seen.append((ordinal, level, applied))
    for at in range(0, 10_001, 250):
        low = m.floor(at)
        if low is not None:
            assert any(o == low and a <= at for o, _, a in seen)
        high = m.ceiling(at)
        if high is not None:
            assert any(o == high and lv >= at for o, lv, _ in seen)
