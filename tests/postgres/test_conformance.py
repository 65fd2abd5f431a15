"""The conformance suite on PostgreSQL: with the store's own pool, and with a pool passed in that
prepares nothing (statement_cache_size=0, as behind pgbouncer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from async_agent_storage import PostgresStore
from async_agent_storage.testing import SessionStoreConformance, StoreFactory

from ..privacy import RING
from .conftest import StoreMaker


class TestPostgres(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self, make_store: StoreMaker) -> StoreFactory:
        return make_store


class TestPostgresGivenPoolWithoutStatementCache(SessionStoreConformance):
    @pytest.fixture
    async def given_pool(self, pg_url: str) -> AsyncIterator[asyncpg.Pool]:
        pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=8, statement_cache_size=0)
        yield pool
        await pool.close()

    @pytest.fixture
    def store_factory(self, make_store: StoreMaker, given_pool: asyncpg.Pool) -> StoreFactory:
        def factory(**options: Any) -> PostgresStore:
            return make_store(db_url=None, pool=given_pool, **options)

        return factory


class TestPostgresSealed(SessionStoreConformance):
    """Every rule holds on a store that encrypts what it writes."""

    @pytest.fixture
    def store_factory(self, make_store: StoreMaker) -> StoreFactory:
        def factory(**options: Any) -> PostgresStore:
            options.setdefault("encryption", RING)
            return make_store(**options)

        return factory
