"""The MongoDB driver (PyMongo's native asyncio client; a Motor client passed in works too).

Needs the ``mongo`` extra: ``pip install 'async-agent-storage[mongo]'``.
"""

from .store import DEFAULT_DB_NAME, MongoStore

__all__ = ["DEFAULT_DB_NAME", "MongoStore"]
