"""Smoke test of the benchmark suite: tiny durations, the output's structure, zero errors.
No timing is asserted: these runs are far too short to measure anything."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from async_agent_storage import SessionStore
from async_agent_storage.sqlite import SqliteStore
from benchmarks import report
from benchmarks.cli import main
from benchmarks.suite import Plan, run
from benchmarks.workload import SeedSession, WorkloadSpec, sessions
from tests.conftest import NOT_RUN

PG_ENV = "AAS_TEST_POSTGRES_URL"
PG_LOCAL = "postgresql://postgres@127.0.0.1:5432/test"
TINY = [
    "--duration",
    "0.2",
    "--warmup",
    "0.05",
    "--concurrency",
    "1,4",
    "--sessions",
    "40",
    "--users",
    "8",
    "--history-lengths",
    "5,20",
    "--history-sessions",
    "8",
    "--history-concurrency",
    "4",
    "--cold-reps",
    "1",
    "--bulk-sessions",
    "20",
]


def test_the_workload_is_the_same_in_every_process() -> None:
    spec = WorkloadSpec(sessions=5)
    first = [s.runs for s in sessions(spec)]
    assert first == [s.runs for s in sessions(spec)]
    run = first[0][0]
    assert {"run_id", "messages", "metrics"} <= run.keys()
    assert 300 < len(json.dumps(run)) < 4000


def _by_cell(cells: list[dict[str, Any]]) -> dict[tuple[str, str, int, int | None], dict[str, Any]]:
    return {(c["system"], c["scenario"], c["concurrency"], c["param"]): c for c in cells}


def test_make_bench_on_sqlite_writes_the_table_json_markdown_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code = main(
        [
            *TINY,
            "--out",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--tag",
            "smoke",
            "--quiet",
            "--peers",
            "--peers-python",
            str(tmp_path / "no-such-venv" / "python"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "store append" in printed
    assert "raw aiosqlite" in printed  # whole: the tables fit 80 columns without wrapping a cell
    assert max(len(line) for line in printed.splitlines()) <= 80
    assert "sqlite: Turn (read last N runs + write), turns/s" in printed
    assert "issue" not in printed.lower()
    assert "lease cost: sqlite: a leased turn costs" in printed

    [json_file] = out.glob("*-sqlite-smoke.json")
    data = json.loads(json_file.read_text())
    assert {"started", "plan", "environment", "systems", "cells"} <= data.keys()
    assert data["environment"]["cpu_count"]
    assert data["environment"]["packages"]["aiosqlite"]
    systems = {s["name"]: s for s in data["systems"]}
    for name in ("store append", "store upsert", "raw aiosqlite"):
        assert systems[name]["available"], systems[name]
        assert systems[name]["seed"]["bytes_per_session"] > 0
    # The peers' interpreter is missing: said so, not skipped silently, and nothing crashed.
    assert not systems["peers"]["available"]
    assert "make bench-peers" in systems["peers"]["reason"]

    cells = _by_cell(data["cells"])
    for system in ("store append", "store upsert", "raw aiosqlite"):
        for callers in (1, 4):
            assert cells[(system, "turn", callers, None)]["ops"] > 0
        for length in (5, 20):
            assert cells[(system, "history", 4, length)]["ops"] > 0
    for callers in (1, 4):  # the turn under a lease: turns only
        assert cells[("store leased", "turn", callers, None)]["ops"] > 0
    for system in ("store append", "raw aiosqlite"):
        for callers in (1, 4):
            assert cells[(system, "list", callers, None)]["ops"] > 0
        assert cells[(system, "bulk_load", 1, 100)]["ops"] == 20
    for scenario in ("cold_start_fresh", "cold_start_current"):
        assert cells[("store append", scenario, 1, None)]["p50_ms"] > 0
    assert [c for c in data["cells"] if c["errors"]] == []
    turn = cells[("store append", "turn", 4, None)]
    assert turn["p50_ms"] <= turn["p95_ms"] <= turn["p99_ms"] <= turn["max_ms"]
    assert turn["cpu_ms_per_op"] > 0
    assert turn["rss_peak_mb"] > 0

    markdown = json_file.with_suffix(".md").read_text()
    assert "## Targets" in markdown
    assert "## Leases" in markdown
    assert "issue" not in markdown.lower()  # no reference to the project's tracker
    assert "| store append |" in markdown
    png = json_file.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Ratios to the raw driver are computed for every store cell.
    rows = report.rows(report.cells_from(data))
    store_turns = [r for r in rows if r["cell"].kind == "store" and r["cell"].scenario == "turn"]
    assert store_turns
    assert all(r["ratio"] is not None for r in store_turns)
    tables = report.ratio_tables(data)
    assert "| store append |" in tables
    assert "| raw aiosqlite |" in tables


async def _answers(url: str) -> bool:
    try:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Any:
    """A schema of this test's own on the test server, dropped after it."""
    url = os.environ.get(PG_ENV) or PG_LOCAL
    if not asyncio.run(_answers(url)):
        reason = f"nothing answers at {url} (set {PG_ENV})"
        NOT_RUN["benchmarks postgres"] = reason
        pytest.skip(reason)
    schema = f"aas_bench_test_{uuid.uuid4().hex[:8]}"
    asyncio.run(_execute(url, f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        asyncio.run(_execute(url, f"DROP SCHEMA {schema} CASCADE"))


def test_rounds_take_the_systems_in_alternate_orders(tmp_path: Path) -> None:
    """Round two runs the systems in the reverse order of round one: none always runs first,
    or always right after the same other one."""
    from benchmarks.suite import Progress

    class Labels(Progress):
        def __init__(self) -> None:
            self.labels: list[str] = []

        def cell(self, label: str) -> None:
            self.labels.append(label)

    plan = Plan(
        backends=[("sqlite", None)],
        scenarios=["turn"],
        concurrency=[2],
        duration=0.1,
        warmup=0.02,
        rounds=3,
        spec=WorkloadSpec(sessions=20, users=4),
        workdir=tmp_path,
    )
    progress = Labels()
    data = asyncio.run(run(plan, progress)).to_dict()
    assert [c for c in data["cells"] if c["errors"]] == []
    order = [label.split(" x2 ")[1].rsplit(" round ", 1) for label in progress.labels]
    by_round = {r: [name for name, n in order if n == r] for r in ("1", "2", "3")}
    assert len(by_round["1"]) >= 2
    assert by_round["2"] == by_round["1"][::-1]
    assert by_round["3"] == by_round["1"]


def test_the_postgres_cells_run_against_the_local_server(pg_url: str, tmp_path: Path) -> None:
    plan = Plan(
        backends=[("postgres", pg_url)],
        scenarios=["turn", "list"],
        concurrency=[1, 4],
        duration=0.2,
        warmup=0.05,
        spec=WorkloadSpec(sessions=40, users=8),
        workdir=tmp_path,
    )
    data = asyncio.run(run(plan)).to_dict()
    systems = {s["name"]: s for s in data["systems"]}
    assert systems["raw asyncpg"]["available"], systems["raw asyncpg"]
    assert data["environment"]["servers"]["postgres"]["version"].startswith("PostgreSQL")
    cells = _by_cell(data["cells"])
    for callers in (1, 4):
        assert cells[("raw asyncpg", "turn", callers, None)]["ops"] > 0
        assert cells[("raw asyncpg", "list", callers, None)]["ops"] > 0
    # The store runs when its driver is importable, and says why not otherwise.
    store = systems["store append"]
    if store["available"]:
        assert cells[("store append", "turn", 4, None)]["ops"] > 0
    else:
        assert store["reason"].startswith("not available:")
    assert [c for c in data["cells"] if c["errors"]] == []
    written = report.write_all(data, tmp_path / "out", "pg")
    assert written["json"].exists()
    assert written["markdown"].exists()


def test_the_body_cost_compares_the_three_column_types(pg_url: str) -> None:
    from benchmarks import body_cost

    result = asyncio.run(body_cost.measure(pg_url, "bench_body_cost", 20, 2, 5))
    assert set(result) == {"jsonb", "json", "text"}
    for cells in result.values():
        assert cells["read"] > 0
        assert cells["insert"] > 0
        assert cells["bytes"] > 1000  # 10 runs of about 1.4 KB a session


def test_the_layout_cost_holds_the_same_runs_in_every_layout(pg_url: str) -> None:
    """`measure` reads every layout back against the store's after its appends (it raises when
    one holds other runs) and reports bytes, reads and appends for each."""
    from benchmarks import layout_cost

    result = asyncio.run(layout_cost.measure(pg_url, "bench_layout_cost", 30, 2, 8))
    assert list(result) == ["row", "row_zlib", *(f"chunk{k}" for k in layout_cost.CHUNKS), "doc"]
    for cells in result.values():
        assert cells["read"] > 0
        assert cells["append"] > 0
        assert cells["after"] >= cells["seeded"] > 1000
    assert result["row_zlib"]["seeded"] < result["row"]["seeded"]


def test_the_lease_cost_runs_interleaved_rounds_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import lease_cost

    args = ["--rounds", "2", "--duration", "0.2", "--warmup", "0.05", "--concurrency", "1,4"]
    code = lease_cost.main([*args, "--sessions", "40", "--workdir", str(tmp_path), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for callers in ("1", "4"):
        cell = result["cells"][callers]
        assert len(cell["turns_per_s"]["store leased"]) == 2
        ratio = cell["time_ratio"]
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]


def test_the_bulk_load_profile_reports_its_throughput_and_shares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import bulk_profile

    url = f"sqlite:///{tmp_path / 'bulk.db'}"
    monkeypatch.setattr("sys.argv", ["bulk_profile", url, "--sessions", "30", "--batch", "10"])
    bulk_profile.main()
    out = capsys.readouterr().out
    assert "30 sessions (" in out
    assert "in calls of 10:" in out
    shares = [float(line.split()[-2]) for line in out.splitlines() if line.endswith(" %")]
    assert len(shares) == 3
    assert all(0 <= share <= 100 for share in shares)
    assert shares[0] > 0  # encoding is always part of a load


def test_the_bulk_floor_sends_the_rows_the_store_itself_writes(tmp_path: Path) -> None:
    from benchmarks import bulk_floor

    seeds = list(sessions(WorkloadSpec(sessions=30, prefix="floor")))
    batches = bulk_floor.store_statements(seeds, 10)
    path = tmp_path / "floor.db"
    assert bulk_floor.load_store_layout(path, batches) > 0

    async def read_back() -> None:
        # What it loaded is what `upsert_many` would have stored: the store reads it back.
        async with SqliteStore(bulk_floor.TABLE, db_file=path) as store:
            await _holds_the_seeds(store, seeds)

    asyncio.run(read_back())


async def _holds_the_seeds(store: SessionStore, seeds: list[SeedSession]) -> None:
    assert await store.count_sessions() == len(seeds)
    for seed in seeds[::7]:
        read = await store.read(seed.session_id, user_id=seed.user_id)
        assert read is not None
        assert (read.runs, read.session_data) == (seed.runs, seed.session_data)


def test_the_bulk_floor_replays_the_stores_own_postgres_statements(pg_url: str) -> None:
    from async_agent_storage.postgres import PostgresStore
    from benchmarks import bulk_floor

    seeds = list(sessions(WorkloadSpec(sessions=30, prefix="floorpg")))

    async def replay_and_read_back() -> None:
        recorded = await bulk_floor.pg_store_statements(pg_url, seeds, 10)
        # Per batch: the purge of expired ids, the lock of existing ones (none), the
        # transaction's time, a COPY of the sessions and one of their runs.
        assert [[method for method, *_ in sent] for sent in recorded] == [
            ["execute", "fetch", "fetchval", "copy_records_to_table", "copy_records_to_table"]
        ] * 3
        try:
            assert await bulk_floor.replay_pg_store(pg_url, recorded) > 0
            async with PostgresStore(bulk_floor.TABLE, db_url=pg_url) as store:
                await _holds_the_seeds(store, seeds)
            # Without COPY: the purge, the lock, the one statement.
            stated = await bulk_floor.pg_store_statements(pg_url, seeds, 10, copy=False)
            assert [[method for method, *_ in sent] for sent in stated] == [
                ["execute", "fetch", "fetch"]
            ] * 3
            assert await bulk_floor.replay_pg_store(pg_url, stated) > 0
            async with PostgresStore(bulk_floor.TABLE, db_url=pg_url) as store:
                await _holds_the_seeds(store, seeds)
        finally:
            await bulk_floor.drop_pg_store(pg_url)

    asyncio.run(replay_and_read_back())


def test_the_turn_split_times_both_turns_inside_and_outside_asyncpg(pg_url: str) -> None:
    from asyncpg import connection as asyncpg_connection

    from benchmarks import turn_split

    fetchrow = asyncpg_connection.Connection.fetchrow
    results = asyncio.run(turn_split.measure(pg_url, sessions=40, rounds=2, seconds=0.2, warmup=5))
    assert asyncpg_connection.Connection.fetchrow is fetchrow  # put back as it was
    assert list(results) == ["store append", "raw asyncpg"]
    for rows in results.values():
        assert len(rows) == 2
        for wall, inside in rows:
            assert 0 < inside < wall  # every turn waits on the server, and runs some Python


def test_the_keep_cost_runs_the_turn_with_connections_kept_and_given_back(pg_url: str) -> None:
    from async_agent_storage import PostgresStore
    from benchmarks import keep_cost

    results = asyncio.run(
        keep_cost.measure(pg_url, sessions=40, rounds=2, seconds=0.2, concurrency=[1, 4])
    )
    assert list(results) == [1, 4]
    for cells in results.values():
        assert list(cells) == list(keep_cost.MODES)
        for rows in cells.values():
            assert len(rows) == 2
            assert all(rate > 0 and cpu > 0 for rate, cpu in rows)

    async def switch() -> tuple[int, int]:  # the switch the benchmark turns
        async with PostgresStore("aas_keep_switch", pg_url) as store:
            try:
                assert store._pool is not None
                store._pool.keeps = False
                await store.ping()
                given_back = store._pool.kept
                store._pool.keeps = True
                await store.ping()
                return given_back, store._pool.kept
            finally:
                await store.drop()

    assert asyncio.run(switch()) == (0, 1)


def test_the_bulk_floor_reports_both_layouts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import bulk_floor

    monkeypatch.setattr(
        "sys.argv", ["bulk_floor", "--sessions", "30", "--batch", "10", "--rounds", "2"]
    )
    bulk_floor.main()
    out = capsys.readouterr().out
    assert "30 sessions (" in out
    timed = [line for line in out.splitlines() if line.rstrip().endswith(")")]
    assert [line.split("  ")[1].strip() for line in timed] == [
        "store layout, statements alone",
        "raw layout, statements alone",
        "raw layout, rows built and sent",
    ]
    assert all(float(line.split()[-3]) > 0 for line in timed)


def test_the_comparison_with_an_earlier_commit_reports_both_builds_ratios(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import compare

    argv = ["compare", "HEAD", "--rounds", "1", "--duration", "0.3", "--concurrency", "1,4"]
    argv += ["--sessions", "40", "--workdir", str(tmp_path / "compare")]
    monkeypatch.setattr("sys.argv", argv)
    try:
        compare.main()
    finally:  # the worktree of HEAD is not kept past the test
        for build in (tmp_path / "compare").glob("build-*"):
            subprocess.run(["git", "worktree", "remove", "--force", str(build)], check=False)
    lines = capsys.readouterr().out.splitlines()
    assert "sqlite turn, store append / raw aiosqlite, median of 1 rounds:" in lines
    rows = [line for line in lines if line.startswith("  ")]
    assert [row.split()[0] for row in rows] == ["this", "HEAD"]
    for row in rows:
        cells = row.split(": ")[1:]
        assert len(cells) == 2  # 1 and 4 callers
        assert all(float(cell.split("x")[0]) > 0 for cell in cells)


def test_the_comparison_says_why_a_build_measured_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that refuses connections: no system can seed, which each round says, instead of
    # a table of blank cells.
    from benchmarks import compare

    argv = ["compare", "HEAD", "--rounds", "1", "--duration", "0.3", "--concurrency", "1"]
    argv += ["--backend", "postgres", "--url", "postgresql://postgres@127.0.0.1:9/nowhere"]
    argv += ["--sessions", "10", "--workdir", str(tmp_path / "compare")]
    monkeypatch.setattr("sys.argv", argv)
    try:
        compare.main()
    finally:
        for build in (tmp_path / "compare").glob("build-*"):
            subprocess.run(["git", "worktree", "remove", "--force", str(build)], check=False)
    out = capsys.readouterr().out
    for system in ("store append", "raw asyncpg"):  # in each build's round, with the reason
        assert out.count(f"  {system}: not measured: not available: cannot ") == 2
    rows = [line for line in out.splitlines() if line.startswith("  ") and "median" not in line]
    assert [row.split()[0] for row in rows if "no cell measured" in row] == ["this", "HEAD"]


def test_the_store_against_store_comparison_reports_each_callers_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import ab_turn

    argv = ["HEAD", "--rounds", "2", "--duration", "0.2", "--concurrency", "1,3"]
    ab_turn.main([*argv, "--sessions", "30", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "(patch against patch), 2 rounds of 0.2 s:" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line[:3] in ("| 1", "| 3")]
    assert [row[0].strip() for row in rows] == ["1", "3"]
    for _, mine, theirs, ratio, _cpu in rows:
        assert float(mine.split()[0].replace(",", "")) > 0
        assert float(theirs.split()[0].replace(",", "")) > 0
        assert float(ratio.split("x")[0]) > 0


def test_an_earlier_build_runs_beside_this_one_under_its_own_name(tmp_path: Path) -> None:
    import sys

    import async_agent_storage
    from benchmarks import ab_turn

    commit, package = ab_turn.load_build("b11707c", tmp_path)
    assert package.__name__ == f"aas_{commit[:12]}"
    assert package.SessionStore is not async_agent_storage.SessionStore
    # Its modules import each other, not this checkout's package.
    loaded = [m for name, m in sys.modules.items() if name.startswith(package.__name__ + ".")]
    assert loaded
    assert all(str(tmp_path) in (m.__file__ or "") for m in loaded)
    # b11707c's append_runs predates state_patch: its turn replaces the state instead.
    assert not ab_turn.Build("b11707c", package, "t").patches
    assert ab_turn.Build("this checkout", async_agent_storage, "t").patches


def test_the_sealed_turn_is_the_append_turn_and_the_upsert_turn_its_own(tmp_path: Path) -> None:
    # "store sealed" measures what encryption costs the append turn: it must append (with a
    # state patch, which an encrypting store merges itself), as "store append" does.
    from benchmarks.systems import Dataset, build
    from benchmarks.workload import Picker

    dataset = Dataset("main", WorkloadSpec(sessions=6, users=2, min_runs=2, max_runs=3))
    systems = {s.name: s for s in build("sqlite", None, tmp_path)}
    calls: dict[str, dict[str, int]] = {}

    async def three_turns(name: str) -> None:
        system = systems[name]
        await system.seed(dataset)
        await system.start(dataset)
        try:
            for worker in range(3):
                await system.turn(Picker(dataset.spec, worker), dataset.spec)
            store = system.store  # type: ignore[attr-defined]
            calls[name] = store.stats()["calls"]
        finally:
            await system.stop()

    for name in ("store append", "store sealed", "store upsert"):
        asyncio.run(three_turns(name))
    for name in ("store append", "store sealed"):
        assert calls[name].get("append_runs") == 3
        assert "upsert" not in calls[name]
    assert calls["store upsert"].get("upsert") == 3
    assert "append_runs" not in calls["store upsert"]
