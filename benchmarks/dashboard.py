"""How long each dashboard page takes over a large store (`aas dashboard`).

    python -m benchmarks.dashboard --url sqlite:///tmp/dash-100k.db [--sessions 100000]
    python -m benchmarks.dashboard --url postgresql://postgres@127.0.0.1:5432/test

Seeds the store when it holds fewer sessions than asked (``--runs`` runs per session, over
``--agents`` agents and ``--users`` users, written through the store), then spreads the
sessions' `updated_at` and the runs' write times over the last 30 days with one SQL statement
(a store written in one go would have every run in the current hour; one used for a month has
them spread), and times each page through the app in this process (HTTP over an in-memory
transport: the store's queries, the rendering, no network): the median and the slowest of
``--repeat`` loads.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import time
from typing import Any

import httpx

from async_agent_storage import Session, SessionStore, open_store
from async_agent_storage._dashboard import create_app

DAY_US = 86_400_000_000
AGENTS = (
    "support", "sales", "research", "onboarding", "billing", "triage", "docs-writer",
    "travel-planner", "code-review", "translator", "scheduler", "data-analyst",
)  # fmt: skip
# Each session's last write somewhere in the last 30 days, its runs five minutes apart before it.
SPREAD_SQLITE = """
UPDATE "{t}" SET updated_at = updated_at - (abs(random()) % (30 * {day}));
UPDATE "{t}_runs" SET created_at = (
    SELECT s.updated_at - (s.run_count - 1 - "{t}_runs".seq) * 300000000 FROM "{t}" s
    WHERE s.session_id = "{t}_runs".session_id
);
"""
SPREAD_POSTGRES = """
UPDATE {t} SET updated_at = updated_at - random() * interval '30 days';
UPDATE {runs} r SET created_at = s.updated_at - (s.run_count - 1 - r.seq) * interval '5 minutes'
FROM {t} s WHERE s.session_id = r.session_id;
VACUUM ANALYZE {t};
VACUUM ANALYZE {runs};
"""


LOREM = (
    "The quick brown fox jumps over the lazy dog while the agent looks the answer up in the "
    "knowledge base, checks the user's plan and writes a short, friendly reply with links. "
)


def make_session(i: int, args: argparse.Namespace, rng: random.Random) -> Session:
    # A few busy agents and a tail of quieter ones.
    weights = [1 / (k + 1) for k in range(args.agents)]
    agent = AGENTS[rng.choices(range(args.agents), weights)[0] % len(AGENTS)]
    runs = [
        {
            "messages": [
                {"role": "user", "content": f"Question {k} of session {i}: " + LOREM[:200]},
                {"role": "assistant", "content": f"Answer {k}: " + LOREM * 2},
            ]
        }
        for k in range(args.runs)
    ]
    return Session(
        session_id=f"bench-{i:07d}",
        user_id=f"user-{rng.randrange(args.users):04d}",
        agent_id=agent,
        session_data={"session_state": {"step": i % 7, "plan": "pro" if i % 3 else "free"}},
        metadata={"source": "benchmark"},
        runs=runs,
    )


async def seed(store: SessionStore, args: argparse.Namespace) -> int:
    have = await store.count_sessions()
    if have >= args.sessions:
        return 0
    rng = random.Random(have)
    started = time.perf_counter()
    for first in range(have, args.sessions, 500):
        batch = [make_session(i, args, rng) for i in range(first, min(first + 500, args.sessions))]
        await store.upsert_many(batch)
    added: int = args.sessions - have
    print(f"seeded {added} sessions in {time.perf_counter() - started:.1f} s")
    return added


async def spread(url: str, table: str) -> None:
    if url.startswith("sqlite"):
        path = url.partition(":///")[2]
        with sqlite3.connect(path) as db:
            db.executescript(SPREAD_SQLITE.format(t=table, day=DAY_US))
            db.execute("ANALYZE")
        return
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        schema = await connection.fetchval("SELECT current_schema()")
        t, runs = f'"{schema}"."{table}"', f'"{schema}"."{table}_runs"'
        for statement in SPREAD_POSTGRES.format(t=t, runs=runs).strip().split(";"):
            if statement.strip():
                await connection.execute(statement)
    finally:
        await connection.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", default="dashboard_bench")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agents", type=int, default=10, choices=range(1, len(AGENTS) + 1))
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    async with open_store(args.url, table_name=args.table, auto_upgrade_schema=True) as store:
        if await seed(store, args):
            await spread(args.url, args.table)
        page = await store.list_sessions(limit=1)
        known = page.items[0].session_id
        pages = {
            "overview, 48 hours": "/",
            "overview, 30 days": "/?bucket=day",
            "sessions, first page": "/sessions",
            "sessions, second page": "",
            "sessions of one agent and user": "/sessions?agent=research&user=user-0042",
            "sessions updated in the last 2 days": "/sessions?since=2d",
            "one session": f"/sessions/{known}",
        }
        app = create_app(store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
            first = await client.get("/sessions")
            marker = 'id="next-page" href="'
            start = first.text.index(marker) + len(marker)
            pages["sessions, second page"] = first.text[
                start : first.text.index('"', start)
            ].replace("&amp;", "&")
            total = await store.count_sessions()
            backend = args.url.partition(":")[0]
            print(f"{backend}: {total:,} sessions, {args.repeat} loads of each page")
            print(f"{'page':40} {'median ms':>10} {'slowest ms':>11}")
            for name, path in pages.items():
                times: list[float] = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    response = await client.get(path)
                    times.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, (path, response.status_code)
                print(f"{name:40} {statistics.median(times):10.1f} {max(times):11.1f}")
    return 0


def run(argv: list[str] | None = None) -> Any:
    return asyncio.run(main(argv))


if __name__ == "__main__":
    sys.exit(run())
