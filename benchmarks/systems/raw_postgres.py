"""The PostgreSQL baseline: a plain asyncpg pool (size 20) and hand-written SQL, sessions stored the
way the peers store them (one row per session, the runs inline as one jsonb array).

A turn is the SELECT of the row and, on another pool checkout (an agent server never holds a
connection across the model call), INSERT ... ON CONFLICT DO UPDATE of the whole row. asyncpg
prepares and caches both statements; jsonb goes through orjson (text format).

The baseline is meant as a ceiling, so it gets the one pool setting that matters and that a
careful hand-written server would use too: no connection reset on release (asyncpg's default
reset is one more round trip per checkout; this code sets no session state to undo).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..workload import Picker, SeedSession, WorkloadSpec, next_state, sessions
from .base import POOL_SIZE, Dataset, NotAvailable, SeedInfo, System
from .places import PostgresPlace

PREFIX = "aas_raw"
BULK_PREFIX = "aas_bulkraw"


def _sql(table: str) -> dict[str, str]:
    return {
        "create": f"""
            CREATE TABLE IF NOT EXISTS {table} (
                session_id text PRIMARY KEY, session_type text NOT NULL, user_id text,
                agent_id text, session_data jsonb, agent_data jsonb, metadata jsonb, runs jsonb,
                created_at bigint NOT NULL, updated_at bigint NOT NULL
            )""",
        "index": f"CREATE INDEX IF NOT EXISTS {table}_user_recent "
        f"ON {table} (user_id, updated_at DESC)",
        "select": "SELECT session_id, session_type, user_id, agent_id, session_data, agent_data, "
        f"metadata, runs, created_at, updated_at FROM {table} WHERE session_id = $1",
        "upsert": f"""
            INSERT INTO {table} (session_id, session_type, user_id, agent_id, session_data,
                                 agent_data, metadata, runs, created_at, updated_at)
            VALUES ($1, 'agent', $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (session_id) DO UPDATE SET session_data = EXCLUDED.session_data,
                agent_data = EXCLUDED.agent_data, metadata = EXCLUDED.metadata,
                runs = EXCLUDED.runs, updated_at = EXCLUDED.updated_at""",
        "list": "SELECT session_id, session_type, user_id, agent_id, session_data, agent_data, "
        f"metadata, runs, created_at, updated_at FROM {table} WHERE user_id = $1 "
        "ORDER BY updated_at DESC LIMIT $2",
    }


async def _no_reset(conn: Any) -> None:
    """Nothing to undo on release: no SET, LISTEN or advisory lock is ever left behind."""


async def _init(conn: Any) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


def _row(seed: SeedSession, now: int) -> tuple[Any, ...]:
    return (
        seed.session_id,
        seed.user_id,
        seed.agent_id,
        seed.session_data,
        seed.agent_data,
        seed.metadata,
        seed.runs,
        now,
        now,
    )


class RawPostgres(System):
    kind = "raw"

    def __init__(self, url: str) -> None:
        super().__init__("raw asyncpg", "postgres")
        self.url = url
        self.place = PostgresPlace(url, PREFIX)
        self.bulk_place = PostgresPlace(url, BULK_PREFIX)
        self.sql = _sql(f"{PREFIX}_sessions")
        self.pool: Any = None

    async def check(self) -> None:
        try:
            import asyncpg
        except ImportError as exc:
            raise NotAvailable(f"asyncpg is not installed ({exc})") from exc
        try:
            conn = await asyncpg.connect(self.url, timeout=5)
        except Exception as exc:
            raise NotAvailable(f"cannot connect to {self.url}: {exc}") from exc
        await conn.close()

    def info(self) -> dict[str, Any]:
        import asyncpg

        return {
            "driver": f"asyncpg {asyncpg.__version__}",
            "pool_min": POOL_SIZE,
            "pool_max": POOL_SIZE,
            "reset_on_release": False,
        }

    async def _pool(self) -> Any:
        import asyncpg

        return await asyncpg.create_pool(
            self.url, min_size=POOL_SIZE, max_size=POOL_SIZE, init=_init, reset=_no_reset
        )

    async def _create(self, conn: Any, sql: dict[str, str]) -> None:
        await conn.execute(sql["create"])
        await conn.execute(sql["index"])

    async def seed(self, dataset: Dataset) -> SeedInfo:
        await self.place.reset()
        pool = await self._pool()
        t0 = time.perf_counter()
        count = runs = 0
        try:
            async with pool.acquire() as conn:
                await self._create(conn, self.sql)
                batch: list[tuple[Any, ...]] = []
                now = time.time_ns() // 1000
                for seed in sessions(dataset.spec):
                    batch.append(_row(seed, now))
                    count += 1
                    runs += len(seed.runs)
                    if len(batch) >= 200:
                        await conn.executemany(self.sql["upsert"], batch)
                        batch = []
                if batch:
                    await conn.executemany(self.sql["upsert"], batch)
        finally:
            await pool.close()
        info = SeedInfo(count, runs, time.perf_counter() - t0, await self.place.size())
        await self.place.snapshot(dataset.name)
        return info

    async def start(self, dataset: Dataset) -> None:
        await self.place.restore(dataset.name)
        self.pool = await self._pool()

    async def stop(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        pool = self.pool
        ref = picker.session()
        async with pool.acquire() as conn:
            row = await conn.fetchrow(self.sql["select"], ref.session_id)
        if row is None or row["user_id"] != ref.user_id:
            raise LookupError(f"session {ref.session_id} not found")
        runs = row["runs"]
        _context = runs[-spec.last_runs :]  # what the model would see
        runs.append(picker.new_run(ref))
        state = next_state(row["session_data"], picker.rng)
        async with pool.acquire() as conn:
            await conn.execute(
                self.sql["upsert"],
                ref.session_id,
                ref.user_id,
                ref.agent_id,
                state,
                row["agent_data"],
                row["metadata"],
                runs,
                row["created_at"],
                time.time_ns() // 1000,
            )

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self.sql["list"], picker.user(), spec.list_limit)
        if not rows:
            raise LookupError("no session listed")

    async def bulk_load(self, seeds: list[SeedSession], batch: int) -> float:
        await self.bulk_place.reset()
        sql = _sql(f"{BULK_PREFIX}_sessions")
        pool = await self._pool()
        try:
            async with pool.acquire() as conn:
                await self._create(conn, sql)
                t0 = time.perf_counter()
                for i in range(0, len(seeds), batch):
                    now = time.time_ns() // 1000
                    async with conn.transaction():
                        await conn.executemany(
                            sql["upsert"], [_row(s, now) for s in seeds[i : i + batch]]
                        )
                return time.perf_counter() - t0
        finally:
            await pool.close()
            await self.bulk_place.reset()

    async def cleanup(self) -> None:
        await self.place.drop()
        await self.bulk_place.drop()
