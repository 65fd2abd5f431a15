"""What the run bodies' column type costs the PostgreSQL server: the same runs in three copies of
the runs table, `body` as ``jsonb`` (before migration 7), ``json`` (the store's since) and
``text``, each read the way the store reads a session's last runs (``string_agg`` of the bodies
as text) and written one run at a time, on one connection, in interleaved rounds. Round-trip
time of each call, medians.

    .venv/bin/python -m benchmarks.body_cost postgresql://postgres@127.0.0.1:5432/test \\
        [--sessions 2000] [--rounds 8] [--calls 300]

The runs are the benchmark's (`workload.sessions`: 10 runs of about 1.4 KB a session). The
tables (``body_cost`` and its copies unless ``--table``) are dropped after.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

import asyncpg

from async_agent_storage import Session, open_store

from .server_cost import arguments
from .workload import WorkloadSpec, sessions

TYPES = ("jsonb", "json", "text")
LAST_RUNS = 10


async def measure(
    url: str, table: str, count: int, rounds: int, calls: int
) -> dict[str, dict[str, float]]:
    """{type: {"read": us, "insert": us, "bytes": heap bytes per session}}."""
    spec = WorkloadSpec(sessions=count, users=max(1, count // 4))
    seeds = list(sessions(spec))
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        await store.upsert_many(
            [
                Session(
                    session_id=s.session_id,
                    user_id=s.user_id,
                    session_data=s.session_data,
                    runs=s.runs,
                )
                for s in seeds
            ]
        )
        sql = store._statements()  # type: ignore[attr-defined]
        connection = await asyncpg.connect(url)
        copies = {kind: f'"{sql.schema}"."{table}_{kind}"' for kind in TYPES}
        try:
            for kind, name in copies.items():
                await connection.execute(
                    f'CREATE TABLE {name} (session_id text COLLATE "C" NOT NULL, '
                    f"seq integer NOT NULL, run_id text NOT NULL, body {kind} NOT NULL, "
                    "PRIMARY KEY (session_id, seq))"
                )
                await connection.execute(
                    f"INSERT INTO {name} SELECT session_id, seq, run_id, body::text::{kind} "
                    f"FROM {sql.runs_table}"
                )
                await connection.execute(f"VACUUM ANALYZE {name}")
            result = await _rounds(connection, sql.table, copies, seeds, rounds, calls)
            for kind, name in copies.items():
                size = await connection.fetchval(f"SELECT pg_relation_size('{name}')")
                result[kind]["bytes"] = size / count
            return result
        finally:
            for name in copies.values():
                await connection.execute(f"DROP TABLE IF EXISTS {name}")
            await connection.close()
            await store.drop()


async def _rounds(
    connection: Any,
    sessions_table: str,
    copies: dict[str, str],
    seeds: list[Any],
    rounds: int,
    calls: int,
) -> dict[str, dict[str, float]]:
    rng = random.Random(20261128)
    body = await connection.fetchval(f"SELECT body::text FROM {copies['text']} LIMIT 1")
    reads, inserts = {}, {}
    for kind, name in copies.items():
        reads[kind] = await connection.prepare(
            f"SELECT (SELECT string_agg(r.body::text, ',' ORDER BY r.seq) FROM {name} r "
            f"WHERE r.session_id = s.session_id AND r.seq >= greatest(s.run_count - "
            f"{LAST_RUNS}, 0)) FROM {sessions_table} s WHERE s.session_id = $1"
        )
        inserts[kind] = await connection.prepare(
            f"INSERT INTO {name} (session_id, seq, run_id, body) "
            f"VALUES ($1, $2, $3, $4::text::{kind})"
        )
    medians: dict[str, dict[str, list[float]]] = {k: {"read": [], "insert": []} for k in TYPES}
    n = 0
    loop = asyncio.get_running_loop()
    for round_ in range(rounds):
        for kind in TYPES if round_ % 2 == 0 else TYPES[::-1]:  # alternate the order
            times = []
            for _ in range(calls):
                started = loop.time()
                await reads[kind].fetchval(rng.choice(seeds).session_id)
                times.append((loop.time() - started) * 1e6)
            medians[kind]["read"].append(statistics.median(times))
            times = []
            transaction = connection.transaction()
            await transaction.start()
            try:
                for _ in range(calls):
                    n += 1
                    started = loop.time()
                    await inserts[kind].fetchval("body_cost", n, f"r{n}", body)
                    times.append((loop.time() - started) * 1e6)
            finally:
                await transaction.rollback()  # the copies stay as seeded
            medians[kind]["insert"].append(statistics.median(times))
    return {
        kind: {what: statistics.median(values) for what, values in by_call.items()}
        for kind, by_call in medians.items()
    }


def main() -> None:
    args = arguments(
        "body_cost",
        __doc__,
        table="body_cost",
        sessions=2000,
        rounds=8,
        calls="calls per type, call and round",
    )
    result = asyncio.run(measure(args.url, args.table, args.sessions, args.rounds, args.calls))
    print(
        f"run bodies by column type, medians of {args.rounds} rounds of {args.calls} calls "
        f"(read: the last {LAST_RUNS} runs of a session):"
    )
    for kind in TYPES:
        cells = result[kind]
        print(
            f"  {kind:5s}  read {cells['read']:6.1f} us  insert {cells['insert']:6.1f} us  "
            f"heap {cells['bytes'] / 1024:5.1f} KB/session"
        )


if __name__ == "__main__":
    main()
