"""The error tree. Every driver translates its own exceptions into these at one boundary.

```
StorageError
├── ConfigurationError        bad URL, bad table name, missing extra, bad option
├── InvalidInputError         a bad argument: session id, limit, cursor, run, naive datetime
├── SerializationError        not encodable, NaN/Infinity, too large, too deep
├── SessionConflictError      if_version did not match the stored version
├── SessionOwnershipError     the session belongs to another user
├── SessionBusyError          another process holds the session's lease (who, until when)
├── SessionFencedError        a write's fence token is older than the session's latest lease
├── EncryptionKeyError        an encrypted value whose key is missing or wrong (names the key id)
├── MigrationError            failed step, checksum drift, schema newer than the code, not upgraded
├── StorageUnavailableError   cannot connect, pool timeout, connection lost, database locked
└── StoreClosedError          the store is not open (never opened, or closed)
```

`ConfigurationError`, `InvalidInputError` and `SerializationError` are also `ValueError`s, so code
that already catches `ValueError` around user input keeps working. Nothing is written when any of
them is raised.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "ConfigurationError",
    "EncryptionKeyError",
    "InvalidInputError",
    "MigrationError",
    "SerializationError",
    "SessionBusyError",
    "SessionConflictError",
    "SessionFencedError",
    "SessionOwnershipError",
    "StorageError",
    "StorageUnavailableError",
    "StoreClosedError",
]


class StorageError(Exception):
    """Root of every error a store raises. Catch this to handle any storage failure."""


class ConfigurationError(StorageError, ValueError):
    """The store was configured wrongly: bad URL, bad identifier, missing optional dependency."""


class InvalidInputError(StorageError, ValueError):
    """An argument is not acceptable (empty session id, negative limit, foreign cursor...)."""


class SerializationError(StorageError, ValueError):
    """A value cannot be stored as JSON: unsupported type, NaN/Infinity, too deep, too large.

    `path` locates the offending value inside the session (``session_data.state.x[3]``) when known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SessionConflictError(StorageError):
    """`upsert(..., if_version=expected)` found another version stored; or an `upsert` of a
    copy at version `expected` found the session at `actual`, changed so that the copy's tail
    repeats the id of a run now before its `runs_offset` (the write would hold that run twice).

    Re-read the session, re-apply the change and retry. `actual` is 0 when the session is absent.
    """

    def __init__(self, message: str, *, session_id: str, expected: int, actual: int) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class SessionOwnershipError(StorageError):
    """The session exists and belongs to another user: it cannot be overwritten or appended to."""

    def __init__(self, message: str, *, session_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id


class SessionBusyError(StorageError):
    """Another holder has the session's lease (`store.lease`): `holder` (``host:pid:random``)
    holds it until `until` (an aware datetime, by the database's clock where it has one). Also
    raised by `Lease.renew` when the lease was taken over."""

    def __init__(self, message: str, *, session_id: str, holder: str, until: datetime) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.holder = holder
        self.until = until


class SessionFencedError(StorageError):
    """A write carrying `fence=token` found a newer lease on the session (`latest`): its holder
    lost the lease (it stalled past its ttl) and another turn has begun. Nothing was written."""

    def __init__(self, message: str, *, session_id: str, token: int, latest: int) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.token = token
        self.latest = latest


class EncryptionKeyError(StorageError):
    """A stored value is encrypted with a key this store cannot use: `key_id` is not in its key
    ring (or the store has none), or the key under that id does not decrypt it (a wrong key, or
    a value altered or moved from another session). Nothing is returned in its place."""

    def __init__(self, message: str, *, key_id: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.session_id = session_id


class MigrationError(StorageError):
    """The schema cannot be used or upgraded: a step failed, a checksum changed, the database is
    newer than this code, or it is older and `auto_upgrade_schema` is off."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached right now: connection refused or lost, pool exhausted,
    database locked past the busy timeout. Usually worth retrying later; never means "not found".

    `maybe_committed` is True when a write was sent and the answer lost (the connection broke, a
    timeout expired): it may have been applied. Retrying `append_runs` with the same run ids is
    then safe (the runs already stored are not appended twice); for other writes, read first.
    """

    def __init__(self, message: str, *, maybe_committed: bool = False) -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed


class StoreClosedError(StorageError):
    """The store is not open: call `await store.open()` or use `async with store:` first."""
