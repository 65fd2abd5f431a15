"""The SQLite driver (the standard library's sqlite3, on threads of its own): the default."""

from .store import SqliteStore

__all__ = ["SqliteStore"]
