"""Through PgBouncer in transaction pooling mode (Debian's package, started by the tests in front
of the test server): the conformance suite and the migration kit, with ``pooler="transaction"``.
Consecutive transactions of one client connection run on different server connections there, so
nothing may live in a server session between two calls: no named prepared statements, no session
settings, no session-level locks."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from async_agent_storage import ConfigurationError, PostgresStore
from async_agent_storage.testing import SessionStoreConformance, StoreFactory
from async_agent_storage.testing.migrations import MigrationConformance, StoreURL, seed_at

from .conftest import StoreMaker
from .test_migrations import LATEST, RELEASED_CHECKSUMS


@pytest.fixture
def make_pooled(make_store: StoreMaker, pgbouncer_url: str) -> StoreMaker:
    def make(**options: Any) -> PostgresStore:
        options.setdefault("db_url", pgbouncer_url)
        options.setdefault("pooler", "transaction")
        return make_store(**options)

    return make


class TestThroughPgBouncer(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self, make_pooled: StoreMaker) -> StoreFactory:
        return make_pooled


class TestMigrationsThroughPgBouncer(MigrationConformance):
    """The kit's eight processes opening (and upgrading) one database at once go through
    PgBouncer: the advisory lock is transaction-scoped, so it still excludes them."""

    @pytest.fixture
    def store_factory(self, make_pooled: StoreMaker) -> StoreMaker:
        return make_pooled

    @pytest.fixture
    def store_url(self, make_pooled: StoreMaker, pgbouncer_url: str, pg_schema: str) -> StoreURL:
        table = make_pooled().table_name
        return (
            pgbouncer_url,
            table,
            {"schema": pg_schema, "pool_max_size": 2, "pooler": "transaction"},
        )

    @pytest.fixture
    def migration_steps(self) -> tuple[str, str]:
        return 'CREATE TABLE "{name}_extra" (x integer)', "THIS IS NOT SQL"

    @pytest.fixture
    def released_checksums(self) -> dict[int, str]:
        return RELEASED_CHECKSUMS


pytestmark = pytest.mark.anyio


async def test_the_pooler_really_moves_a_client_between_server_connections(
    pgbouncer_url: str,
) -> None:
    """What makes these tests meaningful: one client connection's consecutive transactions run on
    different server connections when another client took the first one meanwhile."""
    first = await asyncpg.connect(pgbouncer_url, statement_cache_size=0)
    second = await asyncpg.connect(pgbouncer_url, statement_cache_size=0)
    try:
        before = await first.fetchval("SELECT pg_backend_pid()")
        async with second.transaction():  # holds a server connection: the one `first` released
            held = await second.fetchval("SELECT pg_backend_pid()")
            after = await first.fetchval("SELECT pg_backend_pid()")
        assert held == before
        assert after != before
    finally:
        await first.close()
        await second.close()


def test_pooler_mode_prepares_no_named_statements() -> None:
    pooled = PostgresStore(db_url="postgresql://h/d", pooler="transaction")
    assert pooled.statement_cache_size == 0
    assert PostgresStore(db_url="postgresql://h/d").statement_cache_size == 100
    # PgBouncer 1.21+ with max_prepared_statements: the caller may ask for named statements.
    assert PostgresStore(db_url="postgresql://h/d", pooler="transaction", statement_cache_size=50)
    with pytest.raises(ConfigurationError, match="pooler must be"):
        PostgresStore(db_url="postgresql://h/d", pooler="session")


async def test_the_migration_lock_excludes_another_migrator_through_the_pooler(
    make_pooled: StoreMaker,
) -> None:
    """One store holds the migration lock (a step's transaction, on one server connection); an
    upgrade by another store, on another client connection, waits for it."""
    holder, waiter = make_pooled(), make_pooled()
    await seed_at(holder, 1)
    async with holder._migration_target() as target, target.transaction():
        upgrade = asyncio.ensure_future(waiter.upgrade_schema())
        await asyncio.sleep(0.5)
        assert not upgrade.done()
    report = await asyncio.wait_for(upgrade, 30)
    assert [step.version for step in report.applied] == list(range(2, LATEST + 1))
