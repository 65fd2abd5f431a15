"""`aas status` and `aas migrate` on real SQLite files and PostgreSQL tables."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import orjson
import pytest

from async_agent_storage import open_store

from .conftest import drop, invoke


def latest_version(url: str) -> int:
    async def plan() -> int:
        return (await open_store(url).upgrade_schema(dry_run=True)).to_version

    return asyncio.run(plan())


def empty_database(path: Path) -> str:
    sqlite3.connect(path).close()
    return f"sqlite:///{path}"


def test_status_then_migrate_then_nothing_to_do(tmp_path: Path) -> None:
    url = empty_database(tmp_path / "cli.db")
    latest = latest_version(url)
    status = invoke(["status", "--url", url])
    assert status.exit_code == 0, status.output
    assert f"\nschema version: 0 (this code: {latest})\n" in status.stdout
    assert f"\npending migrations: {latest}\n" in status.stdout
    plan = invoke(["migrate", "--dry-run"], AAS_URL=url)
    assert plan.exit_code == 0
    assert "would apply" in plan.stdout
    with sqlite3.connect(tmp_path / "cli.db") as db:  # the dry run changed nothing
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    done = invoke(["migrate", "--url", url, "--table", "agent_sessions"])
    assert done.exit_code == 0
    assert "applied" in done.stdout
    with sqlite3.connect(tmp_path / "cli.db") as db:
        assert db.execute("SELECT count(*) FROM agent_sessions_migrations").fetchone() == (latest,)
    again = invoke(["migrate", "--url", url])
    assert "nothing to do" in again.stdout
    after = invoke(["status", "--url", url, "--json"])
    assert orjson.loads(after.stdout) == {
        "store": orjson.loads(after.stdout)["store"],
        "table": "agent_sessions",
        "schema_version": latest,
        "latest_version": latest,
        "up_to_date": True,
        "pending": [],
        "sessions": 0,
        "runs": 0,
        "bytes": orjson.loads(after.stdout)["bytes"],
    }
    assert set(orjson.loads(after.stdout)["bytes"]) >= {"agent_sessions", "agent_sessions_runs"}
    assert "\nsessions: 0\n" in invoke(["status", "--url", url]).stdout

    async def write() -> None:
        async with open_store(url) as store:
            await store.append_runs("s1", [{"i": 0}], user_id="u")
            await store.append_runs("s2", [{"i": 0}], user_id="u")

    asyncio.run(write())
    printed = invoke(["status", "--url", url]).stdout
    assert "\nsessions: 2\nruns: 2\nsize: " in printed


def test_the_url_may_still_come_first(tmp_path: Path) -> None:
    url = empty_database(tmp_path / "old.db")
    assert invoke(["migrate", url]).exit_code == 0
    status = invoke(["status", url])
    assert status.exit_code == 0, status.output
    assert "\npending migrations: none\n" in status.stdout
    clash = invoke(["status", url, "--url", f"sqlite:///{tmp_path / 'other.db'}"])
    assert clash.exit_code == 1
    assert "two different store URLs" in clash.stderr


@pytest.mark.parametrize("command", [["status"], ["migrate"], ["migrate", "--dry-run"]])
def test_no_database_file_or_folder_is_created(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "data.db"
    result = invoke([*command, "--url", f"sqlite:///{missing}"])
    assert result.exit_code == 1
    assert (
        result.stderr == f"error: no SQLite database at {str(missing)!r}: the file does not exist\n"
    )
    assert not (tmp_path / "no").exists()
    beside = tmp_path / "data.db"
    result = invoke([*command, "--url", f"sqlite:///{beside}"])
    assert result.exit_code == 1
    assert list(tmp_path.iterdir()) == []


def test_errors_exit_non_zero_with_the_message(tmp_path: Path) -> None:
    bad = invoke(["migrate", "--url", "redis://localhost"])
    assert bad.exit_code == 1
    assert "unknown URL scheme" in bad.stderr
    missing = invoke(["status"])
    assert missing.exit_code == 1
    assert missing.stderr == (
        "error: no store URL: pass --url (e.g. --url sqlite:///data.db) or set AAS_URL\n"
    )
    db_file = tmp_path / "newer.db"
    url = empty_database(db_file)
    assert invoke(["migrate", "--url", url]).exit_code == 0
    with sqlite3.connect(db_file) as db:
        db.execute("INSERT INTO agent_sessions_migrations VALUES (99, 'future', 'x', 0)")
    refused = invoke(["migrate", "--url", url])
    assert refused.exit_code == 1
    assert "newer than this code" in refused.stderr
    assert refused.stderr.count("\n") == 1
    assert invoke(["status", "--url", url]).exit_code == 1


def test_migrate_json_reports_the_steps(tmp_path: Path) -> None:
    url = empty_database(tmp_path / "j.db")
    latest = latest_version(url)
    report = orjson.loads(invoke(["migrate", "--url", url, "--json"]).stdout)
    assert report["from_version"] == 0
    assert report["to_version"] == latest
    assert [step["version"] for step in report["applied"]] == list(range(1, latest + 1))
    assert all(step["applied_at"] for step in report["applied"])
    assert report["up_to_date"] is False


@pytest.mark.postgres
def test_status_and_migrate_on_postgres(pg_url: str) -> None:
    table = f"cli_{uuid.uuid4().hex[:12]}"
    latest = latest_version(pg_url)
    try:
        before = orjson.loads(invoke(["status", "--json", "-t", table], AAS_URL=pg_url).stdout)
        assert before["schema_version"] == 0
        assert len(before["pending"]) == latest
        assert invoke(["migrate", "--dry-run", "-t", table], AAS_URL=pg_url).exit_code == 0
        # the dry run created nothing: still version 0
        dry = orjson.loads(invoke(["status", "--json"], AAS_URL=pg_url, AAS_TABLE=table).stdout)
        assert dry["schema_version"] == 0
        done = invoke(["migrate"], AAS_URL=pg_url, AAS_TABLE=table)
        assert done.exit_code == 0, done.output
        after = orjson.loads(invoke(["status", "--json", "-t", table], AAS_URL=pg_url).stdout)
        assert after["schema_version"] == latest
        assert after["up_to_date"] is True
    finally:
        asyncio.run(drop(pg_url, table))


def test_a_password_is_never_printed() -> None:
    url = "postgresql://someone:s3cr3t-pw@127.0.0.1:1/nothing"
    result = invoke(["status", "--url", url])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert "s3cr3t-pw" not in result.output
