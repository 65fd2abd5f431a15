"""What is particular to the turn calls on MongoDB: the exactly-once check of appends (`ids_log`),
the holds of pops, runs still in `pending` under the run-level calls, and copies made inside the
database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymongo import MongoClient

from async_agent_storage._time import now_us
from async_agent_storage.mongo import MongoStore, _append, _history
from async_agent_storage.mongo import _queries as q

from .conftest import DB_NAME, MongoTarget
from .test_store import Commands, no_settle, settled

pytestmark = [pytest.mark.anyio, pytest.mark.mongo]
Admin = MongoClient[dict[str, Any]]


@pytest.fixture
async def store(mongo: MongoTarget, collection_name: str) -> AsyncIterator[MongoStore]:
    async with MongoStore(collection_name, mongo.url, DB_NAME, server_selection_timeout=5) as store:
        yield store


def sessions(admin: Admin, store: MongoStore) -> Any:
    return admin[DB_NAME][store.collection_name]


def runs(admin: Admin, store: MongoStore) -> Any:
    return admin[DB_NAME][store.runs_collection_name]


def interleave(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    before: Callable[[], Awaitable[Any]],
) -> list[int]:
    """Make `module.name` run `before` on its first call only; returns the list of its calls."""
    original = getattr(module, name)
    calls: list[int] = []

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            await before()
        return await original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


# --- exactly-once appends -------------------------------------------------------------------------


async def test_a_retry_that_races_the_first_call_stores_its_run_once(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("s", [{"i": 0}])
    run = {"run_id": "once", "text": "hello"}

    async def first_call() -> None:  # lands between the retry's check and its update
        await store.append_runs("s", [run], state_patch={"n": 1})

    checks = interleave(monkeypatch, _append, "runs_by_id", first_call)
    retried = await store.append_runs("s", [run], state_patch={"n": 1})
    assert len(checks) == 3  # the retry's check, the first call's, the retry's again
    assert (retried.run_ids, retried.runs, retried.runs_offset, retried.version) == (
        ["once"],
        [run],
        1,
        2,
    )
    read = await store.read("s")
    assert read is not None
    assert (read.run_ids[1:], read.version, read.session_data) == (["once"], 2, {"n": 1})


async def test_appends_of_other_runs_between_check_and_update_do_not_make_it_read_again(
    store: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("s", [{"run_id": "r0"}])

    async def others() -> None:
        await store.append_runs("s", [{"run_id": "other"}])
        await store.append_runs("s", [{"no": "id"}], state_patch={"x": 1})

    checks = interleave(monkeypatch, _append, "runs_by_id", others)
    mine = await store.append_runs("s", [{"run_id": "mine"}])
    assert len(checks) == 2  # its own check and the other given-id append's: no second read
    assert (mine.run_ids, mine.runs_offset, mine.version) == (["mine"], 3, 4)
    read = await store.read("s")
    assert read is not None
    assert read.run_ids[:2] == ["r0", "other"]
    assert read.run_ids[3] == "mine"


async def test_a_session_written_before_the_log_falls_back_to_its_version(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("s", [{"run_id": "r0"}])
    sessions(admin, store).update_one({"_id": "s"}, {"$unset": {"log_since": "", "ids_log": ""}})

    async def other() -> None:
        await store.append_runs("s", [{"run_id": "other"}])

    checks = interleave(monkeypatch, _append, "runs_by_id", other)
    mine = await store.append_runs("s", [{"run_id": "mine"}])
    assert len(checks) == 3  # the log did not cover the other append: read again
    assert mine.run_ids == ["mine"]
    read = await store.read("s")
    assert read is not None
    assert read.run_ids == ["r0", "other", "mine"]


async def test_the_log_of_given_ids_stays_bounded(store: MongoStore, admin: Admin) -> None:
    for i in range(q.LOG_SPAN + 10):
        await store.append_runs("s", [{"run_id": f"r{i}"}])
    doc = sessions(admin, store).find_one({"_id": "s"})
    assert len(doc["ids_log"]) == q.LOG_SPAN
    assert doc["log_since"] == doc["version"] - q.LOG_SPAN
    many = [{"run_id": f"m{i}"} for i in range(q.LOG_IDS + 1)]
    await store.append_runs("s", many)
    doc = sessions(admin, store).find_one({"_id": "s"})
    assert "ids_log" not in doc
    assert doc["log_since"] == doc["version"]
    again = await store.append_runs("s", many)  # still exactly once, from the runs collection
    assert again.version == doc["version"]


async def test_a_given_id_only_an_overwritten_pending_entry_holds_is_not_stored(
    store: MongoStore, admin: Admin
) -> None:
    """The check also reads the rows at the seqs where `pending` holds one of the ids: a newer
    write there wins over an older entry still in `pending` (one whose settle is late, say)."""
    await store.append_runs("s", [{"run_id": f"r{i}"} for i in range(3)])
    await store.append_runs("s", [{"run_id": "r3"}])  # version 2, at seq 3
    await settled(store)
    late = {
        "v": 1,
        "start": 3,
        "t": now_us(),
        "runs": [{"run_id": "ghost", "run": {}, "esc": False}],
    }
    sessions(admin, store).update_one({"_id": "s"}, {"$push": {"pending": late}})
    read = await store.read("s")
    assert read is not None
    assert read.run_ids == ["r0", "r1", "r2", "r3"]
    appended = await store.append_runs("s", [{"run_id": "ghost"}, {"run_id": "r2"}])
    assert (appended.run_ids, appended.runs_offset, appended.version) == (["ghost"], 4, 3)
    again = await store.append_runs("s", [{"run_id": "ghost"}, {"run_id": "r2"}])
    assert (again.run_ids, again.version) == (["ghost", "r2"], 3)
    assert again.runs == [{"run_id": "ghost"}, {"run_id": "r2"}]


# --- pops -----------------------------------------------------------------------------------------


async def test_a_pop_reads_back_its_runs_while_an_append_reuses_their_seqs(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("s", [{"i": i} for i in range(5)])

    async def append() -> None:  # after the pop's update, before it reads its runs back
        appended = await store.append_runs("s", [{"i": 99}])
        assert appended.runs_offset == 4
        doc = sessions(admin, store).find_one({"_id": "s"})
        assert [len(e["runs"]) for e in doc["pending"]] == [1]  # held: not copied yet
        read = await store.read("s")
        assert read is not None
        assert [r["i"] for r in read.runs] == [0, 1, 2, 3, 99]

    interleave(monkeypatch, _history, "_read_back", append)
    assert await store.pop_runs("s") == [{"i": 4}]
    doc = sessions(admin, store).find_one({"_id": "s"})
    assert (doc.get("pending"), doc.get("holds")) == ([], [])  # released, and the append moved
    (row,) = runs(admin, store).find({"session_id": "s", "seq": 4})
    assert row["run"] == {"i": 99}
    read = await store.read("s")
    assert read is not None
    assert [r["i"] for r in read.runs] == [0, 1, 2, 3, 99]


async def test_a_hold_left_by_a_pop_that_died_expires(store: MongoStore, admin: Admin) -> None:
    await store.append_runs("s", [{"i": 0}])
    await settled(store)
    hold = {"v": 1, "low": 0, "high": 10}
    sessions(admin, store).update_one({"_id": "s"}, {"$set": {"holds": [{**hold, "t": now_us()}]}})
    await store.append_runs("s", [{"i": 1}])
    await settled(store)
    assert len(sessions(admin, store).find_one({"_id": "s"})["pending"]) == 1  # held
    expired = now_us() - q.HOLD_US - 1
    sessions(admin, store).update_one({"_id": "s"}, {"$set": {"holds": [{**hold, "t": expired}]}})
    await store.append_runs("s", [{"i": 2}])
    await settled(store)
    doc = sessions(admin, store).find_one({"_id": "s"})
    assert len(doc["pending"]) == 1  # its own runs were copied; the held entry waits
    assert runs(admin, store).count_documents({"session_id": "s"}) == 2
    read = await store.read("s")
    assert read is not None
    assert [r["i"] for r in read.runs] == [0, 1, 2]


# --- runs still in pending ------------------------------------------------------------------------


async def test_run_level_calls_see_runs_still_in_pending(
    store: MongoStore, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.append_runs("s", [{"run_id": f"r{i}", "i": i} for i in range(3)])
    await settled(store)
    with monkeypatch.context() as patch:
        no_settle(store, patch)
        await store.append_runs("s", [{"run_id": f"r{i}", "i": i} for i in range(3, 6)])
    assert len(sessions(admin, store).find_one({"_id": "s"})["pending"]) == 1
    assert await store.get_run("s", "r4") == {"run_id": "r4", "i": 4}
    again = await store.append_runs("s", [{"run_id": "r5", "i": 5}])
    assert (again.runs_offset, again.version) == (5, 2)
    forked = await store.fork_session("s", "f", at_run="r4")
    assert forked is not None
    assert forked.run_count == 5
    read = await store.read("f")
    assert read is not None
    assert [r["i"] for r in read.runs] == [0, 1, 2, 3, 4]
    assert await store.truncate_runs("s", keep_last=4) == 2
    read = await store.read("s")
    assert read is not None
    assert (read.run_ids, read.runs_offset) == (["r2", "r3", "r4", "r5"], 0)
    assert "pending" not in sessions(admin, store).find_one({"_id": "s"})


async def test_fork_and_truncate_copy_runs_inside_the_database(
    mongo: MongoTarget, collection_name: str
) -> None:
    listener = Commands()
    options = {"event_listeners": [listener]}
    async with MongoStore(collection_name, mongo.url, DB_NAME, client_options=options) as store:
        await store.append_runs("s", [{"i": i} for i in range(20)])
        listener.commands.clear()
        await store.fork_session("s", "f")
        await store.truncate_runs("s", keep_last=10)
        runs_name = store.runs_collection_name
    # No run travels through Python: the runs collection is only aggregated into (and cleaned).
    on_runs = [(n, c) for n, c in listener.commands if c.get(n) == runs_name]
    assert {n for n, _ in on_runs} == {"aggregate", "delete"}
    for name, command in on_runs:
        if name == "aggregate":
            assert "$merge" in command["pipeline"][-1]
