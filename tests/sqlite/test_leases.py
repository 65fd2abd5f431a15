"""Leases across OS processes on SQLite (one file): the done-when tests of issue 16."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.lease_turns import Spec, check_turns, killed_holder, run_turns

PROCESSES = 8


def _spec(tmp_path: Path, **extra: object) -> Spec:
    options = {"auto_upgrade_schema": True, "busy_timeout": 30}
    return Spec(f"sqlite:///{tmp_path}/turns.db", "agent_sessions", options, str(tmp_path / "go"),
                **extra)  # type: ignore[arg-type]  # fmt: skip


async def _create(spec: Spec) -> None:
    async with spec.open():
        pass


@pytest.mark.slow
def test_eight_processes_take_fifty_turns_each_one_at_a_time(tmp_path: Path) -> None:
    spec = _spec(tmp_path, turns=50)
    asyncio.run(_create(spec))
    turns = run_turns(spec, PROCESSES, tmp_path)
    asyncio.run(check_turns(spec, PROCESSES, turns))


@pytest.mark.slow
def test_a_holder_killed_mid_turn_loses_its_lease_after_the_ttl(tmp_path: Path) -> None:
    spec = _spec(tmp_path, ttl=2.0)
    asyncio.run(_create(spec))
    asyncio.run(killed_holder(spec))
