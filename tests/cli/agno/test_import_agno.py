"""`aas import agno` on tables that Agno 1.x, 2.x and 3.x wrote themselves (an agent with a stub
model, a team, a workflow), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from async_agent_storage import Session, open_store

from ..conftest import drop, invoke, on_a_terminal, run_aas
from .conftest import AgnoTables, agno_python, write

PROVENANCE = "imported_from_agno"
STATE = {"city": "Paris", "note": "café ☕ [mongo]", "visits": 2}


def agno_tables(agno: AgnoTables) -> list[str]:
    """The tables to import: Agno 1.x has one per mode, 2.x and 3.x one sessions table."""
    if agno.major == 1:
        return [agno.tables[mode] for mode in ("agent", "team", "workflow")]
    return [agno.tables["sessions"]]


def import_all(agno: AgnoTables, url: str, table: str, *extra: str) -> list[dict[str, Any]]:
    reports = []
    for name in agno_tables(agno):
        args = ["import", "agno", "--from", agno.url, "--table", name, "--json", *extra]
        result = invoke([*args, "--url", url, "--store-table", table])
        assert result.exit_code == 0, result.output
        reports.append(orjson.loads(result.stdout))
    return reports


def stored(url: str, table: str) -> dict[str, Session]:
    async def read() -> list[Session]:
        async with open_store(url, table_name=table) as store:
            return await store.get_all_sessions(include_runs=True)

    return {s.session_id: s for s in asyncio.run(read())}


def check_sessions(agno: AgnoTables, sessions: dict[str, Session]) -> None:
    assert sorted(sessions) == ["s1", "s2", "t1", "w1"]
    s1, s2, t1, w1 = (sessions[i] for i in ("s1", "s2", "t1", "w1"))
    assert (s1.session_type, s1.user_id, s1.agent_id) == ("agent", "u1", "helper")
    for key, value in STATE.items():
        assert s1.session_data["session_state"][key] == value
    assert len(s1.runs) == 2
    first = [(m["role"], m["content"]) for m in s1.runs[0]["messages"]]
    assert first[-2:] == [("user", "hello"), ("assistant", "echo: hello")]
    assert s1.runs[1]["messages"][-1]["content"] == "echo: and again"
    assert s1.agent_data is not None
    assert s1.agent_data["model"]["id"] == "echo"
    assert (s2.user_id, s2.agent_id, len(s2.runs)) == (None, "helper", 1)
    assert (t1.session_type, t1.user_id, t1.team_id, len(t1.runs)) == ("team", "u2", "crew", 1)
    assert t1.runs[0]["messages"][-1]["content"] == "echo: team hello"
    assert (w1.session_type, w1.user_id, w1.workflow_id, len(w1.runs)) == (
        "workflow",
        "u3",
        "nightly",
        1,
    )
    now = time.time()
    for session in sessions.values():
        assert session.metadata is not None
        origin = session.metadata[PROVENANCE]
        assert origin["layout"] == (
            "agno 1.x storage" if agno.major == 1 else "agno 2.x/3.x sessions"
        )
        assert now - 3600 < origin["created_at"] <= now + 2  # epoch seconds, maybe rounded up


def test_import_from_sqlite(agno_sqlite: AgnoTables, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store' / 'sessions.db'}"  # created by the import
    reports = import_all(agno_sqlite, url, "agent_sessions")
    assert sum(r["imported"] for r in reports) == 4
    assert sum(r["skipped"] + r["refused"] for r in reports) == 0
    sessions = stored(url, "agent_sessions")
    check_sessions(agno_sqlite, sessions)
    # the store lists them in Agno's order, oldest first written
    chat = invoke(["export", "--format", "chat", "--user", "u1"], AAS_URL=url)
    assert orjson.loads(chat.stdout.splitlines()[0]) == {
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "echo: hello"},
        ]
    }
    workflow = invoke(["export", "--format", "chat", "--type", "workflow"], AAS_URL=url)
    if agno_sqlite.major > 1:  # Agno 2.x/3.x workflow runs: text input and content
        assert orjson.loads(workflow.stdout) == {
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": "echo: go"},
            ]
        }
    else:  # Agno 1.x workflow runs keep no input
        assert workflow.stdout == ""
        assert "skipped 1 run(s)" in workflow.stderr
    # on a terminal: a progress bar on stderr, the counts on stdout
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for name in agno_tables(agno_sqlite):
        shown, out = on_a_terminal(
            ["import", "agno", "--from", agno_sqlite.url, "--table", name, "--url", other]
        )
        assert "importing" in shown
        assert out.startswith(b"imported ")
    quiet, _ = on_a_terminal(
        [
            "import",
            "agno",
            "--from",
            agno_sqlite.url,
            "--table",
            name,
            "--url",
            other,
            "--no-progress",
        ]
    )
    assert quiet == ""
    again = import_all(agno_sqlite, url, "agent_sessions")
    assert sum(r["skipped"] for r in again) == 4
    assert sum(r["imported"] + r["refused"] for r in again) == 0
    assert stored(url, "agent_sessions") == sessions  # untouched


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[str]:
    table = f"cli_{uuid.uuid4().hex[:12]}"
    try:
        yield table
    finally:
        asyncio.run(drop(pg_url, table))


@pytest.mark.postgres
def test_import_from_postgres(agno_postgres: AgnoTables, pg_url: str, pg_store: str) -> None:
    reports = import_all(agno_postgres, pg_url, pg_store, "--batch-size", "1")
    assert sum(r["imported"] for r in reports) == 4
    check_sessions(agno_postgres, stored(pg_url, pg_store))
    # the installed script, as a user runs it, with the summary for people
    for name in agno_tables(agno_postgres):
        args = ["import", "agno", "--from", agno_postgres.url, "--table", name, "--url", pg_url]
        done = run_aas([*args, "--store-table", pg_store])
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("imported 0, skipped ")
        assert done.stderr == ""


def test_mode(agno_sqlite: AgnoTables, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    base = ["import", "agno", "--from", agno_sqlite.url, "--url", url]
    if agno_sqlite.major == 1:
        wrong = invoke([*base, "--table", agno_sqlite.tables["agent"], "--mode", "team"])
        assert wrong.exit_code == 1
        assert (
            "has no team_id column: it is not an Agno 1.x team table (its columns say agent)"
            in (wrong.stderr)
        )
        right = invoke([*base, "--table", agno_sqlite.tables["team"], "--mode", "team"])
        assert right.exit_code == 0, right.output
    else:
        teams = invoke([*base, "--table", agno_sqlite.tables["sessions"], "--mode", "team"])
        assert teams.exit_code == 0, teams.output
        assert (
            teams.stdout
            == "imported 1, skipped 0 (already in the store), refused 0, of 1 Agno session(s)\n"
        )
    assert sorted(stored(url, "agent_sessions")) == ["t1"]


def add_bad_rows(agno: AgnoTables) -> None:
    """Rows Agno would not write, added by hand: an id too long for the store, JSON that does not
    parse, and (2.x/3.x) a session type the store does not know."""
    with closing(sqlite3.connect(agno.url)) as db, db:
        if agno.major == 1:
            table = agno.tables["agent"]
            sql = (
                f"INSERT INTO {table} (session_id, user_id, memory, created_at) VALUES (?, ?, ?, ?)"
            )
            db.execute(sql, ("x" * 300, "u9", "{}", 1))
            db.execute(sql, ("broken", "u9", "{not json", 1))
        else:
            table = agno.tables["sessions"]
            columns = "session_id, session_type, session_data, created_at"
            sql = f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?)"
            db.execute(sql, ("x" * 300, "agent", "{}", 1))
            db.execute(sql, ("broken", "agent", "{not json", 1))
            db.execute(sql, ("odd", "chat", "{}", 1))


def test_refused_rows_are_counted_with_the_reason(agno_sqlite: AgnoTables, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def taken() -> None:  # s1 is already in the store, owned by someone else
        async with open_store(url, auto_upgrade_schema=True) as store:
            await store.upsert(Session(session_id="s1", user_id="mallory"))

    asyncio.run(taken())
    add_bad_rows(agno_sqlite)
    table = agno_tables(agno_sqlite)[0]
    args = ["import", "agno", "--from", f"sqlite:///{agno_sqlite.url}", "--table", table]
    result = invoke([*args, "--url", url, "--json"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    report = orjson.loads(result.stdout)
    reasons = {r["reason"]: (r["count"], r["examples"]) for r in report["reasons"]}
    column = "memory" if agno_sqlite.major == 1 else "session_data"
    expected = {
        "session_id: String should have at most 255 characters": (1, ["x" * 300]),
        f"{column} is not valid JSON": (1, ["broken"]),
        "already in the store, owned by another user": (1, ["s1"]),
    }
    if agno_sqlite.major > 1:
        expected["session_type 'chat' is not agent, team or workflow"] = (1, ["odd"])
    assert reasons == expected
    imported = 1 if agno_sqlite.major == 1 else 3  # s2 (and t1, w1 from the one 2.x/3.x table)
    assert report["imported"] == imported
    assert report["refused"] == len(expected)
    assert report["rows"] == imported + len(expected)
    assert stored(url, "agent_sessions")["s1"].user_id == "mallory"
    people = invoke([*args, "--url", url])
    assert people.exit_code == 1
    assert "refused 1: already in the store, owned by another user (e.g. 's1')" in people.stdout


def test_errors_before_anything_is_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    missing = invoke(
        ["import", "agno", "--from", str(tmp_path / "none.db"), "--table", "t", "--url", url]
    )
    assert missing.exit_code == 1
    assert missing.stderr == f"error: no SQLite database at {str(tmp_path / 'none.db')!r}\n"
    plain = tmp_path / "plain.db"
    with closing(sqlite3.connect(plain)) as db:
        db.execute("CREATE TABLE things (session_id TEXT, body TEXT)")
    for table, message in (
        ("nope", f"error: no table 'nope' in {str(plain)!r}\n"),
        ("things", f"error: {plain} table things is not an Agno storage table"),
        ("bad name", "error: --table 'bad name': expected a table name, or schema.table\n"),
    ):
        result = invoke(["import", "agno", "--from", str(plain), "--table", table, "--url", url])
        assert result.exit_code == 1
        assert result.stderr.startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.db"]


def test_a_2x_table_upgraded_by_agno_3(tmp_path: Path) -> None:
    """Agno 3's migrations copy the runs into the runs table and keep the 2.x runs column: each
    run is imported once, in order, with the turn Agno 3 added after the upgrade."""
    agno_python(2)
    agno_python(3)
    path = str(tmp_path / "agno.db")
    write(2, "sqlite", path, "agno_s", None)
    write(3, "sqlite", path, "agno_s", None, "--upgrade")
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM agno_s WHERE runs IS NOT NULL").fetchone()[0] > 0
        assert db.execute("SELECT count(*) FROM agno_s_runs").fetchone()[0] == 6
    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = invoke(["import", "agno", "--from", path, "--table", "agno_s", "--url", url])
    assert result.exit_code == 0, result.output
    s1 = stored(url, "agent_sessions")["s1"]
    said = [run["messages"][-1]["content"] for run in s1.runs]
    assert said == ["echo: hello", "echo: and again", "echo: after the upgrade"]
    assert len({run["run_id"] for run in s1.runs}) == 3
