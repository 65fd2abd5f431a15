"""What is particular to the MongoDB driver: queryable BSON documents, writes that stop between
their steps, sessions past 16 MiB, upsert_many's bulk write, configuration and lifecycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson.decimal128 import Decimal128
from pymongo import AsyncMongoClient, MongoClient, monitoring

from async_agent_storage import (
    ConfigurationError,
    MigrationError,
    SerializationError,
    Session,
    SessionConflictError,
    SessionOwnershipError,
    StorageUnavailableError,
    open_store,
)
from async_agent_storage._time import to_us
from async_agent_storage.mongo import MongoStore, _history, _writes
from async_agent_storage.mongo._writes import _STALE_US

from ._server import collect_leaked_sockets, free_port
from .conftest import DB_NAME, MongoTarget

pytestmark = [pytest.mark.anyio, pytest.mark.mongo]
Admin = MongoClient[dict[str, Any]]


@pytest.fixture
async def store(mongo: MongoTarget, collection_name: str) -> AsyncIterator[MongoStore]:
    async with MongoStore(collection_name, mongo.url, DB_NAME, server_selection_timeout=5) as store:
        yield store


def raw(admin: Admin, store: MongoStore, suffix: str = "") -> Any:
    return admin[DB_NAME][store.collection_name + suffix]


def run(i: int, **extra: Any) -> dict[str, Any]:
    return {"input": f"question {i}", "output": f"answer {i}", **extra}


async def settled(store: MongoStore) -> None:
    """Wait for the settles of appends still running in the background (an append's runs are
    copied to the runs collection after its caller has the answer)."""
    assert store._writer is not None
    await store._writer.settled()


def hold_settles(store: MongoStore) -> asyncio.Event:
    """Make the store's settles wait, before copying anything, until the event is set."""
    assert store._writer is not None
    move = store._writer.move
    go = asyncio.Event()

    async def held_back(*args: Any, **kwargs: Any) -> None:
        await go.wait()
        await move(*args, **kwargs)

    store._writer.move = held_back  # type: ignore[method-assign]
    return go


def no_settle(store: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store stop each write after its atomic update, as a crash there would."""

    async def skip(*args: Any, **kwargs: Any) -> None:
        return None

    assert store._writer is not None
    monkeypatch.setattr(store._writer, "settle", skip)
    monkeypatch.setattr(store._writer, "_settle_many", skip)


# --- documents ------------------------------------------------------------------------------------


async def test_documents_are_queryable_bson(store: MongoStore, admin: Admin) -> None:
    stored = await store.upsert(
        Session(
            session_id="q1",
            user_id="u1",
            agent_id="agent-1",
            session_data={"session_state": {"city": "Paris", "visits": 3}},
            metadata={"tags": ["vip", "eu"], "priority": 2, "a.b": 1, "big": 2**70},
            runs=[run(0, run_id="r0")],
        )
    )
    sessions = raw(admin, store)
    doc = sessions.find_one({"_id": "q1"})
    assert doc is not None
    assert doc["session_data"] == {"session_state": {"city": "Paris", "visits": 3}}
    assert doc["metadata"]["tags"] == ["vip", "eu"]
    assert doc["metadata"]["a%2Eb"] == 1  # the documented escape
    assert doc["metadata"]["big"] == Decimal128(str(2**70))
    assert stored.created_at is not None
    assert doc["created_at"] == to_us(stored.created_at)  # exact microseconds, as int64
    assert doc["version"] == 1
    assert doc["run_count"] == 1
    assert "pending" not in doc or doc["pending"] == []  # the runs moved to the runs collection
    assert sessions.count_documents({"session_data.session_state.city": "Paris"}) == 1
    assert sessions.count_documents({"metadata.tags": "vip", "metadata.priority": {"$gte": 2}}) == 1
    assert sessions.count_documents({"metadata.big": {"$gt": 2**62}}) == 1
    (row,) = raw(admin, store, "_runs").find({"session_id": "q1"})
    assert (row["seq"], row["run_id"], row["version"]) == (0, "r0", 1)
    assert row["run"] == {"run_id": "r0", "input": "question 0", "output": "answer 0"}
    read = await store.read("q1")
    assert read == stored


async def test_a_write_stopped_before_moving_its_runs_is_whole_and_finished_later(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("crash", [run(0), run(1)], user_id="u")
    await settled(store)
    with monkeypatch.context() as patch:
        no_settle(store, patch)
        stopped = await store.append_runs(
            "crash", [run(2), run(3)], user_id="u", session_data={"n": 2}
        )
    sessions, runs = raw(admin, store), raw(admin, store, "_runs")
    assert runs.count_documents({"session_id": "crash"}) == 2  # the new runs were not copied
    assert len(sessions.find_one({"_id": "crash"})["pending"]) == 1
    # Every reader sees the write whole.
    read = await store.read("crash")
    assert read is not None
    assert [r["input"] for r in read.runs] == [f"question {i}" for i in range(4)]
    assert (read.version, read.session_data) == (2, {"n": 2})
    tail = await store.read("crash", last_runs=1)
    assert tail is not None
    assert [r["input"] for r in tail.runs] == ["question 3"]
    (listed,) = await store.get_all_sessions(user_id="u", include_runs=True)
    assert listed.runs == read.runs
    assert stopped.runs == read.runs[2:]
    # A write that comes after finishes the abandoned one once it is old enough.
    sessions.update_one({"_id": "crash"}, {"$inc": {"pending.0.t": -_STALE_US - 1}})
    await store.append_runs("crash", [run(4)], user_id="u")
    await settled(store)
    assert sessions.find_one({"_id": "crash"})["pending"] == []
    assert runs.count_documents({"session_id": "crash"}) == 5
    read = await store.read("crash")
    assert read is not None
    assert [r["input"] for r in read.runs] == [f"question {i}" for i in range(5)]


async def test_an_upsert_stopped_before_moving_its_runs_is_whole(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("cut", [run(i) for i in range(6)])
    tail = await store.read("cut", last_runs=3)
    assert tail is not None
    tail.runs = [run(30)]  # replaces runs 3, 4 and 5 with one run
    with monkeypatch.context() as patch:
        no_settle(store, patch)
        await store.upsert(tail)
    read = await store.read("cut")
    assert read is not None
    assert [r["input"] for r in read.runs] == [
        "question 0",
        "question 1",
        "question 2",
        "question 30",
    ]
    # The runs past the new end are still stored but never read; the next write removes them.
    assert raw(admin, store, "_runs").count_documents({"session_id": "cut"}) == 6
    again = await store.read("cut")
    assert again is not None
    again.runs = again.runs[:2]
    await store.upsert(again)
    assert raw(admin, store, "_runs").count_documents({"session_id": "cut"}) == 2


async def test_a_reader_never_sees_two_versions_mixed(store: MongoStore) -> None:
    """Writers replace the whole history (of two different lengths) while readers read it."""
    await store.upsert(Session(session_id="mix", runs=[{"v": "a"}] * 3))
    stop = asyncio.Event()

    async def writer() -> None:
        for i in range(20):
            runs = [{"v": "a"}] * 3 if i % 2 else [{"v": "b"}] * 5
            await store.upsert(Session(session_id="mix", runs=runs))
        stop.set()

    async def reader() -> list[list[str]]:
        seen = []
        while not stop.is_set():
            read = await store.read("mix")
            assert read is not None
            seen.append([r["v"] for r in read.runs])
        return seen

    _, *seen = await asyncio.gather(writer(), reader(), reader())
    for runs in [r for reads in seen for r in reads]:
        assert runs in (["a"] * 3, ["b"] * 5)


async def test_runs_of_a_deleted_session_never_come_back(store: MongoStore, admin: Admin) -> None:
    await store.append_runs("gone", [run(0), run(1)])
    await settled(store)
    old_runs = list(raw(admin, store, "_runs").find({"session_id": "gone"}, {"_id": 0}))
    assert await store.delete_session("gone")
    assert raw(admin, store, "_runs").count_documents({"session_id": "gone"}) == 0
    # As if the process had died between deleting the session and its runs:
    raw(admin, store, "_runs").insert_many(old_runs)
    again = await store.append_runs("gone", [run(9)])
    assert again.version == 1
    read = await store.read("gone")
    assert read is not None
    assert [r["input"] for r in read.runs] == ["question 9"]


async def test_a_session_can_outgrow_the_16_mib_document_limit(store: MongoStore) -> None:
    blob = "x" * (1024 * 1024)
    for i in range(18):
        await store.append_runs("big", [{"i": i, "blob": blob}])
    read = await store.read("big")
    assert read is not None
    assert len(read.runs) == 18
    assert sum(len(r["blob"]) for r in read.runs) > 16 * 1024 * 1024
    tail = await store.read("big", last_runs=1)
    assert tail is not None
    assert [r["i"] for r in tail.runs] == [17]
    assert tail.runs_offset == 17


async def test_a_write_larger_than_a_mongodb_document_is_refused_whole(
    mongo: MongoTarget, collection_name: str
) -> None:
    """Only with max_session_bytes raised past 16 MiB: one write is one document update."""
    big = "x" * (17 * 1024 * 1024)
    store = MongoStore(collection_name, mongo.url, DB_NAME, max_session_bytes=64 * 1024 * 1024)
    async with store:
        await store.append_runs("big", [run(0)])
        with pytest.raises(SerializationError, match="16 MiB"):
            await store.append_runs("big", [{"blob": big}])
        with pytest.raises(SerializationError, match="16 MiB"):
            await store.upsert(Session(session_id="big2", session_data={"blob": big}))
        read = await store.read("big")
        assert read is not None
        assert (read.version, len(read.runs)) == (1, 1)
        assert await store.read("big2") is None


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_no_call_uses_a_multi_document_transaction(
    mongo: MongoTarget, collection_name: str
) -> None:
    """A standalone mongod refuses transactions (mongoeco accepts them, so only this shows it)."""
    listener = Commands()
    options = {"event_listeners": [listener]}
    async with MongoStore(collection_name, mongo.url, DB_NAME, client_options=options) as store:
        await store.append_runs("t", [run(0)], user_id="u", session_data={"a": 1})
        read = await store.read("t", last_runs=1)
        assert read is not None
        await store.upsert(read)
        await store.upsert(Session(session_id="t2", user_id="u"), if_version=0)
        await store.upsert_many([Session(session_id=f"t{i}", user_id="u") for i in range(3, 6)])
        await store.list_sessions(user_id="u", include_runs=True)
        await store.delete_session("t2")
        await store.append_runs("t", [run(1, run_id="r1")], user_id="u", state_patch={"b": 2})
        await store.append_runs("t", [run(2)], user_id="u", if_version=3)
        await store.get_run("t", "r1", user_id="u")
        await store.count_sessions(user_id="u")
        await store.fork_session("t", "t-fork", at_run="r1", user_id="u")
        await store.pop_runs("t", user_id="u")
        await store.truncate_runs("t", keep_last=1, user_id="u")
        await store.clear_runs("t", user_id="u")
        await store.upgrade_schema()
    names = [name for name, _ in listener.commands]
    assert {"findAndModify", "find"} <= set(names)
    for name, command in listener.commands:
        assert name not in ("commitTransaction", "abortTransaction"), name
        assert "startTransaction" not in command, name
        assert "autocommit" not in command, name


class ByTask(monitoring.CommandListener):
    """The commands sent, each with whether an append's background settle sent it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bool]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("endSessions", "hello", "isMaster"):
            return  # the client's own
        task = asyncio.current_task()
        coro = None if task is None else task.get_coro()
        self.sent.append((event.command_name, getattr(coro, "__qualname__", "") == "Writer.settle"))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def caller(self) -> list[str]:
        return [name for name, background in self.sent if not background]

    def settle(self) -> list[str]:
        return [name for name, background in self.sent if background]


async def test_an_append_answers_after_one_round_trip_and_three_with_caller_given_run_ids(
    mongo: MongoTarget, collection_name: str
) -> None:
    """The round trips of append_runs in its caller's path (docs/benchmarks.md): the atomic
    update of the session document. The settle (the new runs copied to the runs collection,
    then pulled from the document's `pending`) runs afterwards, in the background. Runs with ids
    the caller gave (the only ids a retry repeats) first read the session and the stored runs
    with those ids, for exactly-once appends."""
    listener = ByTask()
    options = {"event_listeners": [listener]}
    async with MongoStore(collection_name, mongo.url, DB_NAME, client_options=options) as store:
        await store.append_runs("t", [run(0)], user_id="u", session_data={"a": 1})
        await settled(store)
        listener.sent.clear()
        await store.append_runs("t", [run(1)], user_id="u", state_patch={"b": 2})
        await settled(store)
        assert listener.caller() == ["findAndModify"]
        assert listener.settle() == ["update", "update"]
        listener.sent.clear()
        await store.append_runs("t", [run(2, run_id="r2")], user_id="u", state_patch={"b": 3})
        await settled(store)
        assert listener.caller() == ["find", "find", "findAndModify"]
        assert listener.settle() == ["update", "update"]


async def test_an_append_is_settled_after_its_answer(store: MongoStore, admin: Admin) -> None:
    await store.append_runs("s", [run(0)])
    await settled(store)
    appended = await store.append_runs("s", [run(1), run(2)])
    # Answered: the runs are still in the session document, and readable from there.
    assert store.stats()["settles_in_flight"] == 1
    assert [len(e["runs"]) for e in raw(admin, store).find_one({"_id": "s"})["pending"]] == [2]
    read = await store.read("s")
    assert read is not None
    assert read.runs[1:] == appended.runs
    await settled(store)
    assert store.stats()["settles_in_flight"] == 0
    assert raw(admin, store).find_one({"_id": "s"})["pending"] == []
    rows = raw(admin, store, "_runs").find({"session_id": "s"}).sort("seq")
    assert [(row["seq"], row["version"], row["run"]) for row in rows] == [
        (0, 1, run(0)),
        (1, 2, run(1)),
        (2, 2, run(2)),
    ]


async def test_an_append_waits_only_while_its_session_has_its_bound_of_appends_settling(
    store: MongoStore, admin: Admin
) -> None:
    """Appends to one session faster than their settles would pile their runs up in the
    session document, which MongoDB caps at 16 MiB; below the bound, appends to one session
    do not queue behind each other's settles."""
    go = hold_settles(store)
    bound = _writes.APPENDS_PER_SESSION
    for i in range(bound):  # each answers though every settle before it is still held
        await asyncio.wait_for(store.append_runs("s", [run(i)]), 10)
    assert len(raw(admin, store).find_one({"_id": "s"})["pending"]) == bound
    await store.append_runs("other", [run(0)])  # the bound is per session
    one_past = asyncio.ensure_future(store.append_runs("s", [run(bound)]))
    done, _ = await asyncio.wait([one_past], timeout=0.5)
    assert not done  # waits for one of its session's settles
    assert len(raw(admin, store).find_one({"_id": "s"})["pending"]) == bound
    go.set()
    assert (await one_past).version == bound + 1
    await settled(store)
    read = await store.read("s")
    assert read is not None
    assert [r["input"] for r in read.runs] == [f"question {i}" for i in range(bound + 1)]
    assert raw(admin, store).find_one({"_id": "s"})["pending"] == []
    assert raw(admin, store, "_runs").count_documents({"session_id": "s"}) == bound + 1


async def test_appends_that_fail_and_waits_cancelled_give_their_place_back(
    store: MongoStore,
) -> None:
    """A session's places are not used up by appends that wrote nothing."""
    assert store._writer is not None
    await store.append_runs("s", [run(0)], user_id="u")
    for i in range(2 * _writes.APPENDS_PER_SESSION):
        with pytest.raises(SessionOwnershipError):
            await store.append_runs("s", [run(i)], user_id="someone else")
        with pytest.raises(SessionConflictError):
            await store.append_runs("s", [run(i)], user_id="u", if_version=7)
    assert store._writer._rooms == {}
    go = hold_settles(store)
    bound = _writes.APPENDS_PER_SESSION
    await asyncio.gather(*(store.append_runs("s", [run(i)], user_id="u") for i in range(bound)))
    # (a store's write goes on when its caller is cancelled: cancel the wait for a place itself)
    waiting = asyncio.ensure_future(store._writer.slot("s"))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    go.set()
    await settled(store)
    assert store._writer._rooms == {}
    stored = await asyncio.wait_for(store.append_runs("s", [run(1)], user_id="u"), 10)
    assert stored.version == bound + 2


async def test_past_its_bound_an_append_settles_before_it_answers(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that falls behind slows the callers down instead of growing a backlog."""
    monkeypatch.setattr(_writes, "SETTLES_IN_FLIGHT", 0)
    await store.append_runs("s", [run(0), run(1)])
    assert store.stats()["settles_in_flight"] == 0
    assert raw(admin, store).find_one({"_id": "s"})["pending"] == []
    assert raw(admin, store, "_runs").count_documents({"session_id": "s"}) == 2


async def test_a_settle_that_lands_after_another_process_deleted_the_session_leaves_nothing(
    store: MongoStore, mongo: MongoTarget, collection_name: str, admin: Admin
) -> None:
    """The waits of `settled` cover one store object; another process may delete (or erase)
    the session while this one's settle is still to run. The settle then removes what it
    copied: an erased user's runs do not come back as orphans."""
    go = hold_settles(store)
    await store.append_runs("s", [run(0), run(1)], user_id="u")
    async with MongoStore(collection_name, mongo.url, DB_NAME) as other:
        erased = await other.delete_user("u")
        assert erased.sessions == 1
    go.set()
    await settled(store)
    assert raw(admin, store).find_one({"_id": "s"}) is None
    assert raw(admin, store, "_runs").count_documents({"session_id": "s"}) == 0
    assert await store.read("s") is None


async def test_close_waits_for_the_settles_in_flight(
    mongo: MongoTarget, collection_name: str, admin: Admin
) -> None:
    store = MongoStore(collection_name, mongo.url, DB_NAME)
    await store.open()
    await asyncio.gather(*(store.append_runs(f"c{i}", [run(i)]) for i in range(20)))
    assert store.stats()["settles_in_flight"] > 0
    await store.close()
    # Had the client been closed under them, their runs would still be in `pending`.
    sessions = admin[DB_NAME][collection_name]
    assert sessions.count_documents({"pending.0": {"$exists": True}}) == 0
    assert admin[DB_NAME][collection_name + "_runs"].count_documents({}) == 20


# --- upsert_many ----------------------------------------------------------------------------------


async def test_upsert_many_writes_runs_versions_and_one_time(
    store: MongoStore, admin: Admin
) -> None:
    first = await store.upsert_many(
        [Session(session_id=f"m{i}", user_id="u", runs=[run(i), run(i + 1)]) for i in range(30)]
    )
    assert {s.updated_at for s in first} == {first[0].updated_at}
    assert [s.version for s in first] == [1] * 30
    second = await store.upsert_many(
        [s.model_copy(update={"runs": s.runs[:1], "metadata": {"n": 2}}) for s in first]
    )
    assert [s.version for s in second] == [2] * 30
    assert [s.created_at for s in second] == [s.created_at for s in first]
    for i in (0, 29):
        read = await store.read(f"m{i}")
        assert read is not None
        assert (read.version, read.metadata, len(read.runs)) == (2, {"n": 2}, 1)
    assert raw(admin, store, "_runs").count_documents({}) == 30
    assert raw(admin, store).count_documents({"pending.0": {"$exists": True}}) == 0


async def test_upsert_many_writes_again_what_another_writer_changed_meanwhile(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.upsert_many([Session(session_id=f"c{i}", user_id="u") for i in range(3)])
    assert store._writer is not None
    bulk = store._writer._bulk_sessions
    interfered = False

    async def interfering(*args: Any, **kwargs: Any) -> set[int]:
        nonlocal interfered
        if not interfered:  # another process writes c1 between the read and the bulk write
            interfered = True
            raw(admin, store).update_one({"_id": "c1"}, {"$inc": {"version": 1}})
        return await bulk(*args, **kwargs)

    monkeypatch.setattr(store._writer, "_bulk_sessions", interfering)
    stored = await store.upsert_many(
        [Session(session_id=f"c{i}", user_id="u", metadata={"mine": i}) for i in range(3)]
    )
    assert interfered
    assert [s.version for s in stored] == [2, 3, 2]
    read = await store.read("c1")
    assert read is not None
    assert (read.version, read.metadata) == (3, {"mine": 1})


async def test_a_fork_copies_the_session_as_read_around_appends_and_again_after_a_rewrite(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the fork's read of its source and its copy, another write comes in. An append
    # adds runs past the ones copied: the fork goes on, a copy of the session as it read it
    # (its state then, not the append's). A rewrite (here an upsert changing run 0) may have
    # changed the runs it copies: the fork starts again and copies the rewritten session.
    await store.append_runs("src", [{"run_id": f"r{i}", "v": 0} for i in range(3)])
    await store.upsert(
        (await store.read("src")).model_copy(update={"session_data": {"state": 0}})  # type: ignore[union-attr]
    )
    copy_history = _history._copy_history
    copies = 0
    meanwhile: list[Any] = []

    async def write_meanwhile(*args: Any, **kwargs: Any) -> None:
        nonlocal copies
        copies += 1
        if meanwhile:
            await meanwhile.pop(0)()
            assert store._writer is not None
            await store._writer.settled()
        await copy_history(*args, **kwargs)

    monkeypatch.setattr(_history, "_copy_history", write_meanwhile)

    async def append() -> None:
        await store.append_runs("src", [{"run_id": "late"}], session_data={"state": 1})

    meanwhile.append(append)
    forked = await store.fork_session("src", "after-append")
    assert (copies, forked is not None) == (1, True)
    read = await store.read("after-append")
    assert read is not None
    assert (read.run_ids, read.session_data) == (["r0", "r1", "r2"], {"state": 0})

    async def rewrite() -> None:
        source = await store.read("src")
        assert source is not None
        source.runs[0] = {"run_id": "r0", "v": 1}
        source.session_data = {"state": 2}
        await store.upsert(source)

    meanwhile.append(rewrite)
    forked = await store.fork_session("src", "after-rewrite")
    assert (copies, forked is not None) == (3, True)
    read = await store.read("after-rewrite")
    assert read is not None
    assert read.run_ids == ["r0", "r1", "r2", "late"]
    assert (read.runs[0], read.session_data) == ({"run_id": "r0", "v": 1}, {"state": 2})


# --- configuration and lifecycle ------------------------------------------------------------------


def test_open_store_maps_mongodb_urls() -> None:
    store = open_store("mongodb://db.example.com:27017/mydb?replicaSet=rs0")
    assert isinstance(store, MongoStore)
    assert (store.collection_name, store.db_name) == ("agent_sessions", "mydb")
    srv = open_store(
        "mongodb+srv://app:s3cret@cluster0.example.net/?retryWrites=true", table_name="chats"
    )
    assert isinstance(srv, MongoStore)
    assert srv.collection_name == "chats"
    assert srv.db_name == "async_agent_storage"
    assert "s3cret" not in repr(srv)
    assert "cluster0.example.net" in repr(srv)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({}, "exactly one of db_url"),
        ({"db_url": "mongodb://h", "client": object()}, "exactly one of db_url"),
        ({"db_url": "postgresql://h"}, "not a MongoDB URL"),
        ({"db_url": "mongodb://h", "db_name": "a/b"}, "not a valid MongoDB database name"),
        ({"db_url": "mongodb://h", "collection_name": "x.y"}, "not a valid name"),
        ({"db_url": "mongodb://h", "pool_max_size": 0}, "pool_max_size"),
        ({"db_url": "mongodb://h", "server_selection_timeout": -1}, "server_selection_timeout"),
    ],
)
def test_bad_configuration_is_refused_without_io(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        MongoStore(**kwargs)


async def test_a_bad_url_is_a_configuration_error_at_open() -> None:
    store = MongoStore(db_url="mongodb://host:notaport")
    with pytest.raises(ConfigurationError):
        await store.open()


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_unreachable_server_is_unavailable_not_missing() -> None:
    store = MongoStore(db_url=f"mongodb://127.0.0.1:{free_port()}", server_selection_timeout=0.3)
    with pytest.raises(StorageUnavailableError, match="cannot be reached"):
        await store.open()
    with pytest.raises(StorageUnavailableError):
        await store.schema_version()
    collect_leaked_sockets()


async def test_a_client_passed_in_is_used_and_never_closed(
    mongo: MongoTarget, collection_name: str
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url)
    try:
        async with MongoStore(collection_name, client=client, db_name=DB_NAME) as store:
            await store.append_runs("c", [run(0)])
        assert await client.admin.command("ping")
        assert await client[DB_NAME][collection_name].count_documents({}) == 1
    finally:
        await client.close()


async def test_after_drop_calls_refuse_until_the_schema_is_created_again(
    store: MongoStore, admin: Admin
) -> None:
    await store.append_runs("d", [run(0)])
    await store.drop()
    assert store.collection_name not in admin[DB_NAME].list_collection_names()
    with pytest.raises(MigrationError, match="upgrade_schema"):
        await store.read("d")
    with pytest.raises(MigrationError, match="upgrade_schema"):
        await store.append_runs("d", [run(1)])
    await store.upgrade_schema()
    assert await store.read("d") is None
    assert (await store.append_runs("d", [run(1)])).version == 1
