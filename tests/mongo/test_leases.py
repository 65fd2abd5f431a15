"""Leases across OS processes on MongoDB: the done-when tests of issue 16.

8 processes take 50 turns each, as on the other backends (about 40 s against mongoeco, a
wire-protocol server in Python serving hundreds of operations a second; far less against a real
server named by `AAS_TEST_MONGO_URL`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.lease_turns import Spec, check_turns, killed_holder, run_turns

from .conftest import DB_NAME, MongoTarget

pytestmark = pytest.mark.mongo
PROCESSES = 8


def _spec(mongo: MongoTarget, collection_name: str, tmp_path: Path, **extra: object) -> Spec:
    options = {"auto_upgrade_schema": True, "db_name": DB_NAME, "server_selection_timeout": 30}
    return Spec(mongo.url, collection_name, options, str(tmp_path / "go"), **extra)  # type: ignore[arg-type]


async def _create(spec: Spec) -> None:
    async with spec.open():
        pass


@pytest.mark.slow
def test_eight_processes_take_their_turns_one_at_a_time(
    mongo: MongoTarget, collection_name: str, tmp_path: Path
) -> None:
    spec = _spec(mongo, collection_name, tmp_path, turns=50)
    asyncio.run(_create(spec))
    turns = run_turns(spec, PROCESSES, tmp_path)
    asyncio.run(check_turns(spec, PROCESSES, turns))


@pytest.mark.slow
def test_a_holder_killed_mid_turn_loses_its_lease_after_the_ttl(
    mongo: MongoTarget, collection_name: str, tmp_path: Path
) -> None:
    spec = _spec(mongo, collection_name, tmp_path, ttl=2.0)
    asyncio.run(_create(spec))
    asyncio.run(killed_holder(spec))
