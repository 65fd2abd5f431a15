"""The benchmark's scaling cells (``--replica-url``, ``--pgbouncer``, ``--rounds``) against the
tests' own primary, its streaming replica and a PgBouncer in front of that primary: every routed
system runs turns and listings without an error, and the ratios per round are reported."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.cli import parser, plan_from
from benchmarks.suite import Plan, run
from benchmarks.workload import WorkloadSpec

from ._pgbouncer import PgBouncer, find_or_install
from ._server import Cluster

ROUTED = ("store append +replica", "store append via pgbouncer")


@pytest.fixture
def bouncer(replicated: tuple[Cluster, Cluster], pgbouncer_url: str) -> Iterator[str]:
    """PgBouncer in front of the replicated primary (`pgbouncer_url` only proves one starts)."""
    binary, _ = find_or_install()
    assert binary is not None
    bouncer = PgBouncer(binary, replicated[0].url)
    bouncer.start()
    try:
        yield bouncer.url
    finally:
        bouncer.stop()


def test_the_flags_make_the_plan() -> None:
    args = parser().parse_args(
        [
            "--backend=postgres",
            "--url=postgresql://p/d",
            "--replica-url=postgresql://r/d",
            "--pgbouncer=postgresql://b:6432/d",
            "--rounds=3",
        ]
    )
    plan = plan_from(args)
    assert (plan.replica_url, plan.pgbouncer_url, plan.rounds) == (
        "postgresql://r/d",
        "postgresql://b:6432/d",
        3,
    )
    with pytest.raises(SystemExit, match="PostgreSQL backend"):
        plan_from(parser().parse_args(["--replica-url=postgresql://r/d"]))


def test_replica_and_pgbouncer_cells_run_in_interleaved_rounds(
    replicated: tuple[Cluster, Cluster], bouncer: str, tmp_path: Path
) -> None:
    primary, standby = replicated
    plan = Plan(
        backends=[("postgres", primary.url)],
        scenarios=["turn", "list"],
        concurrency=[4],
        duration=0.2,
        warmup=0.05,
        spec=WorkloadSpec(sessions=40, users=4),
        systems=["store append", *ROUTED],
        workdir=tmp_path,
        replica_url=standby.url,
        pgbouncer_url=bouncer,
        rounds=3,
    )
    data = asyncio.run(run(plan)).to_dict()
    assert all(s["available"] for s in data["systems"]), data["systems"]
    cells = {(c["system"], c["scenario"]): c for c in data["cells"]}
    assert len(cells) == len(data["cells"]) == 6  # one cell per system and scenario
    for (system, scenario), cell in cells.items():
        assert cell["errors"] == 0, (system, scenario, cell["error_samples"])
        assert len(cell["round_ops_per_s"]) == 3
        assert sorted(cell["round_ops_per_s"])[1] == cell["ops_per_s"]  # the median round
    lines = report.scaling_lines(report.cells_from(data))
    assert len(lines) == 4
    assert all("n=3" in line for line in lines)
    assert "Replica and PgBouncer" in report.markdown(data)
