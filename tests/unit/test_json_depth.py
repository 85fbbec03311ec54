"""How deeply a JSON body nests: `json_depth` on its text (brackets inside strings never
count, whatever the escapes) and `too_deep` on its parsed value tell the same."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.params import MAX_JSON_DEPTH, json_depth, too_deep

# Strings full of what could fool a scanner: brackets, quotes, backslashes, escapes.
tricky = st.text(alphabet=st.sampled_from(list('[]{}"\\\\/ab\n\u2028é')), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | tricky,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky, inner, max_size=4),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(values, st.integers(MAX_JSON_DEPTH - 12, MAX_JSON_DEPTH + 40), st.booleans(), tricky)
def test_a_value_nested_past_the_limit_is_told_apart_from_one_within(
    value: Any, wraps: int, as_objects: bool, key: str
) -> None:
    for _ in range(wraps):
        value = {key: value} if as_objects else [value, key]
    true_depth = depth(value)
    raw = orjson.dumps(value) if true_depth < 250 else None
    if raw is None:
        return  # past what orjson writes: json_depth is not reached for such a body anyway
    assert (json_depth(raw) > MAX_JSON_DEPTH) == (true_depth > MAX_JSON_DEPTH)
    assert too_deep(orjson.loads(raw)) == (true_depth > MAX_JSON_DEPTH)


@pytest.mark.parametrize("levels", range(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 3))
@pytest.mark.parametrize("innermost", [1, [], {}, "]]", "\\\\"])
def test_the_limit_is_exact(levels: int, innermost: Any) -> None:
    for shape in ("array", "object"):
        value: Any = innermost
        for _ in range(levels):
            value = [value] if shape == "array" else {"k": value}
        raw = orjson.dumps(value)
        assert too_deep(orjson.loads(raw)) == (depth(value) > MAX_JSON_DEPTH), (shape, levels)
        assert (json_depth(raw) > MAX_JSON_DEPTH) == (depth(value) > MAX_JSON_DEPTH), (shape, levels)
