"""What the layout of run bodies costs on PostgreSQL: bytes on disk against the cost of an append
and of a read of a session's last runs, for the store's layout and the alternatives issue 13
asks about, each in a table of its own filled with the same runs:

- ``row``: the store's (migration 7): a row per run, its body as text, the primary key on
  (session_id, seq), a unique key on (session_id, run_id) and the index on created_at;
- ``row_zlib``: the same rows with each body compressed by the client (zlib level 1, as
  ``bytea``): PostgreSQL itself never compresses a row under about 2 KB;
- ``chunk<K>``: up to K runs a row (their bodies joined by newlines, their ids in an array), so
  that TOAST compresses each row as a whole; an append rewrites the session's last row. The run
  ids then need a table of their own for exactly-once appends and `get_run` (``+ ids``);
- ``doc``: the raw driver's layout, every run of a session in one ``json`` value (an append
  rewrites them all).

An append is one autocommitted statement on one connection; a read fetches the last 10 runs
(no JSON decoding: every layout hands the client the same text). Interleaved rounds, medians of
each call's round-trip time; bytes are ``pg_total_relation_size`` (heap, TOAST and indexes) per
session after the seed and again after the appends and a ``VACUUM``.

    .venv/bin/python -m benchmarks.layout_cost postgresql://postgres@127.0.0.1:5432/test \\
        [--sessions 2000] [--rounds 5] [--calls 300]

The runs are the benchmark's (`workload.sessions`: 4 to 16 runs of about 1.4 KB a session). The
tables (``layout_cost_*`` unless ``--table``) are dropped after.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from .server_cost import arguments
from .workload import WorkloadSpec, make_run, sessions

LAST_RUNS = 10
CHUNKS = (4, 16)


@dataclass
class Layout:
    name: str
    tables: list[str]
    seed: Callable[[Any, dict[str, list[tuple[str, bytes]]]], Awaitable[None]]
    append: Callable[[Any, str, int, str, bytes], Awaitable[None]]
    read: Callable[[Any, str, int], Awaitable[list[bytes]]]
    # The runs a read returned, decoded (to check every layout holds the same; not timed).
    decode: Callable[[list[bytes]], list[Any]]
    results: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # runs per session, as appended here


def _row_layout(t: str, compressed: bool) -> Layout:
    kind = "bytea" if compressed else "text"

    def pack(body: bytes) -> Any:
        return zlib.compress(body, 1) if compressed else body.decode()

    async def seed(c: Any, runs: dict[str, list[tuple[str, bytes]]]) -> None:
        await c.execute(
            f'CREATE TABLE {t} (session_id text COLLATE "C" NOT NULL, seq integer NOT NULL, '
            f"run_id text NOT NULL, body {kind} NOT NULL, created_at timestamptz, "
            f"PRIMARY KEY (session_id, seq), UNIQUE (session_id, run_id))"
        )
        await c.execute(f"CREATE INDEX ON {t} (created_at) INCLUDE (session_id, seq)")
        await c.copy_records_to_table(
            t.strip('"'),
            records=[
                (sid, seq, rid, pack(body), None)
                for sid, items in runs.items()
                for seq, (rid, body) in enumerate(items)
            ],
        )

    async def append(c: Any, sid: str, seq: int, rid: str, body: bytes) -> None:
        await c.execute(
            f"INSERT INTO {t} (session_id, seq, run_id, body, created_at) "
            f"VALUES ($1, $2, $3, $4, now())",
            sid,
            seq,
            rid,
            pack(body),
        )

    async def read(c: Any, sid: str, count: int) -> list[bytes]:
        # One value, as the store reads: the bodies joined by the server (text), or their
        # array (compressed, each inflated here).
        joined = (
            "array_agg(body ORDER BY seq)" if compressed else "string_agg(body, ',' ORDER BY seq)"
        )
        value = await c.fetchval(
            f"SELECT {joined} FROM {t} WHERE session_id = $1 AND seq >= $2",
            sid,
            count - LAST_RUNS,
        )
        if compressed:
            return [zlib.decompress(b) for b in value]
        return [value.encode()]

    def decode(got: list[bytes]) -> list[Any]:
        return [orjson.loads(b) for b in got] if compressed else orjson.loads(b"[%s]" % got[0])

    return Layout("row_zlib" if compressed else "row", [t], seed, append, read, decode)


def _chunk_layout(t: str, k: int) -> Layout:
    ids = t[:-1] + '_ids"'

    async def seed(c: Any, runs: dict[str, list[tuple[str, bytes]]]) -> None:
        await c.execute(
            f'CREATE TABLE {t} (session_id text COLLATE "C" NOT NULL, chunk integer NOT NULL, '
            f"run_ids text[] NOT NULL, bodies text NOT NULL, created_at timestamptz, "
            f"PRIMARY KEY (session_id, chunk))"
        )
        await c.execute(
            f'CREATE TABLE {ids} (session_id text COLLATE "C" NOT NULL, run_id text NOT NULL, '
            f"seq integer NOT NULL, PRIMARY KEY (session_id, run_id))"
        )
        await c.execute(f"CREATE INDEX ON {t} (created_at) INCLUDE (session_id, chunk)")
        records = []
        for sid, items in runs.items():
            for start in range(0, len(items), k):
                part = items[start : start + k]
                records.append(
                    (
                        sid,
                        start // k,
                        [rid for rid, _ in part],
                        b"\n".join(b for _, b in part).decode(),
                        None,
                    )
                )
        await c.copy_records_to_table(t.strip('"'), records=records)
        await c.copy_records_to_table(
            ids.strip('"'),
            records=[
                (sid, rid, seq) for sid, items in runs.items() for seq, (rid, _) in enumerate(items)
            ],
        )

    async def append(c: Any, sid: str, seq: int, rid: str, body: bytes) -> None:
        # The run and its id in one statement (a CTE), as the store's append is one.
        await c.execute(
            f"WITH i AS (INSERT INTO {ids} (session_id, run_id, seq) VALUES ($1, $3, $2)) "
            f"INSERT INTO {t} AS c (session_id, chunk, run_ids, bodies, created_at) "
            f"VALUES ($1, $2 / {k}, ARRAY[$3], $4, now()) "
            f"ON CONFLICT (session_id, chunk) DO UPDATE SET "
            f"run_ids = c.run_ids || EXCLUDED.run_ids, "
            f"bodies = c.bodies || E'\\n' || EXCLUDED.bodies, created_at = now()",
            sid,
            seq,
            rid,
            body.decode(),
        )

    async def read(c: Any, sid: str, count: int) -> list[bytes]:
        first = max(count - LAST_RUNS, 0)
        rows = await c.fetch(
            f"SELECT bodies FROM {t} WHERE session_id = $1 AND chunk >= $2 ORDER BY chunk",
            sid,
            first // k,
        )
        bodies = [b for r in rows for b in r[0].encode().split(b"\n")]
        return bodies[first % k :]

    return Layout(
        f"chunk{k}", [t, ids], seed, append, read, lambda got: list(map(orjson.loads, got))
    )


def _doc_layout(t: str) -> Layout:
    async def seed(c: Any, runs: dict[str, list[tuple[str, bytes]]]) -> None:
        await c.execute(
            f'CREATE TABLE {t} (session_id text COLLATE "C" PRIMARY KEY, runs json NOT NULL)'
        )
        await c.copy_records_to_table(
            t.strip('"'),
            records=[
                (sid, "[" + ",".join(b.decode() for _, b in items) + "]")
                for sid, items in runs.items()
            ],
        )

    async def append(c: Any, sid: str, seq: int, rid: str, body: bytes) -> None:
        # What a raw driver does to add a run: the array, one element longer.
        await c.execute(
            f"UPDATE {t} SET runs = (runs::jsonb || jsonb_build_array($2::jsonb))::json "
            f"WHERE session_id = $1",
            sid,
            body.decode(),
        )

    async def read(c: Any, sid: str, count: int) -> list[bytes]:
        text = await c.fetchval(
            f"SELECT (SELECT json_agg(e) FROM (SELECT e FROM json_array_elements(runs) "
            f"WITH ORDINALITY AS a(e, n) WHERE n > $2 ORDER BY n) x)::text "
            f"FROM {t} WHERE session_id = $1",
            sid,
            count - LAST_RUNS,
        )
        return [text.encode()]

    return Layout("doc", [t], seed, append, read, lambda got: orjson.loads(got[0]))


async def _bytes(c: Any, tables: list[str]) -> int:
    total = 0
    for t in tables:
        total += await c.fetchval(f"SELECT pg_total_relation_size('{t}')")
    return int(total)


async def measure(
    url: str, table: str, count: int, rounds: int, calls: int
) -> dict[str, dict[str, float]]:
    spec = WorkloadSpec(sessions=count, users=max(1, count // 4))
    seeds = list(sessions(spec))
    runs = {s.session_id: [(r["run_id"], orjson.dumps(r)) for r in s.runs] for s in seeds}
    counts = {sid: len(items) for sid, items in runs.items()}
    q = f'"{table}_'
    layouts = [
        _row_layout(q + 'row"', False),
        _row_layout(q + 'row_zlib"', True),
        *(_chunk_layout(q + f'chunk{k}"', k) for k in CHUNKS),
        _doc_layout(q + 'doc"'),
    ]
    for layout in layouts:
        layout.counts = dict(counts)
    connection = await asyncpg.connect(url)
    result: dict[str, dict[str, float]] = {}
    try:
        for layout in layouts:
            for t in layout.tables:
                await connection.execute(f"DROP TABLE IF EXISTS {t}")
            await layout.seed(connection, runs)
            for t in layout.tables:
                await connection.execute(f"VACUUM ANALYZE {t}")
            result[layout.name] = {"seeded": await _bytes(connection, layout.tables) / count}
            layout.results = {"read": [], "append": []}
        rng = random.Random(20261128)
        loop = asyncio.get_running_loop()
        ids = list(counts)
        for round_ in range(rounds):
            # The same reads and the same appends for every layout.
            reads = [rng.choice(ids) for _ in range(calls)]
            appends = []
            for i in range(calls):
                sid = rng.choice(ids)
                run = make_run(
                    rng, session_id=sid, agent_id="a", user_id="u", index=counts[sid], share=0.3
                )
                appends.append(
                    (sid, counts[sid], f"{run['run_id']}-{round_}-{i}", orjson.dumps(run))
                )
                counts[sid] += 1
            for layout in layouts if round_ % 2 == 0 else layouts[::-1]:
                times = []
                for sid in reads:
                    started = loop.time()
                    await layout.read(connection, sid, layout.counts[sid])
                    times.append((loop.time() - started) * 1e6)
                layout.results["read"].append(statistics.median(times))
                times = []
                for sid, seq, rid, body in appends:
                    started = loop.time()
                    await layout.append(connection, sid, seq, rid, body)
                    times.append((loop.time() - started) * 1e6)
                    layout.counts[sid] = seq + 1
                layout.results["append"].append(statistics.median(times))
        for sid in rng.sample(ids, min(len(ids), 50)):
            first, *others = layouts
            expected = first.decode(await first.read(connection, sid, counts[sid]))
            if len(expected) != min(counts[sid], LAST_RUNS):
                raise RuntimeError(f"{first.name} read {len(expected)} runs of {sid}")
            for layout in others:
                got = layout.decode(await layout.read(connection, sid, counts[sid]))
                if got != expected:
                    raise RuntimeError(f"{layout.name} holds other runs than {first.name}: {sid}")
        for layout in layouts:
            for t in layout.tables:
                await connection.execute(f"VACUUM ANALYZE {t}")
            cells = result[layout.name]
            cells["after"] = await _bytes(connection, layout.tables) / count
            for what, values in layout.results.items():
                cells[what] = statistics.median(values)
                cells[what + "_spread"] = (max(values) - min(values)) / 2
        return result
    finally:
        for layout in layouts:
            for t in layout.tables:
                await connection.execute(f"DROP TABLE IF EXISTS {t}")
        await connection.close()


def main() -> None:
    args = arguments(
        "layout_cost",
        __doc__,
        table="layout_cost",
        sessions=2000,
        rounds=5,
        calls="calls per layout, call and round",
    )
    result = asyncio.run(measure(args.url, args.table, args.sessions, args.rounds, args.calls))
    print(
        f"run layouts, medians of {args.rounds} rounds of {args.calls} calls (read: the last "
        f"{LAST_RUNS} runs of a session; bytes per session, indexes and TOAST included):"
    )
    print(f"  {'layout':9s} {'seeded':>8s} {'after':>8s} {'read us':>12s} {'append us':>14s}")
    for name, c in result.items():
        print(
            f"  {name:9s} {c['seeded']:8,.0f} {c['after']:8,.0f} "
            f"{c['read']:7.1f} ±{c['read_spread']:4.0f} "
            f"{c['append']:8.1f} ±{c['append_spread']:4.0f}"
        )


if __name__ == "__main__":
    main()
