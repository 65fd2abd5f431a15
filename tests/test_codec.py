"""The codec on its own: every value class it accepts, every input it refuses, with the error."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from pydantic import BaseModel

from async_agent_storage import SerializationError
from async_agent_storage import _codec as codec
from async_agent_storage.testing import json_values


class Mood(enum.Enum):
    HAPPY = "happy"


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Profile(BaseModel):
    name: str
    score: float


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=300, deadline=None)
@given(json_values(max_leaves=50))
def test_any_json_value_round_trips(value: Any) -> None:
    assert codec.loads(codec.dumps(value)) == value
    assert codec.loads(codec.dumps(value).decode()) == value


def test_big_integers_are_written_and_read_exactly() -> None:
    values = [2**64, 2**64 - 1, -(2**63) - 1, 10**40, -(10**40), 2**1000]
    data = codec.dumps({"ints": values, "nested": [{"k": 2**70}]})
    assert b"18446744073709551616" in data
    back = codec.loads(data)
    assert back == {"ints": values, "nested": [{"k": 2**70}]}
    assert all(type(v) is int for v in back["ints"])
    # The output is plain JSON that any parser reads with the same numbers.
    assert json.loads(data) == back


def test_a_document_with_big_integers_is_marked_so_exact_text_needs_no_scan() -> None:
    big = codec.dumps({"n": 2**70})
    assert big.startswith(b" ")
    assert codec.loads(big, marked=True) == {"n": 2**70}
    plain = codec.dumps({"id": "12345678901234567890123"})
    assert not plain.startswith(b" ")
    assert codec.loads(plain, marked=True) == {"id": "12345678901234567890123"}
    # Text a database rewrote (jsonb drops the space) is still read exactly without the mark.
    assert codec.loads(big.strip()) == {"n": 2**70}


def test_big_integer_placeholders_cannot_collide_with_user_strings() -> None:
    text = "aas-bigint-0000000000000000-0"
    value = {"s": text, "n": 2**65}
    assert codec.loads(codec.dumps(value)) == value


def test_long_digit_strings_are_not_mistaken_for_numbers() -> None:
    value = {"phone": "12345678901234567890123", "float": 0.1, "n": 12345678901234567890}
    assert codec.loads(codec.dumps(value)) == value


@pytest.mark.parametrize("prefix", ["", "😀 ", "\u0663\u0664 "], ids=["ascii", "emoji", "arabic"])
def test_big_integers_are_found_in_text_of_any_script(prefix: str) -> None:
    # The search for 19-digit runs works on the UTF-8 bytes; a str and its bytes decode alike.
    text = f'{{"t": "{prefix}", "n": {2**64}, "m": 1234567890123456789, "k": 123456789012345678}}'
    for data in (text, text.encode(), memoryview(text.encode())):
        back = codec.loads(data)
        assert back == {"t": prefix, "n": 2**64, "m": 1234567890123456789, "k": 123456789012345678}
        assert type(back["n"]) is int


def test_nul_and_unicode_strings_are_kept_exactly() -> None:
    value = {"nul": "a\x00b\x00", "emoji": "😀", "astral": "\U0010ffff", "bom": "\ufeff"}
    data = codec.dumps(value)
    assert b"\x00" not in data  # NUL is escaped as \u0000 in the JSON text
    assert codec.loads(data) == value


def test_python_types_become_their_json_form() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    value = {
        "when": when,
        "id": uuid.UUID(int=1),
        "mood": Mood.HAPPY,
        "point": Point(1.5, 2.5),
        "profile": Profile(name="p", score=0.5),
        "array": np.array([[1, 2], [3, 4]]),
        "scalar": np.float64(0.25),
    }
    assert codec.loads(codec.dumps(value)) == {
        "when": "2025-01-02T03:04:05.000006+00:00",
        "id": "00000000-0000-0000-0000-000000000001",
        "mood": "happy",
        "point": {"x": 1.5, "y": 2.5},
        "profile": {"name": "p", "score": 0.5},
        "array": [[1, 2], [3, 4]],
        "scalar": 0.25,
    }


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (float("nan"), "value"),
        ({"a": float("inf")}, "value.a"),
        ({"a": [1, {"b": -math.inf}]}, "value.a[1].b"),
        ({"point": Point(1.0, float("nan"))}, "value.point.y"),
        ({"p": Profile(name="x", score=float("nan"))}, "value.p.score"),
        ({"arr": np.array([1.0, np.nan])}, "value.arr"),
        ({"weird key": float("nan")}, "value['weird key']"),
    ],
)
def test_nan_and_infinity_are_refused_with_their_path(value: Any, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        codec.dumps(value)
    assert info.value.path == path
    assert path in str(info.value)


def test_null_alone_is_not_mistaken_for_nan() -> None:
    assert codec.loads(codec.dumps({"a": None, "b": [None, 1.0]})) == {"a": None, "b": [None, 1.0]}


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ({"s": {1, 2}}, "value.s", "set"),
        ({"b": b"raw"}, "value.b", "bytes"),
        ({"o": object()}, "value.o", "object"),
        ({"d": {1: "x"}}, "value.d", "dict key 1"),
        ({"s": "\ud800"}, "value.s", "surrogate"),
        ([1, 2, {"deep": {2j}}], "value[2].deep", "set"),
        ({"big": 2**70, "bad": {1.5}}, "value.bad", "set"),
    ],
)
def test_values_json_cannot_hold_are_refused_with_their_path(
    value: Any, path: str, words: str
) -> None:
    with pytest.raises(SerializationError) as info:
        codec.dumps(value)
    assert info.value.path == path
    assert words in str(info.value)


def test_depth_up_to_the_limit_is_fine_and_beyond_is_an_error() -> None:
    assert codec.loads(codec.dumps(nested(codec.MAX_DEPTH))) == nested(codec.MAX_DEPTH)
    with pytest.raises(SerializationError, match="deeper than 254"):
        codec.dumps(nested(codec.MAX_DEPTH + 1))
    with pytest.raises(SerializationError, match="deeper"):
        codec.dumps({"x": nested(100_000)})  # far beyond: still an error, not a crash
    with pytest.raises(SerializationError, match="deeper"):
        codec.dumps({"n": 2**70, "deep": nested(300)})


def test_an_integer_too_long_to_print_is_refused() -> None:
    with pytest.raises(SerializationError, match="too large"):
        codec.dumps({"n": 10**5000})


def test_corrupt_stored_json_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="not valid JSON"):
        codec.loads(b'{"a": ')


def test_output_is_what_orjson_writes_for_ordinary_values() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": "d"}}
    assert codec.dumps(value) == orjson.dumps(value)


def test_same_json_says_whether_stored_text_can_be_reused() -> None:
    stored = codec.dumps({"a": 1, "b": None, "c": [1.5, "x"]})
    assert codec.same_json({"a": 1, "b": None, "c": [1.5, "x"]}, stored)
    assert not codec.same_json({"a": 1, "b": None, "c": [1.5, "y"]}, stored)
    assert not codec.same_json({"a": True, "b": None, "c": [1.5, "x"]}, stored)  # 1 is not true
    assert not codec.same_json({"a": 1.0, "b": None, "c": [1.5, "x"]}, stored)
    assert not codec.same_json({"a": 1, "b": float("nan"), "c": [1.5, "x"]}, stored)
    big = codec.dumps({"n": 2**70})
    assert not codec.same_json({"n": 2**70}, big)  # such documents are always encoded again
    assert not codec.same_json({"s": {1, 2}}, codec.dumps({"s": [1, 2]}))


def test_format_size() -> None:
    assert codec.format_size(10) == "10 bytes"
    assert codec.format_size(2048) == "2.0 KiB"
    assert codec.format_size(16 * 1024 * 1024) == "16.0 MiB"
