"""`aas export` on SQLite and PostgreSQL stores: both formats, the filters, the output file,
the progress display, and memory that stays flat as the store grows."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest

from async_agent_storage import Session, open_store

from .conftest import invoke, on_a_terminal, run_aas


def lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def read_all(url: str, table: str) -> list[Session]:
    async def read() -> list[Session]:
        async with open_store(url, table_name=table) as store:
            return await store.get_all_sessions(include_runs=True)

    return asyncio.run(read())


def test_jsonl_is_every_session_whole_newest_first(store: tuple[str, str]) -> None:
    url, table = store
    result = invoke(["export"], AAS_URL=url, AAS_TABLE=table)
    assert result.exit_code == 0, result.output
    exported = [Session.model_validate_json(line) for line in result.stdout.splitlines()]
    assert exported == read_all(url, table)
    assert [s.session_id for s in exported] == ["flow-1", "team-1", "bob-1", "alice-2", "alice-1"]
    assert exported[-1].runs[0]["input"] == "hello [mongo]"
    assert result.stderr == "exported 5 session(s) to stdout\n"
    for size in ("1", "2", "3"):
        paged = invoke(["export", "--page-size", size], AAS_URL=url, AAS_TABLE=table)
        assert paged.stdout == result.stdout
    dash = invoke(["export", "-o", "-"], AAS_URL=url, AAS_TABLE=table)
    assert (dash.stdout, dash.stderr) == (result.stdout, result.stderr)
    two = invoke(["export", "--limit", "2", "--page-size", "1"], AAS_URL=url, AAS_TABLE=table)
    assert [s["session_id"] for s in lines(two.stdout)] == ["flow-1", "team-1"]


def test_chat_is_one_example_per_usable_run(store: tuple[str, str]) -> None:
    url, table = store
    result = invoke(["export", "--format", "chat"], AAS_URL=url, AAS_TABLE=table)
    assert result.exit_code == 0, result.output
    examples = lines(result.stdout)
    assert examples == [
        {"messages": [{"role": "user", "content": "plan"}, {"role": "assistant", "content": "ok"}]},
        {
            "messages": [
                {"role": "user", "content": "refund"},
                {"role": "assistant", "content": "done"},
            ]
        },
        {
            "messages": [  # as stored, without the fields the chat format does not know
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "price?"},
                {"role": "assistant", "content": "10 €"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "hello [mongo]"},
                {"role": "assistant", "content": "hi, how can I help?"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "sunny"},
            ]
        },
    ]
    assert result.stderr.splitlines() == [
        "wrote 5 chat example(s) from 5 session(s) to stdout",
        "skipped 1 run(s): 1 with neither a messages list nor text input and output/content",
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--user", "alice"], ["alice-2", "alice-1"]),
        (["--agent", "support"], ["bob-1", "alice-1"]),
        (["--type", "team"], ["team-1"]),
        (["--since", "1d"], ["flow-1", "team-1", "bob-1", "alice-2", "alice-1"]),
        (["--since", "2999-01-01T00:00:00+00:00"], []),
        (["--where-state", "city=Paris"], ["bob-1", "alice-1"]),
        (["--where-state", "city=Paris", "--user", "alice"], ["alice-1"]),
        (["--where-state", "tier=2"], ["alice-2"]),
        (["--where-state", 'tier="2"'], []),  # the string "2" is not the number 2
        (["--where-state", "vip=true"], ["alice-2"]),
        (["--where-state", "tier=true"], []),  # true is not 1
        (["--where-state", "city=Paris", "--where-state", "tier=1"], ["bob-1", "alice-1"]),
        (["--where-state", "city.name=Paris"], []),
    ],
)
def test_filters(store: tuple[str, str], filters: list[str], expected: list[str]) -> None:
    url, table = store
    result = invoke(["export", *filters], AAS_URL=url, AAS_TABLE=table)
    assert result.exit_code == 0, result.output
    assert [s["session_id"] for s in lines(result.stdout)] == expected


def test_nested_state_keys(sqlite_url: str) -> None:
    async def fill() -> None:
        async with open_store(sqlite_url, auto_upgrade_schema=True) as store:
            await store.upsert(
                Session(session_id="n", session_data={"session_state": {"a": {"b": [1, 2]}}})
            )
            await store.upsert(Session(session_id="m", session_data={"session_state": {"a": 1}}))

    asyncio.run(fill())
    result = invoke(["export", "--where-state", "a.b=[1,2]"], AAS_URL=sqlite_url)
    assert [s["session_id"] for s in lines(result.stdout)] == ["n"]
    bad = invoke(["export", "--where-state", "a..b=1"], AAS_URL=sqlite_url)
    assert bad.exit_code == 1
    assert bad.stderr == "error: --where-state 'a..b=1': expected KEY=VALUE, e.g. city=Paris\n"


def test_output_file_is_replaced_only_on_success(store: tuple[str, str], tmp_path: Path) -> None:
    url, table = store
    target = tmp_path / "out" / "sessions.jsonl"
    target.parent.mkdir()
    done = invoke(["export", "-o", str(target)], AAS_URL=url, AAS_TABLE=table)
    assert done.exit_code == 0, done.output
    assert done.stdout == ""
    assert done.stderr == f"exported 5 session(s) to {target}\n"
    assert len(target.read_text().splitlines()) == 5
    failed = invoke(["export", "-o", str(target), "--table", "no_such_table"], AAS_URL=url)
    assert failed.exit_code == 1
    assert len(target.read_text().splitlines()) == 5
    assert sorted(p.name for p in target.parent.iterdir()) == ["sessions.jsonl"]
    nowhere = invoke(["export", "-o", str(tmp_path / "missing" / "x.jsonl")], AAS_URL=url)
    assert nowhere.exit_code == 1
    assert nowhere.stderr.startswith("error: cannot write ")


def test_progress_only_on_a_terminal_writing_to_a_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        async with open_store(url, auto_upgrade_schema=True) as store:
            await store.upsert_many(
                [
                    Session(session_id=f"s{i}", runs=[{"input": "q", "output": "a"}])
                    for i in range(50)
                ]
            )

    asyncio.run(fill())

    def stderr_on_a_terminal(*args: str) -> tuple[str, bytes]:
        return on_a_terminal(["export", "--url", url, "--page-size", "5", *args])

    to_file, stdout = stderr_on_a_terminal("-o", str(tmp_path / "out.jsonl"))
    assert stdout == b""
    assert "exporting" in to_file  # the progress display, on stderr's terminal
    assert "exported 50 session(s)" in to_file
    piped, stdout = stderr_on_a_terminal()
    assert len(stdout.splitlines()) == 50
    assert "exporting" not in piped  # output piped: no progress
    assert "exported 50 session(s) to stdout" in piped
    forced_off, _ = stderr_on_a_terminal("-o", str(tmp_path / "out.jsonl"), "--no-progress")
    assert "exporting" not in forced_off
    # not on a terminal at all: nothing but the final count
    plain = run_aas(["export", "--url", url, "-o", str(tmp_path / "x.jsonl")])
    assert plain.stderr == f"exported 50 session(s) to {tmp_path / 'x.jsonl'}\n"


def build(url: str, count: int) -> None:
    """`count` sessions of three runs (about 2 KB of JSON each)."""

    async def fill() -> None:
        async with open_store(url, auto_upgrade_schema=True) as store:
            for start in range(0, count, 1000):
                await store.upsert_many(
                    [
                        Session(
                            session_id=f"s{i:07d}",
                            user_id=f"u{i % 100}",
                            session_data={"session_state": {"i": i}},
                            runs=[
                                {"input": f"question {i}.{k} " + "q" * 200, "output": "a" * 400}
                                for k in range(3)
                            ],
                        )
                        for i in range(start, min(start + 1000, count))
                    ]
                )

    asyncio.run(fill())


@pytest.mark.slow
def test_export_memory_stays_flat(tmp_path: Path) -> None:
    """The Python memory an export holds at its peak does not grow with the store: 20,000
    sessions (about 40 MB of JSON) need no more than 2,000. (Process RSS also holds SQLite's
    page cache, which the store caps at 64 MiB; see the README for RSS figures.)"""
    peaks: dict[int, float] = {}
    for count in (2_000, 20_000):
        url = f"sqlite:///{tmp_path / f'{count}.db'}"
        build(url, count)
        for fmt in ("jsonl", "chat", "jsonl"):  # the first run also imports modules
            tracemalloc.start()
            try:
                result = invoke(
                    ["export", "-f", fmt, "-o", str(tmp_path / "out.jsonl")], AAS_URL=url
                )
                peak = tracemalloc.get_traced_memory()[1] / 2**20
            finally:
                tracemalloc.stop()
            assert result.exit_code == 0, result.output
            peaks[count] = peak
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 20_000
    assert peaks[20_000] < peaks[2_000] + 1.0, peaks
    assert peaks[20_000] < 8.0, peaks
