"""PostgreSQL schema migrations: the migration kit against the real server, and what only
PostgreSQL has (indexes, the data carried over, a foreign table of the same name, the advisory
lock's key)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from async_agent_storage import MigrationError, PostgresStore
from async_agent_storage import _codec as codec
from async_agent_storage._migrations import Migration
from async_agent_storage.postgres._jsonb import to_db
from async_agent_storage.postgres._migrations import advisory_key
from async_agent_storage.testing.migrations import MigrationConformance, StoreURL, seed_at

from .conftest import StoreMaker

pytestmark = pytest.mark.anyio
LATEST = len(PostgresStore(db_url="postgresql://h/d").migrations)
# Recorded in users' databases: never change.
RELEASED_CHECKSUMS = {
    1: "e9767f548c50490b031000d9e8610d937283556ec4ab61a6cd0a09454bd3e2d2",
    2: "8db46497271fa2aa08901b0c9e60e68d0e8a6d7977223db305965d6e04e683b7",
    3: "094973a1eaeadf07e3466c6d61c071ed6147438a47cdae9b680fc9ece12aeb18",
    4: "50fde3aeb38d0554e107bfb083df9ea2aa4dd0b301ecfb4e0a34ff84acdc7d18",
    5: "413c75914b316ef9c0a802a6e1096072005a1bbb5a91f0cb9079d85e3e8247ef",
    6: "533c5aefc49ae8f73cb036abe7202ae5a12d1ec61a36a9e93c29983bacb60ee7",
    7: "2bbe93d5ae0fc38b98a052cc0c62760659cb030fccf22b5f640fdbe9f52342fa",
}


class TestPostgresMigrations(MigrationConformance):
    @pytest.fixture
    def store_factory(self, make_store: StoreMaker) -> StoreMaker:
        return make_store

    @pytest.fixture
    def store_url(self, make_store: StoreMaker, pg_url: str, pg_schema: str) -> StoreURL:
        table = make_store().table_name
        return pg_url, table, {"schema": pg_schema, "pool_max_size": 2}

    @pytest.fixture
    def migration_steps(self) -> tuple[str, str]:
        return 'CREATE TABLE "{name}_extra" (x integer)', "THIS IS NOT SQL"

    @pytest.fixture
    def released_checksums(self) -> dict[int, str]:
        return RELEASED_CHECKSUMS


async def history(admin: asyncpg.Connection, store: PostgresStore) -> list[tuple[int, str, str]]:
    rows = await admin.fetch(
        f"SELECT version, name, checksum FROM {store._statements().history_table} ORDER BY version"
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def indexes(admin: asyncpg.Connection, store: PostgresStore) -> set[str]:
    rows = await admin.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1", store._statements().schema
    )
    return {r[0] for r in rows}


async def create_at_version_1(make_store: StoreMaker, admin: asyncpg.Connection) -> PostgresStore:
    """The tables as the first release created them, with a session written by that release."""
    old = make_store()
    await seed_at(old, 1)
    sql = old._statements()
    await admin.execute(
        f"""INSERT INTO {sql.table} VALUES ('old', 'agent', 'u1', 'a1', NULL, NULL,
            '{{"session_state": {{"n": 1}}}}', NULL, NULL, NULL, NULL, NULL,
            '2023-11-14 22:13:20+00', '2023-11-14 22:13:20+00', 3, 1)"""
    )
    await admin.execute(
        f"""INSERT INTO {sql.runs_table} VALUES ('old', 0, 'r0', '{{"input": "hi"}}')"""
    )
    return make_store()


async def test_a_fresh_schema_has_its_indexes(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store() as store:
        name = store.table_name
        assert {f"{name}_user_idx", f"{name}_agent_idx", f"{name}_workflow_idx"} <= await indexes(
            admin, store
        )


async def test_upgrade_from_version_1_keeps_the_data(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    await create_at_version_1(make_store, admin)
    async with make_store(auto_upgrade_schema=True) as store:
        assert await store.schema_version() == LATEST
        old = await store.read("old", user_id="u1")
        assert old is not None
        assert old.session_data == {"session_state": {"n": 1}}
        assert old.runs == [{"input": "hi"}]
        assert old.version == 3
        appended = await store.append_runs("old", [{"input": "again"}], user_id="u1")
        assert appended.version == 4
        assert appended.runs_offset == 1
        assert await store.get_all_session_ids(entity_id="a1") == ["old"]
        # The run stored before migration 4 has no write time: in the totals, in no bucket.
        activity = await store.activity()
        assert (activity.sessions, activity.runs) == (1, 2)
        assert [(t.entity_id, t.runs) for t in activity.turns] == [("a1", 1)]
        times = await admin.fetch(
            f"SELECT created_at FROM {store._statements().runs_table} ORDER BY seq"
        )
        assert [r[0] for r in times] == [None, appended.updated_at]
        assert [v for v, _, _ in await history(admin, store)] == list(range(1, LATEST + 1))
        assert f"{store.table_name}_agent_idx" in await indexes(admin, store)


# Values `jsonb` would change, which the driver encodes (`_jsonb`), and plain ones.
EXACT_RUNS: list[dict[str, Any]] = [
    {"run_id": "r0", "text": "nul \x00 inside", "zero": -0.0, "big": 2**70, "float": 1e16},
    {
        "run_id": "r1",
        "mark": "\uffffstarts with the mark",
        "nested": {"b": [1, 2.5, None], "a": "x"},
    },
    {"run_id": "r2", "plain": "hello", "n": 3},
]


async def test_run_bodies_written_as_jsonb_read_back_exactly_as_text(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    # Runs stored at version 6 (`jsonb`) by the release before, then migration 7 (`text`): the
    # old rows, and new ones appended after, read back exactly, alone and in one aggregate.
    old = make_store()
    await seed_at(old, 6)
    sql = old._statements()
    await admin.execute(
        f"""INSERT INTO {sql.table} (session_id, session_type, user_id, session_data,
            created_at, updated_at, version, run_count)
            VALUES ('s', 'agent', 'u', '{{}}', now(), now(), 1, {len(EXACT_RUNS)})"""
    )
    for seq, run in enumerate(EXACT_RUNS):
        await admin.execute(
            f"INSERT INTO {sql.runs_table} (session_id, seq, run_id, body) "
            "VALUES ('s', $1, $2, $3::text::jsonb)",
            seq,
            run["run_id"],
            to_db(codec.dumps(run)),
        )
    async with make_store(auto_upgrade_schema=True) as store:
        assert await store.schema_version() == LATEST
        column = await admin.fetchval(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 AND column_name = 'body'",
            sql.schema.strip('"'),
            sql.runs_table.split(".")[-1].strip('"'),
        )
        assert column == "text"
        more = [{**run, "run_id": f"new-{run['run_id']}"} for run in EXACT_RUNS]
        await store.append_runs("s", more, user_id="u")
        read = await store.read("s")
        assert read is not None
        assert read.runs == [*EXACT_RUNS, *more]
        assert [type(r["zero"]) for r in read.runs if "zero" in r] == [float, float]
        assert str(read.runs[0]["zero"]) == str(read.runs[3]["zero"]) == "-0.0"
        assert await store.get_run("s", "r0") == EXACT_RUNS[0]
        listed = await store.get_recent_sessions(user_id="u", include_runs=True)
        assert listed[0].runs == [*EXACT_RUNS, *more]
        # An upsert of what was read (one run changed) keeps every run exact.
        read.runs[-1]["n"] = 4
        await store.upsert(read)
        again = await store.read("s")
        assert again is not None
        assert again.runs == read.runs
        assert await store.pop_runs("s", n=2) == read.runs[-2:]


# The run write of the release before migration 7 (`_sql._WRITE_RUNS` then), as its processes
# still send it during a rolling upgrade: `jsonb` bodies, compared with IS DISTINCT FROM.
PREVIOUS_WRITE_RUNS = """
WITH up AS (SELECT $1::text AS session_id, $4::integer AS run_count, now() AS updated_at),
runs AS (
    INSERT INTO {runs} AS r (session_id, seq, run_id, body, created_at)
    SELECT $1, up.run_count - cardinality($2::text[]) + t.ord::integer - 1,
           t.run_id, t.body::jsonb, up.updated_at
    FROM up, unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(run_id, body, ord)
    ON CONFLICT (session_id, seq) DO UPDATE SET run_id = excluded.run_id, body = excluded.body,
        created_at = CASE WHEN r.run_id = excluded.run_id THEN r.created_at
                          ELSE excluded.created_at END
    WHERE (r.run_id, r.body) IS DISTINCT FROM (excluded.run_id, excluded.body)
)
SELECT 1
"""


async def test_the_previous_releases_run_writes_still_work_after_migration_7(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store(auto_upgrade_schema=True) as store:
        await store.append_runs("s", [{"run_id": "a", "n": 1}], user_id="u")
        statement = PREVIOUS_WRITE_RUNS.format(runs=store._statements().runs_table)
        # A new run at seq 1, and the run at seq 0 written again (unchanged, then changed).
        await admin.execute(statement, "s", ["b"], [to_db(codec.dumps({"run_id": "b"}))], 2)
        await admin.execute(statement, "s", ["a"], [to_db(codec.dumps({"run_id": "a", "n": 1}))], 1)
        await admin.execute(statement, "s", ["a"], [to_db(codec.dumps({"run_id": "a", "n": 2}))], 1)
        await admin.execute(
            f"UPDATE {store._statements().table} SET run_count = 2 WHERE session_id = 's'"
        )
        read = await store.read("s")
        assert read is not None
        assert read.runs == [{"run_id": "a", "n": 2}, {"run_id": "b"}]


async def test_a_failing_step_rolls_back_and_is_not_recorded(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    broken = Migration(
        version=LATEST + 1,
        name="half good",
        steps=('CREATE TABLE "{name}_extra" (x integer)', "THIS IS NOT SQL"),
    )
    async with make_store() as store:
        await store.append_runs("s", [{"input": "kept"}])
        store.migrations = [*store.migrations, broken]
        with pytest.raises(MigrationError) as info:
            await store.upgrade_schema()
        assert f"migration {LATEST + 1} (half good) failed" in str(info.value)
        assert "syntax error" in str(info.value)
        assert await store.schema_version() == LATEST
        await store.append_runs("s", [{"input": "still works"}])
    assert await admin.fetchval("SELECT to_regclass($1)", f"{store.table_name}_extra") is None
    assert len(await history(admin, store)) == LATEST


async def test_a_table_not_made_by_this_library_is_not_taken_over(
    make_store: StoreMaker, admin: asyncpg.Connection, pg_schema: str
) -> None:
    store = make_store()
    table = f'"{pg_schema}"."{store.table_name}"'
    await admin.execute(f"CREATE TABLE {table} (session_id text PRIMARY KEY, memory text)")
    await admin.execute(f"INSERT INTO {table} VALUES ('theirs', '{{}}')")
    with pytest.raises(MigrationError, match="already exists"):
        await store.open()
    assert await admin.fetchval(f"SELECT session_id FROM {table}") == "theirs"


def test_the_lock_is_per_table() -> None:
    alpha = PostgresStore("alpha", "postgresql://h/d", schema="s")
    beta = PostgresStore("beta", "postgresql://h/d", schema="s")
    alpha_elsewhere = PostgresStore("alpha", "postgresql://h/d", schema="t")
    keys = {advisory_key(s._statements()) for s in (alpha, beta, alpha_elsewhere)}
    assert len(keys) == 3


async def test_a_malformed_history_table_is_a_migration_error(
    make_store: StoreMaker, admin: asyncpg.Connection, pg_schema: str
) -> None:
    store = make_store()
    history_table = f'"{pg_schema}"."{store.table_name}_migrations"'
    await admin.execute(f"CREATE TABLE {history_table} (version integer, note text)")
    with pytest.raises(MigrationError):
        await store.open()
