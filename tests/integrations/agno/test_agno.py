"""`AgnoStoreDb` against the real Agno package: an Agent with a stub model across two processes,
sessions and runs mapped both ways without loss, Agno's own session calls, the other domains."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agno.db.base import AsyncBaseDb, SessionType
from agno.db.schemas.memory import UserMemory
from agno.db.sqlite import AsyncSqliteDb
from agno.models.message import Message
from agno.run.agent import RunOutput
from agno.run.base import RunStatus
from agno.run.team import TeamRunOutput
from agno.run.workflow import WorkflowRunOutput
from agno.session import AgentSession, TeamSession, WorkflowSession

from async_agent_storage import InvalidInputError, SessionStore
from async_agent_storage.integrations.agno import AgnoDomainNotStoredError, AgnoStoreDb
from tests.integrations.conftest import Target

from ._turn import FIRST_QUESTION, FOLLOW_UP

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(target: Target) -> AsyncIterator[SessionStore]:
    async with target.open() as store:
        yield store


@pytest.fixture
def db(store: SessionStore) -> AgnoStoreDb:
    return AgnoStoreDb(store)


def new_id() -> str:
    return f"s_{uuid.uuid4().hex[:8]}"


def run_turn(target: Target, session_id: str, question: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integrations.agno._turn",
            *target.args(),
            "--session",
            session_id,
            "--user",
            "u1",
            question,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Agno logs a failed write and carries on: a warning on stderr is a failure here.
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    assert "Error" not in done.stderr, done.stderr[-3000:]
    return done.stdout.strip()


def agent_run(run_id: str, text: str, status: RunStatus = RunStatus.completed) -> RunOutput:
    return RunOutput(
        run_id=run_id,
        agent_id="agent-1",
        session_id="ignored",
        content=f"answer to {text}",
        messages=[
            Message(role="user", content=text),
            Message(role="assistant", content=f"answer to {text} 🎉 \u0000"),
        ],
        metadata={"n": 2**70, "f": -0.0, "nested": {"deep": [1, 2.5, None]}},
        status=status,
    )


def sample_sessions(user_id: str = "u1") -> list[AgentSession | TeamSession | WorkflowSession]:
    return [
        AgentSession(
            session_id=new_id(),
            agent_id="agent-1",
            user_id=user_id,
            session_data={"session_name": "agent chat", "session_state": {"city": "Paris"}},
            agent_data={"name": "Assistant", "model": {"id": "stub"}},
            metadata={"tag": "vip"},
            runs=[agent_run("r1", "hello"), agent_run("r2", "again")],
        ),
        TeamSession(
            session_id=new_id(),
            team_id="team-1",
            user_id=user_id,
            session_data={"session_name": "team chat"},
            team_data={"name": "Team"},
            runs=[TeamRunOutput(run_id="t1", team_id="team-1", content="team answer")],
        ),
        WorkflowSession(
            session_id=new_id(),
            workflow_id="wf-1",
            user_id=user_id,
            session_data={"session_name": "workflow"},
            workflow_data={"name": "Flow"},
            runs=[WorkflowRunOutput(run_id="w1", workflow_id="wf-1", content="done")],
        ),
    ]


def comparable(session: Any) -> dict[str, Any]:
    """The session as Agno itself round-trips it (`from_dict` fills defaults such as
    ``events=[]``), without the times the store sets."""
    data: dict[str, Any] = type(session).from_dict(session.to_dict()).to_dict()
    data.pop("created_at", None)
    data.pop("updated_at", None)
    return data


async def test_it_is_an_agno_async_db(db: AgnoStoreDb) -> None:
    assert isinstance(db, AsyncBaseDb)
    assert not AgnoStoreDb.__abstractmethods__


async def test_a_second_process_answers_from_the_stored_history(
    target: Target, db: AgnoStoreDb
) -> None:
    session_id = new_id()
    first = await asyncio.to_thread(run_turn, target, session_id, FIRST_QUESTION)
    assert first == "Paris"
    second = await asyncio.to_thread(run_turn, target, session_id, FOLLOW_UP)
    assert second == f'Your last question was: "{FIRST_QUESTION}"'
    session = await db.get_session(session_id, SessionType.AGENT, user_id="u1")
    assert isinstance(session, AgentSession)
    assert session.user_id == "u1"
    assert session.runs is not None
    assert [run.content for run in session.runs] == ["Paris", second]
    assert [run.status for run in session.runs] == [RunStatus.completed] * 2
    assert await db.get_session(session_id, SessionType.AGENT, user_id="u2") is None


async def test_sessions_and_runs_round_trip_without_loss(db: AgnoStoreDb) -> None:
    for original in sample_sessions():
        written = await db.upsert_session(original)
        assert written is not None
        assert comparable(written) == comparable(original)
        read = await db.get_session(original.session_id, user_id="u1")
        assert read.__class__ is original.__class__
        assert comparable(read) == comparable(original)
        raw = await db.get_session(original.session_id, user_id="u1", deserialize=False)
        assert isinstance(raw, dict)
        assert raw["runs"] == [run.to_dict() for run in original.runs or []]
        assert isinstance(raw["created_at"], int)


async def test_session_type_filters_reads(db: AgnoStoreDb) -> None:
    agent, team, _ = sample_sessions()
    await db.upsert_session(agent)
    await db.upsert_session(team)
    assert await db.get_session(agent.session_id, SessionType.TEAM) is None
    assert isinstance(await db.get_session(team.session_id, SessionType.TEAM), TeamSession)


async def test_upsert_session_writes_the_row_and_keeps_the_history(db: AgnoStoreDb) -> None:
    session = sample_sessions()[0]
    await db.upsert_session(session)
    session.session_data = {"session_state": {"city": "Lyon"}}
    session.metadata = {"tag": "new"}
    session.runs = (session.runs or [])[-1:]  # a session read with runs_limit=1
    await db.upsert_session(session)
    read = await db.get_session(session.session_id)
    assert isinstance(read, AgentSession)
    assert read.session_data == {"session_state": {"city": "Lyon"}}
    assert read.metadata == {"tag": "new"}
    assert [run.run_id for run in read.runs or []] == ["r1", "r2"]
    tail = await db.get_session(session.session_id, runs_limit=1)
    assert isinstance(tail, AgentSession)
    assert [run.run_id for run in tail.runs or []] == ["r2"]


async def test_upsert_run_appends_and_replaces_by_run_id(db: AgnoStoreDb) -> None:
    session = sample_sessions()[0]
    await db.upsert_session(session)
    await db.upsert_run(agent_run("r3", "paused", RunStatus.paused), session.session_id, "u1", 2)
    await db.upsert_run(agent_run("r3", "paused", RunStatus.paused), session.session_id, "u1", 2)
    await db.upsert_run(agent_run("r3", "paused", RunStatus.completed), session.session_id, "u1")
    read = await db.get_session(session.session_id, user_id="u1")
    assert isinstance(read, AgentSession)
    assert [(run.run_id, run.status) for run in read.runs or []] == [
        ("r1", RunStatus.completed),
        ("r2", RunStatus.completed),
        ("r3", RunStatus.completed),
    ]
    runs = await db.get_runs(session_id=session.session_id, status=RunStatus.completed)
    assert [run.run_id for run in runs] == ["r1", "r2", "r3"]
    rows, total = await db.get_runs(
        session_id=session.session_id, limit=2, page=2, deserialize=False
    )
    assert total == 3
    assert [row["run_id"] for row in rows] == ["r3"]


async def test_rename_list_page_and_delete_through_agnos_calls(db: AgnoStoreDb) -> None:
    sessions = [s for _ in range(3) for s in sample_sessions(user_id="lister")]
    for session in sessions:
        await db.upsert_session(session)
        await asyncio.sleep(0.002)
    first = sessions[0]
    renamed = await db.rename_session(first.session_id, SessionType.AGENT, "Renamed ✓", "lister")
    assert isinstance(renamed, AgentSession)
    assert renamed.session_data is not None
    assert renamed.session_data["session_name"] == "Renamed ✓"
    assert renamed.session_data["session_state"] == {"city": "Paris"}
    assert await db.rename_session(first.session_id, SessionType.TEAM, "x", "lister") is None
    assert await db.rename_session(first.session_id, SessionType.AGENT, "x", "other") is None

    # the store's order (most recently updated first), in pages of 4
    seen: list[str] = []
    for page in (1, 2, 3):
        rows, total = await db.get_sessions(
            user_id="lister", limit=4, page=page, deserialize=False, include_runs=False
        )
        assert total == 9
        seen.extend(row["session_id"] for row in rows)
    assert len(seen) == 9
    assert set(seen) == {s.session_id for s in sessions}
    assert seen[0] == first.session_id  # renamed last

    # Agno's default listing: by creation time, oldest first, in pages
    rows, total = await db.get_sessions(
        user_id="lister",
        sort_by="created_at",
        sort_order="asc",
        limit=5,
        page=2,
        deserialize=False,
    )
    assert total == 9
    assert len(rows) == 4
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)

    agents: list[Any] = await db.get_sessions(session_type=SessionType.AGENT, user_id="lister")  # type: ignore[assignment]
    assert {s.session_id for s in agents} == {s.session_id for s in sessions[0::3]}
    assert all(isinstance(s, AgentSession) and s.runs for s in agents)
    named, total = await db.get_sessions(
        user_id="lister", session_name="Renamed", deserialize=False
    )
    assert total == 1
    assert named[0]["session_id"] == first.session_id
    by_team = await db.get_sessions(component_id="team-1", user_id="lister")
    assert len(by_team) == 3

    assert await db.delete_session(first.session_id, user_id="other") is False
    assert await db.delete_session(first.session_id, user_id="lister") is True
    await db.delete_sessions([s.session_id for s in sessions[1:4]], user_id="lister")
    rows, total = await db.get_sessions(user_id="lister", deserialize=False)
    assert total == 5
    assert first.session_id not in {row["session_id"] for row in rows}


async def test_other_domains_go_to_other_db_or_raise_naming_it(
    store: SessionStore, tmp_path: Path
) -> None:
    alone = AgnoStoreDb(store)
    with pytest.raises(AgnoDomainNotStoredError, match="other_db"):
        await alone.get_user_memories(user_id="u1")
    with pytest.raises(NotImplementedError):
        await alone.upsert_user_memory(UserMemory(memory="likes tea", user_id="u1"))

    other = AsyncSqliteDb(db_file=str(tmp_path / "agno.db"))
    db = AgnoStoreDb(store, other_db=other)
    await db._create_all_tables()  # what AgentOS does at start-up
    await db.upsert_user_memory(UserMemory(memory="likes tea", user_id="u1", memory_id="m1"))
    memories = await db.get_user_memories(user_id="u1")
    assert [m.memory for m in memories] == ["likes tea"]
    assert [m.memory for m in await other.get_user_memories(user_id="u1")] == ["likes tea"]
    # sessions still go to the store, not to other_db
    session = sample_sessions()[0]
    await db.upsert_session(session)
    assert await other.get_session(session.session_id, SessionType.AGENT) is None
    assert await store.read(session.session_id) is not None
    await db.close()


async def test_bad_input_is_a_typed_error(db: AgnoStoreDb) -> None:
    with pytest.raises(InvalidInputError):
        await db.get_sessions(page=2)
    with pytest.raises(InvalidInputError):
        await db.get_sessions(limit=10, page=0)
    with pytest.raises(InvalidInputError):
        await db.get_sessions(sort_by="password")
    with pytest.raises(InvalidInputError):
        await db.get_session("x", session_type="chat")
    with pytest.raises(InvalidInputError):
        await db.upsert_session("not a session")
    with pytest.raises(InvalidInputError):
        await db.get_runs()
