"""PostgreSQL schema migrations: fresh schemas, upgrades from version 1, 8 processes at once, and
every refusal of the runner, against the real server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from async_agent_storage import MigrationError, PostgresStore, StoreClosedError
from async_agent_storage.migrations import Migration
from async_agent_storage.postgres.migrations import MIGRATIONS
from async_agent_storage.postgres.store import advisory_key

from .conftest import StoreMaker

pytestmark = pytest.mark.anyio
LATEST = len(MIGRATIONS)
HERE = Path(__file__).parent


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
    old.migrations = MIGRATIONS[:1]
    async with old:
        pass
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


async def test_a_fresh_schema_is_created_at_the_latest_version(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store() as store:
        assert await store.schema_version() == LATEST
        assert await history(admin, store) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
        name = store.table_name
        assert {f"{name}_user_idx", f"{name}_agent_idx", f"{name}_workflow_idx"} <= await indexes(
            admin, store
        )


async def test_open_refuses_an_older_schema_without_auto_upgrade(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    store = await create_at_version_1(make_store, admin)
    with pytest.raises(MigrationError) as info:
        await store.open()
    message = str(info.value)
    assert "version 1" in message
    assert f"needs {LATEST}" in message
    assert "upgrade_schema()" in message
    assert "auto_upgrade_schema=True" in message
    assert len(await history(admin, store)) == 1


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
        assert [v for v, _, _ in await history(admin, store)] == list(range(1, LATEST + 1))
        assert f"{store.table_name}_agent_idx" in await indexes(admin, store)


async def test_upgrade_schema_works_before_open_and_dry_run_changes_nothing(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    store = await create_at_version_1(make_store, admin)
    assert await store.schema_version() == 1
    plan = await store.upgrade_schema(dry_run=True)
    assert plan.dry_run
    assert [s.version for s in plan.pending] == list(range(2, LATEST + 1))
    assert (plan.from_version, plan.to_version) == (1, LATEST)
    assert "would apply" in str(plan)
    assert len(await history(admin, store)) == 1
    report = await store.upgrade_schema()
    assert [s.version for s in report.applied] == list(range(2, LATEST + 1))
    assert all(s.applied_at is not None for s in report.applied)
    again = await store.upgrade_schema()
    assert again.up_to_date
    async with store:
        assert await store.read("old") is not None
    with pytest.raises(StoreClosedError):
        await store.upgrade_schema()


async def test_a_schema_newer_than_the_code_is_refused(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store() as store:
        pass
    history_table = store._statements().history_table
    await admin.execute(
        f"INSERT INTO {history_table} VALUES ($1, 'from the future', 'x', now())", LATEST + 1
    )
    for auto in (False, True):
        with pytest.raises(MigrationError, match="newer than this code"):
            await make_store(auto_upgrade_schema=auto).open()


async def test_a_changed_checksum_and_a_gap_are_refused(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    async with make_store() as store:
        pass
    history_table = store._statements().history_table
    await admin.execute(f"UPDATE {history_table} SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="must never change"):
        await make_store(auto_upgrade_schema=True).open()
    await admin.execute(f"DELETE FROM {history_table} WHERE version = 1")
    with pytest.raises(MigrationError, match="gaps"):
        await make_store().open()


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
        store.migrations = [*MIGRATIONS, broken]
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


async def test_two_stores_in_one_process_upgrading_at_once_take_turns(
    make_store: StoreMaker, admin: asyncpg.Connection
) -> None:
    stores = [make_store(auto_upgrade_schema=True) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert await history(admin, stores[0]) == [
            (m.version, m.name, m.checksum) for m in MIGRATIONS
        ]
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def run_processes(
    url: str, schema: str, table: str, tmp_path: Path, processes: int, appends: int
) -> list[str]:
    start = tmp_path / "start"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_open_store.py"),
                url,
                schema,
                table,
                str(start),
                str(w),
                str(appends),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(processes)
    ]
    start.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


@pytest.mark.slow
async def test_eight_processes_opening_a_fresh_database_at_once(
    make_store: StoreMaker, admin: asyncpg.Connection, pg_url: str, pg_schema: str, tmp_path: Path
) -> None:
    store = make_store()
    outputs = await asyncio.to_thread(
        run_processes, pg_url, pg_schema, store.table_name, tmp_path, 8, 5
    )
    assert sorted(json.loads(o)["worker"] for o in outputs) == list(range(8))
    assert all(json.loads(o)["version"] == LATEST for o in outputs)
    async with store:
        assert await history(admin, store) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
        shared = await store.read("shared")
        assert shared is not None
        assert len(shared.runs) == 40  # 8 processes x 5 appends, none lost
        assert shared.version == 40
        assert len(await store.get_all_session_ids(user_id="u")) == 9


@pytest.mark.slow
async def test_eight_processes_upgrading_from_version_1_at_once(
    make_store: StoreMaker, admin: asyncpg.Connection, pg_url: str, pg_schema: str, tmp_path: Path
) -> None:
    store = await create_at_version_1(make_store, admin)
    await asyncio.to_thread(run_processes, pg_url, pg_schema, store.table_name, tmp_path, 8, 1)
    async with store:
        assert [v for v, _, _ in await history(admin, store)] == list(range(1, LATEST + 1))
        assert await store.read("old") is not None


def test_the_lock_is_per_table() -> None:
    alpha = PostgresStore("alpha", "postgresql://h/d", schema="s")
    beta = PostgresStore("beta", "postgresql://h/d", schema="s")
    alpha_elsewhere = PostgresStore("alpha", "postgresql://h/d", schema="t")
    keys = {advisory_key(s._statements()) for s in (alpha, beta, alpha_elsewhere)}
    assert len(keys) == 3


def test_the_migration_list_is_append_only() -> None:
    # The checksums of released migrations are recorded in users' databases: changing one makes
    # every existing database refuse to open. Add a new migration instead.
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    released = {
        1: "e9767f548c50490b031000d9e8610d937283556ec4ab61a6cd0a09454bd3e2d2",
        2: "8db46497271fa2aa08901b0c9e60e68d0e8a6d7977223db305965d6e04e683b7",
    }
    assert {m.version: m.checksum for m in MIGRATIONS[: len(released)]} == released
    assert PostgresStore(db_url="postgresql://h/d").migrations is MIGRATIONS
