"""The SQLite driver (aiosqlite): the embedded default."""

from .store import SqliteStore

__all__ = ["SqliteStore"]
