"""The PostgreSQL driver's connections: an asyncpg pool behind a first-come-first-served gate.

asyncpg's pool is not fair under contention: a newly arriving call may take a released connection
ahead of calls already waiting, which triples p99 latency at 64 callers. Calls therefore queue at
a semaphore of the pool's size, then hold a connection only for their statements.

A connection a call used without error is kept by the gate for the next call instead of going
back to asyncpg: asyncpg's acquire and release cost about 60 us of the event loop's time per call
(a task to shield each release, an inactivity timer re-armed each time), a tenth of a turn. A
kept connection goes back to asyncpg after a second unused, or after `_KEEP_USES` calls, so its
inactivity lifetime, query limit and generation rules still apply; a call that failed or was
cancelled always returns its connection through asyncpg, which rolls back what was left open and
waits out a cancelled statement. Only the store's own pools keep connections: a pool passed in is
shared with others.

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
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final, NamedTuple, TypeVar

import asyncpg

from .._boundary import NotSent
from .._observe import logger_for
from ..errors import ConfigurationError, StorageUnavailableError

__all__ = [
    "Connection",
    "GatedPool",
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
_KEEP_IDLE: Final = 1.0  # seconds a kept connection may go unused before asyncpg takes it back
_KEEP_USES: Final = 1000  # calls on a kept connection before it goes through asyncpg's release


class _Kept(NamedTuple):
    """A connection the gate kept after a call: how many calls it served since asyncpg gave it
    out, and when (the loop's clock) it was kept."""

    connection: Connection
    uses: int
    since: float


def _release_soon(pool: asyncpg.Pool, connection: Connection) -> None:
    """Give a connection back to asyncpg in the background (`close` waits for it)."""
    release = asyncio.ensure_future(pool.release(connection))
    _RELEASING.add(release)
    release.add_done_callback(_released)


def _release_later(pool: asyncpg.Pool, task: asyncio.Future[Any]) -> None:
    """Return a connection acquired for a call that gave up waiting for it."""
    if task.cancelled() or task.exception() is not None:
        return
    _release_soon(pool, task.result())


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
        # Whether calls' connections are kept for the next calls: only in the store's own pools
        # (a pool passed in is shared); `benchmarks.keep_cost` turns it off to measure the gain.
        self.keeps = owned
        self._kept: deque[_Kept] = deque()  # the last kept at the right
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def kept(self) -> int:
        """Idle connections the gate holds for the next calls (asyncpg counts them in use)."""
        return len(self._kept)

    @property
    def waiting(self) -> int:
        """Calls waiting at the gate for a connection."""
        return len(getattr(self._gate, "_waiters", None) or ())

    async def close(self) -> None:
        """Close gracefully, after the calls in progress (only a pool the store made); a
        connection that cannot say goodbye (its server is gone) is dropped."""
        if not self.owned:
            return
        self._return_kept(everything=True)
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

    async def _acquire(self) -> tuple[Connection, int]:
        """Wait (first come, first served) for a turn at the gate, then take a connection: a
        kept one, else one from asyncpg; with the calls it served since asyncpg gave it out."""
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
            kept = self._kept
            while kept:
                connection, uses, _ = kept.pop()
                if not connection.is_closed():
                    return connection, uses
                with contextlib.suppress(Exception):  # asyncpg finishes closing it
                    await self.pool.release(connection)
            if not self.owned:  # shared with others: the gate does not bound it
                remaining = max(0.0, self._acquire_timeout - (time.monotonic() - started))
                return await self._acquire_shared(remaining), 0
            # Our own pool has a free connection for every turn at the gate; opening a new one
            # is bounded by the connect timeout (acquire_timeout).
            return await self.pool.acquire(), 0
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
            connection, uses = await self._acquire()
            kept = False
            try:
                result = await work(connection, *args)
                kept = self._keep(connection, uses)
                return result
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
                    if not kept:
                        with contextlib.suppress(Exception):
                            await self.pool.release(connection)
                finally:
                    self._gate.release()
        raise AssertionError("unreachable")  # pragma: no cover

    def _keep(self, connection: Connection, uses: int) -> bool:
        """Keep the connection of a call that ended without error for the next call, when it is
        the store's own, open, outside a transaction and not due back to asyncpg."""
        if (
            not self.keeps
            or uses + 1 >= _KEEP_USES
            or connection.is_closed()
            or connection.is_in_transaction()
        ):
            return False
        loop = asyncio.get_running_loop()
        self._kept.append(_Kept(connection, uses + 1, loop.time()))
        if self._sweep is None:
            self._sweep = loop.call_later(_KEEP_IDLE, self._return_kept)
        return True

    def _return_kept(self, *, everything: bool = False) -> None:
        """Give asyncpg back the kept connections unused for `_KEEP_IDLE` seconds (all of them
        with `everything`), so its inactivity lifetime closes the ones load no longer needs."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        kept = self._kept
        if not kept:
            return
        loop = asyncio.get_running_loop()
        due = loop.time() - _KEEP_IDLE
        while kept and (everything or kept[0].since <= due):
            _release_soon(self.pool, kept.popleft().connection)
        if kept:
            self._sweep = loop.call_later(_KEEP_IDLE, self._return_kept)

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


_MIN_SERVER = 120000  # PostgreSQL 12


async def check_server(connection: Connection, label: str) -> str | None:
    """Refuse a server too old or a database not in UTF8; the connection's current schema."""
    from . import _sql as q  # the statements module imports this one's types

    schema, version, encoding = await connection.fetchrow(q.SERVER_FACTS)
    if version < _MIN_SERVER:
        raise ConfigurationError(
            f"{label}: PostgreSQL {version // 10000} is too old; async-agent-storage needs "
            "PostgreSQL 12 or newer"
        )
    if encoding != "UTF8":
        raise ConfigurationError(
            f"{label}: the database encoding is {encoding}; sessions hold any Unicode text, so "
            "the database must be UTF8 (CREATE DATABASE ... ENCODING 'UTF8')"
        )
    found: str | None = schema
    return found


@asynccontextmanager
async def one_connection(
    url: str, label: str, connect_timeout: float, statement_cache_size: int
) -> AsyncIterator[Connection]:
    """A connection outside any pool, closed after the block (schema calls before `open()`)."""
    try:
        connection = await connect(
            url, connect_timeout=connect_timeout, statement_cache_size=statement_cache_size
        )
    except TimeoutError as exc:
        raise connect_timed_out(label, connect_timeout) from exc
    try:
        yield connection
    finally:
        await close_connection(connection)
