"""The PostgreSQL driver's connections: an asyncpg pool behind a first-come-first-served gate.

asyncpg's pool is not fair under contention: a newly arriving call may take a released connection
ahead of calls already waiting, which triples p99 latency at 64 callers. Calls therefore queue at
a semaphore of the pool's size, then hold a connection only for their statements.

A call cancelled at any point returns its connection: asyncpg shields the release (and rolls back
what the call left open); a connection being opened is never cancelled half-way. A connection
found broken (its backend terminated, the server restarted) is closed so the pool replaces it, and
the call is tried once more on another connection when that is safe: idempotent work (reads), or
work whose statement never left the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import asyncpg

from .._boundary import NotSent
from .._observe import logger_for
from ..errors import ConfigurationError, StorageUnavailableError
from . import _sql as q

__all__ = [
    "Connection",
    "GatedPool",
    "checked_server",
    "close_connection",
    "connect",
    "connect_timed_out",
    "create_pool",
    "fetch",
    "fetchrow",
    "fetchval",
]

T = TypeVar("T")
_log = logger_for("postgresql")
Connection = Any  # asyncpg.Connection or a pool's proxy of one (asyncpg ships no type hints)


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


def _never_sent(exc: BaseException) -> bool:
    """asyncpg refused to start the statement: its connection had already failed (a backend
    terminated while the connection was idle in the pool) and nothing reached the server.
    asyncpg reports that state with no code or class of its own, only this text; it decides a
    retry here, never which error a caller sees."""
    return isinstance(exc, asyncpg.InternalClientError) and "cannot switch to state" in str(exc)


def _terminate(connection: Connection) -> None:
    with contextlib.suppress(asyncpg.InterfaceError):  # already taken back by its pool
        connection.terminate()


async def create_pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    max_inactive_connection_lifetime: float,
    statement_cache_size: int,
    command_timeout: float | None,
    connect_timeout: float,
) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        max_inactive_connection_lifetime=max_inactive_connection_lifetime,
        statement_cache_size=statement_cache_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,  # to open one connection
        reset=_keep_session,
        connect=_connect_to_completion,
    )
    return pool


async def connect(url: str, *, connect_timeout: float, statement_cache_size: int) -> Connection:
    """One connection outside any pool (schema calls on a store that is not open)."""
    return await asyncpg.connect(
        url, timeout=connect_timeout, statement_cache_size=statement_cache_size
    )


async def close_connection(connection: Connection) -> None:
    try:
        await asyncio.shield(connection.close(timeout=5))
    except (Exception, asyncio.CancelledError):
        connection.terminate()
        raise


async def checked_server(connection: Connection, label: str, min_version: int) -> str | None:
    """The connection's current schema, once the server is checked: at least `min_version`
    (``server_version_num``), and a UTF8 database."""
    schema, version, encoding = await connection.fetchrow(q.SERVER_FACTS)
    if version < min_version:
        raise ConfigurationError(
            f"{label}: PostgreSQL {version // 10000} is too old; async-agent-storage "
            "needs PostgreSQL 12 or newer"
        )
    if encoding != "UTF8":
        raise ConfigurationError(
            f"{label}: the database encoding is {encoding}; sessions hold any Unicode "
            "text, so the database must be UTF8 (CREATE DATABASE ... ENCODING 'UTF8')"
        )
    return schema  # type: ignore[no-any-return]


def connect_timed_out(label: str, timeout: float) -> StorageUnavailableError:
    return StorageUnavailableError(
        f"{label}: couldn't open a connection within {timeout:.2f} sec; is the server "
        "reachable and accepting connections?"
    )


class GatedPool:
    """A pool (the store's own, or one passed in) behind the FIFO gate."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        owned: bool,
        acquire_timeout: float,
        describe: Callable[[], str],
    ) -> None:
        self.pool = pool
        self.owned = owned
        self.max_size: int = pool.get_max_size()
        self._gate = asyncio.Semaphore(self.max_size)
        self._acquire_timeout = acquire_timeout
        self._describe = describe
        self.replaced = 0  # connections found broken and closed (the pool opens new ones)

    @property
    def waiting(self) -> int:
        """Calls waiting at the gate for a connection."""
        return len(getattr(self._gate, "_waiters", None) or ())

    async def close(self) -> None:
        """Close gracefully, after the calls in progress (only a pool the store made); a
        connection that cannot say goodbye (its server is gone) is dropped."""
        if not self.owned:
            return
        try:
            await self.pool.close()
        except Exception:
            self.pool.terminate()
        except BaseException:  # cancelled: do not leave connections behind
            self.pool.terminate()
            raise

    def connect_timed_out(self) -> StorageUnavailableError:
        return connect_timed_out(self._describe(), self._acquire_timeout)

    def _acquire_timed_out(self) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"{self._describe()}: couldn't get a connection after {self._acquire_timeout:.2f} "
            f"sec: all {self.max_size} connections busy, {self.waiting} more calls waiting; raise "
            "pool_max_size or acquire_timeout, or lower the load"
        )

    async def _acquire(self) -> Connection:
        """Wait (first come, first served) for a turn at the gate, then take a connection."""
        gate = self._gate
        started = time.monotonic()
        try:
            if gate.locked():
                async with asyncio.timeout(self._acquire_timeout):
                    await gate.acquire()
            else:
                await gate.acquire()  # returns at once
        except TimeoutError as exc:
            raise self._acquire_timed_out() from exc
        try:
            if not self.owned:  # shared with others: the gate does not bound it
                remaining = max(0.0, self._acquire_timeout - (time.monotonic() - started))
                return await self._acquire_shared(remaining)
            # Our own pool has a free connection for every turn at the gate; opening a new one
            # is bounded by the connect timeout (acquire_timeout).
            return await self.pool.acquire()
        except BaseException as exc:
            gate.release()
            if isinstance(exc, TimeoutError):
                raise self.connect_timed_out() from exc
            if isinstance(exc, Exception) and not isinstance(exc, StorageUnavailableError):
                raise NotSent(exc) from exc  # taking or opening a connection: nothing was sent
            raise

    async def _acquire_shared(self, budget: float) -> Connection:
        """Acquire from a pool passed in, which may have to open a connection: that is never
        cancelled half-way (see `_connect_to_completion`); a call that gives up (timeout,
        cancellation) leaves the acquisition to finish and returns the connection."""
        task = asyncio.ensure_future(self.pool.acquire())
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(task)
        except BaseException as exc:
            task.add_done_callback(partial(_release_later, self.pool))
            if isinstance(exc, TimeoutError):
                raise self._acquire_timed_out() from exc
            raise

    async def run(
        self, work: Callable[..., Awaitable[T]], *args: Any, idempotent: bool = False
    ) -> T:
        """`work(connection, *args)` on a pooled connection, through the gate. Raises asyncpg's
        own exceptions (the store translates them)."""
        for attempt in (1, 2):
            connection = await self._acquire()
            try:
                return await work(connection, *args)
            except Exception as exc:
                if not _broken(connection, exc):
                    raise
                _terminate(connection)
                self.replaced += 1
                retry = attempt == 1 and (idempotent or _never_sent(exc))
                _log.info(
                    "%s: a connection broke (%s); it is replaced%s",
                    self._describe(),
                    type(exc).__name__,
                    ", and the call tried again" if retry else "",
                )
                if not retry:
                    raise
            finally:
                try:
                    # Shielded inside asyncpg: a cancelled caller still returns the connection,
                    # after rolling back whatever it left open. A failure there (the connection
                    # broke) is asyncpg's to clean up; the call's own outcome is what matters.
                    with contextlib.suppress(Exception):
                        await self.pool.release(connection)
                finally:
                    self._gate.release()
        raise AssertionError("unreachable")  # pragma: no cover

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for lifecycle and schema work (not through the gate)."""
        try:
            connection = await self.pool.acquire(timeout=self._acquire_timeout)
        except TimeoutError as exc:
            raise self._acquire_timed_out() from exc
        try:
            yield connection
        finally:
            with contextlib.suppress(Exception):
                await self.pool.release(connection)


# Work for `GatedPool.run`: one statement.


async def fetchrow(connection: Connection, statement: str, *args: Any) -> Any:
    return await connection.fetchrow(statement, *args)


async def fetchval(connection: Connection, statement: str, *args: Any) -> Any:
    return await connection.fetchval(statement, *args)


async def fetch(connection: Connection, statement: str, *args: Any) -> list[Any]:
    rows: list[Any] = await connection.fetch(statement, *args)
    return rows
