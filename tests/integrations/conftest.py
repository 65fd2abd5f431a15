"""The framework integrations' tests.

Each framework lives in a virtualenv of its own (`.venv-openai-agents`, `.venv-agno`, `.venv-adk`,
built by the Makefile), since their pins conflict. In the main test session (`.venv`, where no
framework is installed) `test_framework_envs.py` runs each framework's directory with that
framework's interpreter; inside a framework's virtualenv, its directory is collected directly.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from async_agent_storage import SessionStore, open_store
from tests.conftest import NOT_RUN
from tests.postgres._server import ENV_URL, LOCAL_URL, Cluster, answers, find_binaries

# directory -> the module its framework provides
FRAMEWORK_DIRS = {"openai_agents": "agents", "agno": "agno", "adk": "google.adk"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


collect_ignore = [d for d, module in FRAMEWORK_DIRS.items() if not _installed(module)]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server for the tests: `AAS_TEST_POSTGRES_URL`, the local one, or a
    throwaway cluster (as in tests/postgres); NOT RUN when there is none."""
    url = os.environ.get(ENV_URL)
    if url:
        if not answers(url, timeout=10):
            pytest.fail(f"{ENV_URL}={url!r} does not answer")
        yield url
        return
    if answers(LOCAL_URL):
        yield LOCAL_URL
        return
    bindir = find_binaries()
    if bindir is None:
        reason = f"no PostgreSQL server: {ENV_URL} is not set and nothing answers at {LOCAL_URL}"
        NOT_RUN["postgres (integrations)"] = reason
        pytest.skip(reason)
    cluster = Cluster(bindir)
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


async def drop_tables(url: str, table: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for suffix in ("_leases", "_runs", "", "_migrations"):
            await connection.execute(f'DROP TABLE IF EXISTS "{table}{suffix}"')
    finally:
        await connection.close()


@dataclass(frozen=True)
class Target:
    """Where a test keeps its sessions: a database URL and a table of the test's own."""

    url: str
    table: str

    def open(self, **options: Any) -> SessionStore:
        """A new, unopened store over the table."""
        return open_store(self.url, table_name=self.table, auto_upgrade_schema=True, **options)

    def args(self) -> list[str]:
        """The command-line arguments that name it to the tests' helper scripts."""
        return ["--url", self.url, "--table", self.table]


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """A table of this test's own (dropped afterwards), on SQLite and on PostgreSQL."""
    table = f"aas_it_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield Target(f"sqlite:///{tmp_path}/data.db", table)
        return
    url: str = request.getfixturevalue("pg_url")
    yield Target(url, table)
    asyncio.run(drop_tables(url, table))
