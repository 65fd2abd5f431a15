"""The SQLite baseline: one aiosqlite connection and hand-written SQL, sessions stored the way the
peers store them (one row per session, the runs inline as one JSON array).

Same settings as the store (WAL, synchronous=NORMAL), autocommit: each statement is its own
transaction. A turn is SELECT of the row, then INSERT ... ON CONFLICT DO UPDATE of the whole row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ..workload import Picker, SeedSession, WorkloadSpec, next_state, sessions
from .base import Dataset, SeedInfo, System, run_count
from .places import SqlitePlace

CREATE = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY NOT NULL, session_type TEXT NOT NULL, user_id TEXT,
    agent_id TEXT, session_data TEXT, agent_data TEXT, metadata TEXT, runs TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
)"""
INDEX = "CREATE INDEX IF NOT EXISTS sessions_user_recent ON sessions (user_id, updated_at DESC)"
SELECT = (
    "SELECT session_id, session_type, user_id, agent_id, session_data, agent_data, metadata, runs, "
    "created_at, updated_at FROM sessions WHERE session_id = ?"
)
UPSERT = """
INSERT INTO sessions (session_id, session_type, user_id, agent_id, session_data, agent_data,
                      metadata, runs, created_at, updated_at)
VALUES (?, 'agent', ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET session_data = excluded.session_data,
    agent_data = excluded.agent_data, metadata = excluded.metadata, runs = excluded.runs,
    updated_at = excluded.updated_at
"""
LIST = (
    "SELECT session_id, session_type, user_id, agent_id, session_data, agent_data, metadata, runs, "
    "created_at, updated_at FROM sessions WHERE user_id = ? ORDER BY updated_at DESC LIMIT ?"
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _row(seed: SeedSession, now: int) -> tuple[Any, ...]:
    return (
        seed.session_id,
        seed.user_id,
        seed.agent_id,
        _dumps(seed.session_data),
        _dumps(seed.agent_data),
        _dumps(seed.metadata),
        _dumps(seed.runs),
        now,
        now,
    )


def _decode(row: Any) -> dict[str, Any]:
    return {
        "session_id": row[0],
        "session_type": row[1],
        "user_id": row[2],
        "agent_id": row[3],
        "session_data": orjson.loads(row[4]),
        "agent_data": orjson.loads(row[5]),
        "metadata": orjson.loads(row[6]),
        "runs": orjson.loads(row[7]),
        "created_at": row[8],
        "updated_at": row[9],
    }


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = NORMAL")
    await db.execute("PRAGMA busy_timeout = 5000")
    await db.execute(CREATE)
    await db.execute(INDEX)
    return db


class RawSqlite(System):
    kind = "raw"

    def __init__(self, workdir: Path) -> None:
        super().__init__("raw aiosqlite", "sqlite")
        self.place = SqlitePlace(workdir, "raw")
        self.bulk_place = SqlitePlace(workdir, "raw-bulk")
        self.db: aiosqlite.Connection | None = None

    def info(self) -> dict[str, Any]:
        return {"driver": f"aiosqlite {aiosqlite.__version__}", "connections": 1}

    async def seed(self, dataset: Dataset) -> SeedInfo:
        await self.place.reset()
        t0 = time.perf_counter()
        db = await _connect(self.place.path)
        count = runs = 0
        try:
            now = time.time_ns() // 1000
            batch: list[tuple[Any, ...]] = []
            for seed in sessions(dataset.spec):
                batch.append(_row(seed, now))
                count += 1
                runs += len(seed.runs)
                if len(batch) >= 200:
                    await _write_batch(db, batch)
                    batch = []
            if batch:
                await _write_batch(db, batch)
        finally:
            await db.close()
        info = SeedInfo(count, runs, time.perf_counter() - t0, await self.place.size())
        await self.place.snapshot(dataset.name)
        return info

    async def start(self, dataset: Dataset) -> None:
        await self.place.restore(dataset.name)
        self.db = await _connect(self.place.path)

    async def stop(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()

    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        db = self.db
        assert db is not None
        ref = picker.session()
        async with db.execute(SELECT, (ref.session_id,)) as cursor:
            row = await cursor.fetchone()
        if row is None or row[2] != ref.user_id:
            raise LookupError(f"session {ref.session_id} not found")
        session = _decode(row)
        runs = session["runs"]
        _context = runs[-spec.last_runs :]  # what the model would see
        runs.append(picker.new_run(ref))
        state = next_state(session["session_data"], picker.rng)
        now = time.time_ns() // 1000
        await db.execute(
            UPSERT,
            (
                ref.session_id,
                ref.user_id,
                ref.agent_id,
                _dumps(state),
                _dumps(session["agent_data"]),
                _dumps(session["metadata"]),
                _dumps(runs),
                session["created_at"],
                now,
            ),
        )

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        db = self.db
        assert db is not None
        async with db.execute(LIST, (picker.user(), spec.list_limit)) as cursor:
            rows = [_decode(r) for r in await cursor.fetchall()]
        if not rows:
            raise LookupError("no session listed")

    async def bulk_load(self, seeds: list[SeedSession], batch: int) -> float:
        await self.bulk_place.reset()
        db = await _connect(self.bulk_place.path)
        try:
            t0 = time.perf_counter()
            for i in range(0, len(seeds), batch):
                now = time.time_ns() // 1000
                await _write_batch(db, [_row(s, now) for s in seeds[i : i + batch]])
            return time.perf_counter() - t0
        finally:
            await db.close()
            await self.bulk_place.reset()

    async def cleanup(self) -> None:
        await self.place.drop()
        await self.bulk_place.drop()


async def _write_batch(db: aiosqlite.Connection, rows: list[tuple[Any, ...]]) -> None:
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.executemany(UPSERT, rows)
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


__all__ = ["RawSqlite", "run_count"]
