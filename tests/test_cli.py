"""The command line, run in-process on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from async_agent_storage import SqliteStore
from async_agent_storage.cli import app

MIGRATIONS = SqliteStore().migrations

runner = CliRunner()


def test_status_then_migrate_then_nothing_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    status = runner.invoke(app, ["status", url])
    assert status.exit_code == 0, status.output
    assert f"schema version: 0 (this code: {len(MIGRATIONS)})" in status.output
    plan = runner.invoke(app, ["migrate", url, "--dry-run"])
    assert plan.exit_code == 0
    assert "would apply" in plan.output
    done = runner.invoke(app, ["migrate", url, "--table", "agent_sessions"])
    assert done.exit_code == 0
    assert "applied" in done.output
    with sqlite3.connect(tmp_path / "cli.db") as db:
        assert db.execute("SELECT count(*) FROM agent_sessions_migrations").fetchone() == (
            len(MIGRATIONS),
        )
    again = runner.invoke(app, ["migrate", url])
    assert "nothing to do" in again.output


def test_errors_exit_non_zero_with_the_message(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["migrate", "redis://localhost"])
    assert bad.exit_code == 1
    assert "unknown URL scheme" in bad.output
    db_file = tmp_path / "newer.db"
    url = f"sqlite:///{db_file}"
    assert runner.invoke(app, ["migrate", url]).exit_code == 0
    with sqlite3.connect(db_file) as db:
        db.execute("INSERT INTO agent_sessions_migrations VALUES (99, 'future', 'x', 0)")
    refused = runner.invoke(app, ["migrate", url])
    assert refused.exit_code == 1
    assert "newer than this code" in refused.output
