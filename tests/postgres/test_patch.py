"""The state patch of an append bound as a SQL expression (`postgres._patch`) instead of the
merge-patch function: the server's result is RFC 7396 (`_encoding.merge_patch`, the reference)
on both paths, and what the expression cannot bind exactly goes to the function."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from async_agent_storage import PostgresStore, Session
from async_agent_storage import _codec as codec
from async_agent_storage._encoding import merge_patch
from async_agent_storage.postgres._patch import MAX_NODES, expression, plan
from async_agent_storage.testing import json_objects, typed

from .conftest import StoreMaker

pytestmark = pytest.mark.anyio

# Few key names, so that patches and states share keys; values of every JSON type, nulls and
# objects nested a few levels (the shapes a bound expression handles).
_KEYS = st.sampled_from(["a", "b", "c", "state", "ü", "with space", ""])
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
_FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: abs(f) < 1e15)
_VALUES = st.recursive(
    _SCALARS | _FLOATS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)
_OBJECTS = st.dictionaries(_KEYS, _VALUES, max_size=5)


@pytest.fixture
async def store(make_store: StoreMaker) -> AsyncIterator[PostgresStore]:
    async with make_store(pool_min_size=1, pool_max_size=2) as store:
        yield store


async def patched(store: PostgresStore, state: dict[str, Any], patch: dict[str, Any]) -> Any:
    """`patch` applied by an append to a session holding `state`; the state it returned, which a
    read must return too."""
    session_id = uuid.uuid4().hex
    await store.upsert(Session(session_id=session_id, session_data=state))
    appended = await store.append_runs(session_id, [{"n": 1}], state_patch=patch)
    read = await store.read(session_id)
    assert read is not None
    assert read.session_data == appended.session_data
    assert typed(read.session_data) == typed(appended.session_data)
    return appended.session_data


def canonical(value: dict[str, Any]) -> dict[str, Any]:
    """A value as the store receives it (checked and canonicalized by the shared codec)."""
    result: dict[str, Any] = codec.loads(codec.dumps(value))
    return result


async def check_rfc_7396(
    store: PostgresStore, state: dict[str, Any], patch: dict[str, Any]
) -> None:
    """The append's result is the reference's, the same values of the same types."""
    state, patch = canonical(state), canonical(patch)
    expected = merge_patch(state, patch)
    result = await patched(store, state, patch)
    assert result == expected
    assert typed(result) == typed(expected)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=_OBJECTS, patch=_OBJECTS)
async def test_a_bound_patch_is_applied_as_rfc_7396_says(
    store: PostgresStore, state: dict[str, Any], patch: dict[str, Any]
) -> None:
    await check_rfc_7396(store, state, patch)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(state=json_objects(max_leaves=15), patch=json_objects(max_leaves=15))
async def test_any_patch_is_applied_as_rfc_7396_says_whichever_path_takes_it(
    store: PostgresStore, state: dict[str, Any], patch: dict[str, Any]
) -> None:
    # Tricky values (NUL, U+FFFF, -0.0, 1e16, big integers) go to the merge-patch function.
    await check_rfc_7396(store, state, patch)


async def test_a_patch_object_replaces_what_is_not_an_object_at_any_depth(
    store: PostgresStore,
) -> None:
    state = {"a": 1, "b": [1, 2], "c": {"d": "text", "e": {"f": 1}}, "g": None}
    patch = {  # MAX_NODES objects
        "a": {"x": 1, "gone": None},
        "b": {"y": {"z": None, "w": 2}},
        "c": {"d": [], "e": {"f": None, "h": {"i": 0}}},
        "g": {"j": None},
    }
    assert plan(codec.dumps(patch)) is not None
    result = await patched(store, state, patch)
    assert (
        result
        == merge_patch(state, patch)
        == {
            "a": {"x": 1},
            "b": {"y": {"w": 2}},
            "c": {"d": [], "e": {"h": {"i": 0}}},
            "g": {},
        }
    )


async def test_an_empty_patch_and_one_of_nulls_only(store: PostgresStore) -> None:
    state = {"a": 1, "b": {"c": 2}}
    assert await patched(store, state, {}) == state
    assert await patched(store, state, {"a": None, "b": None, "absent": None}) == {}
    assert await patched(store, state, {"b": {}}) == state


def test_what_the_expression_cannot_bind_exactly_is_left_to_the_function() -> None:
    assert plan(codec.dumps({"a": 1, "b": {"c": [1, None, {"d": None}]}})) is not None
    for value in ("nul\x00", "\uffffmark", -0.0, 1e16, 2**64):
        assert plan(codec.dumps({"a": {"b": value}})) is None, value
    assert plan(codec.dumps({"nul\x00key": 1})) is None
    assert plan(b"[1, 2]") is None  # not an object (the store refuses it before)
    # At most MAX_NODES objects: the number of statement shapes stays bounded.
    wide = {f"k{i}": {"v": i} for i in range(MAX_NODES - 1)}
    assert plan(codec.dumps(wide)) is not None
    assert plan(codec.dumps({**wide, "one_more": {}})) is None


def test_the_statement_depends_on_the_shape_only() -> None:
    one = plan(codec.dumps({"s": {"turns": 1, "p": {"x": "a"}}, "gone": None}))
    other = plan(codec.dumps({"t": {"city": "Oslo", "q": {"y": [1]}}}))
    assert one is not None
    assert other is not None
    assert one.shape == other.shape == (((),),)
    assert expression("d", one.shape, 1) == expression("d", other.shape, 1)
    assert one.args == [["gone"], "{}", "s", [], '{"turns":1}', "p", [], '{"x":"a"}']


async def test_the_patch_cost_benchmark_measures_the_three_ways(pg_url: str) -> None:
    from benchmarks import patch_cost

    table = f"patch_cost_{uuid.uuid4().hex[:8]}"
    result = await patch_cost.measure(pg_url, table, count=8, rounds=2, calls=5)
    assert set(result) == set(patch_cost.WAYS)
    assert all(time_us > 0 for time_us in result.values())
