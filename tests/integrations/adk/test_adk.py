"""`StoreSessionService` against the real Google ADK: its Runner with a local model across two
processes, state scopes, the stale-session check, event filters, listing, deletion."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.events.event_actions import EventActions
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig
from google.genai import types

from async_agent_storage import InvalidInputError, SessionStore
from async_agent_storage.integrations.adk import StoreSessionService
from tests.integrations.conftest import Target

from ._turn import APP, FIRST_QUESTION, FOLLOW_UP

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(target: Target) -> AsyncIterator[SessionStore]:
    async with target.open() as store:
        yield store


@pytest.fixture
def service(store: SessionStore) -> StoreSessionService:
    return StoreSessionService(store)


def new_id() -> str:
    return f"s_{uuid.uuid4().hex[:8]}"


def run_turn(target: Target, session_id: str, question: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integrations.adk._turn",
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
    return done.stdout.strip()


def user_event(text: str, delta: dict[str, object] | None = None) -> Event:
    return Event(
        author="user",
        invocation_id=f"inv_{uuid.uuid4().hex[:6]}",
        content=types.Content(role="user", parts=[types.Part(text=text)]),
        actions=EventActions(state_delta=dict(delta or {})),
        timestamp=time.time(),
    )


async def test_it_is_an_adk_session_service(service: StoreSessionService) -> None:
    assert isinstance(service, BaseSessionService)


async def test_a_second_process_continues_the_session_through_adks_runner(
    target: Target, service: StoreSessionService
) -> None:
    session_id = new_id()
    first = await asyncio.to_thread(run_turn, target, session_id, FIRST_QUESTION)
    assert first == "Paris"
    second = await asyncio.to_thread(run_turn, target, session_id, FOLLOW_UP)
    assert second == f'Your last question was: "{FIRST_QUESTION}"'
    session = await service.get_session(app_name=APP, user_id="u1", session_id=session_id)
    assert session is not None
    texts = [e.content.parts[0].text for e in session.events if e.content and e.content.parts]
    assert texts == [FIRST_QUESTION, "Paris", FOLLOW_UP, second]
    assert session.state["turns"] == 2
    assert session.state["user:turns"] == 2
    assert session.state["app:model"] == "recall"
    assert not any(key.startswith("temp:") for key in session.state)
    assert await service.get_user_state(app_name=APP, user_id="u1") == {"turns": 2}


async def test_state_scopes_are_shared_as_adk_defines_them(service: StoreSessionService) -> None:
    a = await service.create_session(
        app_name="app", user_id="u1", state={"k": 1, "app:theme": "dark", "user:lang": "fr"}
    )
    assert a.state == {"k": 1, "app:theme": "dark", "user:lang": "fr"}
    b = await service.create_session(app_name="app", user_id="u1", state={"temp:x": 1})
    assert b.state == {"app:theme": "dark", "user:lang": "fr"}
    c = await service.create_session(app_name="app", user_id="u2")
    assert c.state == {"app:theme": "dark"}
    await service.append_event(
        b, user_event("hi", {"app:theme": "light", "user:lang": {"code": "de"}, "temp:t": 1})
    )
    assert b.state["temp:t"] == 1  # in memory for this invocation only
    a2 = await service.get_session(app_name="app", user_id="u1", session_id=a.id)
    assert a2 is not None
    assert a2.state == {"k": 1, "app:theme": "light", "user:lang": {"code": "de"}}
    c2 = await service.get_session(app_name="app", user_id="u2", session_id=c.id)
    assert c2 is not None
    assert c2.state == {"app:theme": "light"}
    await service.append_event(a2, user_event("x", {"user:lang": {"region": "AT"}}))
    assert await service.get_user_state(app_name="app", user_id="u1") == {
        "lang": {"region": "AT"}  # replaced, as ADK does, not merged
    }


async def test_a_stale_session_cannot_append(service: StoreSessionService) -> None:
    from google.adk.errors._stale_session_error import StaleSessionError

    created = await service.create_session(app_name="app", user_id="u1")
    first = await service.get_session(app_name="app", user_id="u1", session_id=created.id)
    second = await service.get_session(app_name="app", user_id="u1", session_id=created.id)
    assert first is not None
    assert second is not None
    await service.append_event(first, user_event("one", {"n": 1}))
    with pytest.raises(StaleSessionError):
        await service.append_event(second, user_event("two", {"n": 2}))
    await service.append_event(first, user_event("three", {"n": 3}))
    stored = await service.get_session(app_name="app", user_id="u1", session_id=created.id)
    assert stored is not None
    assert [e.content.parts[0].text for e in stored.events if e.content and e.content.parts] == [
        "one",
        "three",
    ]
    assert stored.state == {"n": 3}


async def test_event_filters_and_exact_events(service: StoreSessionService) -> None:
    session = await service.create_session(app_name="app", user_id="u1", session_id=new_id())
    events = []
    for i in range(5):
        event = user_event(f"m{i} ✓ \u0000")
        event.timestamp = 1_700_000_000.0 + i
        events.append(await service.append_event(session, event))
    full = await service.get_session(app_name="app", user_id="u1", session_id=session.id)
    assert full is not None
    assert [e.model_dump() for e in full.events] == [e.model_dump() for e in events]
    recent = await service.get_session(
        app_name="app",
        user_id="u1",
        session_id=session.id,
        config=GetSessionConfig(num_recent_events=2),
    )
    assert recent is not None
    assert [e.id for e in recent.events] == [e.id for e in events[-2:]]
    after = await service.get_session(
        app_name="app",
        user_id="u1",
        session_id=session.id,
        config=GetSessionConfig(after_timestamp=1_700_000_003.0),
    )
    assert after is not None
    assert [e.id for e in after.events] == [e.id for e in events[3:]]
    none = await service.get_session(
        app_name="app",
        user_id="u1",
        session_id=session.id,
        config=GetSessionConfig(num_recent_events=0),
    )
    assert none is not None
    assert none.events == []


async def test_list_delete_and_isolation(service: StoreSessionService) -> None:
    ids = [new_id() for _ in range(3)]
    for session_id in ids:
        await service.create_session(app_name="lister", user_id="u1", session_id=session_id)
    await service.create_session(app_name="lister", user_id="u2", session_id=new_id())
    await service.create_session(app_name="other_app", user_id="u1", session_id=ids[0])
    with pytest.raises(AlreadyExistsError):
        await service.create_session(app_name="lister", user_id="u2", session_id=ids[0])
    listed = await service.list_sessions(app_name="lister", user_id="u1")
    assert [s.id for s in listed.sessions] == ids  # least recently updated first
    assert all(s.events == [] for s in listed.sessions)
    everyone = await service.list_sessions(app_name="lister")
    assert len(everyone.sessions) == 4
    assert await service.get_session(app_name="lister", user_id="u2", session_id=ids[0]) is None
    await service.delete_session(app_name="lister", user_id="u2", session_id=ids[0])
    assert await service.get_session(app_name="lister", user_id="u1", session_id=ids[0])
    await service.delete_session(app_name="lister", user_id="u1", session_id=ids[0])
    assert await service.get_session(app_name="lister", user_id="u1", session_id=ids[0]) is None
    assert await service.get_session(app_name="other_app", user_id="u1", session_id=ids[0])


async def test_bad_input_is_a_typed_error(service: StoreSessionService) -> None:
    with pytest.raises(InvalidInputError):
        await service.create_session(app_name="a/b", user_id="u1")
    with pytest.raises(InvalidInputError):
        await service.create_session(app_name="app", user_id="")
    with pytest.raises(InvalidInputError):
        await service.get_session(app_name="app", user_id="u1", session_id="")
