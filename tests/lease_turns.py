"""Leases across OS processes, on any backend: the done-when tests of issue 16.

- `run_turns`: N processes x T turns on one session, each turn under a lease (read, simulated
  model time, append fenced with the lease's token), each recording its turn's interval on the
  machine's monotonic clock (one clock for every process). `check_turns` then holds that the
  intervals never overlap, no run is lost, tokens strictly increase, and each turn read exactly
  the runs of the turns before it (no forked conversation).
- `killed_holder`: a process takes the lease and appends, then is killed with SIGKILL mid-turn;
  the next holder gets the lease only after the ttl, and the killed holder's token, replayed on a
  write, is refused.

The processes run this module:

    python -m tests.lease_turns SPEC_JSON turns WORKER     # prints one JSON line of turns
    python -m tests.lease_turns SPEC_JSON hold             # prints its lease, then hangs
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from async_agent_storage import SessionFencedError, SessionStore, open_store
from async_agent_storage.testing._processes import outcomes

ROOT = Path(__file__).resolve().parents[1]
SESSION = "shared-turns"
USER = "u"


@dataclass(frozen=True)
class Spec:
    url: str
    table: str
    options: dict[str, Any]
    start: str  # a file whose appearance starts every process at once
    turns: int = 50
    ttl: float = 10.0
    model_ms: tuple[int, int] = (5, 20)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    def open(self) -> SessionStore:
        return open_store(self.url, table_name=self.table, **self.options)


async def _turns(spec: Spec, worker: int) -> list[dict[str, Any]]:
    rng = random.Random(worker)
    done: list[dict[str, Any]] = []
    async with spec.open() as store:
        while not Path(spec.start).exists():  # noqa: ASYNC110, ASYNC240 - another process's signal
            await asyncio.sleep(0.001)
        for i in range(spec.turns):
            async with store.lease(SESSION, user_id=USER, ttl=spec.ttl, wait=300) as lease:
                began = time.monotonic_ns()
                session = await store.read(SESSION, user_id=USER, last_runs=1)
                seen = 0 if session is None else session.run_count
                await asyncio.sleep(rng.uniform(*spec.model_ms) / 1000)  # the model's time
                run = {"worker": worker, "i": i, "token": lease.token, "seen": seen}
                await store.append_runs(SESSION, [run], user_id=USER, fence=lease.token)
                ended = time.monotonic_ns()
            done.append({"began": began, "ended": ended, "token": lease.token, "seen": seen})
    return done


async def _hold(spec: Spec) -> None:
    async with spec.open() as store:
        lease = await store.lease(SESSION, user_id=USER, ttl=spec.ttl).acquire()
        await store.append_runs(SESSION, [{"by": "doomed"}], user_id=USER, fence=lease.token)
        print(json.dumps({"token": lease.token, "holder": lease.holder}), flush=True)
        await asyncio.sleep(3600)  # mid-turn: the model never answers


def _spawn(spec: Spec, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lease_turns", spec.to_json(), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_turns(spec: Spec, processes: int, tmp_path: Path) -> list[dict[str, Any]]:
    """Start `processes` workers together; their turns, every worker's in one list."""
    start = Path(spec.start)
    workers = [_spawn(spec, "turns", str(w)) for w in range(processes)]
    time.sleep(0.5)  # let them open their stores, then start them at once
    start.write_text("go")
    turns: list[dict[str, Any]] = []
    for worker, (code, out, err) in enumerate(outcomes(workers, timeout=600)):
        assert code == 0, f"worker {worker} failed:\n{err[-3000:]}"
        turns += [{**turn, "worker": worker} for turn in json.loads(out.strip().splitlines()[-1])]
    return turns


async def check_turns(spec: Spec, processes: int, turns: list[dict[str, Any]]) -> None:
    assert len(turns) == processes * spec.turns
    ordered = sorted(turns, key=lambda t: t["began"])
    for before, after in itertools.pairwise(ordered):
        assert before["ended"] < after["began"], f"two turns overlapped: {before} {after}"
        assert before["token"] < after["token"], f"tokens did not grow: {before} {after}"
    async with spec.open() as store:
        session = await store.read(SESSION, user_id=USER)
    assert session is not None
    stored = [(run["worker"], run["i"]) for run in session.runs]
    expected = {(w, i) for w in range(processes) for i in range(spec.turns)}
    assert len(stored) == len(expected), "a run was doubled"
    assert set(stored) == expected, "a run was lost"
    # Each turn read exactly the turns before it, and ran in token order.
    assert [run["seen"] for run in session.runs] == list(range(len(expected)))
    assert [run["token"] for run in session.runs] == [t["token"] for t in ordered]


async def killed_holder(spec: Spec) -> None:
    """The SIGKILL scenario; `spec.ttl` is the killed holder's ttl."""
    holder = _spawn(spec, "hold")
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, f"the holder did not start: {holder.communicate(timeout=30)[1][-3000:]}"
        held = json.loads(line)
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
    async with spec.open() as store:
        with pytest.raises(Exception, match="busy") as busy:
            await store.lease(SESSION, user_id=USER).acquire()
        assert getattr(busy.value, "holder", None) == held["holder"]
        async with store.lease(SESSION, user_id=USER, wait=spec.ttl * 4 + 30) as lease:
            waited = time.monotonic() - killed
            assert lease.token == held["token"] + 1
            before = await store.read(SESSION, user_id=USER)
            assert before is not None
            assert [run["by"] for run in before.runs] == ["doomed"]
            # The dead holder's token, replayed (a request retried by a proxy, say), is refused.
            with pytest.raises(SessionFencedError) as refused:
                await store.append_runs(
                    SESSION, [{"by": "zombie"}], user_id=USER, fence=held["token"]
                )
            assert (refused.value.token, refused.value.latest) == (held["token"], lease.token)
            with pytest.raises(SessionFencedError):
                await store.upsert(before, fence=held["token"])
            after = await store.read(SESSION, user_id=USER)
            assert after == before
            await store.append_runs(SESSION, [{"by": "next"}], user_id=USER, fence=lease.token)
        # Not before the ttl (less the time the holder took to print), and not much after it.
        assert spec.ttl - 1.0 <= waited <= spec.ttl + 15, waited


if __name__ == "__main__":
    given = json.loads(sys.argv[1])
    spec = Spec(**{**given, "model_ms": tuple(given["model_ms"])})
    if sys.argv[2] == "turns":
        print(json.dumps(asyncio.run(_turns(spec, int(sys.argv[3])))))
    else:
        asyncio.run(_hold(spec))
