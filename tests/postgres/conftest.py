"""The PostgreSQL server of the tests (see `_server`), a schema of their own in it, and a fresh
table name per test; everything they create is dropped after them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from async_agent_storage import PostgresStore
from tests.conftest import NOT_RUN

from ._pgbouncer import PgBouncer, find_or_install
from ._server import ENV_URL, LOCAL_URL, Cluster, answers, find_binaries

StoreMaker = Callable[..., PostgresStore]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgres/" in item.nodeid.replace(os.sep, "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The URL of the test server (a superuser on a UTF8 database)."""
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
        reason = (
            f"no server: {ENV_URL} is not set, nothing answers at {LOCAL_URL}, and no "
            "PostgreSQL binaries (initdb, pg_ctl) were found to start one"
        )
        NOT_RUN["postgres"] = reason
        pytest.skip(reason)
    cluster = Cluster(bindir)
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def own_cluster(pg_url: str) -> Iterator[Cluster]:
    """A throwaway server of the tests' own, for shutting down and restarting mid-test (the
    shared server is never stopped)."""
    bindir = find_binaries()
    if bindir is None:
        reason = "no PostgreSQL binaries to start a server of the tests' own for restart tests"
        NOT_RUN["postgres restart"] = reason
        pytest.skip(reason)
    cluster = Cluster(bindir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _clusters_or_skip(what: str) -> Path:
    bindir = find_binaries()
    if bindir is None or not (bindir / "pg_basebackup").exists():
        reason = f"no PostgreSQL binaries (initdb, pg_ctl, pg_basebackup) to start {what}"
        NOT_RUN[f"postgres {what}"] = reason
        pytest.skip(reason)
    return bindir


@pytest.fixture(scope="session")
def replicated(pg_url: str) -> Iterator[tuple[Cluster, Cluster]]:
    """A primary of the tests' own and a streaming replica of it (``pg_basebackup -R``), both on
    loopback ports; the primary commits synchronously to its WAL, so the replica's lag is the
    replication's own (milliseconds), not the WAL writer's delay."""
    bindir = _clusters_or_skip("replicas")
    primary = Cluster(bindir, {"synchronous_commit": "on"})
    primary.start()
    try:
        standby = Cluster.standby_of(primary)
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


@pytest.fixture
def failover_pair(pg_url: str) -> Iterator[tuple[Cluster, Cluster]]:
    """A primary replicating synchronously to a standby (a commit is acknowledged once the
    standby has it), for one failover test: the standby is promoted, the primary stopped."""
    bindir = _clusters_or_skip("failover")
    primary = Cluster(bindir, {"synchronous_commit": "on", "synchronous_standby_names": "*"})
    primary.start()
    try:
        standby = Cluster.standby_of(primary)
        try:
            yield primary, standby
        finally:
            standby.stop()
    finally:
        primary.stop()


@pytest.fixture(scope="session")
def pgbouncer_url(pg_url: str) -> Iterator[str]:
    """PgBouncer in transaction pooling mode in front of the test server (installed from the
    distribution's packages when missing and the machine allows)."""
    binary, reason = find_or_install()
    bouncer = None
    if binary is not None:
        try:
            bouncer = PgBouncer(binary, pg_url)
            bouncer.start()
        except (RuntimeError, KeyError, OSError) as exc:
            reason = f"pgbouncer did not start: {exc}"
            bouncer = None
    if bouncer is None:
        NOT_RUN["postgres pgbouncer"] = reason
        pytest.skip(reason)
    try:
        yield bouncer.url
    finally:
        bouncer.stop()


async def execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test server, for looking behind the store's back."""
    connection = await asyncpg.connect(pg_url)
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def pg_schema(pg_url: str) -> Iterator[str]:
    """A schema for this test run's tables, dropped with everything in it at the end."""
    schema = f"aas_test_{uuid.uuid4().hex[:8]}"
    asyncio.run(execute(pg_url, f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema
    finally:
        asyncio.run(execute(pg_url, f'DROP SCHEMA "{schema}" CASCADE'))


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


async def drop_tables(url: str, schema: str, table: str) -> None:
    await execute(
        url,
        *(
            f'DROP TABLE IF EXISTS "{schema}"."{table}{suffix}"'
            for suffix in ("_leases", "_runs", "", "_migrations")
        ),
    )


@pytest.fixture
async def make_store(pg_url: str, pg_schema: str) -> AsyncIterator[StoreMaker]:
    """`make_store(**options)`: a new, unopened store over this test's own table."""
    table = table_name()

    def make(**options: Any) -> PostgresStore:
        options.setdefault("schema", pg_schema)
        options.setdefault("db_url", pg_url)
        return PostgresStore(table, **options)

    yield make
    await drop_tables(pg_url, pg_schema, table)
