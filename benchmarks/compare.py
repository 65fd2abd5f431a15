"""The store's ratio to the raw driver on this checkout against an earlier commit's, measured in
the same session: each build runs the benchmark in a process of its own, in alternating order
(a build that always runs first gains about a tenth on this VM from order alone), and the ratios
are compared, not the throughputs (the machine's speed moves between runs, the ratio within a
run much less).

    .venv/bin/python -m benchmarks.compare b11707c --backend postgres \\
        --url postgresql://postgres@127.0.0.1:5432/test [--rounds 3] [--scenario turn]

The earlier commit is checked out in a git worktree under ``--workdir`` (kept for the next run)
and run with this interpreter, so its dependencies must be installed here (`make .venv`
installs every driver the benchmark uses). Each build gets one round per run; a round is
``python -m benchmarks --scenarios SCENARIO --systems "SYSTEM,raw DRIVER"`` (SYSTEM: ``--system``,
"store append" unless told).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RAW = {"sqlite": "raw aiosqlite", "postgres": "raw asyncpg", "mongo": "raw pymongo"}
STORE = "store append"


def commit_of(ref: str) -> str:
    """The full commit id `ref` names (any git revision)."""
    return subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def worktree(ref: str, workdir: Path) -> Path:
    """A checkout of `ref` (made once, then reused)."""
    commit = commit_of(ref)
    path = workdir / f"build-{commit[:12]}"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit],
            check=True,
            capture_output=True,
        )
    return path


def run_once(tree: Path, tag: str, args: argparse.Namespace, out: Path) -> dict[int, float]:
    """One benchmark run of the build at `tree`: {callers: store / raw throughput}."""
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--backend",
        args.backend,
        "--scenarios",
        args.scenario,
        "--systems",
        f"{args.system},{RAW[args.backend]}",
        "--duration",
        str(args.duration),
        "--out",
        str(out),
        "--workdir",
        str(out / f"work-{tag}"),
        "--tag",
        tag,
    ]
    if args.url:
        command += ["--url", args.url]
    if args.concurrency:
        command += ["--concurrency", args.concurrency]
    if args.sessions:
        command += ["--sessions", str(args.sessions)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(command, cwd=tree, env=env, check=True, capture_output=True)
    (result,) = out.glob(f"*-{args.backend}-{tag}.json")
    data = json.loads(result.read_text())
    for system in data["systems"]:  # a system that could not run says why, not a blank cell
        if not system["available"]:
            print(f"  {system['name']}: not measured: {system['reason']}", flush=True)
    cells = data["cells"]
    ops = {
        (c["system"], c["concurrency"]): c["ops_per_s"]
        for c in cells
        if c["scenario"] == args.scenario
    }
    return {
        n: ops[(args.system, n)] / ops[(RAW[args.backend], n)]
        for (system, n) in ops
        if system == args.system and ops.get((RAW[args.backend], n))
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    p.add_argument("ref", help="the earlier commit (any git revision)")
    p.add_argument("--backend", default="sqlite", choices=sorted(RAW))
    p.add_argument("--url", default=None, help="the database URL (SQLite: a scratch file)")
    p.add_argument("--scenario", default="turn")
    p.add_argument("--system", default=STORE, help=f"the store's system (default {STORE!r})")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell")
    p.add_argument("--concurrency", default=None, help="callers, e.g. 1,16,64 (the benchmark's)")
    p.add_argument("--sessions", type=int, default=None, help="seeded sessions (the benchmark's)")
    p.add_argument("--workdir", type=Path, default=Path("tmp/compare"))
    args = p.parse_args()
    builds = {"this checkout": Path.cwd(), args.ref: worktree(args.ref, args.workdir).resolve()}
    out = (args.workdir / "results").resolve()
    ratios: dict[str, list[dict[int, float]]] = {name: [] for name in builds}
    order = list(builds)
    for round_ in range(args.rounds):
        for position, name in enumerate(order if round_ % 2 == 0 else order[::-1]):
            tag = f"r{round_}b{position}{'ref' if name == args.ref else 'head'}"
            for stale in out.glob(f"*-{tag}.*"):
                stale.unlink()
            ratios[name].append(run_once(builds[name], tag, args, out))
            print(f"round {round_ + 1}, {name}: done", flush=True)
    raw = RAW[args.backend]
    print(f"{args.backend} {args.scenario}, {args.system} / {raw}, median of {args.rounds} rounds:")
    for name, runs in ratios.items():
        cells = []
        for n in sorted(runs[0]):
            values = sorted(r[n] for r in runs if n in r)
            cells.append(
                f"{n}: {statistics.median(values):.2f}x ({values[0]:.2f}-{values[-1]:.2f})"
            )
        print(f"  {name:14s} " + (", ".join(cells) or "no cell measured (see above)"))


if __name__ == "__main__":
    main()
