"""async-agent-storage: async-first session storage for AI agents.

One asyncio protocol (`SessionStore`) over SQLite (embedded, the default), PostgreSQL and MongoDB:
read a session, append a turn's runs atomically, save state, list a user's sessions.

```python
from async_agent_storage import SqliteStore, Session

async with SqliteStore(db_file="tmp/data.db", auto_upgrade_schema=True) as store:
    session = await store.append_runs("s1", [{"input": "hi", "output": "hello"}], user_id="u1")
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._codec import DEFAULT_MAX_SESSION_BYTES
from ._crypto import KeyRing
from ._factory import open_store
from ._leases import Lease
from ._store import StoreOptions
from .errors import (
    ConfigurationError,
    EncryptionKeyError,
    InvalidInputError,
    MigrationError,
    SerializationError,
    SessionBusyError,
    SessionConflictError,
    SessionFencedError,
    SessionOwnershipError,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
)
from .models import (
    Activity,
    EntityActivity,
    Erasure,
    MigrationReport,
    MigrationStep,
    Session,
    SessionPage,
    SessionType,
    SessionValidationError,
    StoreUsage,
    TurnCount,
)
from .protocol import SessionStore
from .sqlite import SqliteStore

if TYPE_CHECKING:  # imported on first use: their drivers are optional dependencies
    from .mongo import MongoStore
    from .postgres import PostgresStore

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_SESSION_BYTES",
    "Activity",
    "ConfigurationError",
    "EncryptionKeyError",
    "EntityActivity",
    "Erasure",
    "InvalidInputError",
    "KeyRing",
    "Lease",
    "MigrationError",
    "MigrationReport",
    "MigrationStep",
    "MongoStore",
    "PostgresStore",
    "SerializationError",
    "Session",
    "SessionBusyError",
    "SessionConflictError",
    "SessionFencedError",
    "SessionOwnershipError",
    "SessionPage",
    "SessionStore",
    "SessionType",
    "SessionValidationError",
    "SqliteStore",
    "StorageError",
    "StorageUnavailableError",
    "StoreClosedError",
    "StoreOptions",
    "StoreUsage",
    "TurnCount",
    "__version__",
    "open_store",
]

# Drivers whose optional dependencies are imported only when the driver is first used:
# name -> (module, the package it needs, the extra that installs it).
_LAZY: dict[str, tuple[str, str, str]] = {
    "MongoStore": ("async_agent_storage.mongo", "pymongo", "mongo"),
    "PostgresStore": ("async_agent_storage.postgres", "asyncpg", "postgres"),
}


def _installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


# `from async_agent_storage import *` takes the drivers whose extras are installed, so it works
# without them; naming a driver whose extra is missing raises `ConfigurationError`.
for _name, (_, _dependency, _) in _LAZY.items():
    if not _installed(_dependency):
        __all__.remove(_name)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, dependency, extra = _LAZY[name]
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as exc:
            raise ConfigurationError(
                f"{name} needs the {extra!r} extra ({dependency}): "
                f"pip install 'async-agent-storage[{extra}]' ({exc})"
            ) from exc
    raise AttributeError(f"module 'async_agent_storage' has no attribute {name!r}")
