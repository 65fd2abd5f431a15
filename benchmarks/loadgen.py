"""The load loop: N callers repeat one operation for a warm-up, then for a measured window.

Standard library only (the peers' runner uses it from its own virtual environment), so that every
system is measured by the same loop.

Latency is taken around the whole operation as the caller sees it, pool waits included. An
operation counts when it started inside the measured window; it is timed to its end even if that
falls after the window closes (so slow operations are not dropped from the percentiles), and
throughput is the number of such operations divided by the window. An error never stops the run:
it is counted, and the first few distinct messages are kept.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Operation = Callable[[int], Awaitable[None]]  # called with the worker's index
MAX_ERROR_SAMPLES = 5
WINDOW_FILE_ENV = "AAS_BENCH_WINDOW_FILE"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """The process's resident memory now, in MiB (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _mark(event: str) -> None:
    """Append the event to $AAS_BENCH_WINDOW_FILE, so that a profiler (benchmarks.profiling)
    can sample the measured windows only."""
    path = os.environ.get(WINDOW_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{time.time():.3f} {event}\n")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class CellResult:
    """Everything measured in one cell: one system, one scenario, one concurrency."""

    backend: str
    scenario: str
    system: str
    kind: str  # "store", "raw" or "peer"
    concurrency: int
    param: int | None = None  # the history length, for the history scenario
    duration_s: float = 0.0
    ops: int = 0
    ops_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    cpu_ms_per_op: float = 0.0
    rss_start_mb: float = 0.0
    rss_mid_mb: float = 0.0  # at the middle of the window: bounded caches have filled by then
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    note: str = ""
    # With --rounds N: each round's throughput, in round order (the cell is the median round).
    round_ops_per_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        return cls(**data)


class _Errors:
    def __init__(self) -> None:
        self.count = 0
        self.samples: list[str] = []

    def add(self, exc: BaseException) -> None:
        self.count += 1
        message = f"{type(exc).__name__}: {exc}"[:300]
        if len(self.samples) < MAX_ERROR_SAMPLES and message not in self.samples:
            self.samples.append(message)


async def run_cell(
    operation: Operation,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
    result: CellResult,
) -> CellResult:
    """Run `operation` from `concurrency` callers for `warmup` + `duration` seconds and fill in
    `result`'s measurements."""
    latencies: list[float] = []
    errors = _Errors()
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + duration
    stop = asyncio.Event()
    perf = time.perf_counter

    async def worker(index: int) -> None:
        while not stop.is_set():
            began = loop.time()
            t0 = perf()
            try:
                await operation(index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # warm-up errors count too: they would hide a broken system
                errors.add(exc)
                continue
            if start <= began < end:
                latencies.append(perf() - t0)
            if began >= end:
                return

    rss_samples: list[float] = []

    async def sampler() -> None:
        while not stop.is_set():
            rss_samples.append(rss_mb())
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await asyncio.sleep(max(0.0, start - loop.time()))
    _mark(f"start {result.backend} {result.scenario} {result.concurrency} {result.system}")
    rss_start = rss_mb()
    cpu_start = time.process_time()
    sample_task = asyncio.create_task(sampler())
    await asyncio.sleep(max(0.0, (start + end) / 2 - loop.time()))
    rss_mid = rss_mb()
    await asyncio.sleep(max(0.0, end - loop.time()))
    cpu_end = time.process_time()
    rss_end = rss_mb()
    _mark("end")
    stop.set()
    # Operations that began inside the window finish and are timed; nothing new starts.
    done, pending = await asyncio.wait(tasks, timeout=max(30.0, duration * 3))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:  # a bug in the loop itself, not in an operation
            errors.add(task.exception())  # type: ignore[arg-type]
    if pending:
        errors.add(TimeoutError(f"{len(pending)} callers still busy long after the window closed"))
    await asyncio.gather(sample_task, return_exceptions=True)

    latencies.sort()
    result.duration_s = duration
    result.ops = len(latencies)
    result.ops_per_s = len(latencies) / duration if duration else 0.0
    result.p50_ms = percentile(latencies, 50) * 1000
    result.p95_ms = percentile(latencies, 95) * 1000
    result.p99_ms = percentile(latencies, 99) * 1000
    result.max_ms = (latencies[-1] if latencies else 0.0) * 1000
    result.errors = errors.count
    result.error_samples = errors.samples
    result.cpu_s = cpu_end - cpu_start
    result.cpu_ms_per_op = result.cpu_s * 1000 / len(latencies) if latencies else 0.0
    result.rss_start_mb = rss_start
    result.rss_mid_mb = rss_mid
    result.rss_end_mb = rss_end
    result.rss_peak_mb = max([rss_start, rss_end, *rss_samples])
    if not latencies and not errors.count:
        result.note = "no operation started in the window: it is shorter than one operation"
    return result


async def time_once(operation: Callable[[], Awaitable[Any]]) -> float:
    """Seconds one call takes."""
    t0 = time.perf_counter()
    await operation()
    return time.perf_counter() - t0
