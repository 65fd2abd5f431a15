"""What the state patch costs the PostgreSQL server: the store's own append statement, executed
under ``EXPLAIN (ANALYZE)`` on one connection, its state replaced, patched by the store's plpgsql
merge-patch function, and patched by the bound expression the driver sends instead
(`async_agent_storage.postgres._patch`). Executor time only: the client, the network and the
commit are the same for all three.

    .venv/bin/python -m benchmarks.patch_cost postgresql://postgres@127.0.0.1:5432/test \\
        [--sessions 200] [--rounds 6] [--calls 300]

The patch is the benchmark turn's (`workload.next_state`: the session's ``session_state``, five
keys, one of them an object). The table (``patch_cost`` unless ``--table``) is dropped after.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

import asyncpg
import orjson

from async_agent_storage import Session, open_store
from async_agent_storage import _codec as codec
from async_agent_storage.postgres._patch import patched_statement, plan
from async_agent_storage.postgres._sql import PATCH_FIRST

from .server_cost import arguments
from .workload import WorkloadSpec, make_run, next_state, sessions

WAYS = ("state replaced", "patched by the plpgsql function", "patched by the bound expression")


async def measure(url: str, table: str, count: int, rounds: int, calls: int) -> dict[str, float]:
    """{way: median over rounds of the median executor time of `calls` appends, in us}."""
    spec = WorkloadSpec(sessions=count, users=max(1, count // 4))
    seeds = list(sessions(spec))
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        await store.upsert_many(
            [
                Session(session_id=s.session_id, user_id=s.user_id, session_data=s.session_data)
                for s in seeds
            ]
        )
        sql = store._statements()  # type: ignore[attr-defined]
        connection = await asyncpg.connect(url)
        try:
            return await _rounds(connection, sql, seeds, rounds, calls)
        finally:
            await connection.close()
            await store.drop()


async def _rounds(
    connection: Any, sql: Any, seeds: list[Any], rounds: int, calls: int
) -> dict[str, float]:
    rng = random.Random(20261128)
    shape_of = plan(codec.dumps(_patch(seeds[0].session_data, rng)))
    assert shape_of is not None
    bound = patched_statement(sql.append, sql.merge_call, shape_of.shape, PATCH_FIRST)
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) "
    statements = {
        WAYS[0]: await connection.prepare(explain + sql.append),
        WAYS[1]: await connection.prepare(explain + sql.append),
        WAYS[2]: await connection.prepare(explain + bound),
    }
    medians: dict[str, list[float]] = {way: [] for way in WAYS}
    n = 0
    for round_ in range(rounds):
        for way in WAYS if round_ % 2 == 0 else WAYS[::-1]:  # alternate the order
            times = []
            for _ in range(calls):
                seed = rng.choice(seeds)
                n += 1
                run = make_run(
                    rng, session_id=seed.session_id, agent_id="a", user_id="u", index=n, share=0.3
                )
                run_id = f"{run['run_id']}-{WAYS.index(way)}-{n}"
                patch = _patch(seed.session_data, rng)
                text = orjson.dumps(patch).decode()
                args: list[Any] = [
                    seed.session_id,
                    None,
                    None,
                    [run_id],
                    [orjson.dumps(run).decode()],
                ]
                if way == WAYS[0]:
                    args[2] = orjson.dumps({**seed.session_data, **patch}).decode()
                    args += [None, None, None, None, None, None, args[2]]
                else:
                    args += [text, None, None, None, None, None, text]
                if way == WAYS[2]:
                    bound_plan = plan(text.encode())
                    assert bound_plan is not None
                    args += bound_plan.args
                out = await statements[way].fetchval(*args)
                times.append(orjson.loads(out)[0]["Execution Time"] * 1000)
            medians[way].append(statistics.median(times))
    return {way: statistics.median(values) for way, values in medians.items()}


def _patch(session_data: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    return {"session_state": next_state(session_data, rng)["session_state"]}


def main() -> None:
    args = arguments(
        "patch_cost",
        __doc__,
        table="patch_cost",
        sessions=200,
        rounds=6,
        calls="appends per way and round",
    )
    result = asyncio.run(measure(args.url, args.table, args.sessions, args.rounds, args.calls))
    print(f"append statement, executor time, median of {args.rounds} rounds of {args.calls}:")
    for way in WAYS:
        print(f"  {way:33s} {result[way]:5.0f} us")


if __name__ == "__main__":
    main()
