"""The append turn of this checkout's store against an earlier commit's store, in one process:
both stores on the same seeded data, their blocks alternated round by round, and each round's
throughput ratio (this checkout over the earlier build) reported with the medians.

    .venv/bin/python -m benchmarks.ab_turn b11707c [--rounds 5] [--concurrency 1,16,64,256]
    .venv/bin/python -m benchmarks.ab_turn b11707c --backend postgres \\
        --url postgresql://postgres@127.0.0.1:5432/test

`benchmarks.compare` compares each build's ratio to the raw driver, measured in a process of
each build's own; this compares the two stores directly, with no raw driver between them, in
one interpreter: the difference left is the stores'. The turn is the benchmark's append turn
(`read(last_runs=10)`, then `append_runs` with the turn's new run and state); a build whose
`append_runs` has no `state_patch` replaces the whole state with `session_data` instead, as
the store did before the turn API.

The earlier build's package is taken from git (`git archive`) into ``--workdir`` and imported
under another name (its absolute imports of ``async_agent_storage`` renamed), so both stores
run side by side with this interpreter's dependencies. SQLite: each build seeds a file of its
own schema once, and every block runs on a fresh copy of it; PostgreSQL: a table per build
(``ab_turn_head``, ``ab_turn_<commit>``), dropped and seeded at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import async_agent_storage

from .compare import commit_of
from .systems.store import append_turn
from .workload import Picker, WorkloadSpec, sessions

PACKAGE = "async_agent_storage"


def load_build(ref: str, workdir: Path) -> tuple[str, ModuleType]:
    """The package of commit `ref`, imported as ``aas_<commit>``: (commit, module)."""
    commit = commit_of(ref)
    name = f"aas_{commit[:12]}"
    root = (workdir / f"build-{commit[:12]}").resolve()
    if not (root / name).exists():
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, PACKAGE], check=True, capture_output=True
        ).stdout
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
        (root / PACKAGE).rename(root / name)
        for source in (root / name).rglob("*.py"):
            text = source.read_text()
            if PACKAGE in text:
                source.write_text(text.replace(PACKAGE, name))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return commit, importlib.import_module(name)


@dataclass
class Build:
    """One store package under test: its seeded data and what each block measured."""

    label: str
    package: ModuleType
    table: str
    patches: bool = field(init=False)
    blocks: dict[int, list[tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        params = inspect.signature(self.package.SessionStore.append_runs).parameters
        self.patches = "state_patch" in params


async def seed(build: Build, url: str, spec: WorkloadSpec) -> None:
    """Create the build's schema and load the benchmark's sessions into it."""
    pkg = build.package
    async with pkg.open_store(url, table_name=build.table) as store:
        await store.drop()
    async with pkg.open_store(url, table_name=build.table, auto_upgrade_schema=True) as store:
        batch: list[Any] = []
        for seed_session in sessions(spec):
            batch.append(pkg.Session(**seed_session.session_fields()))
            if len(batch) == 100:
                await store.upsert_many(batch)
                batch = []
        if batch:
            await store.upsert_many(batch)


async def turn(build: Build, store: Any, picker: Picker, spec: WorkloadSpec) -> None:
    await append_turn(store, picker, spec, patch=build.patches)


async def block(
    build: Build, url: str, callers: int, seconds: float, salt: int, spec: WorkloadSpec
) -> tuple[float, float]:
    """`callers` concurrent turns for `seconds`: (turns a second, process CPU us a turn)."""
    async with build.package.open_store(url, table_name=build.table) as store:
        pickers = [Picker(spec, i, salt=salt) for i in range(callers)]
        for picker in pickers[:4]:  # warm: statements prepared, connections open
            await turn(build, store, picker, spec)
        stop = False
        done = 0

        async def caller(picker: Picker) -> None:
            nonlocal done
            while not stop:
                await turn(build, store, picker, spec)
                done += 1

        cpu, wall = time.process_time(), time.perf_counter()
        tasks = [asyncio.create_task(caller(p)) for p in pickers]
        await asyncio.sleep(seconds)
        stop = True
        await asyncio.gather(*tasks)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return done / wall, cpu / max(done, 1) * 1e6


def _fresh_copy(seeded: Path, copy: Path) -> str:
    """A copy of the seeded SQLite file (its WAL and shared memory of the last block gone)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(seeded, copy)
    return f"sqlite:///{copy}"


def _range(values: list[float], digits: int = 0, unit: str = "") -> str:
    values = sorted(values)
    f = f"{{:,.{digits}f}}{unit}"
    return f"{f.format(statistics.median(values))} ({f.format(values[0])}-{f.format(values[-1])})"


async def run(args: argparse.Namespace) -> str:
    spec = WorkloadSpec(sessions=args.sessions)
    commit, ref_package = load_build(args.ref, args.workdir)
    builds = [
        Build("this checkout", async_agent_storage, "ab_turn_head"),
        # A table of the commit's own: a table another build migrated further stops it opening.
        Build(commit[:12], ref_package, f"ab_turn_{commit[:12]}"),
    ]
    concurrency = [int(n) for n in args.concurrency.split(",")]
    sqlite = args.backend == "sqlite"
    data = args.workdir.resolve() / "data"
    if sqlite:
        data.mkdir(parents=True, exist_ok=True)
    seeded: dict[str, Path] = {}
    for build in builds:
        if sqlite:
            seeded[build.table] = data / f"{build.table}-seed.db"
            for stale in data.glob(f"{build.table}*"):
                stale.unlink()
            await seed(build, f"sqlite:///{seeded[build.table]}", spec)
        else:
            await seed(build, args.url, spec)
    for round_ in range(args.rounds):
        for callers in concurrency:
            order = builds if round_ % 2 == 0 else builds[::-1]
            for build in order:
                url = args.url
                if sqlite:
                    url = _fresh_copy(seeded[build.table], data / f"{build.table}.db")
                # The same turns for both builds, and new ones in every block: on a table kept
                # between blocks, turns replayed from an earlier block would carry run ids it
                # already holds, and an exactly-once store would answer them as retries.
                salt = round_ * 100_003 + callers
                measured = await block(build, url, callers, args.duration, salt, spec)
                build.blocks.setdefault(callers, []).append(measured)
            print(f"round {round_ + 1}, {callers} callers: done", flush=True)
    head, ref = builds
    lines = [
        f"{args.backend} append turn, this checkout against {ref.label} "
        f"({'patch' if head.patches else 'replace'} against "
        f"{'patch' if ref.patches else 'replace'}), {args.rounds} rounds of {args.duration:g} s:",
        "",
        "| callers | this checkout, turns/s | earlier build, turns/s | ratio | "
        "CPU a turn, this / earlier |",
        "|---:|---:|---:|---:|---:|",
    ]
    for callers in concurrency:
        mine, theirs = head.blocks[callers], ref.blocks[callers]
        ratios = [a[0] / b[0] for a, b in zip(mine, theirs, strict=True)]
        lines.append(
            f"| {callers} | {_range([m[0] for m in mine])} | {_range([t[0] for t in theirs])} | "
            f"{_range(ratios, 2, 'x')} | {statistics.median(m[1] for m in mine):.0f} / "
            f"{statistics.median(t[1] for t in theirs):.0f} us |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab_turn", description=__doc__)
    p.add_argument("ref", help="the earlier commit (any git revision)")
    p.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    p.add_argument("--url", default=None, help="PostgreSQL: the database URL")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per block")
    p.add_argument("--concurrency", default="1,16,64,256", help="callers, e.g. 1,16,64")
    p.add_argument("--sessions", type=int, default=WorkloadSpec.sessions)
    p.add_argument("--workdir", type=Path, default=Path("tmp/ab_turn"))
    args = p.parse_args(argv)
    if args.backend == "postgres" and not args.url:
        p.error("--backend postgres needs --url")
    print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
