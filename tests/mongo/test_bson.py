"""The JSON <-> BSON mapping of the MongoDB driver, without a server: every JSON value survives
BSON exactly (types included), and ordinary values are stored as they are, so they stay queryable.
"""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.decimal128 import Decimal128
from hypothesis import given, settings
from hypothesis import strategies as st

from async_agent_storage import _codec as codec
from async_agent_storage.mongo._bson import (
    CODEC_OPTIONS,
    MAX_NESTING,
    decode,
    encode,
    escape_key,
    unescape_key,
)
from async_agent_storage.testing import json_values
from async_agent_storage.testing.strategies import tricky_strings


def through_bson(value: Any) -> Any:
    """`value` stored the way the store stores it, then read back the way it reads it."""
    stored, escaped = encode(value)
    raw = bson.encode({"v": stored})
    back = bson.decode(raw, codec_options=CODEC_OPTIONS)["v"]
    return decode(back) if escaped else back


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 == 1.0 == True would hide a change)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and str(a) == str(b)  # -0.0 stays -0.0
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(value=json_values(max_leaves=40))
def test_every_json_value_survives_bson_exactly(value: Any) -> None:
    canonical = codec.loads(codec.dumps({"v": value}))["v"]
    assert same(through_bson(canonical), canonical)


@given(key=st.one_of(tricky_strings, st.text(max_size=12)))
def test_keys_escape_and_come_back(key: str) -> None:
    stored = escape_key(key)
    assert unescape_key(stored) == key
    assert stored
    assert "\x00" not in stored
    assert "." not in stored
    assert not stored.startswith("$")


def test_ordinary_values_are_stored_as_they_are() -> None:
    value = {"session_state": {"city": "Paris", "n": 3, "tags": ["a", "b"]}, "score": 0.5}
    stored, escaped = encode(value)
    assert stored is value
    assert escaped is False


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ({"a.b": 1}, {"a%2Eb": 1}),
        ({"$set": 1}, {"%24set": 1}),
        ({"price$": 1}, {"price$": 1}),
        ({"50%": 1}, {"50%25": 1}),
        ({"": 1}, {"%": 1}),
        ({"nul\x00": 1}, {"nul%00": 1}),
        ({"n": 2**64 - 1}, {"n": Decimal128("18446744073709551615")}),
        ({"n": -(2**63) - 1}, {"n": Decimal128("-9223372036854775809")}),
        ({"n": 10**40}, {"n": {"%int": "1" + "0" * 40}}),
        ({"n": 2**63 - 1}, {"n": 2**63 - 1}),
    ],
)
def test_the_documented_forms(value: dict[str, Any], stored: dict[str, Any]) -> None:
    assert encode(value) == (stored, stored != value)
    assert through_bson(value) == value


def test_int64_reads_back_as_int() -> None:
    for n in (2**31, 2**62, -(2**63), 2**63 - 1):
        back = through_bson({"n": n})["n"]
        assert type(back) is int
        assert back == n


def test_user_keys_that_look_like_the_reserved_forms_are_kept() -> None:
    value = {"%int": "7", "%json": "[]", "%": 1, "%2E": 2}
    stored, escaped = encode(value)
    assert escaped
    assert set(stored) == {"%25int", "%25json", "%25", "%252E"}
    assert through_bson(value) == value
    assert through_bson({"x": {"%int": "7"}}) == {"x": {"%int": "7"}}


def nesting(node: Any) -> int:
    if isinstance(node, dict):
        return 1 + max((nesting(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((nesting(v) for v in node), default=0)
    return 0


def test_nesting_past_the_limit_is_stored_as_json_text() -> None:
    deep: Any = "bottom"
    for level in range(200):
        deep = {"level": level, "next": deep} if level % 2 else [deep]
    value = {"deep": deep}
    stored, escaped = encode(value)
    assert escaped
    assert nesting(value) > 200
    assert nesting(stored) == MAX_NESTING + 1  # the {"%json": ...} document at the limit
    assert through_bson(value) == value


def test_encode_never_changes_its_input() -> None:
    value = {"a.b": [1, {"$x": 2**70}], "keep": {"x": 1}}
    snapshot = codec.loads(codec.dumps(value))
    stored, _ = encode(value)
    assert value == snapshot
    assert stored["keep"] is value["keep"]  # unchanged parts are shared, not copied
