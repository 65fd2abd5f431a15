"""The merge patch expression of the MongoDB driver (`_patch`), applied by the server: the result is
RFC 7396 (`_encoding.merge_patch`, the reference), in the stored form a whole state written at once
would have, key order included; and what MongoDB cannot merge in one update is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from pymongo import MongoClient, ReturnDocument

from async_agent_storage import InvalidInputError
from async_agent_storage import _codec as codec
from async_agent_storage._encoding import merge_patch
from async_agent_storage.mongo import MongoStore
from async_agent_storage.mongo import _queries as q
from async_agent_storage.mongo._bson import CODEC_OPTIONS, decode, encode
from async_agent_storage.mongo._patch import MAX_PATCH_DEPTH, patch_expression
from async_agent_storage.testing import json_objects

from .conftest import DB_NAME, MongoTarget
from .test_bson import same

pytestmark = pytest.mark.mongo
Admin = MongoClient[dict[str, Any]]
SCRATCH = "t_patch_scratch"


@pytest.fixture(scope="module", autouse=True)
def drop_scratch(admin: Admin) -> Iterator[None]:
    yield
    admin[DB_NAME].drop_collection(SCRATCH)


def canonical(value: dict[str, Any]) -> dict[str, Any]:
    """A value as the store receives it (checked and canonicalized by the shared codec)."""
    result: dict[str, Any] = codec.loads(codec.dumps(value))
    return result


def patched_by_server(admin: Admin, state: dict[str, Any], patch: dict[str, Any]) -> Any:
    """`patch` applied to `state` by one update of the server; the stored form."""
    collection = admin[DB_NAME].get_collection(SCRATCH, codec_options=CODEC_OPTIONS)
    stored, _ = encode(state)
    collection.replace_one({"_id": 1}, {"_id": 1, "session_data": stored}, upsert=True)
    expression, _ = patch_expression(q.STORED_STATE, patch)
    after = collection.find_one_and_update(
        {"_id": 1},
        [{"$set": {"session_data": expression}}],
        return_document=ReturnDocument.AFTER,
    )
    assert after is not None
    return after["session_data"]


def nested(levels: int, leaf: Any) -> Any:
    for _ in range(levels):
        leaf = {"k": leaf}
    return leaf


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(state=json_objects(max_leaves=20), patch=json_objects(max_leaves=20))
def test_the_server_applies_the_patch_as_rfc_7396_says(
    admin: Admin, state: dict[str, Any], patch: dict[str, Any]
) -> None:
    state, patch = canonical(state), canonical(patch)
    expected = merge_patch(state, patch)
    stored = patched_by_server(admin, state, patch)
    assert same(decode(stored), expected)
    # Stored exactly as the whole state would be: same keys, order and types (still queryable).
    assert bson.encode({"v": stored}) == bson.encode({"v": encode(expected)[0]})


def test_a_patch_object_replaces_what_is_not_an_object(admin: Admin) -> None:
    state = {
        "huge": 10**40,  # stored as {"%int": ...}, a BSON object that is not a JSON object
        "big": 2**70,  # Decimal128
        "list": [{"a": 1}],
        "text": "x",
        "none": None,
        "obj": {"a": 1, "b": {"c": 2}},
    }
    patch = {
        key: {"a": None, "z": {"y": None, "x": 1}}
        for key in ("huge", "big", "list", "text", "none")
    }
    patch["obj"] = {"a": None, "b": {"d": 3}}
    patch["new"] = {"q": None}
    stored = patched_by_server(admin, state, patch)
    assert decode(stored) == merge_patch(state, patch)
    assert decode(stored)["huge"] == {"z": {"x": 1}}
    assert decode(stored)["obj"] == {"b": {"c": 2, "d": 3}}
    assert decode(stored)["new"] == {}


def test_keys_and_values_that_need_an_escaped_form_say_so() -> None:
    assert patch_expression(q.STORED_STATE, {"plain": {"x": [1, "$y"]}})[1] is False
    for patch in ({"a.b": 1}, {"a": {"$b": 1}}, {"a": 2**64}, {"a": {"b": None, "%": 1}}):
        assert patch_expression(q.STORED_STATE, patch)[1] is True, patch


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_the_deepest_patch_fits_the_nesting_mongodb_accepts_in_a_command() -> None:
    def deep_list(levels: int) -> Any:
        leaf: Any = 1
        for _ in range(levels):
            leaf = [1, {"x": leaf}]  # inside a list, objects are values: not merged
        return leaf

    leaf = {"v": deep_list(100), "w": None, "o": {"p": deep_list(100)}}
    deepest = nested(MAX_PATCH_DEPTH - 2, leaf)  # MAX_PATCH_DEPTH levels of objects
    expression, _ = patch_expression(q.STORED_STATE, deepest)
    # findAndModify {update: [{$set: {session_data: <expression>}}]}: four levels above it;
    # MongoDB refuses commands nested deeper than 200 levels.
    assert _depth(expression) + 4 <= 180
    with pytest.raises(InvalidInputError, match=str(MAX_PATCH_DEPTH)):
        patch_expression(q.STORED_STATE, nested(MAX_PATCH_DEPTH - 1, leaf))


@pytest.fixture
async def store(mongo: MongoTarget, collection_name: str) -> AsyncIterator[MongoStore]:
    async with MongoStore(collection_name, mongo.url, DB_NAME, server_selection_timeout=5) as store:
        yield store


@pytest.mark.anyio
async def test_a_patch_too_deep_to_merge_is_refused_and_nothing_is_written(
    store: MongoStore,
) -> None:
    await store.append_runs("deep", [{"i": 0}], session_data={"k": {"k": 1}})
    deepest = nested(MAX_PATCH_DEPTH - 1, {"v": 1})  # MAX_PATCH_DEPTH levels of objects
    patched = await store.append_runs("deep", [{"i": 1}], state_patch=deepest)
    assert patched.session_data == merge_patch({"k": {"k": 1}}, deepest)
    with pytest.raises(InvalidInputError, match="state_patch nests objects deeper"):
        await store.append_runs("deep", [{"i": 2}], state_patch=nested(MAX_PATCH_DEPTH, {"v": 1}))
    read = await store.read("deep")
    assert read is not None
    assert (read.version, len(read.runs), read.session_data) == (2, 2, patched.session_data)
