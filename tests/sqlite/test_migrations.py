"""SQLite schema migrations: fresh databases, upgrades from version 1, concurrent processes, and
every refusal of the runner. Real database files throughout."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from async_agent_storage import MigrationError, SqliteStore, StoreClosedError
from async_agent_storage.migrations import Migration, upgrade
from async_agent_storage.sqlite._connection import connect
from async_agent_storage.sqlite.migrations import MIGRATIONS

pytestmark = pytest.mark.anyio
LATEST = len(MIGRATIONS)
HERE = Path(__file__).parent


def history(db_file: Path, table: str = "agent_sessions") -> list[tuple[int, str, str]]:
    with sqlite3.connect(db_file) as db:
        rows = db.execute(
            f'SELECT version, name, checksum FROM "{table}_migrations" ORDER BY version'
        ).fetchall()
    return [tuple(r) for r in rows]


def indexes(db_file: Path) -> set[str]:
    with sqlite3.connect(db_file) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


async def create_at_version_1(db_file: Path) -> None:
    """A database as the first release created it, with a session written by that release."""
    store = SqliteStore(db_file=db_file)
    connection = await connect(str(db_file), busy_timeout=5, synchronous="NORMAL")
    try:
        await upgrade(store._migration_target(connection), MIGRATIONS[:1])
    finally:
        await connection.close()
    with sqlite3.connect(db_file) as db:
        db.execute(
            "INSERT INTO agent_sessions VALUES "
            "('old', 'agent', 'u1', 'a1', NULL, NULL, '{\"session_state\": {\"n\": 1}}', NULL, "
            "NULL, NULL, NULL, NULL, 1700000000000000, 1700000000000000, 3, 1)"
        )
        db.execute("INSERT INTO agent_sessions_runs VALUES ('old', 0, 'r0', '{\"input\": \"hi\"}')")


async def test_a_fresh_database_is_created_at_the_latest_version(tmp_path: Path) -> None:
    db_file = tmp_path / "fresh.db"
    async with SqliteStore(db_file=db_file) as store:
        assert await store.schema_version() == LATEST
    assert history(db_file) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
    assert {"agent_sessions_user_recent", "agent_sessions_agent_recent"} <= indexes(db_file)


async def test_open_refuses_an_older_schema_without_auto_upgrade(tmp_path: Path) -> None:
    db_file = tmp_path / "v1.db"
    await create_at_version_1(db_file)
    store = SqliteStore(db_file=db_file)
    with pytest.raises(MigrationError) as info:
        await store.open()
    message = str(info.value)
    assert "version 1" in message
    assert f"needs {LATEST}" in message
    assert "upgrade_schema()" in message
    assert "auto_upgrade_schema=True" in message
    assert len(history(db_file)) == 1  # nothing changed


async def test_upgrade_from_version_1_keeps_the_data(tmp_path: Path) -> None:
    db_file = tmp_path / "v1.db"
    await create_at_version_1(db_file)
    assert "agent_sessions_agent_recent" not in indexes(db_file)
    async with SqliteStore(db_file=db_file, auto_upgrade_schema=True) as store:
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
    assert [v for v, _, _ in history(db_file)] == list(range(1, LATEST + 1))
    assert {"agent_sessions_agent_recent", "agent_sessions_runs_key"} <= indexes(db_file)
    with sqlite3.connect(db_file) as db:
        runs_sql = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'agent_sessions_runs'"
        ).fetchone()[0]
        assert "WITHOUT ROWID" not in runs_sql
        assert db.execute(
            "SELECT seq, run_id FROM agent_sessions_runs ORDER BY seq"
        ).fetchall() == [
            (0, "r0"),
            (1, appended.runs[0]["run_id"]),
        ]


async def test_upgrade_schema_works_before_open_and_dry_run_changes_nothing(
    tmp_path: Path,
) -> None:
    db_file = tmp_path / "v1.db"
    await create_at_version_1(db_file)
    store = SqliteStore(db_file=db_file)
    assert await store.schema_version() == 1
    plan = await store.upgrade_schema(dry_run=True)
    assert plan.dry_run
    assert [s.version for s in plan.pending] == list(range(2, LATEST + 1))
    assert (plan.from_version, plan.to_version) == (1, LATEST)
    assert "would apply" in str(plan)
    assert len(history(db_file)) == 1
    report = await store.upgrade_schema()
    assert [s.version for s in report.applied] == list(range(2, LATEST + 1))
    assert all(s.applied_at is not None for s in report.applied)
    assert "applied" in str(report)
    again = await store.upgrade_schema()
    assert again.up_to_date
    async with store:
        assert await store.read("old") is not None
    with pytest.raises(StoreClosedError):
        await store.upgrade_schema()


async def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db_file = tmp_path / "newer.db"
    async with SqliteStore(db_file=db_file):
        pass
    with sqlite3.connect(db_file) as db:
        db.execute(
            "INSERT INTO agent_sessions_migrations VALUES (?, 'from the future', 'x', 0)",
            (LATEST + 1,),
        )
    for auto in (False, True):
        with pytest.raises(MigrationError, match="newer than this code"):
            await SqliteStore(db_file=db_file, auto_upgrade_schema=auto).open()


async def test_a_changed_checksum_is_refused(tmp_path: Path) -> None:
    db_file = tmp_path / "drift.db"
    async with SqliteStore(db_file=db_file):
        pass
    with sqlite3.connect(db_file) as db:
        db.execute("UPDATE agent_sessions_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match="checksum") as info:
        await SqliteStore(db_file=db_file, auto_upgrade_schema=True).open()
    assert "must never change" in str(info.value)


async def test_a_gap_in_the_history_is_refused(tmp_path: Path) -> None:
    db_file = tmp_path / "gap.db"
    async with SqliteStore(db_file=db_file):
        pass
    with sqlite3.connect(db_file) as db:
        db.execute("DELETE FROM agent_sessions_migrations WHERE version = 1")
    with pytest.raises(MigrationError, match="gaps"):
        await SqliteStore(db_file=db_file).open()


async def test_a_failing_step_rolls_back_and_is_not_recorded(tmp_path: Path) -> None:
    db_file = tmp_path / "broken.db"
    broken = Migration(
        version=LATEST + 1,
        name="half good",
        steps=('CREATE TABLE "{table}_extra" (x INTEGER)', "THIS IS NOT SQL"),
    )
    async with SqliteStore(db_file=db_file) as store:
        await store.append_runs("s", [{"input": "kept"}])
        store.migrations = [*MIGRATIONS, broken]
        with pytest.raises(MigrationError) as info:
            await store.upgrade_schema()
        assert f"migration {LATEST + 1} (half good) failed" in str(info.value)
        assert await store.schema_version() == LATEST
        await store.append_runs("s", [{"input": "still works"}])
    with sqlite3.connect(db_file) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "agent_sessions_extra" not in tables
    assert len(history(db_file)) == LATEST


async def test_a_table_not_made_by_this_library_is_not_taken_over(tmp_path: Path) -> None:
    db_file = tmp_path / "foreign.db"
    with sqlite3.connect(db_file) as db:
        db.execute("CREATE TABLE agent_sessions (session_id TEXT PRIMARY KEY, memory TEXT)")
        db.execute("INSERT INTO agent_sessions VALUES ('theirs', '{}')")
    with pytest.raises(MigrationError, match="already exists"):
        await SqliteStore(db_file=db_file).open()
    with sqlite3.connect(db_file) as db:
        assert db.execute("SELECT session_id FROM agent_sessions").fetchall() == [("theirs",)]


async def test_tables_of_one_file_have_their_own_histories(tmp_path: Path) -> None:
    db_file = tmp_path / "two.db"
    async with (
        SqliteStore("alpha", db_file) as alpha,
        SqliteStore("beta", db_file) as beta,
    ):
        await alpha.append_runs("s", [{"in": "alpha"}])
        assert await beta.read("s") is None
    assert len(history(db_file, "alpha")) == len(history(db_file, "beta")) == LATEST


def run_processes(db_file: Path, tmp_path: Path, processes: int, appends: int) -> list[str]:
    start = tmp_path / "start"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_open_store.py"),
                str(db_file),
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
async def test_eight_processes_opening_a_fresh_database_at_once(tmp_path: Path) -> None:
    db_file = tmp_path / "race.db"
    outputs = await asyncio.to_thread(run_processes, db_file, tmp_path, 8, 5)
    assert sorted(json.loads(o)["worker"] for o in outputs) == list(range(8))
    assert all(json.loads(o)["version"] == LATEST for o in outputs)
    assert history(db_file) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
    async with SqliteStore(db_file=db_file) as store:
        shared = await store.read("shared")
        assert shared is not None
        assert len(shared.runs) == 40  # 8 processes x 5 appends, none lost
        assert shared.version == 40
        assert len(await store.get_all_session_ids(user_id="u")) == 9


@pytest.mark.slow
async def test_eight_processes_upgrading_from_version_1_at_once(tmp_path: Path) -> None:
    db_file = tmp_path / "race-v1.db"
    await create_at_version_1(db_file)
    await asyncio.to_thread(run_processes, db_file, tmp_path, 8, 1)
    assert [v for v, _, _ in history(db_file)] == list(range(1, LATEST + 1))
    async with SqliteStore(db_file=db_file) as store:
        assert await store.read("old") is not None


def test_the_migration_list_is_append_only() -> None:
    # The checksums of released migrations are recorded in users' databases: changing one makes
    # every existing database refuse to open. Add a new migration instead.
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    released = {
        1: "8b0c6ebd8e3580cfa4f3da6ba7ffc18990c9f00ce458db07473f5ebe9d4728d7",
        2: "46969d969c24a79795a8178c9940541ad4fa2fa0e157054052baa53ace21c638",
        3: "d6ed372a291073032934caad0888ae8f6ce0dc53c7530540845468406e7efb4a",
    }
    assert {m.version: m.checksum for m in MIGRATIONS[: len(released)]} == released
    assert SqliteStore().migrations is MIGRATIONS
