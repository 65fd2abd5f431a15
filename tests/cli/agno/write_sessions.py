"""Make Agno write a few sessions with its own storage code, for the import tests.

Runs inside an Agno environment (``.venv-agno1``, ``-agno2``, ``-agno3``), not in the project's:

    python write_sessions.py sqlite /path/agno.db PREFIX
    python write_sessions.py postgres postgresql+psycopg://user@host/db PREFIX --schema SCHEMA
    python write_sessions.py sqlite /path/agno.db PREFIX --upgrade    (Agno 3.x on a 2.x table)

An agent with a stub model (no network) answers two turns of one session and one turn of another,
a team one turn, a workflow one run. Agno 1.x writes them to three storage tables, one per mode
(PREFIX_agent, PREFIX_team, PREFIX_workflow); Agno 2.x and 3.x to one sessions table (PREFIX)
and, in 3.x, its runs table (PREFIX_runs). Prints what it wrote as JSON: the ids, and the Agno
version.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from agno.agent import Agent
from agno.models.base import Model
from agno.models.response import ModelResponse
from agno.team import Team

AGNO = version("agno")
MAJOR = int(AGNO.split(".")[0])
STATE = {"city": "Paris", "note": "café ☕ [mongo]", "visits": 2}


def reply(messages: list[Any]) -> str:
    return f"echo: {messages[-1].content}"


if MAJOR == 1:

    @dataclass
    class Echo(Model):  # type: ignore[misc]
        """A model that repeats the last message (Agno 1.x's model interface)."""

        id: str = "echo"
        name: str = "Echo"
        provider: str = "stub"

        def invoke(self, *args: Any, **kwargs: Any) -> str:
            return reply(kwargs.get("messages") or args[0])

        async def ainvoke(self, *args: Any, **kwargs: Any) -> str:
            return self.invoke(*args, **kwargs)

        def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[str]:
            yield self.invoke(*args, **kwargs)

        async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> Any:
            yield self.invoke(*args, **kwargs)

        def parse_provider_response(self, response: str, **kwargs: Any) -> ModelResponse:
            return ModelResponse(role="assistant", content=response)

        def parse_provider_response_delta(self, response: str) -> ModelResponse:
            return ModelResponse(role="assistant", content=response)

else:

    @dataclass
    class Echo(Model):  # type: ignore[misc,no-redef]
        """A model that repeats the last message (Agno 2.x/3.x's model interface)."""

        id: str = "echo"
        name: str = "Echo"
        provider: str = "stub"

        def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
            return ModelResponse(role="assistant", content=reply(kwargs.get("messages") or args[0]))

        async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
            return self.invoke(*args, **kwargs)

        def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
            yield self.invoke(*args, **kwargs)

        async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> Any:
            yield self.invoke(*args, **kwargs)

        def _parse_provider_response(self, response: Any, **kwargs: Any) -> Any:
            return response

        def _parse_provider_response_delta(self, response: Any) -> Any:
            return response


def write_agno1(backend: str, target: str, prefix: str, schema: str | None) -> dict[str, Any]:
    from agno.run.response import RunResponse
    from agno.workflow import Workflow

    def storage(mode: str) -> Any:
        table = f"{prefix}_{mode}"
        if backend == "sqlite":
            from agno.storage.sqlite import SqliteStorage

            return SqliteStorage(table_name=table, db_file=target, mode=mode)
        from agno.storage.postgres import PostgresStorage

        return PostgresStorage(table_name=table, schema=schema, db_url=target, mode=mode)

    agents = storage("agent")
    agent = Agent(
        agent_id="helper",
        name="helper",
        model=Echo(),
        storage=agents,
        session_id="s1",
        user_id="u1",
        session_state=dict(STATE),
        add_history_to_messages=True,
    )
    agent.run("hello")
    agent.run("and again")
    Agent(agent_id="helper", model=Echo(), storage=agents, session_id="s2").run("anonymous")
    team = Team(
        members=[Agent(name="member", model=Echo())],
        model=Echo(),
        storage=storage("team"),
        team_id="crew",
        session_id="t1",
        user_id="u2",
        mode="coordinate",
    )
    team.run("team hello")

    class Pipeline(Workflow):  # type: ignore[misc]
        def run(self, text: str) -> RunResponse:
            return RunResponse(content=f"done: {text}")

    Pipeline(workflow_id="nightly", session_id="w1", user_id="u3", storage=storage("workflow")).run(
        text="go"
    )
    return {
        "tables": {mode: f"{prefix}_{mode}" for mode in ("agent", "team", "workflow")},
        "sessions": {"agent": ["s1", "s2"], "team": ["t1"], "workflow": ["w1"]},
    }


def write_agno2(backend: str, target: str, prefix: str, schema: str | None) -> dict[str, Any]:
    from agno.workflow import Step, Workflow

    options: dict[str, Any] = {"session_table": prefix}
    if MAJOR >= 3:
        options["runs_table"] = f"{prefix}_runs"
    if backend == "sqlite":
        from agno.db.sqlite import SqliteDb

        db = SqliteDb(db_file=target, **options)
    else:
        from agno.db.postgres import PostgresDb

        db = PostgresDb(db_url=target, db_schema=schema, **options)
    agent = Agent(
        id="helper",
        name="helper",
        model=Echo(),
        db=db,
        session_state=dict(STATE),
        add_history_to_context=True,
    )
    agent.run("hello", session_id="s1", user_id="u1")
    agent.run("and again", session_id="s1", user_id="u1")
    agent.run("anonymous", session_id="s2")
    team = Team(id="crew", members=[Agent(id="member", name="member", model=Echo())], model=Echo())
    team.db = db
    team.run("team hello", session_id="t1", user_id="u2")
    workflow = Workflow(
        id="nightly",
        name="nightly",
        db=db,
        steps=[Step(name="answer", agent=Agent(id="worker", name="worker", model=Echo()))],
    )
    workflow.run("go", session_id="w1", user_id="u3")
    tables = {"sessions": prefix}
    if MAJOR >= 3:
        tables["runs"] = f"{prefix}_runs"
    return {
        "tables": tables,
        "sessions": {"agent": ["s1", "s2"], "team": ["t1"], "workflow": ["w1"]},
    }


def upgrade_agno2(backend: str, target: str, prefix: str, schema: str | None) -> dict[str, Any]:
    """Agno 3.x on a table Agno 2.x wrote: Agno's own migrations (the runs are copied into the
    runs table, the legacy runs column stays), then one more turn of s1."""
    import asyncio

    from agno.db.migrations.manager import MigrationManager

    options: dict[str, Any] = {"session_table": prefix, "runs_table": f"{prefix}_runs"}
    if backend == "sqlite":
        from agno.db.sqlite import SqliteDb

        db = SqliteDb(db_file=target, **options)
    else:
        from agno.db.postgres import PostgresDb

        db = PostgresDb(db_url=target, db_schema=schema, **options)
    upgraded = MigrationManager(db).up()
    if asyncio.iscoroutine(upgraded):
        asyncio.run(upgraded)
    agent = Agent(id="helper", name="helper", model=Echo(), db=db, add_history_to_context=True)
    agent.run("after the upgrade", session_id="s1", user_id="u1")
    return {"tables": {"sessions": prefix, "runs": f"{prefix}_runs"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backend", choices=["sqlite", "postgres"])
    parser.add_argument("target", help="the SQLite file, or the PostgreSQL URL")
    parser.add_argument("prefix", help="the table name (Agno 1.x: its prefix)")
    parser.add_argument("--schema", default=None)
    parser.add_argument(
        "--upgrade", action="store_true", help="Agno 3.x: upgrade a table Agno 2.x wrote"
    )
    args = parser.parse_args()
    write = write_agno1 if MAJOR == 1 else write_agno2
    if args.upgrade:
        assert MAJOR >= 3, "--upgrade runs Agno 3.x's migrations"
        write = upgrade_agno2
    written = write(args.backend, args.target, args.prefix, args.schema)
    json.dump({"agno": AGNO, **written}, sys.stdout)


if __name__ == "__main__":
    main()
