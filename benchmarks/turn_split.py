"""Where one caller's PostgreSQL turn goes: per turn, the wall time, the time inside asyncpg's
calls (encoding the arguments, the round trip and the server's work, building the rows; for the
raw driver also its JSON codec) and the rest (the caller's Python: the store's layers, decoding
and building the session, taking pooled connections, the benchmark's own run and state), for
the store's append turn and the raw driver's, in alternating rounds on the benchmark's data.

    .venv/bin/python -m benchmarks.turn_split postgresql://postgres@127.0.0.1:5432/test

With one caller nothing overlaps, so the store's time inside asyncpg bounds its ratio to the
raw driver from above: even with no Python of its own, a turn cannot take less.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncpg import connection as asyncpg_connection

from .systems import Dataset, System, build
from .workload import Picker, WorkloadSpec

_TIMED = ("fetchrow", "execute", "fetch", "fetchval")
_SYSTEMS = ("store append", "raw asyncpg")


class _Inside:
    """Seconds spent inside asyncpg's query calls, summed (one caller: nothing overlaps)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._originals: dict[str, Any] = {}

    def __enter__(self) -> _Inside:
        cls = asyncpg_connection.Connection
        for name in _TIMED:
            original = getattr(cls, name)
            self._originals[name] = original
            setattr(cls, name, self._timed(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            setattr(asyncpg_connection.Connection, name, original)

    def _timed(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def timed(connection: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call(connection, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


async def _round(
    system: System, dataset: Dataset, inside: _Inside, warmup: int, seconds: float
) -> tuple[float, float]:
    """(wall, inside asyncpg) seconds per turn over `seconds` of turns."""
    await system.start(dataset)
    try:
        picker = Picker(dataset.spec, 0, salt=random.randrange(1 << 30))  # new run ids
        for _ in range(warmup):
            await system.turn(picker, dataset.spec)
        inside.seconds, turns, started = 0.0, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            await system.turn(picker, dataset.spec)
            turns += 1
        return (time.perf_counter() - started) / turns, inside.seconds / turns
    finally:
        await system.stop()


async def measure(
    url: str, *, sessions: int, rounds: int, seconds: float, warmup: int = 200
) -> dict[str, list[tuple[float, float]]]:
    with tempfile.TemporaryDirectory(prefix="turn-split-") as workdir:
        systems = {s.name: s for s in build("postgres", url, Path(workdir)) if s.name in _SYSTEMS}
        dataset = Dataset("main", WorkloadSpec(sessions=sessions))
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in _SYSTEMS}
        try:
            for system in systems.values():
                await system.seed(dataset)
            with _Inside() as inside:
                for index in range(rounds):
                    order = _SYSTEMS if index % 2 == 0 else tuple(reversed(_SYSTEMS))
                    for name in order:
                        results[name].append(
                            await _round(systems[name], dataset, inside, warmup, seconds)
                        )
        finally:
            for system in systems.values():
                await system.cleanup()
        return results


def rounds_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a tool that alternates rounds on the benchmark's PostgreSQL data: the
    database URL, the seeded sessions, the rounds and their length."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    return parser


def main() -> None:
    args = rounds_parser(__doc__).parse_args()
    results = asyncio.run(
        measure(args.url, sessions=args.sessions, rounds=args.rounds, seconds=args.seconds)
    )
    print(f"one caller, {args.rounds} rounds of {args.seconds:g} s, medians per turn (range):")
    for name, rows in results.items():
        wall = [1e6 * w for w, _ in rows]
        inside = [1e6 * i for _, i in rows]
        rest = [w - i for w, i in zip(wall, inside, strict=True)]
        print(
            f"  {name:13s} turn {statistics.median(wall):5.0f} us ({min(wall):.0f}-{max(wall):.0f})"
            f"  inside asyncpg {statistics.median(inside):5.0f} us"
            f"  rest {statistics.median(rest):4.0f} us"
        )


if __name__ == "__main__":
    main()
