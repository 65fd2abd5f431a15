"""Encryption on SQLite, behind the store's back: no payload is stored in clear, and a
ciphertext moved to another session does not decrypt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from async_agent_storage import EncryptionKeyError, SqliteStore
from tests.privacy import MARKER, RING, write_secrets

pytestmark = pytest.mark.anyio


async def test_no_payload_is_stored_in_clear(tmp_path: Path) -> None:
    db_file = tmp_path / "sealed.db"
    async with SqliteStore(db_file=db_file, encryption=RING) as store:
        await write_secrets(store, "s1")
    with sqlite3.connect(db_file) as db:
        dump = "\n".join(db.iterdump())
    assert "owner-in-clear" in dump  # ids and owners stay in clear: listing works
    assert "aas1:k-test:" in dump
    assert MARKER not in dump


async def test_a_ciphertext_moved_to_another_session_does_not_decrypt(tmp_path: Path) -> None:
    db_file = tmp_path / "sealed.db"
    async with SqliteStore(db_file=db_file, encryption=RING) as store:
        await store.append_runs("a", [{"x": 1}], session_data={"secret": "a"})
        await store.append_runs("b", [{"x": 2}], session_data={"secret": "b"})
        with sqlite3.connect(db_file) as db:
            db.execute(
                "UPDATE agent_sessions SET session_data = "
                "(SELECT session_data FROM agent_sessions WHERE session_id = 'a') "
                "WHERE session_id = 'b'"
            )
        with pytest.raises(EncryptionKeyError) as error:
            await store.read("b")
        assert error.value.key_id == "k-test"
        assert error.value.session_id == "b"
