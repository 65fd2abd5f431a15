"""The suite: seed every system, run every cell (system x scenario x concurrency), collect results.

Every cell starts from the seeded snapshot of its dataset (restored before the cell), runs a
warm-up, then a fixed measured window. Systems take turns cell by cell (all systems at 1 caller,
then all at 16, ...), so that a change in the machine's load hits them alike. With `rounds` > 1
the turn and listing cells run that many times, interleaved (every system once, then every
system again in the reverse order, so that no system always runs first or always follows the
same one...); each system's cell is then its median round, with every round's throughput kept
(`CellResult.round_ops_per_s`) for ratios per round (`report.scaling_lines`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import environment, pgsnap
from .loadgen import CellResult, run_cell
from .systems import (
    BULK,
    COLD_START,
    HISTORY,
    LIST,
    LIST_RUNS,
    LOAD_SCENARIOS,
    TURN,
    Dataset,
    NotAvailable,
    System,
    build,
)
from .workload import Picker, WorkloadSpec, sessions

HISTORY_SESSIONS = {10: 512, 100: 128, 1000: 32}
ROOT = Path(__file__).resolve().parent.parent


def _interpreter(path: str) -> str | None:
    """The absolute path of the peers' interpreter, or None when it is not there."""
    candidate = Path(path) if Path(path).is_absolute() else ROOT / path
    return str(candidate.absolute()) if candidate.exists() else None


PEER_BACKENDS = ("sqlite", "postgres")


@dataclass
class Plan:
    """What to run. The defaults are `make bench`: SQLite, about a minute."""

    backends: list[tuple[str, str | None]] = field(default_factory=lambda: [("sqlite", None)])
    scenarios: list[str] = field(
        default_factory=lambda: [TURN, LIST, LIST_RUNS, HISTORY, COLD_START, BULK]
    )
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    duration: float = 1.0
    warmup: float = 0.5
    spec: WorkloadSpec = field(default_factory=WorkloadSpec)
    history_lengths: list[int] = field(default_factory=lambda: [10, 100, 1000])
    history_concurrency: int = 16
    history_sessions: int | None = None  # sessions per history dataset (default: by length)
    cold_reps: int = 3
    bulk_sessions: int = 1000
    bulk_batch: int = 100
    peers: bool = False
    peers_python: str = ".venv-peers/bin/python"
    systems: list[str] | None = None  # only the in-process systems with these names
    workdir: Path = Path("tmp/bench")
    replica_url: str | None = None  # PostgreSQL: also "store append +replica"
    pgbouncer_url: str | None = None  # PostgreSQL: also "store append via pgbouncer"
    rounds: int = 1  # turn and listing cells: interleaved rounds, the median kept

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = self.spec.to_dict()
        data["workdir"] = str(self.workdir)
        data["backends"] = [{"backend": b, "url": u} for b, u in self.backends]
        return data

    def history_datasets(self) -> list[tuple[int, Dataset]]:
        out = []
        for length in self.history_lengths:
            count = self.history_sessions or HISTORY_SESSIONS.get(
                length, max(16, 20_000 // max(1, length))
            )
            out.append((length, Dataset(f"h{length}", self.spec.history(length, count))))
        return out


@dataclass
class SystemReport:
    backend: str
    name: str
    kind: str
    available: bool
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    seed: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    plan: dict[str, Any]
    environment: dict[str, Any]
    systems: list[SystemReport] = field(default_factory=list)
    cells: list[CellResult] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "plan": self.plan,
            "environment": self.environment,
            "systems": [asdict(s) for s in self.systems],
            "cells": [c.to_dict() for c in self.cells],
        }


class Progress:
    """What the suite tells its caller while it runs (the CLI draws a progress bar)."""

    def total(self, cells: int) -> None: ...

    def cell(self, label: str) -> None: ...

    def done(self, result: CellResult | None = None) -> None: ...

    def message(self, text: str) -> None: ...


def count_cells(plan: Plan, systems: dict[str, list[System]]) -> int:
    total = 0
    for backend, _ in plan.backends:
        for system in systems.get(backend, []):
            total += _system_cells(plan, system.scenarios)
        if plan.peers and backend in PEER_BACKENDS:
            total += _peer_cells(plan, backend)
    return total


def _peer_cells(plan: Plan, backend: str) -> int:
    """Agno takes part in turn, list and history; LangGraph (PostgreSQL only) has no listing."""
    cells = _system_cells(plan, frozenset({TURN, LIST, LIST_RUNS, HISTORY}))
    if backend == "postgres":
        cells += _system_cells(plan, frozenset({TURN, HISTORY}))
    return cells


def _system_cells(plan: Plan, scenarios: frozenset[str]) -> int:
    n = 0
    for scenario in plan.scenarios:
        if scenario not in scenarios:
            continue
        if scenario in LOAD_SCENARIOS:
            n += len(plan.concurrency) * plan.rounds
        elif scenario == HISTORY:
            n += len(plan.history_lengths)
        elif scenario == COLD_START:
            n += 2
        else:
            n += 1
    return n


async def run(plan: Plan, progress: Progress | None = None) -> Results:
    """Run the plan; never raises for a failing system (it is reported as such)."""
    progress = progress or Progress()
    t0 = time.perf_counter()
    results = Results(
        plan=plan.to_dict(),
        environment=await environment.collect(
            plan.backends, plan.peers_python if plan.peers else None
        ),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    plan.workdir.mkdir(parents=True, exist_ok=True)
    by_backend: dict[str, list[System]] = {}
    for backend, url in plan.backends:
        try:
            by_backend[backend] = [
                s
                for s in build(
                    backend,
                    url,
                    plan.workdir / backend,
                    replica_url=plan.replica_url,
                    pgbouncer_url=plan.pgbouncer_url,
                )
                if plan.systems is None or s.name in plan.systems
            ]
        except ValueError as exc:
            results.systems.append(SystemReport(backend, "*", "-", False, str(exc)))
            by_backend[backend] = []
    progress.total(count_cells(plan, by_backend))
    for backend, url in plan.backends:
        usable: list[System] = []
        for system in by_backend[backend]:
            report = SystemReport(backend, system.name, system.kind, True)
            try:
                await system.check()
                report.info = system.info()
                usable.append(system)
            except NotAvailable as exc:
                report.available = False
                report.reason = f"not available: {exc}"
                progress.message(f"{backend} {system.name}: {report.reason}")
                for _ in range(_system_cells(plan, system.scenarios)):
                    progress.done()
            results.systems.append(report)
        await _run_backend(plan, backend, usable, results, progress)
        if plan.peers and backend in PEER_BACKENDS and (backend == "sqlite" or url is not None):
            await _run_peers(plan, backend, url, results, progress)
    results.seconds = time.perf_counter() - t0
    return results


async def _run_backend(
    plan: Plan, backend: str, systems: list[System], results: Results, progress: Progress
) -> None:
    main = Dataset("main", plan.spec)
    history = plan.history_datasets() if HISTORY in plan.scenarios else []
    reports = {(r.backend, r.name): r for r in results.systems}
    for system in list(systems):
        progress.message(f"{backend}: seeding {system.name}")
        try:
            info = await system.seed(main)
            reports[(backend, system.name)].seed = {
                "sessions": info.sessions,
                "runs": info.runs,
                "seconds": round(info.seconds, 2),
                "bytes_stored": info.bytes_stored,
                "bytes_per_session": info.bytes_per_session,
            }
            if HISTORY in system.scenarios:
                for length, dataset in history:
                    h = await system.seed(dataset)
                    reports[(backend, system.name)].seed[f"h{length}_bytes_per_session"] = (
                        h.bytes_per_session
                    )
        except Exception as exc:
            report = reports[(backend, system.name)]
            report.available = False
            report.reason = f"seeding failed: {type(exc).__name__}: {exc}"
            progress.message(f"{backend} {system.name}: {report.reason}")
            systems.remove(system)

    def cell(system: System, scenario: str, concurrency: int, param: int | None) -> CellResult:
        return CellResult(backend, scenario, system.name, system.kind, concurrency, param)

    for scenario in plan.scenarios:
        takers = [s for s in systems if scenario in s.scenarios]
        if scenario in LOAD_SCENARIOS:
            for concurrency in plan.concurrency:
                rounds: dict[str, list[CellResult]] = {s.name: [] for s in takers}
                for r in range(plan.rounds):
                    for system in takers if r % 2 == 0 else takers[::-1]:
                        result = cell(system, scenario, concurrency, None)
                        what = f" round {r + 1}" if plan.rounds > 1 else ""
                        progress.cell(f"{backend} {scenario} x{concurrency} {system.name}{what}")
                        await _load_cell(plan, system, main, result)
                        rounds[system.name].append(result)
                        progress.done(result)
                results.cells += [median_round(rounds[s.name]) for s in takers]
        elif scenario == HISTORY:
            for length, dataset in history:
                for system in takers:
                    result = cell(system, scenario, plan.history_concurrency, length)
                    progress.cell(f"{backend} history {length} runs {system.name}")
                    await _load_cell(plan, system, dataset, result)
                    results.cells.append(result)
                    progress.done(result)
        elif scenario == COLD_START:
            for system in takers:
                for fresh in (True, False):
                    label = "fresh" if fresh else "up-to-date"
                    result = cell(system, f"cold_start_{'fresh' if fresh else 'current'}", 1, None)
                    progress.cell(f"{backend} cold start ({label}) {system.name}")
                    await _cold_cell(plan, system, fresh, result)
                    results.cells.append(result)
                    progress.done(result)
        elif scenario == BULK:
            seeds = list(sessions(WorkloadSpec(sessions=plan.bulk_sessions, prefix="bulk", seed=7)))
            runs = sum(len(s.runs) for s in seeds)
            for system in takers:
                result = cell(system, BULK, 1, plan.bulk_batch)
                progress.cell(f"{backend} bulk load {system.name}")
                try:
                    seconds = await system.bulk_load(seeds, plan.bulk_batch)
                    result.duration_s = seconds
                    result.ops = len(seeds)
                    result.ops_per_s = len(seeds) / seconds
                    result.p50_ms = seconds * 1000 / max(1, len(seeds) // plan.bulk_batch)
                    result.note = (
                        f"{len(seeds)} sessions, {runs} runs, batches of {plan.bulk_batch}"
                    )
                except Exception as exc:
                    result.errors = 1
                    result.error_samples = [f"{type(exc).__name__}: {exc}"[:300]]
                results.cells.append(result)
                progress.done(result)
    for system in systems:
        try:
            await system.cleanup()
        except Exception as exc:
            progress.message(f"{backend} {system.name}: cleanup failed: {exc}")


def median_round(rounds: list[CellResult]) -> CellResult:
    """One system's cell over interleaved rounds: its median round (by throughput), with every
    round's throughput and the errors of all rounds."""
    if len(rounds) == 1:
        return rounds[0]
    ordered = sorted(rounds, key=lambda c: c.ops_per_s)
    median = ordered[(len(ordered) - 1) // 2]
    median.round_ops_per_s = [c.ops_per_s for c in rounds]
    median.errors = sum(c.errors for c in rounds)
    median.error_samples = [m for c in rounds for m in c.error_samples][:5]
    low, high = ordered[0].ops_per_s, ordered[-1].ops_per_s
    median.note = f"median of {len(rounds)} interleaved rounds ({low:,.0f}-{high:,.0f} ops/s)" + (
        f"; {median.note}" if median.note else ""
    )
    return median


async def _load_cell(plan: Plan, system: System, dataset: Dataset, result: CellResult) -> None:
    try:
        await system.start(dataset)
        primary = dict(plan.backends).get("postgres")
        if plan.replica_url and primary and system.backend == "postgres":
            await pgsnap.replica_caught_up(primary, plan.replica_url)  # every system alike
    except Exception as exc:
        result.errors = 1
        result.error_samples = [f"start: {type(exc).__name__}: {exc}"[:300]]
        return
    try:
        spec = dataset.spec
        pickers = [Picker(spec, i, salt=result.concurrency) for i in range(result.concurrency)]
        op: Callable[[int], Any]
        if result.scenario == LIST:

            def op(i: int) -> Any:
                return system.list_recent(pickers[i], spec)
        elif result.scenario == LIST_RUNS:

            def op(i: int) -> Any:
                return system.list_with_runs(pickers[i], spec)
        else:

            def op(i: int) -> Any:
                return system.turn(pickers[i], spec)

        concurrency = result.concurrency
        await run_cell(
            op, concurrency=concurrency, warmup=plan.warmup, duration=plan.duration, result=result
        )
    finally:
        try:
            await system.stop()
        except Exception as exc:
            result.errors += 1
            result.error_samples.append(f"stop: {type(exc).__name__}: {exc}"[:300])


async def _cold_cell(plan: Plan, system: System, fresh: bool, result: CellResult) -> None:
    times = []
    try:
        for i in range(plan.cold_reps):
            if fresh:
                times.append(await system.cold_start(i, True))
            else:
                await system.cold_start(i, True)  # create it, then time the reopen
                times.append(await system.cold_start(i, False))
    except Exception as exc:
        result.errors += 1
        result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
    if times:
        times.sort()
        result.ops = len(times)
        result.duration_s = sum(times)
        result.p50_ms = statistics.median(times) * 1000
        result.max_ms = times[-1] * 1000
        result.ops_per_s = 1 / statistics.median(times)
        result.note = f"median of {len(times)} open() calls"


async def _run_peers(
    plan: Plan, backend: str, url: str | None, results: Results, progress: Progress
) -> None:
    """Run the peers' cells in a subprocess of the peers' interpreter; it prints one JSON object
    per line: {"system": ...} reports, {"cell": ...} results, {"message": ...} notes."""
    python = _interpreter(plan.peers_python)
    scenarios = [s for s in plan.scenarios if s in (TURN, LIST, HISTORY)]
    expected = _peer_cells(plan, backend)
    if python is None:
        reason = (
            f"not available: no peers interpreter at {plan.peers_python} (run `make bench-peers`)"
        )
        results.systems.append(SystemReport(backend, "peers", "peer", False, reason))
        progress.message(f"{backend} peers: {reason}")
        for _ in range(expected):
            progress.done()
        return
    job = {
        "backend": backend,
        "url": url,
        "scenarios": scenarios,
        "concurrency": plan.concurrency,
        "duration": plan.duration,
        "warmup": plan.warmup,
        "spec": plan.spec.to_dict(),
        "history": [[length, d.spec.to_dict()] for length, d in plan.history_datasets()],
        "history_concurrency": plan.history_concurrency,
        "workdir": str(ROOT / plan.workdir / backend / "peers"),
    }
    root = ROOT
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = await asyncio.create_subprocess_exec(
        python,
        "-m",
        "benchmarks.peers.runner",
        json.dumps(job),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(root),
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    stderr_task = asyncio.create_task(proc.stderr.read())
    seen = 0
    while line := await proc.stdout.readline():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "cell" in item:
            result = CellResult.from_dict(item["cell"])
            results.cells.append(result)
            seen += 1
            progress.done(result)
        elif "starting" in item:
            progress.cell(item["starting"])
        elif "system" in item:
            results.systems.append(SystemReport(**item["system"]))
            if not item["system"]["available"]:
                progress.message(f"{backend} {item['system']['name']}: {item['system']['reason']}")
        elif "message" in item:
            progress.message(item["message"])
    code = await proc.wait()
    stderr = (await stderr_task).decode(errors="replace")
    if code != 0:
        tail = stderr.strip().splitlines()[-3:]
        results.systems.append(
            SystemReport(
                backend, "peers", "peer", False, f"peers runner exited {code}: {' | '.join(tail)}"
            )
        )
        progress.message(f"{backend} peers runner exited {code}: {' | '.join(tail)}")
    for _ in range(max(0, expected - seen)):
        progress.done()


def main_sync(plan: Plan, progress: Progress | None = None) -> Results:
    return asyncio.run(run(plan, progress))


__all__ = ["Plan", "Progress", "Results", "SystemReport", "run"]
