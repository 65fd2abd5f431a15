"""Where a bulk load's time goes: `upsert_many` of the benchmark's sessions into an empty table,
timed, then once more under cProfile, printing the shares of encoding, decoding what
`upsert_many` returns, and waiting for the database.

    .venv/bin/python -m benchmarks.bulk_profile sqlite:///bulk.db
    .venv/bin/python -m benchmarks.bulk_profile postgresql://postgres@127.0.0.1:5432/test

The table (``bulk_profile`` unless ``--table``) is dropped before each load.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import time

from async_agent_storage import Session, open_store

from .workload import WorkloadSpec, sessions

# The functions whose cumulative share is reported, by what they stand for.
_SHARES = {
    "encoding the sessions": "encode_sessions",
    "decoding the returned sessions": "session_from_encoded",
    "waiting (database thread or server)": "<method 'poll' of 'select.epoll' objects>",
}


async def _load(
    url: str, table: str, batch: list[Session], size: int, profile: cProfile.Profile | None = None
) -> tuple[float, float]:
    """Drop, create, load; the wall and CPU seconds of the load alone (profiled when given)."""
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        await store.drop()
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if profile is not None:
            profile.enable()
        for i in range(0, len(batch), size):
            await store.upsert_many(batch[i : i + size])
        if profile is not None:
            profile.disable()
        after, ended = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ended - started, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--table", default="bulk_profile")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    batch = [
        Session(**s.session_fields())
        for s in sessions(WorkloadSpec(sessions=args.sessions, prefix="bulk"))
    ]
    wall, cpu = asyncio.run(_load(args.url, args.table, batch, args.batch))
    runs = sum(len(s.runs) for s in batch)
    print(
        f"{len(batch)} sessions ({runs} runs) in calls of {args.batch}: "
        f"{len(batch) / wall:,.0f} sessions/s, {1e3 * cpu / len(batch):.2f} ms CPU per session"
    )
    profile = cProfile.Profile()
    asyncio.run(_load(args.url, args.table, batch, args.batch, profile))
    stats = pstats.Stats(profile)
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    # pstats keys are (file, line, function name); the value's fourth item is cumulative time.
    cumulative: dict[str, float] = {}
    for (_, _, name), entry in stats.stats.items():  # type: ignore[attr-defined]
        cumulative[name] = cumulative.get(name, 0.0) + entry[3]
    print("under cProfile, share of the load's time:")
    for label, name in _SHARES.items():
        print(f"  {label:40s} {100 * cumulative.get(name, 0.0) / total:5.1f} %")


if __name__ == "__main__":
    main()
