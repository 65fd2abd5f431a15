"""The conformance suite: the rules of DESIGN.md's "Semantics that every backend shares", as tests.

A driver's test module subclasses `SessionStoreConformance` and provides one fixture,
`store_factory`: a callable taking store options (``max_session_bytes=...``) and returning a new,
unopened store over an empty table that the fixture removes after the test::

    class TestMyStore(SessionStoreConformance):
        @pytest.fixture
        def store_factory(self, tmp_path):
            return lambda **options: SqliteStore(db_file=tmp_path / "db.sqlite", **options)

Every test is an asyncio test run by anyio's pytest plugin. Nothing here knows the backend: a rule
that needs an exception for one driver is a bug in that driver.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import random
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel

from ..errors import (
    InvalidInputError,
    MigrationError,
    SerializationError,
    SessionConflictError,
    SessionOwnershipError,
    StoreClosedError,
)
from ..models import Session
from ..protocol import SessionStore
from ._activity import ActivityConformance
from ._leases import LeaseConformance
from ._model import HistoryModelConformance, ListingModelConformance
from ._retention import RetentionConformance
from ._turns import TurnConformance
from .strategies import json_objects, json_values

__all__ = ["SessionStoreConformance", "StoreFactory"]

StoreFactory = Callable[..., SessionStore]


def _sid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def _run(i: int, **extra: Any) -> dict[str, Any]:
    return {"input": f"question {i}", "output": f"answer {i}", **extra}


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int
    y: int


class _Model(BaseModel):
    name: str
    when: datetime


def typed(value: Any) -> Any:
    """`value` with each scalar's type (and a float's sign, through its repr) made part of it, so
    that a comparison also fails when 1e16 comes back as the int 10**16, -0.0 as 0.0 or True as 1.
    Dicts compare without their key order (some databases reorder keys)."""
    if isinstance(value, dict):
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


async def _snapshot(store: SessionStore, session_id: str) -> Session | None:
    return await store.read(session_id)


class SessionStoreConformance(
    TurnConformance,
    ActivityConformance,
    LeaseConformance,
    RetentionConformance,
    HistoryModelConformance,
    ListingModelConformance,
):
    """Every rule every backend shares. Subclass it and provide a `store_factory` fixture."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[SessionStore]:
        async with store_factory() as store:
            yield store

    # --- the basics ---------------------------------------------------------------------------

    async def test_satisfies_the_protocol(self, store: SessionStore) -> None:
        assert isinstance(store, SessionStore)

    async def test_read_of_a_missing_session_is_none(self, store: SessionStore) -> None:
        assert await store.read(_sid()) is None
        assert await store.read(_sid(), user_id="u", last_runs=3) is None

    async def test_upsert_then_read_round_trips_every_field(self, store: SessionStore) -> None:
        session = Session(
            session_id=_sid(),
            session_type="team",
            user_id="user-1",
            agent_id="agent-1",
            team_id="team-1",
            workflow_id="wf-1",
            session_data={"session_state": {"cart": ["apple"], "n": 1}, "session_name": "shop"},
            agent_data={"model": "gpt", "temperature": 0.2},
            team_data={"members": 3},
            workflow_data={"step": "a"},
            metadata={"tags": ["x", "y"], "priority": 2},
            runs=[_run(0, run_id="r0"), _run(1, run_id="r1")],
            summary={"text": "bought an apple"},
        )
        before = datetime.now(UTC) - timedelta(seconds=5)
        stored = await store.upsert(session)
        assert stored.version == 1
        read = await store.read(session.session_id)
        assert read is not None
        for field in Session.model_fields:
            if field not in ("created_at", "updated_at", "version", "run_ids"):
                assert getattr(read, field) == getattr(session, field), field
        assert read.version == 1
        assert read.run_ids == ["r0", "r1"]
        assert read == stored
        for stamp in (read.created_at, read.updated_at):
            assert stamp is not None
            assert stamp.tzinfo is not None
            assert stamp.utcoffset() == timedelta(0)
            assert before <= stamp <= datetime.now(UTC) + timedelta(seconds=5)

    async def test_every_write_adds_one_to_version_and_keeps_created_at(
        self, store: SessionStore
    ) -> None:
        session = Session(session_id=_sid(), user_id="u")
        first = await store.upsert(session)
        second = await store.upsert(first)
        third = await store.append_runs(session.session_id, [_run(0)], user_id="u")
        assert [first.version, second.version, third.version] == [1, 2, 3]
        assert first.created_at == second.created_at == third.created_at
        assert first.updated_at is not None
        assert third.updated_at is not None
        assert third.updated_at >= first.updated_at
        read = await store.read(session.session_id)
        assert read is not None
        assert read.version == 3

    async def test_upsert_does_not_change_the_callers_session(self, store: SessionStore) -> None:
        session = Session(session_id=_sid(), runs=[{"input": "no id yet"}])
        await store.upsert(session)
        assert session.version == 0
        assert session.runs == [{"input": "no id yet"}]
        assert session.created_at is None

    async def test_runs_come_back_exactly_as_written_with_their_ids_beside_them(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        runs = [{"input": "a"}, {"input": "b", "run_id": "mine"}]
        stored = await store.upsert(Session(session_id=sid, runs=runs))
        assert stored.runs == runs  # no id injected into a run
        assigned, own = stored.run_ids
        assert isinstance(assigned, str)
        assert assigned
        assert own == "mine"
        appended = await store.append_runs(sid, [{"input": "c"}, {"input": "d"}], run_ids=["c1"])
        assert appended.runs == [{"input": "c"}, {"input": "d"}]
        assert appended.run_ids[0] == "c1"
        assert appended.run_ids[1] not in (assigned, "mine", "c1")
        read = await store.read(sid)
        assert read is not None
        assert read.runs == [*runs, {"input": "c"}, {"input": "d"}]
        assert read.run_ids == [assigned, "mine", "c1", appended.run_ids[1]]
        tail = await store.read(sid, last_runs=1)
        assert tail is not None
        assert tail.run_ids == [appended.run_ids[1]]
        # Written back, a session keeps its ids.
        await store.upsert(read)
        again = await store.read(sid)
        assert again is not None
        assert again.run_ids == read.run_ids
        with pytest.raises(InvalidInputError, match="two runs"):
            await store.append_runs(sid, [{"run_id": "x"}, {"run_id": "x"}])
        with pytest.raises(InvalidInputError, match="two runs"):
            await store.upsert(Session(session_id=sid, runs=[{"run_id": "x"}, {"run_id": "x"}]))

    # --- append_runs and partial reads -----------------------------------------------------------

    async def test_append_runs_creates_the_session_owned_by_the_user(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        created = await store.append_runs(sid, [_run(0)], user_id="alice")
        assert created.user_id == "alice"
        assert created.version == 1
        assert created.session_type == "agent"
        assert created.session_data == {}
        read = await store.read(sid, user_id="alice")
        assert read is not None
        assert read.runs == created.runs

    async def test_append_runs_returns_only_the_runs_it_appended(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0), _run(1)])
        result = await store.append_runs(sid, [_run(2)])
        assert [r["input"] for r in result.runs] == ["question 2"]
        assert result.runs_offset == 2
        assert result.run_count == 3
        read = await store.read(sid)
        assert read is not None
        assert [r["input"] for r in read.runs] == ["question 0", "question 1", "question 2"]

    async def test_append_runs_replaces_session_data_only_when_given(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0)], session_data={"session_state": {"step": 1}})
        kept = await store.append_runs(sid, [_run(1)])
        assert kept.session_data == {"session_state": {"step": 1}}
        replaced = await store.append_runs(sid, [_run(2)], session_data={"session_state": {}})
        assert replaced.session_data == {"session_state": {}}
        read = await store.read(sid)
        assert read is not None
        assert read.session_data == {"session_state": {}}
        assert len(read.runs) == 3

    async def test_append_of_no_runs_still_updates_state(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0)])
        result = await store.append_runs(sid, [], session_data={"x": 1})
        assert result.runs == []
        assert result.version == 2
        read = await store.read(sid)
        assert read is not None
        assert read.session_data == {"x": 1}
        assert len(read.runs) == 1

    async def test_read_last_runs_returns_the_tail_in_order(self, store: SessionStore) -> None:
        sid = _sid()
        for i in range(0, 12, 3):
            await store.append_runs(sid, [_run(i), _run(i + 1), _run(i + 2)])
        for n in (0, 1, 5, 12, 50):
            read = await store.read(sid, last_runs=n)
            assert read is not None
            expected = [f"question {i}" for i in range(12)][max(0, 12 - n) :] if n else []
            assert [r["input"] for r in read.runs] == expected, n
            assert read.runs_offset == 12 - len(expected)
            assert read.run_count == 12
        full = await store.read(sid)
        assert full is not None
        assert full.runs_offset == 0
        assert len(full.runs) == 12

    async def test_upsert_of_a_tail_keeps_the_older_runs(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(i) for i in range(10)])
        tail = await store.read(sid, last_runs=2)
        assert tail is not None
        tail.runs.append(_run(10))
        tail.runs[0]["edited"] = True
        tail.session_data["turns"] = 11
        stored = await store.upsert(tail)
        assert stored.runs_offset == 8
        read = await store.read(sid)
        assert read is not None
        assert [r["input"] for r in read.runs] == [f"question {i}" for i in range(11)]
        assert read.runs[8].get("edited") is True
        assert read.session_data == {"turns": 11}

    async def test_upsert_of_a_listed_session_keeps_its_history(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0), _run(1)], user_id="u")
        (listed,) = await store.get_recent_sessions(user_id="u", limit=1)
        assert listed.runs == []
        listed.metadata = {"renamed": True}
        await store.upsert(listed)
        read = await store.read(sid)
        assert read is not None
        assert len(read.runs) == 2
        assert read.metadata == {"renamed": True}

    async def test_upsert_of_a_full_session_replaces_the_history(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(i) for i in range(5)])
        full = await store.read(sid)
        assert full is not None
        full.runs = full.runs[:2]
        await store.upsert(full)
        read = await store.read(sid)
        assert read is not None
        assert [r["input"] for r in read.runs] == ["question 0", "question 1"]
        appended = await store.append_runs(sid, [_run(9)])
        assert appended.runs_offset == 2
        read = await store.read(sid)
        assert read is not None
        assert [r["input"] for r in read.runs] == ["question 0", "question 1", "question 9"]

    async def test_delete_removes_the_session_and_its_runs(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0), _run(1)], user_id="u")
        assert await store.delete_session(sid) is True
        assert await store.read(sid) is None
        assert await store.delete_session(sid) is False
        recreated = await store.append_runs(sid, [_run(5)], user_id="u")
        assert recreated.version == 1
        assert recreated.runs_offset == 0
        read = await store.read(sid)
        assert read is not None
        assert [r["input"] for r in read.runs] == ["question 5"]

    # --- no lost updates ------------------------------------------------------------------------

    async def test_if_version_zero_means_must_not_exist(self, store: SessionStore) -> None:
        sid = _sid()
        await store.upsert(Session(session_id=sid), if_version=0)
        with pytest.raises(SessionConflictError) as info:
            await store.upsert(Session(session_id=sid, metadata={"lost": True}), if_version=0)
        assert (info.value.expected, info.value.actual) == (0, 1)
        read = await store.read(sid)
        assert read is not None
        assert read.metadata is None

    async def test_if_version_mismatch_raises_and_keeps_the_stored_version(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        v1 = await store.upsert(Session(session_id=sid, session_data={"v": 1}))
        v2 = await store.upsert(v1.model_copy(update={"session_data": {"v": 2}}), if_version=1)
        assert v2.version == 2
        with pytest.raises(SessionConflictError) as info:
            await store.upsert(v1.model_copy(update={"session_data": {"v": "stale"}}), if_version=1)
        assert info.value.session_id == sid
        assert (info.value.expected, info.value.actual) == (1, 2)
        assert "2" in str(info.value)
        with pytest.raises(SessionConflictError) as missing:
            await store.upsert(Session(session_id=_sid()), if_version=3)
        assert (missing.value.expected, missing.value.actual) == (3, 0)
        read = await store.read(sid)
        assert read is not None
        assert (read.version, read.session_data) == (2, {"v": 2})

    async def test_concurrent_conditional_upserts_exactly_one_wins(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        base = await store.upsert(Session(session_id=sid))
        writers = [
            store.upsert(base.model_copy(update={"session_data": {"writer": i}}), if_version=1)
            for i in range(20)
        ]
        results = await asyncio.gather(*writers, return_exceptions=True)
        winners = [r for r in results if isinstance(r, Session)]
        conflicts = [r for r in results if isinstance(r, SessionConflictError)]
        assert len(winners) == 1
        assert len(conflicts) == 19
        read = await store.read(sid)
        assert read is not None
        assert read.version == 2
        assert read.session_data == winners[0].session_data

    async def test_fifty_concurrent_appends_to_one_session_lose_no_run(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        calls = [
            store.append_runs(
                sid,
                [_run(0, run_id=f"c{c}-0"), _run(1, run_id=f"c{c}-1")],
                user_id="u",
                session_data={"last_writer": c},
            )
            for c in range(50)
        ]
        results = await asyncio.gather(*calls)
        assert sorted(r.version for r in results) == list(range(1, 51))
        read = await store.read(sid, user_id="u")
        assert read is not None
        ids = [r["run_id"] for r in read.runs]
        assert len(ids) == 100
        assert sorted(ids) == sorted(f"c{c}-{k}" for c in range(50) for k in range(2))
        for c in range(50):  # each call's runs are contiguous and in order
            position = ids.index(f"c{c}-0")
            assert ids[position + 1] == f"c{c}-1"
        assert read.version == 50
        last = max(results, key=lambda r: r.version)
        assert read.session_data == last.session_data

    async def test_concurrent_appends_across_sessions(self, store: SessionStore) -> None:
        sids = [_sid() for _ in range(8)]
        calls = [store.append_runs(sids[i % 8], [_run(i)], user_id="u") for i in range(96)]
        await asyncio.gather(*calls)
        for sid in sids:
            read = await store.read(sid)
            assert read is not None
            assert len(read.runs) == 12
            assert read.version == 12

    async def test_plain_upsert_is_last_writer_wins(self, store: SessionStore) -> None:
        sid = _sid()
        await store.upsert(Session(session_id=sid, session_data={"n": 1}))
        await store.upsert(Session(session_id=sid, session_data={"n": 2}))
        read = await store.read(sid)
        assert read is not None
        assert (read.version, read.session_data) == (2, {"n": 2})

    # --- isolation ------------------------------------------------------------------------------

    @pytest.fixture
    async def owned(self, store: SessionStore) -> Session:
        return await store.upsert(
            Session(session_id=_sid(), user_id="alice", runs=[_run(0)], session_data={"a": 1})
        )

    async def test_another_user_cannot_read(self, store: SessionStore, owned: Session) -> None:
        assert await store.read(owned.session_id, user_id="bob") is None
        assert await store.read(owned.session_id, user_id="bob", last_runs=1) is None
        assert await store.read(owned.session_id, user_id="alice") is not None

    async def test_another_user_cannot_overwrite(self, store: SessionStore, owned: Session) -> None:
        attack = Session(session_id=owned.session_id, user_id="bob", session_data={"pwned": 1})
        with pytest.raises(SessionOwnershipError):
            await store.upsert(attack)
        with pytest.raises(SessionOwnershipError):
            await store.upsert(attack, if_version=owned.version)
        with pytest.raises(SessionOwnershipError):
            await store.upsert_many([attack])
        unowned = Session(session_id=owned.session_id, session_data={"pwned": 1})
        with pytest.raises(SessionOwnershipError):
            await store.upsert(unowned)
        assert await _snapshot(store, owned.session_id) == owned

    async def test_another_user_cannot_append(self, store: SessionStore, owned: Session) -> None:
        with pytest.raises(SessionOwnershipError):
            await store.append_runs(owned.session_id, [_run(9)], user_id="bob")
        with pytest.raises(SessionOwnershipError):
            await store.append_runs(
                owned.session_id, [_run(9)], user_id="bob", session_data={"pwned": 1}
            )
        assert await _snapshot(store, owned.session_id) == owned

    async def test_another_user_cannot_delete(self, store: SessionStore, owned: Session) -> None:
        assert await store.delete_session(owned.session_id, user_id="bob") is False
        assert await _snapshot(store, owned.session_id) == owned
        assert await store.delete_session(owned.session_id, user_id="alice") is True

    async def test_another_users_sessions_are_not_listed(
        self, store: SessionStore, owned: Session
    ) -> None:
        await store.upsert(Session(session_id=_sid(), user_id="bob"))
        assert owned.session_id not in await store.get_all_session_ids(user_id="bob")
        assert owned.session_id in await store.get_all_session_ids(user_id="alice")
        bob_sessions = await store.get_all_sessions(user_id="bob")
        assert all(s.user_id == "bob" for s in bob_sessions)
        page = await store.list_sessions(user_id="bob")
        assert [s.user_id for s in page.items] == ["bob"]
        assert all(s.user_id == "bob" for s in await store.get_recent_sessions(user_id="bob"))

    async def test_a_user_id_filter_does_not_match_unowned_sessions(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.upsert(Session(session_id=sid))
        assert await store.read(sid, user_id="alice") is None
        with pytest.raises(SessionOwnershipError):
            await store.append_runs(sid, [_run(0)], user_id="alice")
        assert await store.read(sid) is not None

    # --- round trip -----------------------------------------------------------------------------

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(state=json_objects(), metadata=json_objects(), run=json_objects(), extra=json_values())
    async def test_any_json_value_round_trips(
        self,
        store: SessionStore,
        state: dict[str, Any],
        metadata: dict[str, Any],
        run: dict[str, Any],
        extra: Any,
    ) -> None:
        sid = _sid()
        run = {**run, "run_id": "r-1"}
        session = Session(
            session_id=sid,
            session_data={"session_state": state, "extra": extra},
            metadata=metadata,
            runs=[run],
        )
        stored = await store.upsert(session)
        appended = await store.append_runs(sid, [{**run, "run_id": "r-2"}])
        read = await store.read(sid)
        assert read is not None
        assert typed(read.session_data) == typed(session.session_data)
        assert typed(read.metadata) == typed(metadata)
        assert typed(read.runs) == typed([run, {**run, "run_id": "r-2"}])
        assert typed(stored.session_data) == typed(session.session_data)
        assert typed(appended.runs) == typed([{**run, "run_id": "r-2"}])

    async def test_strings_numbers_and_nesting_that_break_storage_round_trip(
        self, store: SessionStore
    ) -> None:
        deep: Any = "bottom"
        for level in range(200):
            deep = {"level": level, "next": deep} if level % 2 else [deep]
        values = {
            "nul": "a\x00b",
            "only_nul": "\x00",
            "emoji": "😀",
            "astral": "\U0010ffff",
            "escaped": "\\u0000",
            "big": 2**70,
            "negative_big": -(2**100),
            "uint64_max": 2**64 - 1,
            "int64_min": -(2**63),
            "float": 0.1,
            "tiny": 5e-324,
            "huge_float": 1.7976931348623157e308,
            "negative_zero": -0.0,
            "float_with_exponent": 1e16,
            "float_whole": 3.0,
            "true": True,
            "one": 1,
            "deep": deep,
            "$dollar_key": {"a.b": {"$set": 1}},
            "": "empty key",
            "unicode_key_é😀": [None, True, False],
        }
        sid = _sid()
        await store.upsert(Session(session_id=sid, session_data=values, runs=[{"v": values}]))
        await store.append_runs(sid, [{"v": values}])
        read = await store.read(sid)
        assert read is not None
        assert typed(read.session_data) == typed(values)
        assert typed(read.runs[0]["v"]) == typed(values)
        assert typed(read.runs[1]["v"]) == typed(values)
        listed = await store.get_all_sessions(include_runs=True)
        listed_runs = next(s for s in listed if s.session_id == sid).runs
        assert typed(listed_runs[1]["v"]) == typed(values)

    async def test_python_types_are_stored_as_their_json_form(self, store: SessionStore) -> None:
        when = datetime(2024, 5, 17, 12, 30, 0, 123456, tzinfo=UTC)
        ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
        sid = _sid()
        stored = await store.upsert(
            Session(
                session_id=sid,
                session_data={
                    "when": when,
                    "day": date(2024, 5, 17),
                    "id": ident,
                    "color": _Color.RED,
                    "point": _Point(1, 2),
                    "model": _Model(name="m", when=when),
                    "tuple": (1, 2),
                },
            )
        )
        expected = {
            "when": "2024-05-17T12:30:00.123456+00:00",
            "day": "2024-05-17",
            "id": "12345678-1234-5678-1234-567812345678",
            "color": "red",
            "point": {"x": 1, "y": 2},
            "model": {"name": "m", "when": "2024-05-17T12:30:00.123456Z"},
            "tuple": [1, 2],
        }
        assert stored.session_data == expected
        read = await store.read(sid)
        assert read is not None
        assert read.session_data == expected

    # --- clear errors, nothing half-written -------------------------------------------------------

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
    async def test_nan_and_infinity_are_refused_and_nothing_is_written(
        self, store: SessionStore, bad: float
    ) -> None:
        sid = _sid()
        stored = await store.upsert(Session(session_id=sid, session_data={"ok": 1}))
        with pytest.raises(SerializationError) as info:
            await store.upsert(stored.model_copy(update={"session_data": {"a": [1, {"b": bad}]}}))
        assert "session_data.a[1].b" in str(info.value)
        with pytest.raises(SerializationError) as in_run:
            await store.append_runs(sid, [_run(0), {"metrics": {"latency": bad}}])
        assert "runs[1].metrics.latency" in str(in_run.value)
        with pytest.raises(SerializationError):
            await store.append_runs(sid, [_run(0)], session_data={"x": bad})
        with pytest.raises(SerializationError):
            await store.upsert(Session(session_id=_sid(), metadata={"score": bad}))
        assert await _snapshot(store, sid) == stored

    @pytest.mark.parametrize(
        "bad",
        [{1, 2}, b"bytes", object(), {1: "int key"}, "lone \ud800 surrogate"],
        ids=["set", "bytes", "object", "int-key", "surrogate"],
    )
    async def test_values_json_cannot_hold_are_refused(self, store: SessionStore, bad: Any) -> None:
        sid = _sid()
        with pytest.raises(SerializationError) as info:
            await store.upsert(Session(session_id=sid, session_data={"state": {"v": bad}}))
        assert "session_data.state.v" in str(info.value)
        with pytest.raises(SerializationError):
            await store.append_runs(sid, [{"v": bad}])
        assert await store.read(sid) is None

    async def test_too_deep_a_value_is_refused(self, store: SessionStore) -> None:
        deep: Any = 1
        for _ in range(400):
            deep = [deep]
        sid = _sid()
        with pytest.raises(SerializationError, match="deeper"):
            await store.upsert(Session(session_id=sid, session_data={"deep": deep}))
        with pytest.raises(SerializationError, match="deeper"):
            await store.append_runs(sid, [{"deep": deep}])
        assert await store.read(sid) is None

    async def test_a_payload_over_the_size_cap_is_refused(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory(max_session_bytes=64 * 1024) as store:
            sid = _sid()
            await store.append_runs(sid, [{"blob": "x" * 1000}])
            with pytest.raises(SerializationError) as info:
                await store.append_runs(sid, [{"blob": "x" * 70_000}])
            message = str(info.value)
            assert "64.0 KiB" in message
            assert "70" in message
            with pytest.raises(SerializationError):
                await store.upsert(Session(session_id=sid, session_data={"blob": "y" * 70_000}))
            with pytest.raises(SerializationError):
                await store.upsert(
                    Session(session_id=_sid(), runs=[{"a": "z" * 40_000}, {"b": "z" * 40_000}])
                )
            read = await store.read(sid)
            assert read is not None
            assert read.version == 1
            assert len(read.runs) == 1

    async def test_bad_arguments_raise_invalid_input_and_write_nothing(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        stored = await store.append_runs(sid, [_run(0)], user_id="u")
        bad_calls: list[Callable[[], Any]] = [
            lambda: store.read(""),
            lambda: store.read("a\x00b"),
            lambda: store.read("x" * 256),
            lambda: store.read(123),  # type: ignore[arg-type]
            lambda: store.read(sid, user_id=""),
            lambda: store.read(sid, last_runs=-1),
            lambda: store.append_runs("", [_run(0)]),
            lambda: store.append_runs(sid, "not a list"),  # type: ignore[arg-type]
            lambda: store.append_runs(sid, {"input": "a dict"}),  # type: ignore[arg-type]
            lambda: store.append_runs(sid, ["not a dict"]),  # type: ignore[list-item]
            lambda: store.append_runs(sid, [{"run_id": 7}]),
            lambda: store.append_runs(sid, [{"run_id": ""}]),
            lambda: store.append_runs(sid, [_run(0)], session_data=["not", "a dict"]),  # type: ignore[arg-type]
            lambda: store.append_runs(sid, [_run(0)], user_id="a\x00"),
            lambda: store.upsert({"session_id": sid}),  # type: ignore[arg-type]
            lambda: store.upsert(stored, if_version=-1),
            lambda: store.upsert_many([stored, stored]),
            lambda: store.delete_session(""),
            lambda: store.list_sessions(limit=0),
            lambda: store.list_sessions(limit=10**9),
            lambda: store.list_sessions(cursor="garbage"),
            lambda: store.list_sessions(session_type="robot"),
            lambda: store.list_sessions(updated_after=datetime(2024, 1, 1)),
            lambda: store.get_recent_sessions(limit=-3),
        ]
        for index, call in enumerate(bad_calls):
            with pytest.raises(InvalidInputError):
                await call()
            assert await _snapshot(store, sid) == stored, index

    async def test_a_session_changed_after_validation_is_still_checked(
        self, store: SessionStore
    ) -> None:
        session = Session(session_id=_sid())
        session.session_id = ""
        with pytest.raises(InvalidInputError):
            await store.upsert(session)
        session = Session(session_id=_sid())
        session.runs = [{"ok": 1}, "not a run"]  # type: ignore[list-item]
        with pytest.raises(InvalidInputError):
            await store.upsert(session)
        assert await store.read(session.session_id) is None

    # --- ordering and pagination ------------------------------------------------------------------

    async def test_ids_and_sessions_are_listed_most_recent_first(self, store: SessionStore) -> None:
        sids = [_sid() for _ in range(5)]
        for sid in sids:
            await store.append_runs(sid, [_run(0)], user_id="lister")
        await store.append_runs(sids[1], [_run(1)], user_id="lister")  # now the most recent
        expected = [sids[1], sids[4], sids[3], sids[2], sids[0]]
        assert await store.get_all_session_ids(user_id="lister") == expected
        sessions = await store.get_all_sessions(user_id="lister")
        assert [s.session_id for s in sessions] == expected
        recent = await store.get_recent_sessions(user_id="lister", limit=2)
        assert [s.session_id for s in recent] == expected[:2]
        assert len(await store.get_recent_sessions(user_id="lister")) == 2

    async def test_pages_are_stable_under_ties_and_cover_everything_once(
        self, store: SessionStore
    ) -> None:
        sessions = [Session(session_id=f"tie-{i:03d}", user_id="pager") for i in range(23)]
        stored = await store.upsert_many(sessions)
        stamps = {s.updated_at for s in stored}
        assert len(stamps) == 1, "upsert_many writes one updated_at for the whole batch"
        await store.upsert_many(
            [Session(session_id=f"later-{i}", user_id="pager") for i in range(3)]
        )
        everything = await store.get_all_sessions(user_id="pager")
        keys = [(s.updated_at, s.session_id) for s in everything]
        assert keys == sorted(keys, reverse=True)
        seen: list[str] = []
        cursor = None
        for _ in range(20):
            page = await store.list_sessions(user_id="pager", limit=4, cursor=cursor)
            assert len(page.items) <= 4
            seen += [s.session_id for s in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == [s.session_id for s in everything]
        assert len(seen) == 26
        tied = [sid for sid in seen if sid.startswith("tie-")]
        assert tied == sorted(tied, reverse=True)

    async def test_writes_between_pages_do_not_shift_pages(self, store: SessionStore) -> None:
        for i in range(10):
            await store.append_runs(f"shift-{i}", [_run(i)], user_id="shifter")
        first = await store.list_sessions(user_id="shifter", limit=3)
        assert [s.session_id for s in first.items] == ["shift-9", "shift-8", "shift-7"]
        await store.append_runs("shift-8", [_run(99)], user_id="shifter")  # moves to the top
        await store.append_runs("shift-new", [_run(0)], user_id="shifter")
        rest: list[str] = []
        cursor = first.next_cursor
        while cursor is not None:
            page = await store.list_sessions(user_id="shifter", limit=3, cursor=cursor)
            rest += [s.session_id for s in page.items]
            cursor = page.next_cursor
        assert rest == [f"shift-{i}" for i in range(6, -1, -1)]

    async def test_filters_by_type_entity_and_time(self, store: SessionStore) -> None:
        user = f"filter-{uuid.uuid4().hex[:6]}"
        await store.upsert(Session(session_id=_sid(), user_id=user, agent_id="agent-x"))
        team = await store.upsert(
            Session(session_id=_sid(), user_id=user, session_type="team", team_id="x-team")
        )
        flow = await store.upsert(
            Session(session_id=_sid(), user_id=user, session_type="workflow", workflow_id="agent-x")
        )
        by_entity = await store.get_all_session_ids(user_id=user, entity_id="agent-x")
        assert by_entity[0] == flow.session_id
        assert len(by_entity) == 2
        assert await store.get_all_session_ids(user_id=user, entity_id="x-team") == [
            team.session_id
        ]
        assert await store.get_all_session_ids(user_id=user, entity_id="nobody") == []
        teams = await store.list_sessions(user_id=user, session_type="team")
        assert [s.session_id for s in teams.items] == [team.session_id]
        assert team.updated_at is not None
        after = await store.list_sessions(user_id=user, updated_after=team.updated_at)
        assert [s.session_id for s in after.items] == [flow.session_id]
        agent_pages = await store.list_sessions(entity_id="agent-x", user_id=user, limit=1)
        assert agent_pages.next_cursor is not None
        second = await store.list_sessions(
            entity_id="agent-x", user_id=user, limit=1, cursor=agent_pages.next_cursor
        )
        assert second.next_cursor is None
        assert [s.session_id for s in agent_pages.items + second.items] == by_entity

    async def test_listing_loads_runs_only_when_asked(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0), _run(1)], user_id="runs-lister")
        plain = await store.list_sessions(user_id="runs-lister")
        assert plain.items[0].runs == []
        assert plain.items[0].run_count == 2
        full = await store.list_sessions(user_id="runs-lister", include_runs=True)
        assert [r["input"] for r in full.items[0].runs] == ["question 0", "question 1"]
        (recent,) = await store.get_recent_sessions(user_id="runs-lister", include_runs=True)
        assert len(recent.runs) == 2
        (every,) = await store.get_all_sessions(user_id="runs-lister")
        assert every.runs == []

    async def test_a_cursor_is_only_valid_with_its_filters(self, store: SessionStore) -> None:
        for i in range(3):
            await store.append_runs(_sid(), [_run(i)], user_id="cursor-user")
        page = await store.list_sessions(user_id="cursor-user", limit=1)
        assert page.next_cursor is not None
        with pytest.raises(InvalidInputError, match="filters"):
            await store.list_sessions(user_id="someone-else", limit=1, cursor=page.next_cursor)

    async def test_upsert_many_writes_all_or_nothing(self, store: SessionStore) -> None:
        owned = await store.upsert(Session(session_id=_sid(), user_id="alice"))
        fresh = [Session(session_id=_sid(), user_id="bob") for _ in range(3)]
        intruder = Session(session_id=owned.session_id, user_id="bob")
        with pytest.raises(SessionOwnershipError):
            await store.upsert_many([*fresh, intruder])
        for session in fresh:
            assert await store.read(session.session_id) is None
        stored = await store.upsert_many(fresh)
        assert [s.version for s in stored] == [1, 1, 1]
        assert await store.upsert_many([]) == []

    async def test_upsert_many_without_returning_writes_the_same_sessions(
        self, store: SessionStore
    ) -> None:
        def batch(tag: str) -> list[Session]:
            return [
                Session(
                    session_id=f"{tag}-{i}",
                    user_id="loader",
                    session_data={"i": i, "big": 2**70},
                    metadata={"source": "import"},
                    runs=[{"n": n, "text": "é" * n} for n in range(i + 2)],
                )
                for i in range(4)
            ]

        tag = _sid()
        returned = await store.upsert_many(batch(f"{tag}-r"))
        nothing = await store.upsert_many(batch(f"{tag}-n"), returning=False)  # type: ignore[func-returns-value]
        assert nothing is None
        for kept in returned:
            other = await store.read(kept.session_id.replace(f"{tag}-r", f"{tag}-n"))
            assert other is not None
            assert (other.runs, other.session_data, other.metadata, other.version) == (
                kept.runs,
                kept.session_data,
                kept.metadata,
                kept.version,
            )
            assert other.user_id == "loader"
        # Written again without returning: a new version, the history replaced, as returning.
        again = batch(f"{tag}-n")
        again[0].runs = [{"replaced": True}]
        nothing = await store.upsert_many(again, returning=False)  # type: ignore[func-returns-value]
        assert nothing is None
        first = await store.read(f"{tag}-n-0")
        assert first is not None
        assert (first.runs, first.version) == ([{"replaced": True}], 2)
        nothing = await store.upsert_many([], returning=False)  # type: ignore[func-returns-value]
        assert nothing is None
        with pytest.raises(InvalidInputError, match="returning"):
            await store.upsert_many(batch(f"{tag}-x"), returning="no")  # type: ignore[call-overload]
        assert await store.read(f"{tag}-x-0") is None

    # --- lifecycle and schema ------------------------------------------------------------------

    async def test_a_store_that_is_not_open_raises_store_closed(
        self, store_factory: StoreFactory
    ) -> None:
        store = store_factory()
        with pytest.raises(StoreClosedError, match="not open"):
            await store.read(_sid())
        async with store:
            await store.append_runs(_sid(), [_run(0)])
        with pytest.raises(StoreClosedError, match="closed"):
            await store.append_runs(_sid(), [_run(0)])
        with pytest.raises(StoreClosedError):
            await store.list_sessions()
        await store.close()  # idempotent
        with pytest.raises(StoreClosedError):
            await store.open()

    async def test_schema_is_current_and_upgrade_is_idempotent(self, store: SessionStore) -> None:
        version = await store.schema_version()
        assert version >= 1
        report = await store.upgrade_schema()
        assert report.up_to_date
        assert (report.from_version, report.to_version) == (version, version)
        plan = await store.upgrade_schema(dry_run=True)
        assert plan.pending == []
        assert "nothing to do" in str(plan)

    async def test_drop_removes_everything_and_upgrade_recreates(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0)])
        version = await store.schema_version()
        await store.drop()
        assert await store.schema_version() == 0
        report = await store.upgrade_schema()
        assert report.from_version == 0
        assert report.to_version == version
        assert [step.version for step in report.applied] == list(range(1, version + 1))
        assert await store.read(sid) is None
        await store.append_runs(sid, [_run(1)])
        assert await store.get_all_session_ids() == [sid]

    async def test_use_after_drop_is_refused_until_the_schema_is_created_again(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(0)], user_id="u")
        await store.drop()
        calls = [
            store.read(sid),
            store.append_runs(sid, [_run(1)], user_id="u"),
            store.upsert(Session(session_id=sid, user_id="u")),
            store.upsert_many([Session(session_id=sid, user_id="u")]),
            store.delete_session(sid),
            store.list_sessions(),
            store.get_all_session_ids(),
            store.get_recent_sessions(),
        ]
        for call in calls:
            with pytest.raises(MigrationError, match="upgrade_schema"):
                await call
        await store.drop()  # dropping again is harmless
        assert await store.schema_version() == 0
        await store.upgrade_schema(dry_run=True)  # a plan changes nothing
        with pytest.raises(MigrationError):
            await store.read(sid)
        await store.upgrade_schema()
        assert await store.read(sid) is None
        await store.append_runs(sid, [_run(2)], user_id="u")
        assert await store.get_all_session_ids() == [sid]

    async def test_cancelled_calls_leave_no_half_write_and_the_store_usable(
        self, store: SessionStore
    ) -> None:
        sids = [_sid() for _ in range(5)]
        rng = random.Random(7)

        async def turn(i: int) -> None:
            sid = sids[i % 5]
            await store.read(sid, last_runs=2)
            await store.append_runs(sid, [_run(i), _run(i + 1000)], session_data={"i": i})

        for _round in range(3):
            tasks = [asyncio.create_task(turn(i)) for i in range(60)]
            await asyncio.sleep(0)
            for _ in range(rng.randint(1, 5)):
                await asyncio.sleep(0)
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for sid in sids:
            read = await store.read(sid)
            if read is None:
                continue
            assert len(read.runs) == 2 * read.version  # every append whole, or not at all
            inputs = [r["input"] for r in read.runs]
            for first, second in zip(inputs[::2], inputs[1::2], strict=True):
                assert int(second.split()[1]) == int(first.split()[1]) + 1000
        await store.append_runs(sids[0], [_run(0)])
        assert await store.read(sids[0]) is not None

    async def test_concurrent_readers_and_writers_on_many_sessions(
        self, store: SessionStore
    ) -> None:
        sids = [_sid() for _ in range(10)]

        async def agent_turn(i: int) -> int:
            sid = sids[i % 10]
            before = await store.read(sid, user_id="load", last_runs=3)
            state = dict(before.session_data) if before else {}
            state["turns"] = state.get("turns", 0) + 1
            after = await store.append_runs(sid, [_run(i)], user_id="load", session_data=state)
            return after.version

        versions = await asyncio.gather(*(agent_turn(i) for i in range(200)))
        assert len(versions) == 200
        total = 0
        for sid in sids:
            read = await store.read(sid)
            assert read is not None
            assert read.version == len(read.runs) == 20
            total += len(read.runs)
        assert total == 200
        listed = await store.get_all_session_ids(user_id="load")
        assert sorted(listed) == sorted(sids)
