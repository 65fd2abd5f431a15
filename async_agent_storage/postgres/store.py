"""`PostgresStore`: sessions in PostgreSQL, on asyncpg.

Layout: a sessions table (one row per session, JSON fields as `jsonb`, times as `timestamptz`) and
a runs table keyed by ``(session_id, seq)``, so that appending runs and reading the last N runs
cost the same whatever the length of the history. See `sql` for the statements and `_jsonb` for
how values `jsonb` would change (NUL in strings, some floats) are stored losslessly.

Each hot call (read, upsert, append_runs, delete_session) is one prepared statement, one round
trip. Calls queue first come, first served at a gate in front of the pool (asyncpg's pool is not
fair under contention: a newly arriving call may take a released connection ahead of calls
already waiting, which triples p99 latency at 64 callers), then hold a connection only for the
statement; decoding happens after the connection is back in the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg

from .. import _common as common
from .. import codec
from .. import migrations as migration_runner
from .._base import StoreBase, page_key
from ..errors import (
    ConfigurationError,
    MigrationError,
    SerializationError,
    SessionConflictError,
    SessionOwnershipError,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
)
from ..migrations import AppliedMigration, Migration
from ..models import MigrationReport, Session
from . import sql as q
from ._jsonb import from_db, to_db
from .migrations import MIGRATIONS
from .sql import SQL

__all__ = ["PostgresStore", "normalize_url"]

T = TypeVar("T")
Connection = Any  # asyncpg.Connection or a pool's proxy of one (asyncpg ships no type hints)
_MIN_SERVER: Final = 120000  # PostgreSQL 12
_SCHEMES: Final = ("postgresql", "postgres")
_WRITE_ATTEMPTS: Final = 3


_State = common.StoreState


def normalize_url(url: str) -> str:
    """``postgresql+psycopg://...`` and ``postgresql+asyncpg://...`` (SQLAlchemy style, as Agno
    writes them) -> ``postgresql://...``; ``postgres://`` is kept. Anything else is refused."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"db_url={url!r} is not a PostgreSQL URL; expected postgresql://user:password@host/db"
        )
    scheme, _, rest = url.partition("://")
    base = scheme.lower().split("+", 1)[0]
    if base not in _SCHEMES:
        raise ConfigurationError(
            f"db_url scheme {scheme!r} is not PostgreSQL; use postgresql:// (or postgres://, "
            "postgresql+psycopg://, postgresql+asyncpg://)"
        )
    return f"{base}://{rest}"


def _where(url: str) -> str:
    """host:port/database of a URL, for messages (never the user or password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql"
    database = unquote(parts.path.lstrip("/")) or "(default database)"
    return f"{host}{port}/{database}"


async def _keep_session(connection: Connection) -> None:
    """The pool's `reset`: nothing to undo. The store sets no session state (no SET, LISTEN,
    cursors or session-level locks), and asyncpg itself rolls back a transaction left open by a
    cancelled call before calling this. The default reset would cost a second round trip per
    call (``RESET ALL``, ``UNLISTEN *``...)."""


async def _connect_to_completion(*args: Any, **kwargs: Any) -> Any:
    """The pool's `connect`: asyncpg's, never cancelled half-way. A call cancelled while its
    connection is being opened leaves the opening to finish in the background and closes what it
    opened: asyncpg cancelled in the middle of its TLS negotiation leaves a failed future behind
    ("Future exception was never retrieved")."""
    task = asyncio.ensure_future(asyncpg.connect(*args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_discard_connection)
        raise


def _discard_connection(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    if task.exception() is None:
        task.result().terminate()


_RELEASING: set[asyncio.Task[Any]] = set()


def _release_later(pool: asyncpg.Pool, task: asyncio.Future[Any]) -> None:
    """Return a connection acquired for a call that gave up waiting for it."""
    if task.cancelled() or task.exception() is not None:
        return
    release = asyncio.ensure_future(pool.release(task.result()))
    _RELEASING.add(release)
    release.add_done_callback(_released)


def _released(task: asyncio.Task[Any]) -> None:
    _RELEASING.discard(task)
    if not task.cancelled():
        task.exception()  # a failed release: asyncpg has closed that connection already


class PostgresStore(StoreBase):
    """Session storage in PostgreSQL: production, many app replicas, one database.

    ```python
    store = PostgresStore(db_url="postgresql://ai:ai@localhost:5532/ai", pool_max_size=20)
    async with store:
        session = await store.read("s1", user_id="u1", last_runs=20)
    ```

    - `db_url`: ``postgresql://``, ``postgres://``, or Agno's ``postgresql+psycopg://`` /
      ``postgresql+asyncpg://`` (the ``+driver`` part is dropped). Query parameters go to asyncpg
      (``sslmode``, ``application_name``...).
    - `schema`: where the tables live; None uses the connection's `current_schema()` (usually
      ``public``), resolved once at `open()`. A schema that does not exist is created.
    - `pool_min_size`, `pool_max_size`: the asyncpg pool the store creates.
    - `acquire_timeout`: seconds a call may wait for a connection (and a new connection may take
      to open) before `StorageUnavailableError`.
    - `command_timeout`: seconds a statement may run before `StorageUnavailableError` (None: no
      limit).
    - `statement_cache_size`: prepared statements kept per connection; 0 for pgbouncer in
      transaction mode (each call then prepares its statement: two round trips instead of one).
    - `max_inactive_connection_lifetime`: seconds an idle pooled connection is kept.
    - `pool`: an asyncpg pool of your own, used instead (its sizes and timeouts apply) and never
      closed by the store. It needs no codec or setup: JSON crosses the wire as text.
    - `auto_upgrade_schema`: upgrade an older schema at `open()`; without it `open()` raises
      `MigrationError` on an older schema. A missing schema is always created.
    - `max_session_bytes`: the largest JSON payload one write may carry.
    """

    def __init__(
        self,
        table_name: str = common.DEFAULT_TABLE_NAME,
        db_url: str | None = None,
        *,
        schema: str | None = None,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        acquire_timeout: float = 30.0,
        command_timeout: float | None = None,
        statement_cache_size: int = 100,
        max_inactive_connection_lifetime: float = 300.0,
        auto_upgrade_schema: bool = False,
        pool: asyncpg.Pool | None = None,
        max_session_bytes: int = codec.DEFAULT_MAX_SESSION_BYTES,
    ) -> None:
        self.table_name = common.check_name(table_name)
        self.schema = None if schema is None else common.check_name(schema, "schema")
        if pool is None and db_url is None:
            raise ConfigurationError("PostgresStore needs db_url (or an asyncpg pool=)")
        if pool is not None and not isinstance(pool, asyncpg.Pool):
            raise ConfigurationError(f"pool must be an asyncpg.Pool, got {type(pool).__name__}")
        self.db_url = None if db_url is None else normalize_url(db_url)
        for name, value in (("pool_min_size", pool_min_size), ("pool_max_size", pool_max_size)):
            if type(value) is not int or not 0 <= value <= 10_000:
                raise ConfigurationError(f"{name} must be an int from 0 to 10000, got {value!r}")
        if pool_max_size < 1 or pool_min_size > pool_max_size:
            raise ConfigurationError(
                f"need 1 <= pool_max_size and pool_min_size <= pool_max_size, got "
                f"pool_min_size={pool_min_size}, pool_max_size={pool_max_size}"
            )
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size if pool is None else pool.get_max_size()
        self.acquire_timeout = _seconds("acquire_timeout", acquire_timeout)
        self.command_timeout = (
            None if command_timeout is None else _seconds("command_timeout", command_timeout)
        )
        if type(statement_cache_size) is not int or statement_cache_size < 0:
            raise ConfigurationError(
                f"statement_cache_size must be an int >= 0, got {statement_cache_size!r}"
            )
        self.statement_cache_size = statement_cache_size
        self.max_inactive_connection_lifetime = _seconds(
            "max_inactive_connection_lifetime", max_inactive_connection_lifetime, allow_zero=True
        )
        self.auto_upgrade_schema = bool(auto_upgrade_schema)
        self.max_session_bytes = common.check_max_bytes(max_session_bytes)
        self.migrations: Sequence[Migration] = MIGRATIONS
        self._given_pool = pool
        self._where = "(pool)" if self.db_url is None else _where(self.db_url)
        self._sql: SQL | None = None
        if self.schema is not None:
            self._sql = SQL.for_table(self.schema, self.table_name)
        self._state = _State.NEW
        self._lifecycle = asyncio.Lock()
        self._pool: asyncpg.Pool | None = None
        self._gate: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        return (
            f"PostgresStore(table_name={self.table_name!r}, schema={self.schema!r}, "
            f"where={self._where!r}, state={self._state.value})"
        )

    @property
    def label(self) -> str:
        """Names the store in messages: ``postgresql host:5432/db table public.agent_sessions``."""
        schema = self._sql.schema if self._sql is not None else (self.schema or "(search_path)")
        return f"postgresql {self._where} table {schema}.{self.table_name}"

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool (or take the one given), then create the schema if missing (or
        upgrade it when allowed). Idempotent."""
        async with self._lifecycle:
            if self._state is _State.OPEN:
                return
            if self._state is _State.CLOSED:
                raise StoreClosedError(f"{self.label}: a closed store cannot be reopened")
            pool = self._given_pool or await self._create_pool()
            try:
                async with self._pool_connection(pool) as connection:
                    await self._resolve(connection)
                    await migration_runner.ensure_schema(
                        self._migration_target(connection),
                        self.migrations,
                        auto_upgrade=self.auto_upgrade_schema,
                    )
            except BaseException:
                if pool is not self._given_pool:
                    await self._close_pool(pool)
                raise
            self._pool = pool
            self._gate = asyncio.Semaphore(self.pool_max_size)
            self._state = _State.OPEN

    async def _create_pool(self) -> asyncpg.Pool:
        assert self.db_url is not None
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                self.db_url,
                min_size=self.pool_min_size,
                max_size=self.pool_max_size,
                max_inactive_connection_lifetime=self.max_inactive_connection_lifetime,
                statement_cache_size=self.statement_cache_size,
                command_timeout=self.command_timeout,
                timeout=self.acquire_timeout,  # to open one connection
                reset=_keep_session,
                connect=_connect_to_completion,
            )
        except TimeoutError as exc:
            raise self._connect_timed_out() from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        return pool

    @staticmethod
    async def _close_pool(pool: asyncpg.Pool) -> None:
        """Close gracefully, after the calls in progress; a connection that cannot say goodbye
        (its server is gone) is dropped: there is nothing left to close."""
        try:
            await pool.close()
        except Exception:
            pool.terminate()
        except BaseException:  # cancelled: do not leave connections behind
            pool.terminate()
            raise

    async def close(self) -> None:
        """Wait for calls in progress, then close the pool (not a pool that was passed in).
        Idempotent."""
        async with self._lifecycle:
            if self._state is not _State.OPEN:
                self._state = _State.CLOSED
                return
            self._state = _State.CLOSED
            pool, self._pool, self._gate = self._pool, None, None
            if pool is not None and pool is not self._given_pool:
                await self._close_pool(pool)

    async def _resolve(self, connection: Connection) -> SQL:
        """Check the server once and fix the schema the statements name."""
        schema, version, encoding = await connection.fetchrow(q.SERVER_FACTS)
        if version < _MIN_SERVER:
            raise ConfigurationError(
                f"{self.label}: PostgreSQL {version // 10000} is too old; async-agent-storage "
                "needs PostgreSQL 12 or newer"
            )
        if encoding != "UTF8":
            raise ConfigurationError(
                f"{self.label}: the database encoding is {encoding}; sessions hold any Unicode "
                "text, so the database must be UTF8 (CREATE DATABASE ... ENCODING 'UTF8')"
            )
        if self._sql is None:
            if schema is None:
                raise ConfigurationError(
                    f"{self.label}: the connection's search_path names no schema that exists; "
                    "pass schema=..."
                )
            self._sql = SQL.for_table(schema, self.table_name)
        return self._sql

    # --- the boundary where asyncpg errors become StorageErrors ---------------------------------

    def _translate(self, exc: BaseException) -> StorageError:
        """The one place where driver and network errors become the package's errors."""
        if isinstance(exc, StorageError):
            return exc
        label = self.label
        message = str(exc).strip() or type(exc).__name__
        if isinstance(exc, asyncpg.UndefinedTableError):
            return MigrationError(
                f"{label}: the store's tables do not exist ({message}); they were dropped or "
                "never created: run `await store.upgrade_schema()`"
            )
        if isinstance(
            exc,
            asyncpg.InvalidAuthorizationSpecificationError
            | asyncpg.InvalidCatalogNameError
            | asyncpg.ClientConfigurationError,
        ):
            return ConfigurationError(f"{label}: {message}; check db_url")
        if isinstance(exc, TimeoutError):  # before OSError, of which it is a subclass
            return StorageUnavailableError(
                f"{label}: the statement did not finish within command_timeout="
                f"{self.command_timeout}; it was cancelled"
            )
        if isinstance(
            exc,
            asyncpg.PostgresConnectionError  # 08: connection lost, refused by the server
            | asyncpg.OperatorInterventionError  # 57: shutdown, terminated, cannot connect now
            | asyncpg.InsufficientResourcesError  # 53: too many connections, disk full
            | OSError,  # refused, reset, unreachable
        ):
            return StorageUnavailableError(f"{label}: {message}")
        if isinstance(exc, asyncpg.InternalClientError):
            return StorageUnavailableError(f"{label}: the connection broke: {message}")
        if isinstance(exc, asyncpg.TransactionRollbackError):  # 40: deadlock, serialization
            return StorageUnavailableError(f"{label}: {message}; nothing was written, retry")
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return StorageUnavailableError(
                f"{label}: the server is read-only ({message}); is db_url a standby?"
            )
        if isinstance(exc, asyncpg.DataError):
            return SerializationError(f"{label}: the server refused a value: {message}")
        if isinstance(exc, asyncpg.InterfaceError):
            if "pool is clos" in message:
                return StoreClosedError(f"{label}: the store was closed during the call")
            if "closed" in message or "connection" in message:
                return StorageUnavailableError(f"{label}: {message}")
        return StorageError(f"{label}: {type(exc).__name__}: {message}")

    def _closed(self) -> StoreClosedError:
        state = "was closed" if self._state is _State.CLOSED else "is not open yet"
        return StoreClosedError(
            f"{self.label}: the store {state}; use `async with store:` or `await store.open()`"
        )

    async def _acquire(self, pool: asyncpg.Pool, gate: asyncio.Semaphore) -> Connection:
        """Wait (first come, first served) for a turn at the gate, then take a connection."""
        started = time.monotonic()
        try:
            if gate.locked():
                async with asyncio.timeout(self.acquire_timeout):
                    await gate.acquire()
            else:
                await gate.acquire()  # returns at once
        except TimeoutError as exc:
            raise self._acquire_timed_out(gate) from exc
        try:
            if self._given_pool is not None:  # shared with others: the gate does not bound it
                remaining = max(0.0, self.acquire_timeout - (time.monotonic() - started))
                return await self._acquire_shared(pool, gate, remaining)
            # Our own pool has a free connection for every turn at the gate; opening a new one
            # is bounded by the connect timeout (acquire_timeout).
            return await pool.acquire()
        except BaseException as exc:
            gate.release()
            if isinstance(exc, TimeoutError):
                raise self._connect_timed_out() from exc
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise self._translate(exc) from exc
            raise

    async def _acquire_shared(
        self, pool: asyncpg.Pool, gate: asyncio.Semaphore, budget: float
    ) -> Connection:
        """Acquire from a pool passed in, which may have to open a connection: that is never
        cancelled half-way (see `_connect_to_completion`); a call that gives up (timeout,
        cancellation) leaves the acquisition to finish and returns the connection."""
        task = asyncio.ensure_future(pool.acquire())
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(task)
        except BaseException as exc:
            task.add_done_callback(partial(_release_later, pool))
            if isinstance(exc, TimeoutError):
                raise self._acquire_timed_out(gate) from exc
            raise

    def _connect_timed_out(self) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"{self.label}: couldn't open a connection within {self.acquire_timeout:.2f} sec; "
            "is the server reachable and accepting connections?"
        )

    def _acquire_timed_out(self, gate: asyncio.Semaphore) -> StorageUnavailableError:
        waiting = len(getattr(gate, "_waiters", None) or ())
        return StorageUnavailableError(
            f"{self.label}: couldn't get a connection after {self.acquire_timeout:.2f} sec: all "
            f"{self.pool_max_size} connections busy, {waiting} more calls waiting; raise "
            "pool_max_size or acquire_timeout, or lower the load"
        )

    async def _run(
        self, work: Callable[..., Awaitable[T]], *args: Any, idempotent: bool = False
    ) -> T:
        """Run `work(connection, *args)` on a pooled connection: the boundary of every call.

        A connection found broken (its backend terminated, the server restarted) is closed, so
        the pool replaces it, and the call is tried once more on another connection when that is
        safe: `idempotent` work (reads), or work whose statement never left the client."""
        for attempt in (1, 2):
            pool, gate = self._pool, self._gate
            if self._state is not _State.OPEN or pool is None or gate is None:
                raise self._closed()
            connection = await self._acquire(pool, gate)
            try:
                return await work(connection, *args)
            except StorageError:
                raise
            except Exception as exc:
                if not _broken(connection, exc):
                    raise self._translate(exc) from exc
                _terminate(connection)
                if attempt == 2 or not (idempotent or _never_sent(exc)):
                    raise self._translate(exc) from exc
            finally:
                try:
                    # Shielded inside asyncpg: a cancelled caller still returns the connection,
                    # after rolling back whatever it left open. A failure there (the connection
                    # broke) is asyncpg's to clean up; the call's own outcome is what matters.
                    with contextlib.suppress(Exception):
                        await pool.release(connection)
                finally:
                    gate.release()
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def _pool_connection(self, pool: asyncpg.Pool) -> AsyncIterator[Connection]:
        """A connection for lifecycle and schema work (not through the gate)."""
        try:
            connection = await pool.acquire(timeout=self.acquire_timeout)
        except TimeoutError as exc:
            raise StorageUnavailableError(
                f"{self.label}: couldn't get a connection after {self.acquire_timeout:.2f} sec"
            ) from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        try:
            yield connection
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await pool.release(connection)

    # --- sessions -------------------------------------------------------------------------------

    async def read(
        self, session_id: str, *, user_id: str | None = None, last_runs: int | None = None
    ) -> Session | None:
        """The session, or None when it does not exist or belongs to another user than `user_id`.
        `last_runs=N` loads only the last N runs; the cost does not grow with the history."""
        sid = common.check_id(session_id, "session_id")
        uid = common.check_optional_id(user_id, "user_id")
        tail = common.check_last_runs(last_runs)
        sql = self._statements()
        row = await self._run(
            _fetchrow,
            sql.read,
            sid,
            uid,
            None if tail is None else min(tail, q.MAX_INT4),
            idempotent=True,
        )
        if row is None:
            return None
        run_count = row[q.RUN_COUNT]
        start = 0 if tail is None else max(0, run_count - tail)
        return _row_to_session(row, row[q.RUNS], start)

    async def upsert(self, session: Session, *, if_version: int | None = None) -> Session:
        """Write the whole session and return what was stored, with its new version.

        With `if_version`, the write happens only if the stored version is `if_version` (0: the
        session must not exist); otherwise `SessionConflictError`. Without it the last writer wins.
        A session read with `last_runs` (or listed) keeps its older runs: only its tail is replaced.
        The owner never changes: `session.user_id` must be the stored one (None included).
        """
        enc = common.encode_session(session, max_bytes=self.max_session_bytes)
        expected = common.check_if_version(if_version)
        sql = self._statements()
        statement = sql.update if expected else sql.upsert
        args = (
            *_session_columns(enc),
            min(enc.runs_offset, q.MAX_INT4),
            [r.run_id for r in enc.runs],
            [to_db(r.body) for r in enc.runs],
            expected,
        )
        row = await self._run(self._write_session, statement, args, enc, expected)
        created, updated, version, run_count = row
        return common.session_from_encoded(
            enc,
            created_at=created,
            updated_at=updated,
            version=version,
            runs_offset=run_count - len(enc.runs),
        )

    async def _write_session(
        self,
        connection: Connection,
        statement: str,
        args: tuple[Any, ...],
        enc: common.EncodedSession,
        expected: int | None,
    ) -> Any:
        sql = self._statements()
        for _ in range(_WRITE_ATTEMPTS):
            row = await connection.fetchrow(statement, *args)
            if row is not None:
                return row
            # Not written: find out why (the only second round trip, on the error path).
            owner = await connection.fetchrow(sql.select_owner, enc.session_id)
            if owner is not None and owner[0] != enc.user_id:
                raise self._not_owner(enc.session_id, enc.user_id)
            actual = 0 if owner is None else owner[1]
            if expected is not None and actual != expected:
                raise self._conflict(enc.session_id, expected, actual)
            # The session changed between the two statements in a way that lets the write
            # through now (deleted, or back at the expected version): try again.
        raise StorageUnavailableError(
            f"{self.label}: session {enc.session_id!r} kept changing during the write; retry"
        )

    def _not_owner(self, session_id: str, user_id: str | None) -> SessionOwnershipError:
        return SessionOwnershipError(
            f"{self.label}: session {session_id!r} belongs to another user; it cannot be "
            f"written as user_id={user_id!r}",
            session_id=session_id,
        )

    def _conflict(self, session_id: str, expected: int, actual: int) -> SessionConflictError:
        return SessionConflictError(
            f"{self.label}: session {session_id!r} is at version {actual}, not {expected}; "
            "read it again, re-apply the change and retry",
            session_id=session_id,
            expected=expected,
            actual=actual,
        )

    async def upsert_many(self, sessions: Sequence[Session]) -> list[Session]:
        """Write many sessions in one transaction, one statement: all of them or none (last
        writer wins), all with one `updated_at`."""
        encoded = common.encode_sessions(sessions, max_bytes=self.max_session_bytes)
        if not encoded:
            return []
        ordered = sorted(encoded, key=lambda e: e.session_id)  # one lock order for every batch
        rows = await self._run(self._write_many, ordered)
        stored = {row[0]: row for row in rows}
        result = []
        for enc in encoded:
            _, created, updated, version, run_count = stored[enc.session_id]
            result.append(
                common.session_from_encoded(
                    enc,
                    created_at=created,
                    updated_at=updated,
                    version=version,
                    runs_offset=run_count - len(enc.runs),
                )
            )
        return result

    async def _write_many(
        self, connection: Connection, encoded: list[common.EncodedSession]
    ) -> list[Any]:
        sql = self._statements()
        sids = [enc.session_id for enc in encoded]
        async with connection.transaction():
            existing = {
                row[0]: (row[1], row[2]) for row in await connection.fetch(sql.lock_many, sids)
            }
            columns: list[list[Any]] = [[] for _ in range(12)]
            run_counts: list[int] = []
            run_sids: list[str] = []
            run_seqs: list[int] = []
            run_ids: list[str] = []
            run_bodies: list[str] = []
            for enc in encoded:
                start = 0
                if enc.session_id in existing:
                    owner, stored_count = existing[enc.session_id]
                    if owner != enc.user_id:
                        raise self._not_owner(enc.session_id, enc.user_id)
                    start = min(enc.runs_offset, stored_count)
                for column, value in zip(columns, _session_columns(enc), strict=True):
                    column.append(value)
                run_counts.append(start + len(enc.runs))
                for i, run in enumerate(enc.runs):
                    run_sids.append(enc.session_id)
                    run_seqs.append(start + i)
                    run_ids.append(run.run_id)
                    run_bodies.append(to_db(run.body))
            rows: list[Any] = await connection.fetch(
                sql.upsert_many, *columns, run_counts, run_sids, run_seqs, run_ids, run_bodies
            )
            if len(rows) != len(encoded):
                # A session created by another user since the lock: nothing is kept.
                written = {row[0] for row in rows}
                missing = next(enc for enc in encoded if enc.session_id not in written)
                raise self._not_owner(missing.session_id, missing.user_id)
        return rows

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
        append = common.encode_append(
            session_id, runs, user_id, session_data, max_bytes=self.max_session_bytes
        )
        sid, uid, data, encoded = (
            append.session_id,
            append.user_id,
            append.session_data,
            append.runs,
        )
        args = (
            sid,
            uid,
            None if data is None else to_db(data),
            [r.run_id for r in encoded],
            [to_db(r.body) for r in encoded],
        )
        row = await self._run(self._append, args)
        return common.build_session(
            session_id=row[q.SID],
            session_type=row[q.TYPE],
            user_id=row[q.USER],
            agent_id=row[q.AGENT],
            team_id=row[q.TEAM],
            workflow_id=row[q.WORKFLOW],
            session_data=codec.loads(data) if data is not None else from_db(row[q.DATA]),
            agent_data=_optional(row[q.AGENT_DATA]),
            team_data=_optional(row[q.TEAM_DATA]),
            workflow_data=_optional(row[q.WORKFLOW_DATA]),
            metadata=_optional(row[q.METADATA]),
            summary=_optional(row[q.SUMMARY]),
            runs=common.decode_runs([r.body for r in encoded]),
            runs_offset=row[q.RUN_COUNT] - len(encoded),
            created_at=row[q.CREATED],
            updated_at=row[q.UPDATED],
            version=row[q.VERSION],
        )

    async def _append(self, connection: Connection, args: tuple[Any, ...]) -> Any:
        sql = self._statements()
        for _ in range(_WRITE_ATTEMPTS):
            row = await connection.fetchrow(sql.append, *args)
            if row is not None:
                return row
            owner = await connection.fetchrow(sql.select_owner, args[0])
            if owner is not None:
                raise SessionOwnershipError(
                    f"{self.label}: session {args[0]!r} belongs to another user; "
                    f"user_id={args[1]!r} cannot append to it",
                    session_id=args[0],
                )
            # Deleted between the two statements: the next attempt creates it.
        raise StorageUnavailableError(
            f"{self.label}: session {args[0]!r} kept changing during the append; retry"
        )

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when it is absent or another user's."""
        sid = common.check_id(session_id, "session_id")
        uid = common.check_optional_id(user_id, "user_id")
        deleted = await self._run(_fetchval, self._statements().delete, sid, uid)
        return bool(deleted)

    # --- listing --------------------------------------------------------------------------------

    async def _list_page(
        self, query: common.ListQuery
    ) -> tuple[list[Session], tuple[int, str] | None]:
        sessions, more = await self._list_rows(query)
        return sessions, page_key(sessions, more)

    async def _list_ids(self, query: common.ListQuery) -> list[str]:
        statement, params = self._statements().listing(query, ids_only=True)
        rows = await self._run(_fetch, statement, *params, idempotent=True)
        return [row[0] for row in rows]

    async def _list_rows(self, query: common.ListQuery) -> tuple[list[Session], bool]:
        statement, params = self._statements().listing(query)
        rows = await self._run(_fetch, statement, *params, idempotent=True)
        more = query.limit is not None and len(rows) > query.limit
        if more:
            del rows[query.limit :]
        if query.include_runs:
            return [_row_to_session(row, row[q.RUNS], 0) for row in rows], more
        # No runs loaded: an `upsert` of such a session keeps its whole history.
        return [_row_to_session(row, None, row[q.RUN_COUNT]) for row in rows], more

    # --- schema ---------------------------------------------------------------------------------

    async def upgrade_schema(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations, one transaction each under a PostgreSQL advisory lock, or
        with ``dry_run=True`` report them without changing anything.

        Works on a store that is not open yet (it connects just for this), which is how to upgrade
        a database that `open()` refused because `auto_upgrade_schema` is off."""
        async with self._migration_connection() as connection:
            await self._resolve(connection)
            return await migration_runner.upgrade(
                self._migration_target(connection), self.migrations, dry_run=dry_run
            )

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 when there is none). Works on a store
        that is not open yet."""
        async with self._migration_connection() as connection:
            sql = await self._resolve(connection)
            if not await connection.fetchval(q.TABLE_EXISTS, sql.history_table):
                return 0
            return int(await connection.fetchval(sql.schema_version))

    async def drop(self) -> None:
        """Delete the store's tables and all their data. `upgrade_schema()` creates them again."""
        await self._run(self._drop)

    async def _drop(self, connection: Connection) -> None:
        async with connection.transaction():
            for statement in self._statements().drop:
                await connection.execute(statement)

    def _statements(self) -> SQL:
        if self._sql is None:  # resolved at open()
            raise self._closed()
        return self._sql

    @asynccontextmanager
    async def _migration_connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; or, before `open()`, a connection made for the occasion."""
        if self._state is _State.CLOSED:
            raise self._closed()
        pool = self._pool if self._state is _State.OPEN else self._given_pool
        if pool is not None:
            async with self._pool_connection(pool) as connection:
                yield connection
            return
        assert self.db_url is not None
        try:
            connection = await asyncpg.connect(
                self.db_url,
                timeout=self.acquire_timeout,
                statement_cache_size=self.statement_cache_size,
            )
        except TimeoutError as exc:
            raise self._connect_timed_out() from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        try:
            yield connection
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc
        finally:
            await _close_connection(connection)

    def _migration_target(self, connection: Connection) -> _MigrationTarget:
        return _MigrationTarget(connection, self._statements(), self.label, self._translate)


# --- small helpers run on a connection, and row decoding ------------------------------------------


def _broken(connection: Connection, exc: BaseException) -> bool:
    """Whether `exc` means the connection itself is unusable (rather than the statement failed)."""
    if isinstance(exc, TimeoutError):
        # command_timeout: asyncpg cancels the statement on the server and keeps the connection.
        # Closing it instead would leave the statement running (to commit) on the server.
        return False
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.InternalClientError  # protocol state broken, e.g. by an unsolicited FATAL
        | OSError,
    ):
        return True
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:  # closed, and already taken back by its pool
        return True


def _terminate(connection: Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already taken back by its pool
        connection.terminate()


def _never_sent(exc: BaseException) -> bool:
    """asyncpg refused to start the statement: its connection had already failed (a backend
    terminated while the connection was idle in the pool) and nothing reached the server."""
    return isinstance(exc, asyncpg.InternalClientError) and "cannot switch to state" in str(exc)


async def _fetchrow(connection: Connection, statement: str, *args: Any) -> Any:
    return await connection.fetchrow(statement, *args)


async def _fetchval(connection: Connection, statement: str, *args: Any) -> Any:
    return await connection.fetchval(statement, *args)


async def _fetch(connection: Connection, statement: str, *args: Any) -> list[Any]:
    rows: list[Any] = await connection.fetch(statement, *args)
    return rows


async def _close_connection(connection: Connection) -> None:
    try:
        await asyncio.shield(connection.close(timeout=5))
    except (Exception, asyncio.CancelledError):
        connection.terminate()
        raise


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or value < 0
        or (value == 0 and not allow_zero)
        or value != value  # NaN
    ):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def _session_columns(enc: common.EncodedSession) -> tuple[Any, ...]:
    """$1..$12 of the upsert statements."""
    return (
        enc.session_id,
        enc.session_type,
        enc.user_id,
        enc.agent_id,
        enc.team_id,
        enc.workflow_id,
        to_db(enc.session_data),
        None if enc.agent_data is None else to_db(enc.agent_data),
        None if enc.team_data is None else to_db(enc.team_data),
        None if enc.workflow_data is None else to_db(enc.workflow_data),
        None if enc.metadata is None else to_db(enc.metadata),
        None if enc.summary is None else to_db(enc.summary),
    )


def _optional(text: str | None) -> Any:
    return None if text is None else from_db(text)


def _row_to_session(row: Any, runs: str | None, runs_offset: int) -> Session:
    return common.build_session(
        session_id=row[q.SID],
        session_type=row[q.TYPE],
        user_id=row[q.USER],
        agent_id=row[q.AGENT],
        team_id=row[q.TEAM],
        workflow_id=row[q.WORKFLOW],
        session_data=from_db(row[q.DATA]),
        agent_data=_optional(row[q.AGENT_DATA]),
        team_data=_optional(row[q.TEAM_DATA]),
        workflow_data=_optional(row[q.WORKFLOW_DATA]),
        metadata=_optional(row[q.METADATA]),
        summary=_optional(row[q.SUMMARY]),
        runs=[] if runs is None else from_db("[" + runs + "]"),
        runs_offset=runs_offset,
        created_at=row[q.CREATED],
        updated_at=row[q.UPDATED],
        version=row[q.VERSION],
    )


# --- migrations -----------------------------------------------------------------------------------


def advisory_key(sql: SQL) -> int:
    """The advisory lock of one store's schema: a signed 64-bit hash of its qualified name."""
    digest = hashlib.blake2b(
        f"async-agent-storage:{sql.history_table}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class _MigrationTransaction:
    def __init__(self, connection: Connection, sql: SQL) -> None:
        self._connection = connection
        self._sql = sql

    async def applied(self) -> list[AppliedMigration]:
        return await _history(self._connection, self._sql)

    async def apply(self, migration: Migration) -> datetime:
        names = self._sql.migration_names()
        for step in migration.steps:
            await self._connection.execute(step.format(**names))
        applied_at: datetime = await self._connection.fetchval(
            self._sql.insert_history, migration.version, migration.name, migration.checksum
        )
        return applied_at


class _MigrationTarget:
    """Each step runs in its own transaction holding `pg_advisory_xact_lock` on the store's name:
    processes opening one database at once take turns, and each re-reads the history first."""

    def __init__(
        self,
        connection: Connection,
        sql: SQL,
        label: str,
        translate: Callable[[BaseException], StorageError],
    ) -> None:
        self._connection = connection
        self._sql = sql
        self.label = label
        self._translate = translate

    async def applied(self) -> list[AppliedMigration]:
        try:
            return await _history(self._connection, self._sql)
        except Exception as exc:
            raise self._translate(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_TranslatingTransaction]:
        connection, sql = self._connection, self._sql
        transaction = connection.transaction()
        try:
            await transaction.start()
        except Exception as exc:
            raise self._translate(exc) from exc
        try:
            await connection.execute(q.ADVISORY_LOCK, advisory_key(sql))
            if not await connection.fetchval(q.SCHEMA_EXISTS, sql.schema):
                await connection.execute(sql.create_schema)
            await connection.execute(sql.create_history)
            yield _TranslatingTransaction(_MigrationTransaction(connection, sql), self._translate)
        except BaseException as exc:
            with contextlib.suppress(Exception):  # a broken connection: asyncpg resets it
                await asyncio.shield(transaction.rollback())
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise self._translate(exc) from exc
            raise
        try:
            await asyncio.shield(transaction.commit())
        except Exception as exc:
            raise self._translate(exc) from exc


class _TranslatingTransaction:
    """Raises `StorageError`s only, so the runner reports a failed step as a `MigrationError`."""

    def __init__(
        self, inner: _MigrationTransaction, translate: Callable[[BaseException], StorageError]
    ) -> None:
        self._inner = inner
        self._translate = translate

    async def applied(self) -> list[AppliedMigration]:
        try:
            return await self._inner.applied()
        except Exception as exc:
            raise self._translate(exc) from exc

    async def apply(self, migration: Migration) -> datetime:
        try:
            return await self._inner.apply(migration)
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc


async def _history(connection: Connection, sql: SQL) -> list[AppliedMigration]:
    if not await connection.fetchval(q.TABLE_EXISTS, sql.history_table):
        return []
    return [
        AppliedMigration(row[0], row[1], row[2], row[3])
        for row in await connection.fetch(sql.select_history)
    ]
