"""Read replicas against a real streaming replica of a primary of the tests' own: reads and
listings served by the replica, read-your-writes (a session this store wrote is never read
stale), a replica that lags (replay paused), one that is down, and one stopped and started again.

"Stale" is shown with a second store that did not make the writes: it reads what the replica
has, which is how the tests know the replica (not the primary) answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from async_agent_storage import ConfigurationError, PostgresStore

from ._server import Cluster, free_port
from .conftest import table_name

pytestmark = pytest.mark.anyio
Maker = Callable[..., PostgresStore]


@pytest.fixture
async def make_replicated(replicated: tuple[Cluster, Cluster]) -> AsyncIterator[Maker]:
    """`make(**options)`: a store over this test's own table on the primary, reading from the
    replica (`replica_urls` may be overridden)."""
    primary, standby = replicated
    table = table_name()

    def make(**options: Any) -> PostgresStore:
        options.setdefault("replica_urls", [standby.url])
        options.setdefault("pool_max_size", 4)
        return PostgresStore(table, primary.url, auto_upgrade_schema=True, **options)

    yield make
    connection = await asyncpg.connect(primary.url)
    try:
        for suffix in ("_runs", "", "_migrations"):
            await connection.execute(f'DROP TABLE IF EXISTS "{table}{suffix}"')
    finally:
        await connection.close()


async def replay(standby: Cluster, action: str) -> None:
    connection = await asyncpg.connect(standby.url)
    try:
        await connection.execute(f"SELECT pg_wal_replay_{action}()")
    finally:
        await connection.close()


async def caught_up(primary: Cluster, standby: Cluster) -> None:
    """Wait until the replica has applied everything the primary wrote so far."""
    source = await asyncpg.connect(primary.url)
    replica = await asyncpg.connect(standby.url)
    try:
        target = await source.fetchval("SELECT pg_current_wal_insert_lsn()")
        for _ in range(500):
            if await replica.fetchval("SELECT pg_last_wal_replay_lsn() >= $1", target):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the replica did not catch up within 5 s")
    finally:
        await source.close()
        await replica.close()


def replica_reads(store: PostgresStore) -> int:
    reads: int = store.stats()["replica_reads"]
    return reads


def primary_reads(store: PostgresStore) -> int:
    reads: int = store.stats()["primary_reads"]
    return reads


async def test_reads_and_listings_go_to_the_replica_and_see_this_stores_writes(
    make_replicated: Maker,
) -> None:
    async with make_replicated() as store:
        for i in range(20):
            await store.append_runs(f"s{i}", [{"turn": 0}], user_id="u", state_patch={"i": i})
            session = await store.read(f"s{i}", user_id="u")
            assert session is not None
            assert session.runs == [{"turn": 0}]
            assert session.session_data == {"i": i}
            assert await store.get_run(f"s{i}", session.run_ids[0], user_id="u") == {"turn": 0}
        assert replica_reads(store) > 20  # the replica caught up within replica_max_wait
        listed = replica_reads(store)
        assert await store.count_sessions(user_id="u") in range(21)  # may be behind by the lag
        await store.list_sessions(user_id="u")
        assert replica_reads(store) == listed + 2
        assert store.stats()["replicas"][0]["failures"] == 0


async def test_many_concurrent_turns_each_read_their_own_last_write(
    make_replicated: Maker,
) -> None:
    """Append then read at once, 8 sessions x 15 turns concurrently: every read shows the run
    just appended (never a stale replica), and most reads are served by the replica."""
    async with make_replicated(replica_max_wait=1.0) as store:

        async def turns(n: int) -> None:
            for turn in range(15):
                await store.append_runs(f"c{n}", [{"turn": turn}], state_patch={"turn": turn})
                session = await store.read(f"c{n}", last_runs=1)
                assert session is not None
                assert session.runs == [{"turn": turn}]
                assert session.run_count == turn + 1
                assert session.session_data == {"turn": turn}

        await asyncio.gather(*(turns(n) for n in range(8)))
        assert replica_reads(store) > 60


async def test_a_lagging_replica_serves_stale_listings_but_never_a_stale_own_read(
    make_replicated: Maker, replicated: tuple[Cluster, Cluster]
) -> None:
    primary, standby = replicated
    async with make_replicated(replica_max_wait=0.2) as writer, make_replicated() as other:
        await writer.append_runs("s", [{"turn": 0}], user_id="u")
        await caught_up(primary, standby)
        await replay(standby, "pause")
        try:
            for turn in range(1, 4):
                await writer.append_runs("s", [{"turn": turn}], user_id="u")
            started = time.monotonic()
            fresh = await writer.read("s", user_id="u")
            waited = time.monotonic() - started
            assert fresh is not None
            assert fresh.run_count == 4  # read-your-writes: the primary answered
            assert 0.15 < waited < 2.0  # it waited replica_max_wait, not longer
            assert primary_reads(writer) == 1
            # The replica is known to lag now: the next own read does not wait again.
            started = time.monotonic()
            again = await writer.read("s", user_id="u", last_runs=2)
            assert again is not None
            assert again.runs == [{"turn": 2}, {"turn": 3}]
            assert time.monotonic() - started < 0.15
            # What the replica has: a store that did not write it reads version 1 there.
            stale = await other.read("s", user_id="u")
            assert stale is not None
            assert stale.run_count == 1
            assert replica_reads(other) == 1
            # Listings may be stale: they are served by the replica.
            (listed,) = (await writer.list_sessions(user_id="u")).items
            assert listed.version == 1
        finally:
            await replay(standby, "resume")
        await caught_up(primary, standby)
        caught = await other.read("s", user_id="u")
        assert caught is not None
        assert caught.run_count == 4


async def test_a_replica_that_is_down_is_skipped_and_nothing_fails(
    make_replicated: Maker, replicated: tuple[Cluster, Cluster]
) -> None:
    _, standby = replicated
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    async with make_replicated(replica_urls=[nobody]) as alone:  # open() does not need it
        await alone.append_runs("s", [{"turn": 0}], user_id="u")
        assert (await alone.read("s", user_id="u")) is not None
        assert await alone.get_all_session_ids(user_id="u") == ["s"]
        assert primary_reads(alone) == 2
        assert alone.stats()["replicas"][0]["skipped"]
    async with make_replicated(replica_urls=[nobody, standby.url]) as store:
        for i in range(10):
            await store.append_runs("t", [{"turn": i}], user_id="u")
            session = await store.read("t", user_id="u", last_runs=1)
            assert session is not None
            assert session.runs == [{"turn": i}]
        down, up = store.stats()["replicas"]
        assert down["failures"] == 1  # tried once, then skipped
        assert down["reads"] == 0
        assert up["reads"] > 0


async def test_a_replica_stopped_then_started_again_is_used_again(
    make_replicated: Maker, replicated: tuple[Cluster, Cluster]
) -> None:
    primary, standby = replicated
    async with make_replicated() as store:
        await store.append_runs("s", [{"turn": 0}], user_id="u")
        assert await store.read("s", user_id="u") is not None
        assert replica_reads(store) == 1
        await asyncio.to_thread(standby.pause)
        try:
            for turn in range(1, 4):
                await store.append_runs("s", [{"turn": turn}], user_id="u")
                session = await store.read("s", user_id="u")
                assert session is not None
                assert session.run_count == turn + 1
                assert len(await store.get_all_session_ids(user_id="u")) == 1
            assert replica_reads(store) == 1
            assert store.stats()["replicas"][0]["failures"] >= 1
        finally:
            await asyncio.to_thread(standby.resume)
        await caught_up(primary, standby)
        await asyncio.sleep(2.1)  # the replica is tried again after RETRY_AFTER
        session = await store.read("s", user_id="u")
        assert session is not None
        assert session.run_count == 4
        assert replica_reads(store) == 2


async def test_without_read_your_writes_reads_go_to_the_replica_even_if_stale(
    make_replicated: Maker, replicated: tuple[Cluster, Cluster]
) -> None:
    primary, standby = replicated
    async with make_replicated(read_your_writes=False) as store:
        await store.append_runs("s", [{"turn": 0}])
        await caught_up(primary, standby)
        await replay(standby, "pause")
        try:
            await store.append_runs("s", [{"turn": 1}])
            session = await store.read("s")
            assert session is not None
            assert session.run_count == 1  # stale, as asked
        finally:
            await replay(standby, "resume")


def test_replica_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="replica_urls must be a list"):
        PostgresStore(db_url="postgresql://h/d", replica_urls="postgresql://r/d")
    with pytest.raises(ConfigurationError, match="scheme"):
        PostgresStore(db_url="postgresql://h/d", replica_urls=["mysql://r/d"])
    with pytest.raises(ConfigurationError, match="read_your_writes"):
        PostgresStore(db_url="postgresql://h/d", read_your_writes=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="replica_max_wait"):
        PostgresStore(db_url="postgresql://h/d", replica_max_wait=-1)
    store = PostgresStore(db_url="postgresql://h/d", replica_urls=("postgres://r:5433/d",))
    assert store.replicas.urls == ("postgres://r:5433/d",)
