"""`python -m benchmarks`: run the suite, draw the table, write JSON, Markdown and PNG results."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import environment, report
from .loadgen import CellResult
from .suite import Plan, Progress, run
from .systems import BACKENDS, BULK, COLD_START, HISTORY, LIST, LIST_RUNS, SCENARIOS, TURN
from .workload import WorkloadSpec

DEFAULT_PEERS_PYTHON = ".venv-peers/bin/python"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _scenarios(text: str) -> list[str]:
    aliases = {"cold": COLD_START, "bulk": BULK, "listing": LIST, "listing-runs": LIST_RUNS}
    names = [aliases.get(s.strip(), s.strip()) for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    return [s for s in SCENARIOS if s in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Session throughput under concurrent load: the store against the raw driver "
        "and the peers, per backend, in one run.",
    )
    p.add_argument(
        "--backend",
        choices=[*BACKENDS, "all"],
        default="sqlite",
        help="sqlite (default), postgres, mongo, or all (sqlite plus those given a URL)",
    )
    p.add_argument("--url", help="the server URL of --backend postgres or mongo")
    p.add_argument(
        "--postgres-url",
        default=os.environ.get("AAS_BENCH_POSTGRES_URL"),
        help="PostgreSQL URL for --backend all ($AAS_BENCH_POSTGRES_URL)",
    )
    p.add_argument(
        "--mongo-url",
        default=os.environ.get("AAS_BENCH_MONGO_URL"),
        help="MongoDB URL for --backend all ($AAS_BENCH_MONGO_URL)",
    )
    p.add_argument(
        "--replica-url",
        help="PostgreSQL: a streaming replica of --url's server; adds 'store append +replica' "
        "(reads and listings from the replica, read-your-writes) to the turn and list cells",
    )
    p.add_argument(
        "--pgbouncer",
        metavar="URL",
        help="PostgreSQL: PgBouncer (pool_mode=transaction) in front of --url's database; adds "
        "'store append via pgbouncer' (pooler='transaction') to the turn and list cells",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the turn and list cells this many times, interleaved, and keep each system's "
        "median round (1); 3 or more for the ratios docs/scaling.md cites",
    )
    p.add_argument("--duration", type=float, default=1.0, help="measured seconds per cell (1)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per cell (0.5)")
    p.add_argument(
        "--concurrency", type=_ints, default=[1, 16, 64, 256], help="callers (1,16,64,256)"
    )
    p.add_argument(
        "--scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)} (all)",
    )
    p.add_argument("--sessions", type=int, default=2000, help="seeded sessions (2000)")
    p.add_argument("--users", type=int, default=200, help="distinct users (200)")
    p.add_argument("--last-runs", type=int, default=10, help="runs a turn loads (10)")
    p.add_argument(
        "--history-lengths", type=_ints, default=[10, 100, 1000], help="runs (10,100,1000)"
    )
    p.add_argument("--history-concurrency", type=int, default=16, help="callers (16)")
    p.add_argument(
        "--history-sessions",
        type=int,
        default=None,
        help="sessions per history dataset (512, 128, 32 for 10, 100, 1000 runs)",
    )
    p.add_argument("--cold-reps", type=int, default=3, help="open() calls per cold cell (3)")
    p.add_argument("--bulk-sessions", type=int, default=1000, help="sessions bulk-loaded (1000)")
    p.add_argument(
        "--peers",
        action="store_true",
        help="also run Agno and LangGraph from the peers' environment (make bench-peers)",
    )
    p.add_argument(
        "--systems",
        type=lambda text: [s.strip() for s in text.split(",") if s.strip()],
        default=None,
        help='only these in-process systems, e.g. "store append,raw asyncpg" (for profiling)',
    )
    p.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON, help="the peers' interpreter")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--workdir", type=Path, default=Path("tmp/bench"), help="scratch folder")
    p.add_argument("--tag", default="", help="added to the results' file names")
    p.add_argument(
        "--docs",
        action="store_true",
        help="also copy each backend's plot to docs/benchmarks-<backend>.png",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def plan_from(args: argparse.Namespace) -> Plan:
    backends: list[tuple[str, str | None]]
    if args.backend == "all":
        backends = [("sqlite", None)]
        if args.postgres_url:
            backends.append(("postgres", args.postgres_url))
        if args.mongo_url:
            backends.append(("mongo", args.mongo_url))
    elif args.backend == "sqlite":
        backends = [("sqlite", None)]
    else:
        url = args.url or (args.postgres_url if args.backend == "postgres" else args.mongo_url)
        if not url:
            raise SystemExit(f"--backend {args.backend} needs --url")
        backends = [(args.backend, url)]
    if (args.replica_url or args.pgbouncer) and not any(b == "postgres" for b, _ in backends):
        raise SystemExit("--replica-url and --pgbouncer need a PostgreSQL backend")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    return Plan(
        backends=backends,
        replica_url=args.replica_url,
        pgbouncer_url=args.pgbouncer,
        rounds=args.rounds,
        scenarios=args.scenarios,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        spec=WorkloadSpec(sessions=args.sessions, users=args.users, last_runs=args.last_runs),
        history_lengths=args.history_lengths,
        history_concurrency=args.history_concurrency,
        history_sessions=args.history_sessions,
        cold_reps=args.cold_reps,
        bulk_sessions=args.bulk_sessions,
        peers=args.peers,
        peers_python=args.peers_python,
        systems=args.systems,
        workdir=args.workdir,
    )


class RichProgress(Progress):
    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        self.console = console
        self.bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=None)

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def total(self, cells: int) -> None:
        self.bar.update(self.task, total=cells)

    def cell(self, label: str) -> None:
        self.bar.update(self.task, description=label)

    def done(self, result: CellResult | None = None) -> None:
        self.bar.advance(self.task)
        if result is not None and result.errors:
            self.console.print(
                f"[red]{result.backend} {result.scenario} x{result.concurrency} {result.system}: "
                f"{result.errors} errors[/red] ({'; '.join(result.error_samples[:2])})"
            )

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")


def stem_for(plan: Plan, tag: str) -> str:
    names = [b for b, _ in plan.backends]
    backend = "all" if len(names) > 1 else names[0]
    stem = f"{time.strftime('%Y-%m-%d')}-{backend}"
    return f"{stem}-{tag}" if tag else stem


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    plan = plan_from(args)
    from rich.console import Console

    console = Console()
    if args.quiet:
        results = asyncio.run(run(plan))
    else:
        with RichProgress(console) as progress:
            results = asyncio.run(run(plan, progress))
    results.environment["load_average_at_end"] = environment.load()
    data = results.to_dict()
    data["command"] = " ".join(["python -m benchmarks", *(argv or sys.argv[1:])])
    for table in report.terminal_tables(data):
        console.print(table)
    console.print(
        "  latencies in ms; x raw: throughput over the raw driver's in this run", markup=False
    )
    for target in report.targets(report.cells_from(data), data["systems"]):
        mark = {True: "[green]met[/green]", False: "[red]not met[/red]", None: "[dim]n/a[/dim]"}
        console.print(f"  {mark[target.met]}  {target.name}: {target.detail}")
    for line in report.scaling_lines(report.cells_from(data)):
        console.print(f"  {line}", markup=False)
    for line in report.lease_cost_lines(report.cells_from(data)):
        console.print(f"  lease cost: {line}")
    for line in report.lease_cost_lines(report.cells_from(data), report.SEALED):
        console.print(f"  encryption cost: {line}")
    for s in data["systems"]:
        if not s["available"]:
            console.print(f"  [yellow]{s['backend']} {s['name']}: {s['reason']}[/yellow]")
    written = report.write_all(data, args.out, stem_for(plan, args.tag))
    if args.docs:
        for key, path in list(written.items()):
            if key.startswith("png-"):
                copy = Path("docs") / f"benchmarks-{key[4:]}.png"
                copy.parent.mkdir(exist_ok=True)
                shutil.copyfile(path, copy)
                written[f"docs-{key[4:]}"] = copy
    console.print("results: " + ", ".join(str(p) for p in written.values()))
    # Exit status: the store's and the raw driver's errors only (a peer failing is its finding).
    errors = sum(c["errors"] for c in data["cells"] if c["kind"] != "peer")
    return 1 if errors else 0


__all__ = ["HISTORY", "LIST", "TURN", "main", "parser", "plan_from"]
