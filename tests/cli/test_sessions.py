"""`aas sessions ls|show|rm` on SQLite and PostgreSQL stores holding `sample_sessions()`."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson

from async_agent_storage import open_store

from .conftest import hours_ago, invoke


def ls(url: str, table: str, *args: str) -> dict[str, Any]:
    result = invoke(["sessions", "ls", "--json", *args], AAS_URL=url, AAS_TABLE=table)
    assert result.exit_code == 0, result.output
    page: dict[str, Any] = orjson.loads(result.stdout)
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [item["session_id"] for item in page["items"]]


def test_ls_lists_newest_first_with_filters(store: tuple[str, str]) -> None:
    url, table = store
    assert ids(ls(url, table)) == ["flow-1", "team-1", "bob-1", "alice-2", "alice-1"]
    assert ids(ls(url, table, "--user", "alice")) == ["alice-2", "alice-1"]
    assert ids(ls(url, table, "--agent", "support")) == ["bob-1", "alice-1"]
    assert ids(ls(url, table, "--agent", "crew")) == ["team-1"]
    assert ids(ls(url, table, "--type", "workflow")) == ["flow-1"]
    assert ids(ls(url, table, "--user", "bob", "--type", "agent")) == ["bob-1"]
    assert ids(ls(url, table, "--since", "1h")) == ids(ls(url, table))
    assert ids(ls(url, table, "--since", hours_ago(-1))) == []
    assert ids(ls(url, table, "--since", "2999-01-01")) == []
    first = ls(url, table, "--user", "alice")["items"][1]
    assert first["run_count"] == 2
    assert "runs" not in first
    assert first["session_data"]["session_state"] == {"city": "Paris", "tier": 1}


def test_ls_pages_with_the_cursor(store: tuple[str, str]) -> None:
    url, table = store
    seen: list[str] = []
    page = ls(url, table, "--limit", "2")
    while True:
        seen += ids(page)
        assert len(page["items"]) <= 2
        if page["next_cursor"] is None:
            break
        page = ls(url, table, "--limit", "2", "--cursor", page["next_cursor"])
    assert seen == ["flow-1", "team-1", "bob-1", "alice-2", "alice-1"]


def test_ls_table_shows_user_text_as_it_is(store: tuple[str, str]) -> None:
    url, table = store
    result = invoke(["sessions", "ls", "-n", "1", "--user", "alice"], AAS_URL=url, AAS_TABLE=table)
    assert result.exit_code == 0, result.output
    assert "alice-1" not in result.stdout
    assert "alice-2" in result.stdout
    assert "more sessions follow: add --cursor " in result.stderr
    everything = invoke(["sessions", "ls", "--url", url, "--table", table])
    assert "[b]x" in everything.stdout  # a session name that looks like markup
    none = invoke(["sessions", "ls", "--user", "nobody"], AAS_URL=url, AAS_TABLE=table)
    assert none.exit_code == 0
    assert none.stderr == "no sessions\n"


def test_bad_filters_are_one_line_errors(store: tuple[str, str]) -> None:
    url, table = store
    for args, message in (
        (["--since", "yesterday"], "error: --since 'yesterday': expected an ISO date"),
        (["--cursor", "bogus"], "error: "),
    ):
        result = invoke(["sessions", "ls", *args], AAS_URL=url, AAS_TABLE=table)
        assert result.exit_code == 1
        assert result.stderr.startswith(message)
        assert result.stderr.count("\n") == 1


def test_show_prints_a_session_and_its_latest_runs(store: tuple[str, str]) -> None:
    url, table = store
    shown = invoke(["sessions", "show", "alice-1", "--url", url, "-t", table])
    assert shown.exit_code == 0, shown.output
    assert "input: hello [mongo]" in shown.stdout
    assert "run 2 of 2" in shown.stdout
    assert '"city": "Paris"' in shown.stdout
    last = invoke(["sessions", "show", "alice-1", "--runs", "1", "--url", url, "-t", table])
    assert "hello [mongo]" not in last.stdout
    assert "output: sunny" in last.stdout
    assert "showing the last 1 of 2 runs" in last.stderr
    messages = invoke(["sessions", "show", "alice-2", "--url", url, "-t", table])
    assert "assistant: 10 €" in messages.stdout
    assert "tool-only run" in messages.stdout


def test_show_json_and_runs(store: tuple[str, str]) -> None:
    url, table = store

    def show(*args: str) -> dict[str, Any]:
        result = invoke(["sessions", "show", *args, "--json"], AAS_URL=url, AAS_TABLE=table)
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = orjson.loads(result.stdout)
        return data

    whole = show("alice-1", "--runs", "all")
    assert [r["input"] for r in whole["runs"]] == ["hello [mongo]", "weather?"]
    assert whole["run_count"] == 2
    assert whole["runs_offset"] == 0
    assert whole["user_id"] == "alice"
    tail = show("alice-1", "--runs", "1")
    assert [r["input"] for r in tail["runs"]] == ["weather?"]
    assert tail["runs_offset"] == 1
    assert show("alice-1", "--runs", "0")["runs"] == []
    assert show("alice-1", "--user", "alice")["session_id"] == "alice-1"


def test_show_refuses_what_is_absent_or_not_the_users(store: tuple[str, str]) -> None:
    url, table = store
    absent = invoke(["sessions", "show", "nope"], AAS_URL=url, AAS_TABLE=table)
    assert absent.exit_code == 1
    assert absent.stderr == "error: no session 'nope'\n"
    other = invoke(["sessions", "show", "alice-1", "--user", "bob"], AAS_URL=url, AAS_TABLE=table)
    assert other.exit_code == 1
    assert other.stderr == "error: no session 'alice-1' owned by user 'bob'\n"
    assert "hello" not in other.output
    bad = invoke(["sessions", "show", "alice-1", "--runs", "-2"], AAS_URL=url, AAS_TABLE=table)
    assert bad.exit_code == 1
    assert "--runs '-2'" in bad.stderr


def remaining(url: str, table: str) -> list[str]:
    async def read() -> list[str]:
        async with open_store(url, table_name=table) as store:
            return await store.get_all_session_ids()

    return asyncio.run(read())


def test_rm_asks_then_deletes(store: tuple[str, str]) -> None:
    url, table = store
    env = {"AAS_URL": url, "AAS_TABLE": table}
    kept = invoke(["sessions", "rm", "alice-1"], input="n\n", **env)
    assert kept.exit_code == 1
    assert "Delete session 'alice-1' of user 'alice' and its 2 run(s)?" in kept.stderr
    assert "nothing deleted" in kept.stderr
    assert "alice-1" in remaining(url, table)
    unanswered = invoke(["sessions", "rm", "alice-1"], input="", **env)
    assert unanswered.exit_code == 1
    assert unanswered.stderr.endswith(
        "\nerror: nothing deleted: no answer to the question (--yes deletes without asking)\n"
    )
    gone = invoke(["sessions", "rm", "alice-1"], input="y\n", **env)
    assert gone.exit_code == 0, gone.output
    assert "deleted session 'alice-1'" in gone.stderr
    assert "alice-1" not in remaining(url, table)
    again = invoke(["sessions", "rm", "alice-1", "--yes"], **env)
    assert again.exit_code == 1
    assert again.stderr == "error: no session 'alice-1'\n"


def test_rm_yes_and_ownership(store: tuple[str, str]) -> None:
    url, table = store
    env = {"AAS_URL": url, "AAS_TABLE": table}
    refused = invoke(["sessions", "rm", "bob-1", "--user", "alice", "--yes"], **env)
    assert refused.exit_code == 1
    assert refused.stderr == "error: no session 'bob-1' owned by user 'alice'\n"
    asked = invoke(["sessions", "rm", "bob-1", "--user", "alice"], input="y\n", **env)
    assert asked.exit_code == 1
    assert "bob-1" in remaining(url, table)
    done = invoke(["sessions", "rm", "bob-1", "--user", "bob", "-y"], **env)
    assert done.exit_code == 0
    assert remaining(url, table) == ["flow-1", "team-1", "alice-2", "alice-1"]


def test_reading_commands_create_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    url = f"sqlite:///{path}"
    for args in (["sessions", "ls"], ["sessions", "show", "x"], ["sessions", "rm", "x", "--yes"]):
        result = invoke([*args, "--url", url])
        assert result.exit_code == 1
        assert result.stderr.startswith("error: no store with table 'agent_sessions' at ")
        assert "aas migrate" in result.stderr
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    missing = invoke(["sessions", "ls", "--url", f"sqlite:///{tmp_path / 'nope.db'}"])
    assert missing.exit_code == 1
    assert list(tmp_path.iterdir()) == [path]
