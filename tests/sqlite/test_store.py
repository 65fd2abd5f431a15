"""What is particular to the SQLite driver: group commit, cancellation down to the connections,
locks held by other processes, configuration errors, and JSON that SQLite's JSON1 can query."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from async_agent_storage import (
    ConfigurationError,
    InvalidInputError,
    SerializationError,
    Session,
    SqliteStore,
    StorageError,
    StorageUnavailableError,
    open_store,
)
from async_agent_storage.sqlite._connection import (
    HERE_BATCH,
    HERE_BATCH_LOADED,
    _enter_wal,
    run,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(db_file=tmp_path / "store.db") as store:
        yield store


async def in_transaction(store: SqliteStore) -> list[bool]:
    assert store._io is not None
    assert store._io is not None
    connections = [store._io.writer.connection, *store._io.readers.connections]
    return [await run(c, lambda db: db.in_transaction) for c in connections]


async def test_concurrent_writes_share_transactions(store: SqliteStore) -> None:
    assert store._io is not None
    before = store._io.writer.batches
    await asyncio.gather(*(store.append_runs(f"s{i % 10}", [{"i": i}]) for i in range(300)))
    batches = store._io.writer.batches - before
    assert store._io.writer.calls >= 300
    assert batches < 300 / 4, f"{batches} transactions for 300 concurrent writes"
    for i in range(10):
        read = await store.read(f"s{i}")
        assert read is not None
        assert len(read.runs) == 30


async def test_concurrent_reads_share_thread_calls(store: SqliteStore) -> None:
    await store.append_runs("r", [{"i": i} for i in range(10)])
    assert store._io is not None
    before_batches, before_reads = store._io.readers.batches, store._io.readers.reads
    sessions = await asyncio.gather(*(store.read("r", last_runs=3) for _ in range(300)))
    assert all(s is not None and len(s.runs) == 3 for s in sessions)
    assert store._io.readers.reads - before_reads == 300
    assert store._io.readers.batches - before_batches < 300 / 4


async def test_a_conflict_in_a_batch_undoes_only_its_own_write(store: SqliteStore) -> None:
    base = await store.upsert(Session(session_id="c"))
    results = await asyncio.gather(
        store.append_runs("a", [{"n": 1}]),
        store.upsert(base, if_version=0),  # conflicts, in the same batch as its neighbours
        store.append_runs("b", [{"n": 2}]),
        return_exceptions=True,
    )
    assert isinstance(results[0], Session)
    assert isinstance(results[1], StorageError)
    assert isinstance(results[2], Session)
    assert await store.read("a") is not None
    assert await store.read("b") is not None


async def test_cancelled_calls_leave_no_connection_or_transaction_open(
    store: SqliteStore,
) -> None:
    for round_ in range(5):
        tasks = [
            asyncio.create_task(
                store.append_runs(f"s{i % 3}", [{"i": i}])
                if i % 2
                else store.read(f"s{i % 3}", last_runs=5)
            )
            for i in range(80)
        ]
        for _ in range(round_):
            await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await store.append_runs("after", [{"ok": True}])
    assert store._io is not None
    assert store._io is not None
    # Batches that started before their callers were cancelled run to their end; once they have,
    # nothing is queued, in flight or inside a transaction.
    await asyncio.wait_for(store._io.readers.drain(), timeout=10)
    await asyncio.wait_for(store._io.writer.drain(), timeout=10)
    assert store._io.readers.in_flight == 0
    assert store._io.writer.load == 0
    assert await in_transaction(store) == [False] * (1 + store.reader_connections)
    for sid in ("s0", "s1", "s2"):
        read = await store.read(sid)
        if read is not None:
            assert read.version == len(read.runs)


async def test_close_waits_for_queued_writes(tmp_path: Path) -> None:
    store = SqliteStore(db_file=tmp_path / "close.db")
    await store.open()
    writes = [asyncio.create_task(store.append_runs("s", [{"i": i}])) for i in range(50)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*writes, return_exceptions=True)
    done = [r for r in results if isinstance(r, Session)]
    async with SqliteStore(db_file=tmp_path / "close.db") as again:
        read = await again.read("s")
        assert read is not None
        assert len(read.runs) == len(done) == 50


async def test_a_lock_held_by_another_process_times_out_as_unavailable(tmp_path: Path) -> None:
    db_file = tmp_path / "locked.db"
    async with SqliteStore(db_file=db_file, busy_timeout=0.2) as store:
        await store.append_runs("s", [{"i": 0}])
        holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageUnavailableError, match="locked"):
                await store.append_runs("s", [{"i": 1}])
            read = await store.read("s")  # WAL: readers are not blocked by a writer
            assert read is not None
            assert len(read.runs) == 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        appended = await store.append_runs("s", [{"i": 2}])  # recovers by itself
        assert appended.version == 2


async def test_reads_go_on_while_the_writer_waits_for_another_process(tmp_path: Path) -> None:
    db_file = tmp_path / "stall.db"
    async with SqliteStore(db_file=db_file, busy_timeout=5) as store:
        await store.append_runs("s", [{"i": 0}])
        assert store._io is not None
        holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        try:
            waiting = asyncio.create_task(store.append_runs("s", [{"i": 1}]))
            await asyncio.sleep(0.1)  # the writer is now inside SQLite's busy handler
            assert not waiting.done()
            read = await asyncio.wait_for(store.read("s"), timeout=1)
            assert read is not None
            assert read.version == 1
            assert store._io.readers.reads_beside_writer >= 1
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert (await waiting).version == 2


@pytest.mark.parametrize("trial", range(3))
async def test_a_read_issued_just_after_a_write_that_waits_for_a_lock_does_not_wait_with_it(
    tmp_path: Path, trial: int
) -> None:
    # The read arrives while the write batch has run for less than the stall delay: it must not
    # end up behind that batch on the writer's thread for the whole busy_timeout.
    db_file = tmp_path / "stall.db"
    async with SqliteStore(db_file=db_file, busy_timeout=5) as store:
        await store.append_runs("s", [{"i": 0}])
        holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        try:
            waiting = asyncio.create_task(store.append_runs("s", [{"i": 1}]))
            await asyncio.sleep(0)  # the write batch starts and blocks on the lock
            reads = [asyncio.create_task(store.read("s")) for _ in range(3)]
            done = await asyncio.wait_for(asyncio.gather(*reads), timeout=1)
            assert all(r is not None and r.version == 1 for r in done)
            assert not waiting.done()
        finally:
            holder.execute("COMMIT")
            holder.close()
        assert (await waiting).version == 2


async def test_a_write_waits_for_a_short_lock_instead_of_failing(tmp_path: Path) -> None:
    db_file = tmp_path / "wait.db"
    async with SqliteStore(db_file=db_file, busy_timeout=10) as store:
        await store.append_runs("s", [{"i": 0}])
        holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            appended = await store.append_runs("s", [{"i": 1}])
            assert appended.version == 2
        finally:
            release.join()
            holder.close()


async def test_an_unusable_path_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageUnavailableError):
        await SqliteStore(db_file=tmp_path / "file" / "x.db").open()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StorageError, match="not a database"):
        await SqliteStore(db_file=garbage).open()


@pytest.mark.parametrize(
    "options",
    [
        {"table_name": 'x"; DROP TABLE y; --'},
        {"table_name": "1starts_with_digit"},
        {"table_name": ""},
        {"table_name": "a" * 49},
        {"reader_connections": -1},
        {"busy_timeout": -1},
        {"synchronous": "OFF"},
        {"max_session_bytes": 10},
        {"max_batch": 0},
        {"db_file": ""},
        {"page_size": 256},
        {"page_size": 131072},
        {"page_size": 6000},
        {"page_size": "8192"},
        {"page_size": True},
    ],
)
def test_bad_configuration_is_refused_at_construction(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        SqliteStore(**options)  # type: ignore[arg-type]


async def test_stored_json_is_queryable_with_json1(store: SqliteStore, tmp_path: Path) -> None:
    await store.append_runs(
        "q",
        [{"input": "hi", "tools": [{"name": "search"}]}],
        user_id="u",
        session_data={"session_state": {"city": "Paris", "n": 2**70}},
    )
    with sqlite3.connect(tmp_path / "store.db") as db:
        city = db.execute(
            "SELECT json_extract(session_data, '$.session_state.city') FROM agent_sessions"
        ).fetchone()
        tool = db.execute(
            "SELECT json_extract(body, '$.tools[0].name') FROM agent_sessions_runs"
        ).fetchone()
    assert city == ("Paris",)
    assert tool == ("search",)


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as db:
        size: int = db.execute("PRAGMA page_size").fetchone()[0]
    return size


async def test_page_size_sets_that_of_a_new_file_and_refuses_another_on_one_that_exists(
    tmp_path: Path,
) -> None:
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    async with SqliteStore(db_file=old, auto_upgrade_schema=True) as store:
        await store.append_runs("s", [{"i": 0}])
    default = _page_size(old)  # SQLite's, 4096 unless built otherwise
    other = 16384 if default == 8192 else 8192
    async with SqliteStore(db_file=new, page_size=other, auto_upgrade_schema=True) as store:
        await asyncio.gather(*(store.append_runs("s", [{"i": i}]) for i in range(20)))
    assert _page_size(new) == other
    with pytest.raises(ConfigurationError, match=f"{default}-byte pages"):
        await SqliteStore(db_file=old, page_size=other).open()
    assert _page_size(old) == default
    for path, size in ((new, other), (old, None), (old, default)):
        async with SqliteStore(db_file=path, page_size=size) as store:
            read = await store.read("s")
            assert read is not None
            assert read.runs[0] == {"i": 0}
    async with SqliteStore(page_size=16384) as memory:  # in memory too
        await memory.append_runs("s", [{"i": 0}])
        assert (await memory.read("s")) is not None


async def test_full_synchronous_mode_works(tmp_path: Path) -> None:
    async with SqliteStore(db_file=tmp_path / "full.db", synchronous="FULL") as store:
        await asyncio.gather(*(store.append_runs("s", [{"i": i}]) for i in range(20)))
        read = await store.read("s")
        assert read is not None
        assert len(read.runs) == 20


async def test_open_is_idempotent_and_safe_to_race(tmp_path: Path) -> None:
    store = SqliteStore(db_file=tmp_path / "race.db")
    await asyncio.gather(store.open(), store.open(), store.open())
    assert store._io is not None
    assert len(store._io.readers.connections) == store.reader_connections
    await store.open()
    await store.close()


async def test_a_store_left_open_warns(tmp_path: Path) -> None:
    store = SqliteStore(db_file=tmp_path / "warn.db")
    await store.open()
    with pytest.warns(ResourceWarning, match="never closed"):
        store.__del__()
    await store.close()


async def test_open_store_urls(tmp_path: Path) -> None:
    absolute = tmp_path / "by-url.db"
    store = open_store(f"sqlite:///{absolute}", auto_upgrade_schema=True)
    assert isinstance(store, SqliteStore)
    assert store.db_file == str(absolute)
    assert store.auto_upgrade_schema
    async with store:
        await store.append_runs("s", [{"i": 1}])
    assert absolute.exists()
    memory = open_store("sqlite:///:memory:", table_name="other")
    assert isinstance(memory, SqliteStore)
    assert memory.in_memory
    assert memory.table_name == "other"


async def changes(store: SqliteStore) -> int:
    assert store._io is not None
    return await run(store._io.writer.connection, lambda db: db.total_changes)


async def test_upsert_of_a_session_read_rewrites_only_the_runs_that_changed(
    store: SqliteStore,
) -> None:
    await store.append_runs("s", [{"i": i, "content": None} for i in range(10)])
    tail = await store.read("s", last_runs=5)
    assert tail is not None
    whole = await store.read("s")
    assert whole is not None
    tail_ids = whole.run_ids
    tail.runs[1]["edited"] = True
    tail.runs.append({"i": 10})
    before = await changes(store)
    stored = await store.upsert(tail)
    # The session row, the edited run and the new run: the four unchanged runs are not rewritten.
    assert await changes(store) - before == 3
    read = await store.read("s")
    assert read is not None
    assert [r["i"] for r in read.runs] == list(range(11))
    assert read.runs[6] == {"i": 6, "content": None, "edited": True}
    assert read.run_ids[:10] == tail_ids[:10]
    again = await store.upsert(stored)  # what upsert returned can be written back the same way
    assert again.version == stored.version + 1


async def test_unchanged_runs_are_rewritten_when_the_session_changed_since_it_was_read(
    store: SqliteStore,
) -> None:
    await store.append_runs("s", [{"i": i} for i in range(4)])
    stale = await store.read("s")
    other = await store.read("s")
    assert stale is not None
    assert other is not None
    other.runs[2]["by"] = "another writer"
    await store.upsert(other)
    await store.upsert(stale)  # last writer wins, for every run it holds
    read = await store.read("s")
    assert read is not None
    assert read.runs == stale.runs
    assert "by" not in read.runs[2]


async def test_a_nan_replacing_a_stored_null_is_still_refused(store: SqliteStore) -> None:
    await store.append_runs("s", [{"score": None}])
    session = await store.read("s")
    assert session is not None
    session.runs[0]["score"] = float("nan")
    with pytest.raises(SerializationError, match=r"runs\[0\]\.score"):
        await store.upsert(session)


def test_switching_to_wal_waits_out_a_busy_answer_within_busy_timeout(tmp_path: Path) -> None:
    """SQLite may answer SQLITE_BUSY at once (no busy handler) when waiting could deadlock, as
    when processes open a new file together; the switch to WAL then tries again for up to
    busy_timeout. Here the busy handler is off (timeout=0), so every busy answer is immediate."""
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _enter_wal(db, busy_timeout=0.05)  # the lock outlasts the budget: the error stands
        release = threading.Timer(0.2, holder.execute, ("COMMIT",))
        release.start()
        _enter_wal(db, busy_timeout=10)  # the lock goes after 0.2 s: the switch then happens
        release.join()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
        holder.close()


async def test_short_calls_run_on_the_event_loop_in_batches(tmp_path: Path) -> None:
    async with SqliteStore(db_file=tmp_path / "here.db") as store:
        assert store._io is not None
        writer = store._io.writer
        appended = await asyncio.gather(
            *(store.append_runs(f"s{i}", [{"i": i}]) for i in range(200))
        )
        assert [s.version for s in appended] == [1] * 200
        # Every call queued in one loop iteration, all of them run on the loop (nothing held the
        # connection's thread): with more than HERE_BATCH queued (the loop is saturated), in
        # batches of HERE_BATCH_LOADED, the last HERE_BATCH together.
        assert (200 - HERE_BATCH) % HERE_BATCH_LOADED == 0
        batches = (200 - HERE_BATCH) // HERE_BATCH_LOADED + 1
        assert writer.batches_here == writer.batches == batches
        reads = await asyncio.gather(*(store.read(f"s{i}", last_runs=10) for i in range(200)))
        assert all(r is not None and r.runs == [{"i": i}] for i, r in enumerate(reads))
        assert store._io.readers.primary.batches_here >= 1
        # A whole history and a listing may run long: they go to the thread.
        before = store._io.readers.primary.batches_here
        assert await store.read("s1") is not None
        assert store._io.readers.primary.batches_here == before
        assert len((await store.list_sessions(limit=500)).items) == 200
        assert store._io.readers.primary.batches_here == before
        # As many as one batch takes: one batch.
        await asyncio.gather(*(store.append_runs(f"t{i}", [{"i": i}]) for i in range(HERE_BATCH)))
        assert writer.batches_here == writer.batches == batches + 1


async def test_a_listing_page_runs_on_the_event_loop_unless_it_holds_many_runs(
    tmp_path: Path,
) -> None:
    async with SqliteStore(db_file=tmp_path / "pages.db") as store:
        assert store._io is not None
        primary = store._io.readers.primary
        for i in range(3):
            await store.append_runs(f"small-{i}", [{"i": i, "n": n} for n in range(5)], user_id="u")
        # A page of 10 sessions holding 15 runs: on the loop.
        before = primary.batches_here
        page = await store.list_sessions(user_id="u", limit=10, include_runs=True)
        assert primary.batches_here == before + 1
        assert sorted(len(s.runs) for s in page.items) == [5, 5, 5]
        # Without runs, a page of up to 100 sessions: on the loop too; a larger one on the thread.
        await store.list_sessions(user_id="u", limit=100)
        assert primary.batches_here == before + 2
        await store.list_sessions(user_id="u", limit=101)
        assert primary.batches_here == before + 2
        # A page holding more runs than a call on the loop may read (256) starts there, finds
        # out, and runs again on the thread: every run is returned, exactly as stored.
        big = [{"i": 9, "n": n, "text": "x" * 50} for n in range(300)]
        await store.append_runs("big", big, user_id="u")
        reads = primary.batches
        page = await store.list_sessions(user_id="u", limit=10, include_runs=True)
        assert primary.batches_here == before + 2
        assert primary.batches == reads + 1  # the one run that returned the page: the thread's
        listed = {s.session_id: s for s in page.items}
        assert listed["big"].runs == big
        assert listed["small-1"].runs == [{"i": 1, "n": n} for n in range(5)]


async def test_without_inline_every_call_runs_on_the_thread(tmp_path: Path) -> None:
    async with SqliteStore(db_file=tmp_path / "thread.db", inline=False) as store:
        assert store._io is not None
        await asyncio.gather(*(store.append_runs(f"s{i}", [{"i": i}]) for i in range(50)))
        assert await store.read("s1") is not None
        assert store._io.writer.batches_here == 0
        assert store._io.readers.primary.batches_here == 0
        assert store.stats()["write_batches"] >= 1


@pytest.mark.parametrize("readers", [1, 0], ids=["in-two-steps", "on-the-writer-only"])
async def test_the_wal_stays_small_under_sustained_writes(tmp_path: Path, readers: int) -> None:
    db_file = tmp_path / "wal.db"
    async with SqliteStore(db_file=db_file, reader_connections=readers) as store:
        # 2,000 appends of 2 KB with no pause: checkpoints must catch up while writes go on.
        for round_ in range(10):
            await asyncio.gather(
                *(
                    store.append_runs(f"s{i}", [{"text": "x" * 2000, "round": round_}])
                    for i in range(200)
                )
            )
        # And bulk writes, each one call: weighed by their runs toward the next checkpoint.
        for chunk in range(5):
            await store.upsert_many(
                [
                    Session(session_id=f"b{chunk}-{i}", runs=[{"text": "y" * 2000}] * 10)
                    for i in range(100)
                ]
            )
        assert store.stats()["checkpoints"] >= 5
        assert store._io is not None
        assert store._io.checkpoints is not None
        # With a reader's connection, most of each checkpoint's copying ran there, beside the
        # writer; the writer's thread copied the rest.
        copied_beside = store._io.checkpoints.copied_beside
        assert copied_beside >= 5 if readers else copied_beside == 0
        # The file keeps the size the WAL reached; it restarts from its start after each
        # checkpoint (here 8.8 MB in two steps, 4.4 MB on the writer only; 39 MB when they ran
        # only beside the writer, on a reader's connection: they never caught up).
        wal = await asyncio.to_thread(os.path.getsize, f"{db_file}-wal")
        assert wal < 16 * 1024 * 1024, f"the WAL grew to {wal} bytes"
    async with SqliteStore(db_file=db_file) as again:
        read = await again.read("s7")
        assert read is not None
        assert read.runs[-1]["round"] == 9


async def test_inline_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="inline"):
        SqliteStore(db_file=tmp_path / "x.db", inline="yes")  # type: ignore[arg-type]


async def test_a_cancelled_long_call_does_not_keep_short_ones_off_the_event_loop(
    tmp_path: Path,
) -> None:
    async with SqliteStore(db_file=tmp_path / "cancel.db") as store:
        assert store._io is not None
        primary = store._io.readers.primary
        await store.append_runs("s", [{"i": 0}])
        for _ in range(3):
            listing = asyncio.create_task(store.list_sessions())  # runs on the thread
            await asyncio.sleep(0)
            listing.cancel()
            await asyncio.gather(listing, return_exceptions=True)
        await asyncio.wait_for(store._io.readers.drain(), 5)
        before = primary.batches_here
        assert await store.read("s", last_runs=5) is not None
        assert primary.batches_here == before + 1


async def test_the_upsert_check_of_run_ids_looks_them_up_by_index(store: SqliteStore) -> None:
    # A session of 1,000 runs: an upsert of its tail must not read the runs before the tail to
    # find a repeated id (it did, through the `(session_id, seq)` key, for the ORDER BY).
    await store.upsert(Session(session_id="long", runs=[{"run_id": f"r{i}"} for i in range(1000)]))
    assert store._io is not None
    sql = store._sql

    def plan(db: sqlite3.Connection) -> list[str]:
        rows = db.execute(f"EXPLAIN QUERY PLAN {sql.held_run_id}", ("long", 990, '["x"]'))
        return [row[3] for row in rows]

    steps = await run(store._io.writer.connection, plan)
    assert any("USING INDEX agent_sessions_runs_id" in step for step in steps), steps
    tail = await store.read("long", last_runs=10)
    assert tail is not None
    tail.runs.append({"run_id": "r5"})  # repeats a run kept before the tail
    with pytest.raises(InvalidInputError, match="before runs_offset"):
        await store.upsert(tail)
