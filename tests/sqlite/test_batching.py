"""The SQLite driver's batching (`_connection.Batcher`): which calls share a batch, and that no
call is ever left without a job to run it, whatever the timing of the connection's thread."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from async_agent_storage.sqlite._connection import (
    Batcher,
    ConnectionThread,
    Done,
    Work,
    connect,
    run_writes,
)

pytestmark = pytest.mark.anyio


class _StartsAtOnce(ConnectionThread):
    """A connection whose thread takes a job the moment it is queued, before `submit_then`
    returns (the widest race a real thread can produce: it may be scheduled right away)."""

    def submit_then(self, work: Work[Any], done: Done) -> None:
        assert self._db is not None
        try:
            outcome: tuple[bool, Any] = (True, work(self._db))
        except BaseException as exc:
            outcome = (False, exc)
        asyncio.get_running_loop().call_soon(done, *outcome)


def _opened(path: Path) -> _StartsAtOnce:
    connection = _StartsAtOnce(lambda: sqlite3.connect(path, isolation_level=None), name="test")
    connection._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection._db.execute("CREATE TABLE t (n INTEGER)")
    connection.running = True
    return connection


def _insert(n: int) -> Work[int]:
    def work(db: sqlite3.Connection) -> int:
        db.execute("INSERT INTO t VALUES (?)", (n,))
        return n

    return work


async def test_a_job_started_before_submit_returns_leaves_no_call_behind(tmp_path: Path) -> None:
    connection = _opened(tmp_path / "at-once.db")
    batcher = Batcher(connection, run_writes, max_batch=4)
    for wave in range(5):
        calls = [batcher.call(_insert(wave * 10 + i)) for i in range(10)]
        assert await asyncio.wait_for(asyncio.gather(*calls), 5) == [
            wave * 10 + i for i in range(10)
        ]
    await asyncio.wait_for(batcher.drain(), 5)
    assert connection._db is not None
    assert connection._db.execute("SELECT count(*) FROM t").fetchone() == (50,)


async def test_calls_queued_while_a_batch_runs_go_together_in_the_next(tmp_path: Path) -> None:
    connection = await connect(str(tmp_path / "batches.db"), busy_timeout=5, synchronous="NORMAL")
    try:
        await connection.submit(lambda db: db.execute("CREATE TABLE t (n INTEGER)"))
        batcher = Batcher(connection, run_writes, max_batch=256)
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.call(_insert(i)) for i in range(400))), 10
        )
        assert results == list(range(400))
        # The first call's batch runs alone; the rest queued meanwhile and went with the next
        # job (at most 256 a batch), which the thread started without waiting for the loop.
        assert batcher.calls == 400
        assert batcher.batches <= 4
        await asyncio.wait_for(batcher.drain(), 5)
        assert batcher.load == 0
    finally:
        await connection.close()
