"""What a turn under a lease costs, as a ratio to the same turn without one: `store leased`
against `store append`, in interleaved rounds of one run (the machine's load changes between
runs; within one run both systems see it alike).

    .venv/bin/python -m benchmarks.lease_cost                       # SQLite, 3 rounds
    .venv/bin/python -m benchmarks.lease_cost --backend postgres \\
        --url postgresql://postgres@127.0.0.1:5432/test --rounds 3 --concurrency 1,16

Each round runs one turn cell of each system at each concurrency, the order of the two systems
alternating from round to round. Prints, per concurrency, the median over the rounds of the
ratio (unleased turns/s over leased turns/s: how much longer a leased turn takes) with its
spread (min-max), and the same for p50 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import _ints
from .loadgen import CellResult
from .suite import Plan, _load_cell
from .systems import TURN, Dataset, build
from .workload import WorkloadSpec

LEASED, UNLEASED = "store leased", "store append"
SEALED = "store sealed"


def parser(
    prog: str = "python -m benchmarks.lease_cost", doc: str | None = __doc__
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    p.add_argument("--backend", choices=["sqlite", "postgres", "mongo"], default="sqlite")
    p.add_argument("--url", help="the server URL of --backend postgres or mongo")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    p.add_argument("--concurrency", type=_ints, default=[1, 16], help="callers (1,16)")
    p.add_argument("--duration", type=float, default=2.0, help="measured seconds per cell (2)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per cell (0.5)")
    p.add_argument("--sessions", type=int, default=2000, help="seeded sessions (2000)")
    p.add_argument("--workdir", type=Path, default=Path("tmp/bench-lease"), help="scratch folder")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


async def measure(args: argparse.Namespace, variant: str = LEASED) -> dict[str, Any]:
    """Interleaved rounds of "store append" and `variant` (the leased or the sealed turn)."""
    plan = Plan(
        backends=[(args.backend, args.url)],
        scenarios=[TURN],
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        spec=WorkloadSpec(sessions=args.sessions),
        workdir=args.workdir,
    )
    plan.workdir.mkdir(parents=True, exist_ok=True)
    systems = {
        s.name: s
        for s in build(args.backend, args.url, plan.workdir / args.backend)
        if s.name in (variant, UNLEASED)
    }
    main = Dataset("main", plan.spec)
    for system in systems.values():
        await system.check()
    await systems[UNLEASED].seed(main)  # one store's data, shared by both
    rounds: dict[int, list[dict[str, CellResult]]] = {n: [] for n in plan.concurrency}
    try:
        for index in range(args.rounds):
            for concurrency in plan.concurrency:
                order = [UNLEASED, variant] if index % 2 == 0 else [variant, UNLEASED]
                cells: dict[str, CellResult] = {}
                for name in order:
                    system = systems[name]
                    cell = CellResult(args.backend, TURN, name, system.kind, concurrency)
                    await _load_cell(plan, system, main, cell)
                    if cell.errors:
                        raise RuntimeError(f"{name} x{concurrency}: {cell.error_samples[:2]}")
                    cells[name] = cell
                rounds[concurrency].append(cells)
    finally:
        await systems[UNLEASED].cleanup()
    result: dict[str, Any] = {"backend": args.backend, "rounds": args.rounds, "cells": {}}
    for concurrency, measured in rounds.items():
        time = [r[UNLEASED].ops_per_s / r[variant].ops_per_s for r in measured]
        p50 = [r[variant].p50_ms / r[UNLEASED].p50_ms for r in measured]
        result["cells"][str(concurrency)] = {
            "time_ratio": _spread(time),
            "p50_ratio": _spread(p50),
            "turns_per_s": {
                name: [round(r[name].ops_per_s, 1) for r in measured]
                for name in (UNLEASED, variant)
            },
            "p50_ms": {
                name: [round(r[name].p50_ms, 3) for r in measured] for name in (UNLEASED, variant)
            },
        }
    return result


def main(argv: Sequence[str] | None = None, variant: str = LEASED) -> int:
    if variant == LEASED:
        args = parser().parse_args(argv)
        what = "a leased turn against an unleased one"
    else:
        from . import encryption_cost

        args = parser("python -m benchmarks.encryption_cost", encryption_cost.__doc__).parse_args(
            argv
        )
        what = "an encrypted turn against a plain one"
    if args.backend != "sqlite" and not args.url:
        raise SystemExit(f"--backend {args.backend} needs --url")
    result = asyncio.run(measure(args, variant))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.backend}: {what}, {args.rounds} interleaved rounds")
    for concurrency, cell in result["cells"].items():
        t, p = cell["time_ratio"], cell["p50_ratio"]
        print(
            f"  {concurrency:>4} callers: {t['median']:.2f}x the time "
            f"(spread {t['min']:.2f}-{t['max']:.2f}); p50 {p['median']:.2f}x "
            f"({p['min']:.2f}-{p['max']:.2f}); turns/s plain {cell['turns_per_s'][UNLEASED]}, "
            f"{variant.removeprefix('store ')} {cell['turns_per_s'][variant]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
