"""MongoDB schema migrations: the migration kit against a real wire-protocol server, and what
only MongoDB has (indexes, the data carried over, the lease lock, each migration applied once by
one of 8 processes)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import MongoClient

from async_agent_storage import MigrationError
from async_agent_storage.mongo import MongoStore
from async_agent_storage.testing.migrations import MigrationConformance, StoreURL, seed_at

from ._server import ROOT
from .conftest import DB_NAME, MongoTarget

pytestmark = [pytest.mark.anyio, pytest.mark.mongo]
MIGRATIONS = MongoStore(db_url="mongodb://h").migrations
LATEST = len(MIGRATIONS)
Admin = MongoClient[dict[str, Any]]


def make_store(mongo: MongoTarget, name: str, **options: Any) -> MongoStore:
    return MongoStore(name, mongo.url, DB_NAME, server_selection_timeout=5, **options)


def with_database(url: str, db_name: str) -> str:
    """`url` naming `db_name` in its path, as a user's URL would for the command line."""
    scheme, _, rest = url.partition("://")
    hosts, slash, tail = rest.partition("/")
    options = tail.partition("?")[2] if slash else ""
    return f"{scheme}://{hosts}/{db_name}" + (f"?{options}" if options else "")


class TestMongoMigrations(MigrationConformance):
    FAILED_STEP_ROLLS_BACK = False  # MongoDB has no transaction around schema changes

    @pytest.fixture
    def store_factory(self, mongo: MongoTarget, collection_name: str) -> Any:
        def factory(**options: Any) -> MongoStore:
            options.setdefault("server_selection_timeout", 30)
            return MongoStore(collection_name, mongo.url, DB_NAME, **options)

        return factory

    @pytest.fixture
    def store_url(self, mongo: MongoTarget, collection_name: str) -> StoreURL:
        url = with_database(mongo.url, DB_NAME)
        return url, collection_name, {"server_selection_timeout": 30}

    @pytest.fixture
    def migration_steps(self) -> tuple[str, str]:
        return '{"create": "{table}_extra"}', '{"createIndexes": "{table}", "indexes": 7}'

    @pytest.fixture
    def released_checksums(self) -> dict[int, str]:
        return {
            1: "1f3db04e2378214e28b1d229bec1b0fc13b5ddd59af0a407f6b3d6993049acef",
            2: "8a3e8d7f6e6b699cf160e36343149a41e9dfdc37aee06aa399afe172ae0f5a20",
            3: "304fe1db6384feba86e6aadaeadfaf4fa8fd44f619f6afe7684a926e28878da6",
            4: "0e0cff2f8cebe46b3c27e7b5438aad71698a1e31cf86daf87e32106767f33ae7",
            5: "cb10460bb47a43b7b901c77e44f02c4ae7a1f26ae7e3e883661d09118dcde508",
        }


def history(admin: Admin, name: str) -> list[tuple[int, str, str]]:
    rows = admin[DB_NAME][f"{name}_migrations"].find({"version": {"$exists": True}}).sort("version")
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


def indexes(admin: Admin, name: str) -> set[str]:
    return set(admin[DB_NAME][name].index_information())


async def create_at_version_1(mongo: MongoTarget, admin: Admin, name: str) -> None:
    """A database as the first release created it, with a session written by that release."""
    await seed_at(make_store(mongo, name), 1)
    admin[DB_NAME][name].insert_one(
        {
            "_id": "old",
            "session_type": "agent",
            "user_id": "u1",
            "agent_id": "a1",
            "team_id": None,
            "workflow_id": None,
            "session_data": {"session_state": {"n": 1}},
            "agent_data": None,
            "team_data": None,
            "workflow_data": None,
            "metadata": None,
            "summary": None,
            "esc": 0,
            "created_at": 1_700_000_000_000_000,
            "updated_at": 1_700_000_000_000_000,
            "version": 3,
            "run_count": 1,
            "gen": "g1",
        }
    )
    admin[DB_NAME][f"{name}_runs"].insert_one(
        {
            "session_id": "old",
            "gen": "g1",
            "seq": 0,
            "version": 3,
            "run_id": "r0",
            "run": {"input": "hi"},
            "esc": False,
        }
    )


async def test_a_fresh_database_has_its_indexes_and_no_lease_left(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    async with make_store(mongo, collection_name) as store:
        assert await store.schema_version() == LATEST
    assert history(admin, collection_name) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
    assert {"user_recent", "recent", "agent_recent", "team_recent", "workflow_recent"} <= indexes(
        admin, collection_name
    )
    runs_key = admin[DB_NAME][f"{collection_name}_runs"].index_information()["session_seq"]
    assert runs_key["unique"]
    assert (
        admin[DB_NAME][f"{collection_name}_migrations"].count_documents(
            {"owner": {"$exists": True}}
        )
        == 0
    )


async def test_upgrade_from_version_1_keeps_the_data(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    await create_at_version_1(mongo, admin, collection_name)
    assert "agent_recent" not in indexes(admin, collection_name)
    async with make_store(mongo, collection_name, auto_upgrade_schema=True) as store:
        assert await store.schema_version() == LATEST
        old = await store.read("old", user_id="u1")
        assert old is not None
        assert (old.session_data, old.runs, old.version) == (
            {"session_state": {"n": 1}},
            [{"input": "hi"}],
            3,
        )
        appended = await store.append_runs("old", [{"input": "again"}], user_id="u1")
        assert (appended.version, appended.runs_offset) == (4, 1)
        assert await store.get_all_session_ids(entity_id="a1") == ["old"]
    assert [v for v, _, _ in history(admin, collection_name)] == list(range(1, LATEST + 1))
    assert "agent_recent" in indexes(admin, collection_name)


def lease(admin: Admin, name: str, owner: str, expires_in: float) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=expires_in)).replace(tzinfo=None)
    admin[DB_NAME][f"{name}_migrations"].insert_one(
        {"_id": "lease", "owner": owner, "expires": expires}
    )


async def test_a_lease_left_by_a_dead_process_is_taken_when_it_expires(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    lease(admin, collection_name, "crashed-host:123:abc", expires_in=1.5)
    started = time.monotonic()
    async with make_store(mongo, collection_name) as store:
        assert await store.schema_version() == LATEST
    assert time.monotonic() - started >= 1.0  # it waited for the lease, then took it
    assert admin[DB_NAME][f"{collection_name}_migrations"].find_one({"_id": "lease"}) is None


async def test_a_held_lease_makes_others_wait_then_say_who_holds_it(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    lease(admin, collection_name, "busy-host:42:def", expires_in=60)
    store = make_store(mongo, collection_name, migration_lock_timeout=0.5)
    with pytest.raises(MigrationError, match="could not take the migration lock") as info:
        await store.open()
    assert "busy-host:42:def" in str(info.value)
    assert history(admin, collection_name) == []


def test_eight_processes_starting_at_once_apply_each_migration_once(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    start_at = time.time() + 2.0
    command = [
        sys.executable,
        "-m",
        "tests.mongo._open_store",
        mongo.url,
        DB_NAME,
        collection_name,
        str(start_at),
    ]
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert f"VERSION {LATEST}" in out
    applied = Counter(
        int(m) for out, _ in outputs for m in re.findall(r"applying migration (\d+)", out)
    )
    assert applied == {m.version: 1 for m in MIGRATIONS}, applied
    assert history(admin, collection_name) == [(m.version, m.name, m.checksum) for m in MIGRATIONS]
    assert admin[DB_NAME][f"{collection_name}_migrations"].find_one({"_id": "lease"}) is None


def test_the_command_line_migrates_a_mongodb_store(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    from typer.testing import CliRunner

    from async_agent_storage.cli import app

    runner = CliRunner()
    url = with_database(mongo.url, DB_NAME)
    status = runner.invoke(app, ["status", url, "--table", collection_name])
    assert status.exit_code == 0, status.output
    assert f"schema version: 0 (this code: {LATEST})" in status.output
    done = runner.invoke(app, ["migrate", url, "--table", collection_name])
    assert done.exit_code == 0, done.output
    assert "applied" in done.output
    assert [v for v, _, _ in history(admin, collection_name)] == list(range(1, LATEST + 1))
    again = runner.invoke(app, ["migrate", url, "--table", collection_name])
    assert "nothing to do" in again.output


async def test_a_malformed_history_is_a_migration_error(
    mongo: MongoTarget, admin: Admin, collection_name: str
) -> None:
    admin[DB_NAME][f"{collection_name}_migrations"].insert_one({"_id": 1, "version": 1})
    with pytest.raises(MigrationError, match="did not write"):
        await make_store(mongo, collection_name).open()
