"""The floor under the bulk load: what the store's statements alone cost, in the database alone,
for its layout (a row per session and a row per run, with their indexes), against the raw
driver's (a row per session holding its runs as one JSON array).

    .venv/bin/python -m benchmarks.bulk_floor [--sessions 1000] [--batch 100] [--rounds 5]
    .venv/bin/python -m benchmarks.bulk_floor --url postgresql://postgres@127.0.0.1:5432/test

Both layouts load the benchmark's sessions into a new file with the same settings (WAL,
``synchronous = NORMAL``), in transactions of ``--batch`` sessions, through one plain
``sqlite3`` connection: no thread, no event loop. The store's rows are the ones its
`upsert_many` sends (its own statements and parameters, captured once, outside the timing); the
raw rows are the raw driver's. Rounds alternate the layouts; medians per session are printed,
with the range. If the store's statements alone cost more than the raw driver's whole load, no
client work can bring `upsert_many` to 1.0x the raw driver in this layout.

On PostgreSQL (``--url``), the store's statements are recorded from its own `upsert_many`
writing each batch once through a real connection (the purge of expired ids, the lock of the
existing ones, then the transaction's time and a COPY of the sessions and one of their runs,
with their arguments and rows; "without COPY": the one `INSERT ... SELECT FROM unnest(...)` of
sessions and runs it sends for a batch it does not copy), then replayed through one plain
asyncpg connection into a table the store created, one transaction a batch; the raw driver's
load is its own `executemany` of one row a session (its JSON encoded by its type codec, inside
the timing), into its own table.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from async_agent_storage._encoding import encode_sessions
from async_agent_storage.postgres import PostgresStore
from async_agent_storage.postgres import _writes as pg_writes
from async_agent_storage.postgres._sql import SQL as PgSQL
from async_agent_storage.sqlite import SqliteStore
from async_agent_storage.sqlite._sql import SQL
from async_agent_storage.sqlite._work import upsert

from .systems import raw_postgres, raw_sqlite
from .systems.store import to_session
from .workload import SeedSession, WorkloadSpec, sessions

TABLE = "bulk_floor"
Statements = list[tuple[str, list[tuple[Any, ...]]]]
Sent = list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]  # (method, statement, args, kwargs)


class _Recorder:
    """Stands in for a connection while the store's upsert builds its statements: records what
    it would send (the existence check finds nothing, as in an empty table)."""

    def __init__(self) -> None:
        self.sent: Statements = []

    def execute(self, statement: str, params: Any = ()) -> list[Any]:
        return []  # `SELECT ... existing`: none, every session is new

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        self.sent.append((statement, rows))


def store_statements(seeds: list[SeedSession], batch: int) -> list[Statements]:
    """The store's statements for each batch, as its `upsert_many` makes them."""
    sql = SQL.for_table(TABLE)
    out: list[Statements] = []
    for i in range(0, len(seeds), batch):
        encoded = encode_sessions(
            [to_session(s) for s in seeds[i : i + batch]], max_bytes=16 * 1024 * 1024
        )
        recorder = _Recorder()
        upsert(sql, "bulk floor", "store", encoded, None, recorder)  # type: ignore[arg-type]
        out.append(recorder.sent)
    return out


def _raw_statements(seeds: list[SeedSession], batch: int, now: int) -> list[Statements]:
    return [
        [(raw_sqlite.UPSERT, [raw_sqlite._row(s, now) for s in seeds[i : i + batch]])]
        for i in range(0, len(seeds), batch)
    ]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


def _load(db: sqlite3.Connection, batches: list[Statements]) -> float:
    started = time.perf_counter()
    for statements in batches:
        db.execute("BEGIN IMMEDIATE")
        for statement, rows in statements:
            db.executemany(statement, rows)
        db.execute("COMMIT")
    return time.perf_counter() - started


async def _create_store_file(path: Path) -> None:
    async with SqliteStore(TABLE, db_file=path):
        pass  # the schema, as the store creates it


def load_store_layout(path: Path, batches: list[Statements]) -> float:
    """Create the store's schema in a new file at `path`, then send `batches` there; the
    seconds the statements took."""
    asyncio.run(_create_store_file(path))
    db = _connect(path)
    try:
        return _load(db, batches)
    finally:
        db.close()


def _raw_round(workdir: Path, batches: list[Statements], index: int) -> float:
    path = workdir / f"raw-{index}.db"
    db = _connect(path)
    try:
        db.execute(raw_sqlite.CREATE)
        db.execute(raw_sqlite.INDEX)
        return _load(db, batches)
    finally:
        db.close()


def _raw_whole_round(workdir: Path, seeds: list[SeedSession], batch: int, index: int) -> float:
    """The raw driver's load with its encoding (its rows built inside the timing)."""
    path = workdir / f"raw-whole-{index}.db"
    db = _connect(path)
    try:
        db.execute(raw_sqlite.CREATE)
        db.execute(raw_sqlite.INDEX)
        started = time.perf_counter()
        now = time.time_ns() // 1000
        for i in range(0, len(seeds), batch):
            rows = [raw_sqlite._row(s, now) for s in seeds[i : i + batch]]
            db.execute("BEGIN IMMEDIATE")
            db.executemany(raw_sqlite.UPSERT, rows)
            db.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        db.close()


class _Recording:
    """A connection that records the statements (and COPYs) it is given, and runs them."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.sent: Sent = []

    def transaction(self) -> Any:
        return self._connection.transaction()

    async def _run(self, method: str, statement: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append((method, statement, args, kwargs))
        return await getattr(self._connection, method)(statement, *args, **kwargs)

    async def execute(self, statement: str, *args: Any) -> Any:
        return await self._run("execute", statement, *args)

    async def fetch(self, statement: str, *args: Any) -> Any:
        return await self._run("fetch", statement, *args)

    async def fetchval(self, statement: str, *args: Any) -> Any:
        return await self._run("fetchval", statement, *args)

    async def copy_records_to_table(self, table: str, **kwargs: Any) -> Any:
        # The store may pass a generator: kept as a list, to be sent again by the replay.
        return await self._run(
            "copy_records_to_table", table, **{**kwargs, "records": list(kwargs["records"])}
        )


async def _pg_store_table(url: str) -> None:
    """A new, empty table of the store's (dropped first if there)."""
    async with PostgresStore(TABLE, db_url=url, pool_min_size=1, pool_max_size=1) as store:
        await store.drop()
    async with PostgresStore(TABLE, db_url=url, pool_min_size=1, pool_max_size=1):
        pass


async def pg_store_statements(
    url: str, seeds: list[SeedSession], batch: int, *, copy: bool = True
) -> list[Sent]:
    """The store's statements for each batch, recorded from its `upsert_many`'s own write; with
    `copy=False`, those it sends when it does not copy (one `INSERT ... SELECT FROM unnest`)."""
    import asyncpg

    await _pg_store_table(url)
    connection = await asyncpg.connect(url)
    try:
        schema = await connection.fetchval("SELECT current_schema()")
        sql = PgSQL.for_table(schema, TABLE)
        out: list[Sent] = []
        for i in range(0, len(seeds), batch):
            encoded = encode_sessions(
                [to_session(s) for s in seeds[i : i + batch]], max_bytes=16 * 1024 * 1024
            )
            ordered = sorted(encoded, key=lambda e: e.session_id)  # as the store orders them
            recording = _Recording(connection)
            copy_from = pg_writes.COPY_FROM
            pg_writes.COPY_FROM = copy_from if copy else len(ordered) + 1
            try:
                await pg_writes.write_many(recording, sql, "bulk floor", ordered)
            finally:
                pg_writes.COPY_FROM = copy_from
            out.append(recording.sent)
        return out
    finally:
        await connection.close()


async def replay_pg_store(url: str, batches: list[Sent]) -> float:
    import asyncpg

    await _pg_store_table(url)
    connection = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        for sent in batches:
            async with connection.transaction():
                for method, statement, args, kwargs in sent:
                    await getattr(connection, method)(statement, *args, **kwargs)
        return time.perf_counter() - started
    finally:
        await connection.close()


async def _pg_raw_round(url: str, seeds: list[SeedSession], batch: int) -> float:
    import asyncpg

    sql = raw_postgres._sql(f"{TABLE}_raw")
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"DROP TABLE IF EXISTS {TABLE}_raw")
        await raw_postgres._init(connection)
        await connection.execute(sql["create"])
        await connection.execute(sql["index"])
        started = time.perf_counter()
        for i in range(0, len(seeds), batch):
            now = time.time_ns() // 1000
            async with connection.transaction():
                await connection.executemany(
                    sql["upsert"], [raw_postgres._row(s, now) for s in seeds[i : i + batch]]
                )
        return time.perf_counter() - started
    finally:
        await connection.execute(f"DROP TABLE IF EXISTS {TABLE}_raw")
        await connection.close()


async def drop_pg_store(url: str) -> None:
    async with PostgresStore(TABLE, db_url=url, pool_min_size=1, pool_max_size=1) as store:
        await store.drop()


def _report(
    seeds: list[SeedSession], batch: int, rounds: int, where: str, timings: dict[str, list[float]]
) -> None:
    runs = sum(len(s.runs) for s in seeds)
    print(
        f"{len(seeds)} sessions ({runs} runs) in transactions of {batch}, {rounds} rounds, "
        f"{where}; per session:"
    )
    for name, seconds in timings.items():
        per = [1e6 * s / len(seeds) for s in seconds]
        print(f"  {name:34s} {statistics.median(per):7.1f} us  ({min(per):.1f}-{max(per):.1f})")


def _postgres(url: str, seeds: list[SeedSession], batch: int, rounds: int) -> None:
    recorded = asyncio.run(pg_store_statements(url, seeds, batch))
    stated = asyncio.run(pg_store_statements(url, seeds, batch, copy=False))
    cells: dict[str, Callable[[], float]] = {
        "store layout, statements alone": lambda: asyncio.run(replay_pg_store(url, recorded)),
        "store layout without COPY": lambda: asyncio.run(replay_pg_store(url, stated)),
        "raw layout, rows built and sent": lambda: asyncio.run(_pg_raw_round(url, seeds, batch)),
    }
    timings: dict[str, list[float]] = {name: [] for name in cells}
    try:
        for index in range(rounds):
            names = list(cells) if index % 2 == 0 else list(reversed(cells))
            for name in names:
                timings[name].append(cells[name]())
    finally:
        asyncio.run(drop_pg_store(url))
    _report(seeds, batch, rounds, "PostgreSQL", timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="a PostgreSQL URL: measure there instead of SQLite")
    args = parser.parse_args()
    seeds = list(sessions(WorkloadSpec(sessions=args.sessions, prefix="bulk")))
    if args.url:
        _postgres(args.url, seeds, args.batch, args.rounds)
        return
    store_batches = store_statements(seeds, args.batch)
    raw_batches = _raw_statements(seeds, args.batch, time.time_ns() // 1000)
    cells: dict[str, Callable[[Path, int], float]] = {
        "store layout, statements alone": lambda d, i: load_store_layout(
            d / f"store-{i}.db", store_batches
        ),
        "raw layout, statements alone": lambda d, i: _raw_round(d, raw_batches, i),
        "raw layout, rows built and sent": lambda d, i: _raw_whole_round(d, seeds, args.batch, i),
    }
    timings: dict[str, list[float]] = {name: [] for name in cells}
    with tempfile.TemporaryDirectory(prefix="bulk-floor-") as tmp:
        for index in range(args.rounds):
            names = list(cells) if index % 2 == 0 else list(reversed(cells))
            for name in names:
                timings[name].append(cells[name](Path(tmp), index))
    _report(seeds, args.batch, args.rounds, f"sqlite3 {sqlite3.sqlite_version}", timings)


if __name__ == "__main__":
    main()
