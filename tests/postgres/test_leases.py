"""Leases across OS processes on PostgreSQL: the done-when tests of issue 16."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lease_turns import Spec, check_turns, killed_holder, run_turns

from .conftest import drop_tables, table_name

pytestmark = pytest.mark.postgres
PROCESSES = 8


@pytest.fixture
def table(pg_url: str, pg_schema: str) -> Iterator[str]:
    name = table_name()
    yield name
    asyncio.run(drop_tables(pg_url, pg_schema, name))


def _spec(pg_url: str, pg_schema: str, table: str, tmp_path: Path, **extra: object) -> Spec:
    options = {"auto_upgrade_schema": True, "schema": pg_schema, "pool_max_size": 2}
    return Spec(pg_url, table, options, str(tmp_path / "go"), **extra)  # type: ignore[arg-type]


async def _create(spec: Spec) -> None:
    async with spec.open():
        pass


@pytest.mark.slow
def test_eight_processes_take_fifty_turns_each_one_at_a_time(
    pg_url: str, pg_schema: str, table: str, tmp_path: Path
) -> None:
    spec = _spec(pg_url, pg_schema, table, tmp_path, turns=50)
    asyncio.run(_create(spec))
    turns = run_turns(spec, PROCESSES, tmp_path)
    asyncio.run(check_turns(spec, PROCESSES, turns))


@pytest.mark.slow
def test_a_holder_killed_mid_turn_loses_its_lease_after_the_ttl(
    pg_url: str, pg_schema: str, table: str, tmp_path: Path
) -> None:
    spec = _spec(pg_url, pg_schema, table, tmp_path, ttl=2.0)
    asyncio.run(_create(spec))
    asyncio.run(killed_holder(spec))
