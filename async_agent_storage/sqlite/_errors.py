"""The SQLite driver's error table: sqlite3's primary result codes mapped to the error tree."""

from __future__ import annotations

import sqlite3
from collections.abc import Hashable
from typing import Final

from .._boundary import ErrorTable, Rule
from ..errors import ConfigurationError, MigrationError, StorageUnavailableError

__all__ = ["ERRORS"]

_LOCKED: Final = Rule(
    StorageUnavailableError,
    "the database is locked by another connection for longer than "
    "busy_timeout={store.busy_timeout:g}s",
)
_UNAVAILABLE: Final = Rule(StorageUnavailableError)


def _primary_code(exc: BaseException) -> Hashable | None:
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return None if not code else code & 0xFF  # the primary result code of an extended one


ERRORS: Final = ErrorTable(
    codes={
        sqlite3.SQLITE_BUSY: _LOCKED,
        sqlite3.SQLITE_LOCKED: _LOCKED,
        sqlite3.SQLITE_IOERR: _UNAVAILABLE,
        sqlite3.SQLITE_FULL: _UNAVAILABLE,
        sqlite3.SQLITE_CANTOPEN: Rule(
            StorageUnavailableError, "the database file cannot be opened (check db_file)"
        ),
        sqlite3.SQLITE_READONLY: _UNAVAILABLE,
        sqlite3.SQLITE_PROTOCOL: _UNAVAILABLE,
        sqlite3.SQLITE_NOLFS: _UNAVAILABLE,
        sqlite3.SQLITE_AUTH: Rule(ConfigurationError),
        # The store's statements are fixed and tested: SQLite refusing one means its tables are
        # not what this code made (missing, dropped by another process, or changed by hand).
        sqlite3.SQLITE_ERROR: Rule(
            MigrationError,
            "the store's tables are missing or not as this code made them (dropped, never "
            "created, or changed outside async-agent-storage); run `await store.upgrade_schema()`",
        ),
        # SQLITE_CORRUPT, SQLITE_NOTADB, constraint failures: retrying will not help (StorageError).
    },
    code_of=_primary_code,
    classes=[(OSError, _UNAVAILABLE)],
)
