"""Faults: a server that goes away mid-call and comes back (a proxy that cuts the network, and a
real restart of a server of the tests' own), terminated backends, pool exhaustion, 200 callers on
a pool of 5, cancellation. Every failure is a `StorageUnavailableError`, never a raw asyncpg
error, a hang or `None`, and the store recovers by itself."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from async_agent_storage import PostgresStore, Session, StorageUnavailableError

from ._proxy import Proxy
from ._server import Cluster
from .conftest import StoreMaker

pytestmark = pytest.mark.anyio


def with_params(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def hold_row_lock(url: str, store: PostgresStore, session_id: str) -> asyncpg.Connection:
    """Another client locks the session's row: the store's next write of it waits at the server."""
    connection = await asyncpg.connect(url)
    await connection.execute("BEGIN")
    await connection.execute(
        f"SELECT 1 FROM {store._statements().table} WHERE session_id = $1 FOR UPDATE", session_id
    )
    return connection


async def release(connection: asyncpg.Connection) -> None:
    try:
        await connection.execute("ROLLBACK")
        await connection.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        connection.terminate()


async def until_blocked(task: asyncio.Task[Any], seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)
    assert not task.done()


async def eventually(call: Callable[[], Awaitable[Any]], attempts: int = 20) -> Any:
    """Retry `call` while the store reports the server unavailable; return its first result."""
    for _ in range(attempts):
        try:
            return await call()
        except StorageUnavailableError:
            await asyncio.sleep(0.1)
    raise AssertionError("the store did not recover")


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(pg_url)
    await proxy.start()
    yield proxy
    await proxy.close()


async def test_a_server_that_goes_away_mid_call_and_comes_back(
    make_store: StoreMaker, proxy: Proxy, pg_url: str
) -> None:
    store = make_store(db_url=proxy.url, pool_max_size=3, acquire_timeout=2)
    async with store:
        await store.append_runs("s", [{"i": 0}], user_id="u")
        lock = await hold_row_lock(pg_url, store, "s")
        try:
            blocked = asyncio.create_task(store.append_runs("s", [{"i": 1}], user_id="u"))
            await until_blocked(blocked)
            await proxy.cut()
            with pytest.raises(StorageUnavailableError) as info:
                await blocked
            assert store.table_name in str(info.value)
            assert info.value.maybe_committed  # the statement was sent: its outcome is unknown
            with pytest.raises(StorageUnavailableError) as refused:
                await store.append_runs("s", [{"i": 2}])
            assert not refused.value.maybe_committed  # no connection: never sent
            for call in (
                lambda: store.read("s"),
                lambda: store.append_runs("s", [{"i": 2}]),
                lambda: store.list_sessions(user_id="u"),
            ):
                with pytest.raises(StorageUnavailableError):
                    await call()
        finally:
            await release(lock)
        await proxy.restore()
        read = await eventually(lambda: store.read("s", user_id="u"))
        assert read is not None
        appended = await store.append_runs("s", [{"i": 3}], user_id="u")
        assert appended.runs[0]["i"] == 3
        await proxy.cut()
    # Closing a store whose server is gone succeeds: there is nothing left to close.


async def test_a_real_server_restart(own_cluster: Cluster) -> None:
    store = PostgresStore("restart", own_cluster.url, pool_max_size=3, acquire_timeout=3)
    async with store:
        await store.append_runs("s", [{"i": 0}])
        lock = await hold_row_lock(own_cluster.url, store, "s")
        turn = [{"run_id": "turn-1", "i": 1}]
        try:
            blocked = asyncio.create_task(store.append_runs("s", turn))
            await until_blocked(blocked)
            await asyncio.to_thread(own_cluster.pause)  # fast shutdown: sessions terminated
            # Usually the call fails; but the lock holder may die first, and the append then
            # commit before its own backend reads the shutdown signal.
            (outcome,) = await asyncio.gather(blocked, return_exceptions=True)
            assert isinstance(outcome, Session | StorageUnavailableError), repr(outcome)
            with pytest.raises(StorageUnavailableError):
                await store.read("s")
        finally:
            await release(lock)
            await asyncio.to_thread(own_cluster.resume)
        read = await eventually(lambda: store.read("s"))
        assert read is not None
        assert [r["i"] for r in read.runs] == ([0] if isinstance(outcome, Exception) else [0, 1])
        if isinstance(outcome, StorageUnavailableError):
            assert outcome.maybe_committed
        # Whatever happened, the caller's retry stores the turn once.
        await store.append_runs("s", turn)
        again = await store.read("s")
        assert again is not None
        assert [r["i"] for r in again.runs] == [0, 1]
        await store.append_runs("s", [{"i": 2}])
        await store.drop()


async def test_terminated_backends_are_replaced(
    make_store: StoreMaker, pg_url: str, admin: asyncpg.Connection
) -> None:
    app = f"aas-term-{uuid.uuid4().hex[:8]}"
    store = make_store(
        db_url=with_params(pg_url, application_name=app), pool_min_size=3, pool_max_size=3
    )
    terminate = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1"
    )
    async with store:
        await asyncio.gather(*(store.append_runs(f"s{i}", [{"i": i}]) for i in range(9)))
        # Idle pooled connections killed under the store's feet.
        assert await admin.fetchval(terminate, app) == 3
        outcomes: list[Session | StorageUnavailableError | None] = []
        for i in range(9):
            try:
                outcomes.append(await store.read(f"s{i}"))
            except StorageUnavailableError as exc:
                outcomes.append(exc)
        assert all(isinstance(o, Session | StorageUnavailableError) for o in outcomes)
        assert all(isinstance(o, Session) for o in outcomes[-3:])
        # A backend killed in the middle of a statement.
        lock = await hold_row_lock(pg_url, store, "s0")
        try:
            blocked = asyncio.create_task(store.append_runs("s0", [{"i": 99}]))
            await until_blocked(blocked)
            await admin.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                app,
            )
            with pytest.raises(StorageUnavailableError, match="terminat") as info:
                await blocked
            assert info.value.maybe_committed
        finally:
            await release(lock)
        read = await eventually(lambda: store.read("s0"))
        assert [r["i"] for r in read.runs] == [0]


async def test_an_exhausted_pool_times_out_with_the_numbers(
    make_store: StoreMaker, pg_url: str
) -> None:
    store = make_store(pool_min_size=1, pool_max_size=1, acquire_timeout=0.3)
    async with store:
        await store.append_runs("s", [{"i": 0}])
        lock = await hold_row_lock(pg_url, store, "s")
        try:
            holder = asyncio.create_task(store.append_runs("s", [{"i": 1}]))
            await until_blocked(holder, 0.1)
            started = time.monotonic()
            with pytest.raises(StorageUnavailableError) as info:
                await store.read("s")
            assert 0.25 <= time.monotonic() - started < 2
            message = str(info.value)
            assert "couldn't get a connection after 0.30 sec" in message
            assert "all 1 connections busy" in message
            assert store.table_name in message
        finally:
            await release(lock)
        assert (await holder).version == 2
        read = await store.read("s")
        assert read is not None
        assert len(read.runs) == 2


async def test_two_hundred_callers_on_a_pool_of_five_finish_or_time_out(
    make_store: StoreMaker, pg_url: str
) -> None:
    store = make_store(pool_min_size=1, pool_max_size=5, acquire_timeout=0.5)
    async with store:
        await store.upsert_many([Session(session_id=f"s{i}", user_id="u") for i in range(20)])
        lock = await hold_row_lock(pg_url, store, "s0")  # turns on s0 hold their connection

        async def turn(i: int) -> Any:
            sid = f"s{i % 20}"
            try:
                before = await store.read(sid, user_id="u", last_runs=2)
                assert before is not None
                return await store.append_runs(sid, [{"i": i}], user_id="u")
            except StorageUnavailableError as exc:
                return exc

        try:
            async with asyncio.timeout(60):  # a hang fails the test instead of the run
                tasks = [asyncio.create_task(turn(i)) for i in range(200)]
                await asyncio.sleep(1.5)
                await release(lock)
                results = await asyncio.gather(*tasks)
        finally:
            await release(lock)
        done = [r for r in results if isinstance(r, Session)]
        timed_out = [r for r in results if isinstance(r, StorageUnavailableError)]
        assert len(done) + len(timed_out) == 200
        assert done
        assert timed_out
        assert all("couldn't get a connection after 0.50 sec" in str(e) for e in timed_out)
        stats = store.stats()  # connections kept for the next calls count as idle
        assert stats["pool_in_use"] == 0
        assert stats["pool_idle"] == stats["pool_size"]
        total = sum(len(s.runs) for s in await store.get_all_sessions(include_runs=True))
        assert total == len(done)


async def _backends(admin: asyncpg.Connection, app: str) -> int:
    count: int = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
    )
    return count


async def test_connections_kept_between_calls_go_back_to_the_pool_once_unused(
    make_store: StoreMaker, pg_url: str, admin: asyncpg.Connection
) -> None:
    """A call's connection is kept for the next call instead of going back through asyncpg;
    unused for a second it goes back, and the pool's inactivity lifetime closes what load no
    longer needs. Closing the store closes the kept ones too."""
    app = f"aas-keep-{uuid.uuid4().hex[:8]}"
    store = make_store(
        db_url=with_params(pg_url, application_name=app),
        pool_min_size=1,
        pool_max_size=4,
        max_inactive_connection_lifetime=0.5,
    )
    async with store:
        await store.upsert_many([Session(session_id=f"s{i}") for i in range(4)])
        reads = await asyncio.gather(*(store.read(f"s{i}") for i in range(4)))
        assert all(r is not None for r in reads)
        stats = store.stats()
        assert (stats["pool_size"], stats["pool_idle"], stats["pool_in_use"]) == (4, 4, 0)
        assert store._pool is not None
        assert store._pool.kept == 4  # none went back to asyncpg
        assert store._pool.pool.get_idle_size() == 0
        assert await store.read("s0") is not None  # served by a kept connection
        assert store._pool.kept == 4
        for _ in range(100):  # back to asyncpg after 1 s unused, closed 0.5 s later
            if store._pool.pool.get_size() == 1:
                break
            await asyncio.sleep(0.05)
        assert store._pool.kept == 0
        assert store._pool.pool.get_size() == 1
        assert await _backends(admin, app) == 1
        await asyncio.gather(*(store.read(f"s{i}") for i in range(4)))
        assert store._pool.kept == 4
    for _ in range(40):  # the backends see the goodbye shortly after close
        if await _backends(admin, app) == 0:
            break
        await asyncio.sleep(0.05)
    assert await _backends(admin, app) == 0


async def test_cancelled_calls_leave_no_connection_or_transaction_open(
    make_store: StoreMaker, pg_url: str, admin: asyncpg.Connection
) -> None:
    app = f"aas-cancel-{uuid.uuid4().hex[:8]}"
    store = make_store(
        db_url=with_params(pg_url, application_name=app), pool_min_size=4, pool_max_size=4
    )
    rng = random.Random(11)
    async with store:

        def call(i: int) -> Coroutine[Any, Any, Any]:
            sid = f"s{i % 4}"
            kind = i % 5
            if kind == 0:
                return store.read(sid, last_runs=3)
            if kind == 1:
                return store.append_runs(sid, [{"i": i}, {"i": -i}], session_data={"i": i})
            if kind == 2:
                return store.upsert(Session(session_id=f"u{i % 3}", runs=[{"i": i}]))
            if kind == 3:
                return store.upsert_many(
                    [Session(session_id=f"m{(i + k) % 6}", runs=[{"k": k}]) for k in range(3)]
                )
            return store.delete_session(f"u{i % 3}")

        for _ in range(6):
            tasks = [asyncio.create_task(call(i)) for i in range(60)]
            for _ in range(rng.randint(1, 40)):
                await asyncio.sleep(0)
            await asyncio.sleep(rng.random() * 0.01)
            for task in tasks:
                if rng.random() < 0.5:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        for _ in range(50):  # a cancelled call's release finishes in the background
            if store.stats()["pool_in_use"] == 0:
                break
            await asyncio.sleep(0.05)
        assert store.stats()["pool_in_use"] == 0
        states = await admin.fetch(
            "SELECT state FROM pg_stat_activity WHERE application_name = $1", app
        )
        assert states
        assert {row[0] for row in states} == {"idle"}
        for i in range(4):  # every append whole, or not at all
            read = await store.read(f"s{i}")
            if read is not None:
                inputs = [r["i"] for r in read.runs]
                assert inputs[::2] == [-x for x in inputs[1::2]]
        await store.append_runs("s0", [{"i": 0}])


async def test_a_server_that_never_answers_times_out_at_open(pg_schema: str) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, read, never answer
        writer.close()

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        store = PostgresStore(
            "t", f"postgresql://u@127.0.0.1:{port}/d", schema=pg_schema, acquire_timeout=0.3
        )
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=r"open a connection within 0\.30"):
            await store.open()
        assert time.monotonic() - started < 5
    finally:
        silent.close()
        await silent.wait_closed()


async def test_a_statement_over_command_timeout_is_unavailable_and_the_store_goes_on(
    make_store: StoreMaker, pg_url: str
) -> None:
    store = make_store(pool_min_size=1, pool_max_size=1, command_timeout=0.3)
    async with store:
        await store.append_runs("s", [{"i": 0}])
        lock = await hold_row_lock(pg_url, store, "s")
        try:
            with pytest.raises(StorageUnavailableError, match=r"command_timeout=0\.3"):
                await store.append_runs("s", [{"i": 1}])
        finally:
            await release(lock)
        read = await store.read("s")
        assert read is not None
        assert [r["i"] for r in read.runs] == [0]
        assert (await store.append_runs("s", [{"i": 2}])).version == 2


async def test_a_pool_passed_in_and_busy_elsewhere_times_out_and_gives_back_late_connections(
    make_store: StoreMaker, pg_url: str
) -> None:
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
    try:
        store = make_store(db_url=None, pool=pool, acquire_timeout=0.2)
        async with store:
            await store.append_runs("s", [{"i": 0}])
            taken = await pool.acquire()  # the application holds the pool's only connection
            try:
                with pytest.raises(StorageUnavailableError, match="couldn't get a connection"):
                    await store.read("s")
                waiting = asyncio.create_task(store.read("s"))
                await asyncio.sleep(0.05)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            finally:
                await pool.release(taken)
            # The acquisitions given up on finish in the background and are returned.
            for _ in range(40):
                if pool.get_idle_size() == pool.get_size():
                    break
                await asyncio.sleep(0.05)
            assert pool.get_idle_size() == pool.get_size()
            assert await store.read("s") is not None
    finally:
        await pool.close()


async def test_ping_and_stats_say_when_the_server_is_gone(
    make_store: StoreMaker, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    password_url = proxy.url.replace("://postgres@", "://postgres:SECRET-PASSWORD-1@")
    store = make_store(db_url=password_url, pool_min_size=2, pool_max_size=2)
    async with store:
        await store.ping()
        await store.append_runs("s", [{"i": 0}])
        stats = store.stats()
        assert stats["backend"] == "postgresql"
        assert (stats["pool_max_size"], stats["pool_in_use"], stats["pool_waiting"]) == (2, 0, 0)
        assert stats["pool_size"] == stats["pool_idle"] == 2
        assert stats["calls"] == {"ping": 1, "append_runs": 1}
        await proxy.cut()
        with pytest.raises(StorageUnavailableError) as info:
            await store.ping()
        assert not info.value.maybe_committed
        assert store.stats()["errors"] == {"ping": 1}
        await proxy.restore()
        await eventually(store.ping)
    assert "SECRET-PASSWORD-1" not in repr(store)
    for record in caplog.records:
        assert "SECRET-PASSWORD-1" not in record.getMessage()
    replaced = [r for r in caplog.records if "a connection broke" in r.getMessage()]
    assert all(r.name == "async_agent_storage.postgres" for r in replaced)
