"""`StoreBase`: every public method of a store, written once above the drivers.

A driver is a subclass that answers small questions (the hooks below) about its database; the
base owns the rest: argument and option checks, the lifecycle, the one docstring of each call,
and the one path every call takes (`_call`), where the driver's exceptions become the error
tree through its `ErrorTable`.

====================================  ===========================================================
hook                                  what the driver does
====================================  ===========================================================
`_open_resources`                     connect (pool, client, connections); clean up on failure
`_close_resources`                    wait for calls in flight, close what it opened
`_migration_target`                   a `MigrationTarget` on the open store's connections, or on
                                      one made for the occasion before `open()`
`_read`                               one session, or None (absent / another user's)
`_upsert`                             write one encoded session, if_version and owner checked
`_upsert_many`                        write a batch of encoded sessions (last writer wins)
`_append`                             append encoded runs atomically, creating the session
`_delete`                             delete one session and its runs
`_list_page`, `_list_ids`             one listing (`ListQuery`): sessions and next key, or ids
`_drop`                               drop the store's tables
====================================  ===========================================================

A hook gets checked, encoded arguments and raises its driver's own exceptions (or an error of the
tree it decided on, such as `SessionOwnershipError` from `_rules.decide`); it never translates.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import inspect
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, ParamSpec, Self, TypeVar

from . import _migrations as migration_runner
from ._boundary import ErrorTable
from ._checks import (
    check_id,
    check_if_version,
    check_last_runs,
    check_max_bytes,
    check_optional_id,
)
from ._encoding import EncodedAppend, EncodedSession, encode_append, encode_session, encode_sessions
from ._migrations import Migration, MigrationTarget
from ._paging import ListQuery, PageKey, list_query
from .errors import ConfigurationError, MigrationError, StorageError, StoreClosedError
from .models import MigrationReport, Session, SessionPage

__all__ = ["StoreBase", "StoreState"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class StoreState(enum.Enum):
    """A store's lifecycle: NEW -> OPEN -> CLOSED; a closed store is not reopened."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class StoreBase(abc.ABC):
    """What every store does, whatever its database. See the module docstring for the hooks."""

    backend: ClassVar[str]
    """The database, as OpenTelemetry names it (``sqlite``, ``postgresql``, ``mongodb``)."""
    _errors: ClassVar[ErrorTable]

    migrations: Sequence[Migration]
    auto_upgrade_schema: bool
    max_session_bytes: int
    _state: StoreState = StoreState.NEW
    _dropped: bool = False

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        """A driver that leaves a hook out fails here, when its class is defined, rather than
        when a store is first used. (`abstract=True` for an intermediate base class.)"""
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        missing = sorted(
            name
            for name in getattr(StoreBase, "__abstractmethods__", ())
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False)
        )
        if missing:
            raise TypeError(f"{cls.__name__} does not implement the store hooks {missing}")

    def _setup(
        self,
        *,
        migrations: Sequence[Migration],
        auto_upgrade_schema: object,
        max_session_bytes: object,
        unknown: Mapping[str, object],
    ) -> None:
        """Check the options every store has; called first by each driver's `__init__`."""
        if unknown:
            raise self._unknown_options(unknown)
        if type(auto_upgrade_schema) is not bool:
            raise ConfigurationError(
                f"auto_upgrade_schema must be True or False, got {auto_upgrade_schema!r}"
            )
        self.auto_upgrade_schema = auto_upgrade_schema
        self.max_session_bytes = check_max_bytes(max_session_bytes)
        self.migrations = migrations
        self._state = StoreState.NEW
        self._dropped = False
        self._lifecycle = asyncio.Lock()

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options this store's constructor takes."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [
            p.name
            for p in parameters
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]

    def _unknown_options(self, unknown: Mapping[str, object]) -> ConfigurationError:
        names = ", ".join(sorted(unknown))
        return ConfigurationError(
            f"{type(self).__name__} got unknown option(s) {names}; "
            f"valid options: {', '.join(self.option_names())}"
        )

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """Names the store in messages: its backend, where it is (never a password) and its
        table, e.g. ``sqlite 'tmp/data.db' table 'agent_sessions'``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label}, state={self._state.value})"

    # --- the hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open_resources(self) -> None: ...

    @abc.abstractmethod
    async def _close_resources(self) -> None: ...

    @abc.abstractmethod
    def _migration_target(self) -> AbstractAsyncContextManager[MigrationTarget]: ...

    @abc.abstractmethod
    async def _read(
        self, session_id: str, user_id: str | None, last_runs: int | None
    ) -> Session | None: ...

    @abc.abstractmethod
    async def _upsert(self, session: EncodedSession, if_version: int | None) -> Session: ...

    @abc.abstractmethod
    async def _upsert_many(self, sessions: list[EncodedSession]) -> list[Session]: ...

    @abc.abstractmethod
    async def _append(self, append: EncodedAppend) -> Session: ...

    @abc.abstractmethod
    async def _delete(self, session_id: str, user_id: str | None) -> bool: ...

    @abc.abstractmethod
    async def _list_page(self, query: ListQuery) -> tuple[list[Session], PageKey | None]:
        """The sessions matching `query` (at most `query.limit`), newest first, and the key of
        the last one when more follow (None otherwise)."""

    @abc.abstractmethod
    async def _list_ids(self, query: ListQuery) -> list[str]:
        """The ids of every session matching `query`, newest first."""

    @abc.abstractmethod
    async def _drop(self) -> None: ...

    # --- the boundary -----------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        if self._state is StoreState.CLOSED:
            return StoreClosedError(f"{self.label}: the store was closed during the call ({exc})")
        return self._errors.translate(exc, self)

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """Translate the driver's exceptions raised inside the block (schema and lifecycle
        calls; data calls go through `_call`)."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _closed(self) -> StoreClosedError:
        state = "was closed" if self._state is StoreState.CLOSED else "is not open yet"
        return StoreClosedError(
            f"{self.label}: the store {state}; use `async with store:` or `await store.open()`"
        )

    def _live(self, resource: R | None) -> R:
        """A resource `open()` made (a pool, a client), or `StoreClosedError` once `close()` has
        taken it away (a call that started as the store was closing)."""
        if resource is None:
            raise self._closed()
        return resource

    def _check_usable(self) -> None:
        if self._state is not StoreState.OPEN:
            raise self._closed()
        if self._dropped:
            raise MigrationError(
                f"{self.label}: the store's tables were dropped; run "
                "`await store.upgrade_schema()` to create them again"
            )

    async def _call(
        self,
        operation: str,
        hook: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """The one path of every data call: the store must be open, and whatever the hook
        raises leaves as an error of the tree. `operation` names the public call."""
        self._check_usable()
        try:
            return await hook(*args, **kwargs)
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, then create the schema if it is missing, or upgrade an older one when
        `auto_upgrade_schema` is set (else `MigrationError` says how). Idempotent; a closed
        store cannot be reopened."""
        async with self._lifecycle:
            if self._state is StoreState.OPEN:
                return
            if self._state is StoreState.CLOSED:
                raise StoreClosedError(f"{self.label}: a closed store cannot be reopened")
            with self._mapped():
                await self._open_resources()
            try:
                with self._mapped():
                    async with self._migration_target() as target:
                        await migration_runner.ensure_schema(
                            target, self.migrations, auto_upgrade=self.auto_upgrade_schema
                        )
            except BaseException:
                await asyncio.shield(self._close_resources())
                raise
            self._state = StoreState.OPEN

    async def close(self) -> None:
        """Wait for the calls in progress, then close the store's connections (never a pool or
        client that was passed in). Idempotent."""
        async with self._lifecycle:
            if self._state is not StoreState.OPEN:
                self._state = StoreState.CLOSED
                return
            self._state = StoreState.CLOSED
            with self._mapped():
                await self._close_resources()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is StoreState.OPEN:
            warnings.warn(
                f"{self!r} was never closed; use `async with store:` or `await store.close()`",
                ResourceWarning,
                stacklevel=1,
            )

    # --- sessions -------------------------------------------------------------------------------

    async def read(
        self, session_id: str, *, user_id: str | None = None, last_runs: int | None = None
    ) -> Session | None:
        """The session, or None when it does not exist or belongs to another user than `user_id`.
        `last_runs=N` loads only the last N runs; the cost does not grow with the history."""
        sid = check_id(session_id, "session_id")
        uid = check_optional_id(user_id, "user_id")
        tail = check_last_runs(last_runs)
        return await self._call("read", self._read, sid, uid, tail)

    async def upsert(self, session: Session, *, if_version: int | None = None) -> Session:
        """Write the whole session and return what was stored, with its new version.

        With `if_version`, the write happens only if the stored version is `if_version` (0: the
        session must not exist); otherwise `SessionConflictError`. Without it the last writer wins.
        A session read with `last_runs` (or listed) keeps its older runs: only its tail is replaced.
        The owner never changes: `session.user_id` must be the stored one (None included), else
        `SessionOwnershipError`.
        """
        enc = encode_session(session, max_bytes=self.max_session_bytes)
        expected = check_if_version(if_version)
        return await self._call("upsert", self._upsert, enc, expected)

    async def upsert_many(self, sessions: Sequence[Session]) -> list[Session]:
        """Write many sessions in one batch (last writer wins), all with one `updated_at`, and
        return them as stored. Every session is checked before anything is written; another
        user's session refuses the batch (see each store for how atomic the batch is)."""
        encoded = encode_sessions(sessions, max_bytes=self.max_session_bytes)
        if not encoded:
            self._check_usable()
            return []
        return await self._call("upsert_many", self._upsert_many, encoded)

    async def append_runs(
        self,
        session_id: str,
        runs: Sequence[Mapping[str, Any]],
        *,
        user_id: str | None = None,
        session_data: dict[str, Any] | None = None,
    ) -> Session:
        """Append runs atomically (and replace `session_data` when given), creating the session,
        owned by `user_id`, when it does not exist. No run is lost when many callers append at once,
        and the cost does not grow with the history. Returns the session with only these runs."""
        append = encode_append(
            session_id, runs, user_id, session_data, max_bytes=self.max_session_bytes
        )
        return await self._call("append_runs", self._append, append)

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when it is absent or another user's."""
        sid = check_id(session_id, "session_id")
        uid = check_optional_id(user_id, "user_id")
        return await self._call("delete_session", self._delete, sid, uid)

    # --- listing --------------------------------------------------------------------------------

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: str | None = None,
        entity_id: str | None = None,
        updated_after: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        include_runs: bool = False,
    ) -> SessionPage:
        """One page of sessions, newest first (`updated_at`, then `session_id`, descending).
        Pass `next_cursor` back with the same filters for the next page; pages do not shift when
        sessions are written between calls. Runs are loaded only with `include_runs`."""
        query = list_query(
            user_id=user_id,
            session_type=session_type,
            entity_id=entity_id,
            updated_after=updated_after,
            limit=limit,
            cursor=cursor,
            include_runs=include_runs,
        )
        sessions, last = await self._call("list_sessions", self._list_page, query)
        next_cursor = None if last is None else query.cursor_after(*last)
        return SessionPage(items=sessions, next_cursor=next_cursor)

    async def get_all_session_ids(
        self, *, user_id: str | None = None, entity_id: str | None = None
    ) -> list[str]:
        """Ids of the matching sessions, most recently updated first."""
        query = list_query(user_id=user_id, entity_id=entity_id)
        return await self._call("get_all_session_ids", self._list_ids, query)

    async def get_all_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        include_runs: bool = False,
    ) -> list[Session]:
        """The matching sessions, most recently updated first; runs only with `include_runs`."""
        query = list_query(user_id=user_id, entity_id=entity_id, include_runs=include_runs)
        sessions, _ = await self._call("get_all_sessions", self._list_page, query)
        return sessions

    async def get_recent_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        limit: int = 2,
        include_runs: bool = False,
    ) -> list[Session]:
        """The `limit` most recently updated matching sessions."""
        query = list_query(
            user_id=user_id, entity_id=entity_id, limit=limit, include_runs=include_runs
        )
        sessions, _ = await self._call("get_recent_sessions", self._list_page, query)
        return sessions

    # --- schema ---------------------------------------------------------------------------------

    async def upgrade_schema(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations, each in its own transaction under the backend's migration
        lock, or with ``dry_run=True`` report them without changing anything.

        Works on a store that is not open yet (it connects just for this), which is how to upgrade
        a database that `open()` refused because `auto_upgrade_schema` is off. After `drop()` it
        creates the tables again."""
        if type(dry_run) is not bool:
            raise ConfigurationError(f"dry_run must be True or False, got {dry_run!r}")
        if self._state is StoreState.CLOSED:
            raise self._closed()
        with self._mapped():
            async with self._migration_target() as target:
                report = await migration_runner.upgrade(target, self.migrations, dry_run=dry_run)
        if not dry_run:
            self._dropped = False
        return report

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 when there is none). Works on a store
        that is not open yet."""
        if self._state is StoreState.CLOSED:
            raise self._closed()
        with self._mapped():
            async with self._migration_target() as target:
                applied = await target.applied()
        return max((m.version for m in applied), default=0)

    async def drop(self) -> None:
        """Delete the store's tables and all their data. The store stays open but refuses reads
        and writes (`MigrationError`) until `upgrade_schema()` creates the tables again."""
        if self._state is not StoreState.OPEN:
            raise self._closed()
        with self._mapped():
            await self._drop()
        self._dropped = True
