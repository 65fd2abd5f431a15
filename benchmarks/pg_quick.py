"""A quick PostgreSQL measurement: read, upsert and append_runs per second at N concurrent callers,
`PostgresStore` next to plain asyncpg sending the very same SQL, in one run.

    python benchmarks/pg_quick.py --url postgresql://postgres@127.0.0.1:5432/test

The raw side runs the store's own statements (same text, same parameters, already encoded) on an
asyncpg pool of the same size, and only receives the rows: the ratio is the store's overhead
(argument checks, JSON encoding and decoding, the `Session` model, the FIFO gate). It runs twice:
with asyncpg's default pool, as most code creates it (its release sends a reset query: a second
round trip per call), and with the store's pool settings (no reset query).

Every cell starts from the same seeded table; cells of one operation run back to back. Other work
on the machine makes these numbers noisy: compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from async_agent_storage import PostgresStore, Session
from async_agent_storage.postgres._jsonb import to_db
from async_agent_storage.postgres.store import _keep_session

Op = Callable[[random.Random], Awaitable[Any]]


def make_run(rng: random.Random, i: int) -> dict[str, Any]:
    run: dict[str, Any] = {
        "run_id": uuid.uuid4().hex,
        "messages": [
            {"role": "user", "content": f"question {i}: " + "lorem ipsum " * rng.randint(10, 25)},
            {"role": "assistant", "content": "dolor sit amet " * rng.randint(15, 40)},
        ],
        "metrics": {"input_tokens": rng.randint(10, 500), "output_tokens": rng.randint(10, 900)},
    }
    if i % 3 == 0:
        run["tool_calls"] = [{"name": "search", "arguments": {"q": f"query {i}"}}]
    return run


async def seed(store: PostgresStore, sessions: int, runs: int) -> list[tuple[str, str]]:
    rng = random.Random(1)
    ids = [(f"bench-{i}", f"user-{i % 100}") for i in range(sessions)]
    batch = []
    for sid, uid in ids:
        batch.append(
            Session(
                session_id=sid,
                user_id=uid,
                agent_id="agent-1",
                session_data={"session_state": {"turns": runs, "city": "Paris"}},
                agent_data={"name": "bench agent", "model": {"id": "gpt-4o"}},
                runs=[make_run(rng, i) for i in range(runs)],
            )
        )
        if len(batch) == 100:
            await store.upsert_many(batch)
            batch = []
    if batch:
        await store.upsert_many(batch)
    return ids


async def measure(op: Op, callers: int, duration: float, warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0
    measure_from = 0.0

    async def caller(n: int) -> None:
        nonlocal errors
        rng = random.Random(n)
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            try:
                await op(rng)
            except Exception:
                errors += 1
                continue
            if started >= measure_from:
                latencies.append(time.perf_counter() - started)

    now = time.perf_counter()
    measure_from = now + warmup
    stop_at = measure_from + duration
    await asyncio.gather(*(caller(n) for n in range(callers)))
    latencies.sort()
    return {
        "ops": len(latencies) / duration,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "errors": errors,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2, help="cells per system, averaged")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20, help="runs per seeded session")
    parser.add_argument("--last-runs", type=int, default=10)
    args = parser.parse_args()

    table = f"bench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(
        table, args.url, pool_min_size=args.pool, pool_max_size=args.pool, auto_upgrade_schema=True
    )
    await store.open()
    raw_default = await asyncpg.create_pool(args.url, min_size=args.pool, max_size=args.pool)
    raw_tuned = await asyncpg.create_pool(
        args.url, min_size=args.pool, max_size=args.pool, reset=_keep_session
    )
    try:
        ids = await seed(store, args.sessions, args.runs)
        sql = store._statements()
        n = args.last_runs
        rng0 = random.Random(2)
        state = {"session_state": {"turns": 1, "city": "Paris"}}
        run_body = make_run(rng0, 0)
        # One tail per session, read once: what an agent turn would write back with upsert.
        tails: dict[str, Session] = {}
        for sid, uid in ids:
            tail = await store.read(sid, user_id=uid, last_runs=n)
            assert tail is not None
            tail.runs.append(make_run(rng0, 99))
            tails[sid] = tail

        def pick(rng: random.Random) -> tuple[str, str]:
            return ids[rng.randrange(len(ids))]

        async def store_read(rng: random.Random) -> Any:
            sid, uid = pick(rng)
            return await store.read(sid, user_id=uid, last_runs=n)

        async def store_upsert(rng: random.Random) -> Any:
            sid, _ = pick(rng)
            return await store.upsert(tails[sid])

        async def store_append(rng: random.Random) -> Any:
            sid, uid = pick(rng)
            run = {**run_body, "run_id": uuid.uuid4().hex}
            return await store.append_runs(sid, [run], user_id=uid, session_data=state)

        # The raw side: the same statements with parameters encoded once, up front.
        from async_agent_storage import _common as common
        from async_agent_storage import codec
        from async_agent_storage.postgres.store import _session_columns

        upsert_args = {}
        for sid, tail in tails.items():
            enc = common.encode_session(tail, max_bytes=store.max_session_bytes)
            upsert_args[sid] = (
                *_session_columns(enc),
                enc.runs_offset,
                [r.run_id for r in enc.runs],
                [to_db(r.body) for r in enc.runs],
                None,
            )
        state_text = to_db(common.encode_session_data(state))
        body_text = to_db(codec.dumps(run_body))

        def raw_ops(pool: asyncpg.Pool) -> dict[str, Op]:
            async def read(rng: random.Random) -> Any:
                sid, uid = pick(rng)
                async with pool.acquire() as connection:
                    return await connection.fetchrow(sql.read, sid, uid, n)

            async def upsert(rng: random.Random) -> Any:
                sid, _ = pick(rng)
                async with pool.acquire() as connection:
                    return await connection.fetchrow(sql.upsert, *upsert_args[sid])

            async def append(rng: random.Random) -> Any:
                sid, uid = pick(rng)
                async with pool.acquire() as connection:
                    return await connection.fetchrow(
                        sql.append, sid, uid, state_text, [uuid.uuid4().hex], [body_text]
                    )

            return {"read": read, "upsert": upsert, "append": append}

        systems: dict[str, dict[str, Op]] = {
            "store": {"read": store_read, "upsert": store_upsert, "append": store_append},
            "asyncpg (default pool)": raw_ops(raw_default),
            "asyncpg (no reset query)": raw_ops(raw_tuned),
        }
        print(
            f"{args.callers} callers, pool {args.pool}, {args.sessions} sessions of "
            f"{args.runs} runs, last_runs={n}, {args.duration:g}s per cell, mean of "
            f"{args.rounds} interleaved rounds"
        )
        print(f"{'operation':<10}{'system':<26}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        results: dict[str, dict[str, dict[str, float]]] = {}
        for operation in ("read", "upsert", "append"):
            cells: dict[str, list[dict[str, float]]] = {system: [] for system in systems}
            for _ in range(args.rounds):  # interleaved, so drift hits every system alike
                for system, ops in systems.items():
                    cells[system].append(
                        await measure(ops[operation], args.callers, args.duration, args.warmup)
                    )
            for system, runs in cells.items():
                cell = {key: statistics.mean(r[key] for r in runs) for key in runs[0]}
                results.setdefault(operation, {})[system] = cell
                print(
                    f"{operation:<10}{system:<26}{cell['ops']:>9.0f}{cell['p50_ms']:>9.1f}"
                    f"{cell['p99_ms']:>9.1f}{cell['errors']:>8.0f}"
                )
        print("\nstore / asyncpg ops/s:")
        for operation, by_system in results.items():
            store_ops = by_system["store"]["ops"]
            ratios = ", ".join(
                f"{store_ops / cell['ops']:.2f}x {system}"
                for system, cell in by_system.items()
                if system != "store"
            )
            print(f"  {operation:<8}{ratios}")
    finally:
        await store.drop()
        await store.close()
        await raw_default.close()
        await raw_tuned.close()


if __name__ == "__main__":
    asyncio.run(main())
