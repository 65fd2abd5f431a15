"""The floor under SQLite's bulk load: what the statements alone cost, in SQLite alone, for the
store's layout (a row per session and a row per run, with their indexes) and for the raw
driver's (a row per session holding its runs as one JSON array), against the raw driver's whole
load (encoding included).

    .venv/bin/python -m benchmarks.bulk_floor [--sessions 1000] [--batch 100] [--rounds 5]

Both layouts load the benchmark's sessions into a new file with the same settings (WAL,
``synchronous = NORMAL``), in transactions of ``--batch`` sessions, through one plain
``sqlite3`` connection: no thread, no event loop. The store's rows are the ones its
`upsert_many` sends (its own statements and parameters, captured once, outside the timing); the
raw rows are the raw driver's. Rounds alternate the layouts; medians per session are printed,
with the range. If the store's statements alone cost more than the raw driver's whole load, no
client work can bring `upsert_many` to 1.0x the raw driver in this layout.
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
from async_agent_storage.sqlite import SqliteStore
from async_agent_storage.sqlite._sql import SQL
from async_agent_storage.sqlite._work import upsert

from .systems import raw_sqlite
from .systems.store import to_session
from .workload import SeedSession, WorkloadSpec, sessions

TABLE = "bulk_floor"
Statements = list[tuple[str, list[tuple[Any, ...]]]]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    seeds = list(sessions(WorkloadSpec(sessions=args.sessions, prefix="bulk")))
    runs = sum(len(s.runs) for s in seeds)
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
    print(
        f"{len(seeds)} sessions ({runs} runs) in transactions of {args.batch}, "
        f"{args.rounds} rounds, sqlite3 {sqlite3.sqlite_version}; per session:"
    )
    for name, seconds in timings.items():
        per = [1e6 * s / len(seeds) for s in seconds]
        print(f"  {name:34s} {statistics.median(per):7.1f} us  ({min(per):.1f}-{max(per):.1f})")


if __name__ == "__main__":
    main()
