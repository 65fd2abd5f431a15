"""The conformance suite on SQLite: a file database, and an in-memory one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from async_agent_storage import SqliteStore
from async_agent_storage.testing import SessionStoreConformance, StoreFactory


class TestSqliteFile(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        def factory(**options: Any) -> SqliteStore:
            return SqliteStore(db_file=tmp_path / "sessions.db", **options)

        return factory


class TestSqliteMemory(SessionStoreConformance):
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        def factory(**options: Any) -> SqliteStore:
            return SqliteStore(db_file=None, **options)

        return factory
