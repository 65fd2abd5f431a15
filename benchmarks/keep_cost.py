"""What keeping a call's connection for the next call gains on PostgreSQL: the benchmark's
append turn with the store's connections kept between calls (the default) and given back to
asyncpg's pool after every call, in alternating rounds in one process, on the benchmark's data.

    .venv/bin/python -m benchmarks.keep_cost postgresql://postgres@127.0.0.1:5432/test

Per mode and number of callers: calls a second and the process's CPU time per call (the store,
asyncpg and the event loop; the server's backends are other processes). `--scenario list_runs`
lists a user's most recent sessions with their runs instead of turns.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from .systems import Dataset, System, build
from .turn_split import rounds_parser
from .workload import Picker, WorkloadSpec

_SYSTEM = "store append"
MODES = ("kept", "given back")
SCENARIOS = ("turn", "list_runs")


async def _round(
    system: System, dataset: Dataset, keep: bool, callers: int, seconds: float, scenario: str
) -> tuple[float, float]:
    """(calls a second, CPU seconds per call) over `seconds` of calls by `callers` callers."""
    await system.start(dataset)
    try:
        store = getattr(system, "store", None)
        gated = getattr(store, "_pool", None)
        if gated is None:
            raise RuntimeError("the store has no pool of its own to measure")
        gated.keeps = keep
        call = system.turn if scenario == "turn" else system.list_with_runs
        warm = Picker(dataset.spec, callers, salt=random.randrange(1 << 30))
        for _ in range(100):
            await call(warm, dataset.spec)
        turns = 0
        started, cpu = time.perf_counter(), time.process_time()

        async def caller(index: int) -> None:
            nonlocal turns
            picker = Picker(dataset.spec, index, salt=random.randrange(1 << 30))  # new run ids
            while time.perf_counter() - started < seconds:
                await call(picker, dataset.spec)
                turns += 1

        await asyncio.gather(*(caller(i) for i in range(callers)))
        wall = time.perf_counter() - started
        return turns / wall, (time.process_time() - cpu) / turns
    finally:
        await system.stop()


async def measure(
    url: str,
    *,
    sessions: int,
    rounds: int,
    seconds: float,
    concurrency: list[int],
    scenario: str = "turn",
) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """{callers: {mode: [(turns/s, CPU s per turn) per round]}}, the modes alternating."""
    with tempfile.TemporaryDirectory(prefix="keep-cost-") as workdir:
        system = next(s for s in build("postgres", url, Path(workdir)) if s.name == _SYSTEM)
        dataset = Dataset("main", WorkloadSpec(sessions=sessions))
        results: dict[int, dict[str, list[tuple[float, float]]]] = {}
        try:
            await system.seed(dataset)
            for callers in concurrency:
                cells: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
                for index in range(rounds):
                    order = MODES if index % 2 == 0 else MODES[::-1]
                    for mode in order:
                        cells[mode].append(
                            await _round(
                                system, dataset, mode == "kept", callers, seconds, scenario
                            )
                        )
                results[callers] = cells
        finally:
            await system.cleanup()
        return results


def main() -> None:
    parser = rounds_parser(__doc__)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--scenario", choices=SCENARIOS, default="turn")
    args = parser.parse_args()
    concurrency = [int(n) for n in args.concurrency.split(",")]
    results = asyncio.run(
        measure(
            args.url,
            sessions=args.sessions,
            rounds=args.rounds,
            seconds=args.seconds,
            concurrency=concurrency,
            scenario=args.scenario,
        )
    )
    print(
        f"{args.scenario}, {args.rounds} alternating rounds of {args.seconds:g} s, medians (range):"
    )
    for callers, cells in results.items():
        for mode, rows in cells.items():
            rates = [r for r, _ in rows]
            cpu = [1e6 * c for _, c in rows]
            print(
                f"  {callers:4d} callers, connections {mode:10s}: "
                f"{statistics.median(rates):6.0f} calls/s ({min(rates):.0f}-{max(rates):.0f}), "
                f"CPU {statistics.median(cpu):4.0f} us/call ({min(cpu):.0f}-{max(cpu):.0f})"
            )


if __name__ == "__main__":
    main()
