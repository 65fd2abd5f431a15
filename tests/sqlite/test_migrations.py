"""SQLite schema migrations: the migration kit on a real database file, and what only SQLite has
(the data carried over by each migration, a foreign table of the same name, several stores in one
file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from async_agent_storage import MigrationError, SqliteStore
from async_agent_storage._migrations import Migration
from async_agent_storage._time import to_us
from async_agent_storage.testing.migrations import MigrationConformance, StoreURL, seed_at

pytestmark = pytest.mark.anyio
LATEST = len(SqliteStore().migrations)


class TestSqliteMigrations(MigrationConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> Any:
        def factory(**options: Any) -> SqliteStore:
            options.setdefault("busy_timeout", 30)
            return SqliteStore(db_file=tmp_path / "sessions.db", **options)

        return factory

    @pytest.fixture
    def store_url(self, tmp_path: Path) -> StoreURL:
        return f"sqlite:///{tmp_path / 'sessions.db'}", "agent_sessions", {"busy_timeout": 30}

    @pytest.fixture
    def migration_steps(self) -> tuple[str, str]:
        return 'CREATE TABLE "{table}_extra" (x INTEGER)', "THIS IS NOT SQL"

    @pytest.fixture
    def released_checksums(self) -> dict[int, str]:
        return {
            1: "8b0c6ebd8e3580cfa4f3da6ba7ffc18990c9f00ce458db07473f5ebe9d4728d7",
            2: "46969d969c24a79795a8178c9940541ad4fa2fa0e157054052baa53ace21c638",
            3: "d6ed372a291073032934caad0888ae8f6ce0dc53c7530540845468406e7efb4a",
            4: "94550f3ca16196b7b43b525cb5cd278330cc1a0aeb0d09798066a0e8137e8221",
            5: "50d154c2c5a7793aeea267145db8a6a328ab4ec41ad1606c0d2bf953e3babb17",
            6: "a8665dda48f68476f61551c8ced39990e74105679b15d736541ed6ce165d0bbe",
            7: "b81409cdb24d85785295801356a7314787b226658f060ef6833619dc517d959d",
        }


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
    await seed_at(SqliteStore(db_file=db_file), 1)
    with sqlite3.connect(db_file) as db:
        db.execute(
            "INSERT INTO agent_sessions VALUES "
            "('old', 'agent', 'u1', 'a1', NULL, NULL, '{\"session_state\": {\"n\": 1}}', NULL, "
            "NULL, NULL, NULL, NULL, 1700000000000000, 1700000000000000, 3, 1)"
        )
        db.execute("INSERT INTO agent_sessions_runs VALUES ('old', 0, 'r0', '{\"input\": \"hi\"}')")


async def test_a_failed_step_leaves_no_table_behind(tmp_path: Path) -> None:
    db_file = tmp_path / "broken.db"
    async with SqliteStore(db_file=db_file) as store:
        latest = store.migrations
        store.migrations = [
            *latest,
            Migration(
                len(latest) + 1,
                "half good",
                ('CREATE TABLE "{table}_extra" (x INTEGER)', "THIS IS NOT SQL"),
            ),
        ]
        with pytest.raises(MigrationError):
            await store.upgrade_schema()
    with sqlite3.connect(db_file) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "agent_sessions_extra" not in tables
    assert len(history(db_file)) == LATEST


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
        # The run stored before migration 5 has no write time: in the totals, in no bucket.
        activity = await store.activity()
        assert (activity.sessions, activity.runs) == (1, 2)
        assert [(t.entity_id, t.runs) for t in activity.turns] == [("a1", 1)]
    assert [v for v, _, _ in history(db_file)] == list(range(1, LATEST + 1))
    assert {"agent_sessions_agent_recent", "agent_sessions_runs_key"} <= indexes(db_file)
    with sqlite3.connect(db_file) as db:
        runs_sql = db.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'agent_sessions_runs'"
        ).fetchone()[0]
        assert "WITHOUT ROWID" not in runs_sql
        assert db.execute(
            "SELECT seq, run_id, created_at FROM agent_sessions_runs ORDER BY seq"
        ).fetchall() == [
            (0, "r0", None),
            (1, appended.run_ids[0], to_us(appended.updated_at)),
        ]


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


async def test_a_malformed_history_table_is_a_migration_error(tmp_path: Path) -> None:
    db_file = tmp_path / "malformed.db"
    with sqlite3.connect(db_file) as db:
        db.execute('CREATE TABLE "agent_sessions_migrations" (version INTEGER, note TEXT)')
        db.execute("INSERT INTO agent_sessions_migrations VALUES (1, 'not ours')")
    with pytest.raises(MigrationError):
        await SqliteStore(db_file=db_file).open()
