"""Profile one benchmark cell with py-spy, sampling its measured window only, and print where the
time goes (self and inclusive share per function, idle waits left out).

    .venv/bin/pip install py-spy
    .venv/bin/python -m benchmarks.profiling --system "store append" --concurrency 16 \\
        [--backend postgres --url ...] [--scenario turn] [--seconds 10] [--gil]

Every thread is sampled (the SQLite driver works on threads of its own); `--gil` samples only
the thread holding the GIL, i.e. Python work, leaving out SQLite's own C code.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .loadgen import WINDOW_FILE_ENV

# Stacks that end here are waits, not work.
IDLE = (
    "_connection_worker_thread (aiosqlite/core.py:59)",  # SimpleQueue.get of aiosqlite's thread
    # The SQLite driver's own thread: its loop's own time is its queue's get (the work it runs,
    # SQLite's C code included, is sampled in the frames below it).
    "ConnectionThread._serve (async_agent_storage/sqlite/_connection.py",
    "EpollSelector.select",  # the event loop waiting for I/O
    "select (selectors.py",
)


def summarize(raw: Path, top: int = 25) -> str:
    """Self share per line and inclusive share per function of py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")[1:]  # the first frame names the thread
        if frames and frames[-1].startswith(IDLE):
            idle += n
            continue
        busy += n
        if frames:
            own[frames[-1]] += n
        for frame in {f.split(":")[0] + ")" if " (" in f else f for f in frames}:
            inclusive[frame] += n
    lines = [f"busy samples {busy}, idle samples left out {idle}", "", "self, by line:"]
    lines += [f"{100 * c / busy:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive, by function:"]
    lines += [f"{100 * c / busy:5.1f}%  {f}" for f, c in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    p.add_argument("--backend", default="sqlite")
    p.add_argument("--url")
    p.add_argument("--system", default="store append")
    p.add_argument("--scenario", default="turn")
    p.add_argument("--concurrency", default="16")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window (10)")
    p.add_argument("--rate", type=int, default=200, help="samples per second (200)")
    p.add_argument("--gil", action="store_true", help="only the thread holding the GIL")
    p.add_argument("--out", type=Path, default=Path("tmp/profile"), help="folder for raw stacks")
    p.add_argument("extra", nargs="*", help="more arguments for python -m benchmarks")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    window = Path(tempfile.mkstemp(prefix="window-", dir=args.out)[1])
    bench = [
        sys.executable, "-m", "benchmarks", "--backend", args.backend,
        "--scenarios", args.scenario, "--concurrency", args.concurrency,
        "--systems", args.system, "--duration", str(args.seconds), "--warmup", "1",
        "--out", str(args.out), "--quiet", *(["--url", args.url] if args.url else []),
        *args.extra,
    ]  # fmt: skip
    proc = subprocess.Popen(bench, env={**os.environ, WINDOW_FILE_ENV: str(window)})
    while "start" not in window.read_text():
        if proc.poll() is not None:
            print("the benchmark ended before its measured window", file=sys.stderr)
            return 1
        time.sleep(0.05)
    raw = args.out / f"{args.backend}-{args.system.replace(' ', '-')}-{args.concurrency}.txt"
    spy = [
        "py-spy", "record", "--pid", str(proc.pid), "--format", "raw", "--rate", str(args.rate),
        "--duration", str(max(1, int(args.seconds) - 1)), "--output", str(raw), "--nonblocking",
        *(["--gil"] if args.gil else []),
    ]  # fmt: skip
    spy_bin = Path(sys.executable).parent / "py-spy"
    if spy_bin.exists():
        spy[0] = str(spy_bin)
    subprocess.run(spy, check=False, capture_output=True)
    proc.wait()
    print(summarize(raw))
    print(f"\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
