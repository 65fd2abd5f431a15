"""Encryption on MongoDB, behind the store's back: no payload is stored in clear (in any
document of the sessions and runs collections), and a ciphertext moved to another session does
not decrypt."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient

from async_agent_storage import EncryptionKeyError
from async_agent_storage.mongo import MongoStore
from tests.privacy import MARKER, RING, write_secrets

from .conftest import DB_NAME, MongoTarget

pytestmark = [pytest.mark.anyio, pytest.mark.mongo]


def _store(mongo: MongoTarget, collection_name: str) -> MongoStore:
    return MongoStore(collection_name, mongo.url, DB_NAME, encryption=RING)


async def test_no_payload_is_stored_in_clear(
    mongo: MongoTarget, collection_name: str, admin: MongoClient[dict[str, Any]]
) -> None:
    async with _store(mongo, collection_name) as store:
        await write_secrets(store, "s1")
    database = admin[DB_NAME]
    dump = "\n".join(
        str(doc)
        for name in (collection_name, collection_name + "_runs")
        for doc in database[name].find()
    )
    assert "owner-in-clear" in dump
    assert "aas1:k-test:" in dump
    assert MARKER not in dump


async def test_a_ciphertext_moved_to_another_session_does_not_decrypt(
    mongo: MongoTarget, collection_name: str, admin: MongoClient[dict[str, Any]]
) -> None:
    async with _store(mongo, collection_name) as store:
        await store.append_runs("a", [{"x": 1}], session_data={"secret": "a"})
        await store.append_runs("b", [{"x": 2}], session_data={"secret": "b"})
        sessions = admin[DB_NAME][collection_name]
        stolen = sessions.find_one({"_id": "a"})
        assert stolen is not None
        sessions.update_one({"_id": "b"}, {"$set": {"session_data": stolen["session_data"]}})
        with pytest.raises(EncryptionKeyError) as error:
            await store.read("b")
        assert error.value.key_id == "k-test"
