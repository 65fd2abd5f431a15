"""The conformance suite on SQLite: a file database, the same with every call on the connection's
thread (`inline=False`), an in-memory database, and a file database through an encrypting
store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from async_agent_storage import SqliteStore
from async_agent_storage.testing import SessionStoreConformance, StoreFactory

from ..privacy import RING


class TestSqliteFile(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        def factory(**options: Any) -> SqliteStore:
            return SqliteStore(db_file=tmp_path / "sessions.db", **options)

        return factory


class TestSqliteFileThreaded(SessionStoreConformance):
    """Every rule holds with no call run on the event loop (the calls a store runs there by
    default go through the connection's thread, as longer calls always do)."""

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        def factory(**options: Any) -> SqliteStore:
            return SqliteStore(db_file=tmp_path / "sessions.db", inline=False, **options)

        return factory


class TestSqliteMemory(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        def factory(**options: Any) -> SqliteStore:
            return SqliteStore(db_file=None, **options)

        return factory


class TestSqliteFileSealed(SessionStoreConformance):
    """Every rule holds on a store that encrypts what it writes."""

    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        def factory(**options: Any) -> SqliteStore:
            options.setdefault("encryption", RING)
            return SqliteStore(db_file=tmp_path / "sessions.db", **options)

        return factory
