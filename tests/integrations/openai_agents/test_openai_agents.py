"""`StoreSession` against the real OpenAI Agents SDK: its `Session` protocol, `Runner.run` with a
local model across two processes, items kept exactly, atomic `pop_item`, ownership."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents.memory import Session as AgentsSession
from agents.memory import SessionSettings

from async_agent_storage import (
    InvalidInputError,
    SerializationError,
    SessionOwnershipError,
    SessionStore,
)
from async_agent_storage.integrations.openai_agents import StoreSession
from tests.integrations.conftest import Target

from ._turn import FIRST_QUESTION, FOLLOW_UP

pytestmark = pytest.mark.anyio

# Items as the SDK hands them over: messages, a tool call and its output, odd values.
ITEMS: list[Any] = [
    {"role": "user", "content": "Héllo 👋 \u0000 end"},
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hi", "annotations": []}],
    },
    {
        "type": "function_call",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": '{"city": "Paris", "n": 1e16}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "x" * 5000},
    {"role": "user", "content": [{"type": "input_text", "text": "nested"}], "n": 2**70, "f": -0.0},
]


@pytest.fixture
async def store(target: Target) -> AsyncIterator[SessionStore]:
    async with target.open() as store:
        yield store


def new_id() -> str:
    return f"conv_{uuid.uuid4().hex[:8]}"


def run_turn(target: Target, session_id: str, question: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integrations.openai_agents._turn",
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


async def test_it_satisfies_the_sdk_session_protocol(store: SessionStore) -> None:
    session = StoreSession("s1", store)
    assert isinstance(session, AgentsSession)
    assert session.session_id == "s1"
    assert session.session_settings is None


async def test_a_second_process_continues_the_conversation(
    target: Target, store: SessionStore
) -> None:
    session_id = new_id()
    first = await asyncio.to_thread(run_turn, target, session_id, FIRST_QUESTION)
    assert first == "Paris"
    second = await asyncio.to_thread(run_turn, target, session_id, FOLLOW_UP)
    assert second == f'Your last question was: "{FIRST_QUESTION}"'
    items = await StoreSession(session_id, store, user_id="u1").get_items()
    assert [item.get("role") for item in items] == ["user", "assistant"] * 2
    assert items[0] == {"role": "user", "content": FIRST_QUESTION}
    assert items[2] == {"role": "user", "content": FOLLOW_UP}
    stored = await store.read(session_id, user_id="u1")
    assert stored is not None
    assert stored.user_id == "u1"
    assert len(stored.runs) == 4


async def test_items_come_back_exactly_as_given(store: SessionStore) -> None:
    session = StoreSession(new_id(), store)
    await session.add_items(ITEMS[:2])
    await session.add_items(ITEMS[2:])
    items = await session.get_items()
    assert items == ITEMS
    assert all("run_id" not in item for item in items)
    assert [type(item.get("f")) for item in items] == [type(item.get("f")) for item in ITEMS]
    assert await session.get_items(limit=2) == ITEMS[-2:]
    assert await session.get_items(limit=100) == ITEMS
    assert await session.get_items(limit=0) == []


async def test_session_settings_limit_is_the_default_limit(store: SessionStore) -> None:
    session_id = new_id()
    await StoreSession(session_id, store).add_items(ITEMS)
    limited = StoreSession(session_id, store, session_settings=SessionSettings(limit=3))
    assert await limited.get_items() == ITEMS[-3:]
    assert await limited.get_items(limit=1) == ITEMS[-1:]
    as_dict = StoreSession(session_id, store, session_settings={"limit": 2})
    assert await as_dict.get_items() == ITEMS[-2:]


async def test_pop_item_removes_the_most_recent_item(store: SessionStore) -> None:
    session = StoreSession(new_id(), store)
    assert await session.pop_item() is None
    await session.add_items(ITEMS[:3])
    assert await session.pop_item() == ITEMS[2]
    assert await session.get_items() == ITEMS[:2]
    assert await session.pop_item() == ITEMS[1]
    assert await session.pop_item() == ITEMS[0]
    assert await session.pop_item() is None
    assert await session.get_items() == []


async def test_concurrent_pops_each_take_a_different_item(store: SessionStore) -> None:
    session = StoreSession(new_id(), store)
    items = [{"role": "user", "content": f"m{i}"} for i in range(20)]
    await session.add_items(items)
    popped = await asyncio.gather(*(session.pop_item() for _ in range(25)))
    taken = [item for item in popped if item is not None]
    assert len(taken) == 20
    assert sorted(str(item["content"]) for item in taken) == sorted(f"m{i}" for i in range(20))
    assert await session.get_items() == []


async def test_concurrent_adds_lose_nothing(store: SessionStore) -> None:
    session = StoreSession(new_id(), store)
    await asyncio.gather(
        *(session.add_items([{"role": "user", "content": f"m{i}"}]) for i in range(30))
    )
    items = await session.get_items()
    assert sorted(str(item["content"]) for item in items) == sorted(f"m{i}" for i in range(30))


async def test_clear_session_removes_the_items_but_keeps_the_session(
    store: SessionStore,
) -> None:
    session_id = new_id()
    session = StoreSession(session_id, store, user_id="u1")
    await session.add_items(ITEMS)
    await session.clear_session()
    assert await session.get_items() == []
    stored = await store.read(session_id, user_id="u1")
    assert stored is not None
    assert stored.runs == []
    await session.add_items(ITEMS[:1])
    assert await session.get_items() == ITEMS[:1]
    await StoreSession(new_id(), store).clear_session()  # nothing to clear: no error


async def test_another_users_session_is_invisible_and_read_only(store: SessionStore) -> None:
    session_id = new_id()
    await StoreSession(session_id, store, user_id="alice").add_items(ITEMS[:2])
    mallory = StoreSession(session_id, store, user_id="mallory")
    assert await mallory.get_items() == []
    with pytest.raises(SessionOwnershipError):
        await mallory.add_items(ITEMS[:1])
    assert await StoreSession(session_id, store, user_id="alice").get_items() == ITEMS[:2]


async def test_bad_input_is_a_typed_error(store: SessionStore) -> None:
    with pytest.raises(InvalidInputError):
        StoreSession("", store)
    session = StoreSession(new_id(), store)
    with pytest.raises(InvalidInputError):
        await session.get_items(limit=-1)
    with pytest.raises(InvalidInputError):
        await session.add_items(["not a dict"])
    with pytest.raises(SerializationError, match="nan"):
        await session.add_items([{"role": "user", "content": "x", "score": float("nan")}])
    assert await session.get_items() == []
