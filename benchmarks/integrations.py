"""One framework turn through each adapter against the framework's own storage, same database.

Run it with a framework's interpreter (``make bench-integrations`` runs all three)::

    .venv-agno/bin/python -m benchmarks.integrations agno [--postgres-url URL] [--rounds 5]

A turn is the framework's whole turn with a local stand-in model (no network): OpenAI Agents'
``Runner.run`` with a session, Agno's ``Agent.arun`` with a db, ADK's ``Runner.run_async`` with
a session service. Each round runs the same turns (``--sessions`` sessions of ``--turns`` turns
each, so histories grow) through the framework's own storage and through the adapter, in
alternating order, on the same database (SQLite file; PostgreSQL with ``--postgres-url``). The
result is the ratio of the framework's own time per turn to the adapter's (above 1: the adapter
is faster), the median of the rounds with its range.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from async_agent_storage import open_store

Turn = Callable[[str, int], Awaitable[None]]
System = Callable[[], Any]  # an async context manager yielding a Turn

QUESTIONS = ["What is the capital of France?", "What was my last question?"]


def sqlalchemy_url(url: str, driver: str) -> str:
    return "postgresql+" + driver + "://" + url.partition("://")[2]


# --- OpenAI Agents ------------------------------------------------------------------------------


def openai_agents_systems(db: str, pg: str | None) -> dict[str, System]:
    from agents import Agent, RunConfig, Runner
    from agents.memory import SQLiteSession

    from async_agent_storage.integrations.openai_agents import StoreSession
    from tests.integrations.openai_agents._turn import RecallModel

    agent = Agent(name="Assistant", instructions="Answer briefly.", model=RecallModel())
    config = RunConfig(tracing_disabled=True)

    @asynccontextmanager
    async def own() -> AsyncIterator[Turn]:
        async def turn(session_id: str, i: int) -> None:
            session = SQLiteSession(session_id, db)
            await Runner.run(agent, QUESTIONS[i % 2], session=session, run_config=config)
            session.close()

        yield turn

    @asynccontextmanager
    async def adapter(url: str) -> AsyncIterator[Turn]:
        async with open_store(url, table_name="bench_sessions", auto_upgrade_schema=True) as st:

            async def turn(session_id: str, i: int) -> None:
                session = StoreSession(session_id, st, user_id="u1")
                await Runner.run(agent, QUESTIONS[i % 2], session=session, run_config=config)

            yield turn

    systems: dict[str, System] = {
        "sqlite: SQLiteSession": own,
        "sqlite: StoreSession": lambda: adapter(f"sqlite:///{db}"),
    }
    if pg:
        from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession
        from sqlalchemy.ext.asyncio import create_async_engine

        @asynccontextmanager
        async def own_pg() -> AsyncIterator[Turn]:
            engine = create_async_engine(sqlalchemy_url(pg, "asyncpg"), pool_size=10)

            async def turn(session_id: str, i: int) -> None:
                session = SQLAlchemySession(session_id, engine=engine, create_tables=True)
                await Runner.run(agent, QUESTIONS[i % 2], session=session, run_config=config)

            yield turn
            await engine.dispose()

        systems["postgres: SQLAlchemySession"] = own_pg
        systems["postgres: StoreSession"] = lambda: adapter(pg)
    return systems


# --- Agno -------------------------------------------------------------------------------------


def agno_systems(db: str, pg: str | None) -> dict[str, System]:
    from async_agent_storage.integrations.agno import AgnoStoreDb
    from tests.integrations.agno._turn import make_agent

    def system(make_db: Callable[[], Any], store_url: str | None = None) -> System:
        @asynccontextmanager
        async def run() -> AsyncIterator[Turn]:
            if store_url is None:
                agno_db = make_db()
                agent = make_agent(agno_db)

                async def turn(session_id: str, i: int) -> None:
                    await agent.arun(QUESTIONS[i % 2], session_id=session_id, user_id="u1")

                yield turn
                await agno_db.close()
                return
            async with open_store(
                store_url, table_name="bench_sessions", auto_upgrade_schema=True
            ) as st:
                agent = make_agent(AgnoStoreDb(st))

                async def turn(session_id: str, i: int) -> None:
                    await agent.arun(QUESTIONS[i % 2], session_id=session_id, user_id="u1")

                yield turn

        return run

    from agno.db.sqlite import AsyncSqliteDb

    systems: dict[str, System] = {
        "sqlite: AsyncSqliteDb": system(lambda: AsyncSqliteDb(db_file=db)),
        "sqlite: AgnoStoreDb": system(lambda: None, f"sqlite:///{db}"),
    }
    if pg:
        from agno.db.postgres import AsyncPostgresDb

        url = sqlalchemy_url(pg, "psycopg_async")
        systems["postgres: AsyncPostgresDb"] = system(lambda: AsyncPostgresDb(db_url=url))
        systems["postgres: AgnoStoreDb"] = system(lambda: None, pg)
    return systems


# --- Google ADK -------------------------------------------------------------------------------


def adk_systems(db: str, pg: str | None) -> dict[str, System]:
    from google.adk.sessions.database_session_service import DatabaseSessionService

    from async_agent_storage.integrations.adk import StoreSessionService
    from tests.integrations.adk._turn import APP, ask, make_runner

    def system(make_service: Callable[[], Any], store_url: str | None = None) -> System:
        @asynccontextmanager
        async def run() -> AsyncIterator[Turn]:
            async def turns(service: Any) -> AsyncIterator[Turn]:
                runner = make_runner(service)

                async def turn(session_id: str, i: int) -> None:
                    if i == 0:
                        await service.create_session(
                            app_name=APP, user_id="u1", session_id=session_id
                        )
                    await ask(runner, "u1", session_id, QUESTIONS[i % 2])

                yield turn

            if store_url is None:
                service = make_service()
                async for turn in turns(service):
                    yield turn
                await service.close()
                return
            async with open_store(
                store_url, table_name="bench_sessions", auto_upgrade_schema=True
            ) as st:
                async for turn in turns(StoreSessionService(st)):
                    yield turn

        return run

    systems: dict[str, System] = {
        "sqlite: DatabaseSessionService": system(
            lambda: DatabaseSessionService(f"sqlite+aiosqlite:///{db}")
        ),
        "sqlite: StoreSessionService": system(lambda: None, f"sqlite:///{db}"),
    }
    if pg:
        url = sqlalchemy_url(pg, "asyncpg")
        systems["postgres: DatabaseSessionService"] = system(lambda: DatabaseSessionService(url))
        systems["postgres: StoreSessionService"] = system(lambda: None, pg)
    return systems


FRAMEWORKS: dict[str, Callable[[str, str | None], dict[str, System]]] = {
    "openai-agents": openai_agents_systems,
    "agno": agno_systems,
    "adk": adk_systems,
}


async def measure(system: System, sessions: int, turns: int) -> float:
    """Seconds per turn: `sessions` conversations of `turns` turns, the sessions concurrently."""
    async with system() as turn:
        ids = [f"bench_{uuid.uuid4().hex[:10]}" for _ in range(sessions)]

        async def conversation(session_id: str) -> None:
            for i in range(turns):
                await turn(session_id, i)

        await conversation(f"warm_{uuid.uuid4().hex[:8]}")
        start = time.perf_counter()
        await asyncio.gather(*(conversation(s) for s in ids))
        return (time.perf_counter() - start) / (sessions * turns)


@asynccontextmanager
async def scratch_database(url: str | None) -> AsyncIterator[str | None]:
    """A database of its own on the server `url` names (dropped afterwards): each framework
    creates its tables under its own names, so they all go where nothing else lives."""
    if url is None:
        yield None
        return
    import asyncpg

    name = f"aas_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        base, _, _ = url.rpartition("/")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main(framework: str, pg: str | None, rounds: int, sessions: int, turns: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database(pg) as scratch:
            await compare(
                FRAMEWORKS[framework](str(Path(tmp) / "bench.db"), scratch),
                framework,
                rounds,
                sessions,
                turns,
            )


async def compare(
    systems: dict[str, System], framework: str, rounds: int, sessions: int, turns: int
) -> None:
    pairs = [(a, b) for a, b in zip(list(systems)[0::2], list(systems)[1::2], strict=True)]
    for own, adapter in pairs:
        ratios = []
        times: dict[str, list[float]] = {own: [], adapter: []}
        for r in range(rounds):
            order = (own, adapter) if r % 2 == 0 else (adapter, own)
            for name in order:
                times[name].append(await measure(systems[name], sessions, turns))
            ratios.append(times[own][-1] / times[adapter][-1])
        print(
            f"{framework:14} {own:34} {statistics.median(times[own]) * 1000:7.2f} ms/turn  "
            f"{adapter:30} {statistics.median(times[adapter]) * 1000:7.2f} ms/turn  "
            f"own/adapter {statistics.median(ratios):.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}, {rounds} rounds)",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("framework", choices=sorted(FRAMEWORKS))
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    if args.rounds < 3:
        sys.exit("--rounds must be at least 3")
    asyncio.run(main(args.framework, args.postgres_url, args.rounds, args.sessions, args.turns))
