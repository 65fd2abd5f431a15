"""Encryption on PostgreSQL, behind the store's back: no payload is stored in clear (in any
column of the sessions and runs tables), and a ciphertext moved to another session does not
decrypt."""

from __future__ import annotations

import asyncpg
import pytest

from async_agent_storage import EncryptionKeyError
from tests.privacy import MARKER, RING, write_secrets

from .conftest import StoreMaker

pytestmark = pytest.mark.anyio


async def test_no_payload_is_stored_in_clear(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store(encryption=RING) as store:
        await write_secrets(store, "s1")
        sql = store._statements()
        rows = [
            *await admin.fetch(f"SELECT * FROM {sql.table}"),
            *await admin.fetch(f"SELECT * FROM {sql.runs_table}"),
        ]
        dump = "\n".join(str(dict(row)) for row in rows)
    assert "owner-in-clear" in dump
    assert "aas1:k-test:" in dump
    assert MARKER not in dump


async def test_a_ciphertext_moved_to_another_session_does_not_decrypt(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store(encryption=RING) as store:
        await store.append_runs("a", [{"x": 1}], session_data={"secret": "a"})
        await store.append_runs("b", [{"x": 2}], session_data={"secret": "b"})
        table = store._statements().table
        await admin.execute(
            f"UPDATE {table} SET session_data = "
            f"(SELECT session_data FROM {table} WHERE session_id = 'a') WHERE session_id = 'b'"
        )
        with pytest.raises(EncryptionKeyError) as error:
            await store.read("b")
        assert error.value.key_id == "k-test"
