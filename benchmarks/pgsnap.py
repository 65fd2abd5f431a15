"""Snapshot and restore PostgreSQL tables, so that every benchmark cell starts from the same data.

Works on any set of tables (the store's, the raw baseline's, a peer's) without knowing their
layout: a snapshot is ``CREATE TABLE ... AS TABLE`` in a side schema, a restore is ``TRUNCATE``
then ``INSERT ... SELECT`` of the non-generated columns, then ``ANALYZE``. Needs only asyncpg,
which both the project's and the peers' virtual environments have.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

SNAPSHOT_SCHEMA = "aas_bench_snapshots"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def tables(conn: Any, schema: str, prefix: str = "") -> list[str]:
    """Tables of `schema` whose name starts with `prefix` (schema-history tables excluded),
    referenced tables before the tables whose foreign keys point at them."""
    rows = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 AND starts_with(tablename, $2)",
        schema,
        prefix,
    )
    names = sorted(r[0] for r in rows if "migration" not in r[0])
    edges = await conn.fetch(
        "SELECT child.relname, parent.relname FROM pg_constraint c "
        "JOIN pg_class child ON child.oid = c.conrelid "
        "JOIN pg_class parent ON parent.oid = c.confrelid "
        "JOIN pg_namespace n ON n.oid = child.relnamespace "
        "WHERE c.contype = 'f' AND n.nspname = $1",
        schema,
    )
    parents: dict[str, set[str]] = {n: set() for n in names}
    for child, parent in edges:
        if child in parents and parent in parents and child != parent:
            parents[child].add(parent)
    ordered: list[str] = []
    while parents:
        ready = sorted(n for n, p in parents.items() if not p - set(ordered))
        if not ready:  # a cycle: keep the remaining order, TRUNCATE ... CASCADE copes
            ready = sorted(parents)
        for name in ready:
            ordered.append(name)
            del parents[name]
    return ordered


def _snap_name(schema: str, table: str, tag: str) -> str:
    return f"{schema}__{table}__{tag}"[:63]


async def snapshot(conn: Any, schema: str, prefix: str, tag: str) -> list[str]:
    """Copy the tables into the snapshot schema under `tag`; returns the tables copied."""
    names = await tables(conn, schema, prefix)
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SNAPSHOT_SCHEMA}")
    for name in names:
        snap = f"{SNAPSHOT_SCHEMA}.{_q(_snap_name(schema, name, tag))}"
        await conn.execute(f"DROP TABLE IF EXISTS {snap}")
        await conn.execute(f"CREATE TABLE {snap} AS TABLE {_q(schema)}.{_q(name)}")
    return names


async def restore(conn: Any, schema: str, prefix: str, tag: str) -> None:
    """Replace the tables' rows with the snapshot taken under `tag`."""
    names = await tables(conn, schema, prefix)
    if not names:
        raise RuntimeError(f"no table {schema}.{prefix}* to restore")
    async with conn.transaction():
        await conn.execute(
            "TRUNCATE " + ", ".join(f"{_q(schema)}.{_q(n)}" for n in names) + " CASCADE"
        )
        for name in names:
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = $1 AND table_name = $2 AND is_generated = 'NEVER' "
                "ORDER BY ordinal_position",
                schema,
                name,
            )
            cols = ", ".join(_q(c[0]) for c in columns)
            snap = f"{SNAPSHOT_SCHEMA}.{_q(_snap_name(schema, name, tag))}"
            await conn.execute(
                f"INSERT INTO {_q(schema)}.{_q(name)} ({cols}) OVERRIDING SYSTEM VALUE "
                f"SELECT {cols} FROM {snap}"
            )
    for name in names:
        await conn.execute(f"ANALYZE {_q(schema)}.{_q(name)}")


async def size(conn: Any, schema: str, prefix: str) -> int:
    """Bytes the tables take, indexes and TOAST included."""
    total = 0
    for name in await tables(conn, schema, prefix):
        total += await conn.fetchval(
            "SELECT pg_total_relation_size(format('%I.%I', $1::text, $2::text)::regclass)",
            schema,
            name,
        )
    return total


async def drop(conn: Any, schema: str, prefix: str, *, snapshots: bool = False) -> None:
    """Drop the tables (schema-history tables too) and functions, and with `snapshots` the
    tables' snapshots."""
    rows = await conn.fetch(
        "SELECT schemaname, tablename FROM pg_tables "
        "WHERE (schemaname = $1 AND starts_with(tablename, $2)) "
        "OR ($5 AND schemaname = $3 AND starts_with(tablename, $4))",
        schema,
        prefix,
        SNAPSHOT_SCHEMA,
        f"{schema}__{prefix}",
        snapshots,
    )
    for row in rows:
        await conn.execute(f"DROP TABLE IF EXISTS {_q(row[0])}.{_q(row[1])} CASCADE")
    # The store's functions (its merge patch, migration 3) go with its tables, or the next
    # store created under this prefix fails to create them again.
    functions = await conn.fetch(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = $1 AND starts_with(p.proname, $2)",
        schema,
        prefix,
    )
    for row in functions:
        await conn.execute(f"DROP FUNCTION IF EXISTS {row[0]} CASCADE")
    if snapshots and not await conn.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1", SNAPSHOT_SCHEMA
    ):
        await conn.execute(f"DROP SCHEMA IF EXISTS {SNAPSHOT_SCHEMA}")


async def replica_caught_up(primary_url: str, replica_url: str, limit: float = 120.0) -> float:
    """Wait until the replica has applied everything the primary wrote so far (a restored
    snapshot is a burst of WAL the replica would otherwise still be applying during the next
    cell, whichever system it belongs to); returns the seconds waited."""
    import asyncpg

    started = time.perf_counter()
    primary = await asyncpg.connect(primary_url)
    replica = await asyncpg.connect(replica_url)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_insert_lsn()")
        while not await replica.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
            if time.perf_counter() - started > limit:
                raise TimeoutError(f"the replica did not catch up within {limit:.0f} s")
            await asyncio.sleep(0.01)
    finally:
        await primary.close()
        await replica.close()
    return time.perf_counter() - started
