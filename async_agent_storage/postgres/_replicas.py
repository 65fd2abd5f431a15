"""Read replicas: which server each read goes to, and read-your-writes.

With `replica_urls`, `PostgresStore` sends its reads through a `Router`:

- Listings and counts go to a replica (round robin), and may be stale by the replica's lag.
- `read` and `get_run` of a session go to a replica too, except when this store object wrote that
  session and the replica has not yet applied the write (read-your-writes, `read_your_writes`):
  each write records the primary's WAL insert position after it committed, per session id
  (`Positions`); the read then waits, at most `replica_max_wait` seconds, for a replica whose
  replay position (`pg_last_wal_replay_lsn()`) has reached it, else it reads the primary.
- Every replica read also waits for the primary's position when the store opened, and after each
  schema change it made (`Router.floor`), so a replica never answers before it has the tables.
- A replica that fails (refused, timed out, broken, not a standby) is skipped for
  `RETRY_AFTER` seconds and the read goes to the primary: reads never fail because of a replica.
  A replica whose wait ran out is not waited for again for `LAG_BACKOFF` seconds (reads that
  need what it has not applied go straight to the primary).

What "this store object wrote" covers: its own writes, in this process. A session written by
another process is read from a replica, which may be stale by its lag; docs/scaling.md says how
to keep a session's turns on one process, or to use replicas for listings only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import asyncpg

from .._boundary import NotSent
from .._checks import check_seconds
from .._observe import logger_for
from ..errors import ConfigurationError, StorageError, StorageUnavailableError
from . import _pool
from . import _sql as q
from ._pool import Connection, GatedPool
from ._url import normalize_url, where

__all__ = [
    "UNKNOWN",
    "Positions",
    "Replica",
    "ReplicaOptions",
    "Routed",
    "Router",
    "open_router",
    "write_position",
]

T = TypeVar("T")
_log = logger_for("postgresql")

UNKNOWN: Final = 2**63 - 1  # a write whose outcome is unknown: read that session on the primary
RETRY_AFTER: Final = 2.0  # seconds a failed replica is skipped
LAG_BACKOFF: Final = 1.0  # seconds a replica whose wait ran out is not waited for again
_POLL_FIRST, _POLL_MAX = 0.001, 0.01  # seconds between replay checks while waiting
MAX_POSITIONS: Final = 100_000  # sessions whose last write position a store remembers


class Positions:
    """The WAL position after this store's last write of each session (the most recent
    `MAX_POSITIONS` sessions; a session forgotten is read like one written elsewhere)."""

    def __init__(self, limit: int = MAX_POSITIONS) -> None:
        self._limit = limit
        self._by_session: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_session)

    def get(self, session_id: str) -> int:
        return self._by_session.get(session_id, 0)

    def note(self, session_ids: Iterable[str], position: int) -> None:
        """After a write: keep the furthest position (writes may finish out of order), except
        that a known position replaces `UNKNOWN`, and `UNKNOWN` replaces anything."""
        by_session = self._by_session
        for session_id in session_ids:
            known = by_session.get(session_id)
            if known is not None and known != UNKNOWN and position != UNKNOWN:
                position_now = max(known, position)
            else:
                position_now = position
            by_session[session_id] = position_now
            by_session.move_to_end(session_id)
        while len(by_session) > self._limit:
            by_session.popitem(last=False)

    def forget(self, session_id: str, applied_everywhere: int) -> None:
        """Drop a session's entry once every replica has applied it."""
        if self._by_session.get(session_id, UNKNOWN) <= applied_everywhere:
            del self._by_session[session_id]


async def write_position(connection: Connection) -> int:
    position: int = await connection.fetchval(q.WRITE_POSITION)
    return position


def _connection_failed(exc: BaseException) -> bool:
    """The replica itself failed (rather than the statement)."""
    if isinstance(exc, NotSent):
        return True
    return isinstance(
        exc,
        StorageUnavailableError
        | OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | asyncpg.CannotConnectNowError,
    )


class Replica:
    """One standby: its pool (opened lazily: a replica that is down never stops `open()`), what
    the store last saw of its replay position, and whether it is skipped for now."""

    def __init__(self, url: str, pool: GatedPool, where: str) -> None:
        self.url = url
        self.pool = pool
        self.where = where
        self.replayed = -1  # the replay position last seen (bytes), -1: not yet
        self.skip_until = 0.0  # monotonic time until which the replica is not used
        self.failing = False  # the last attempt failed: the next one is a lone probe
        self.lagging_until = 0.0  # monotonic time until which it is not waited for
        self.reads = 0
        self.failures = 0
        self._probe: asyncio.Future[int] | None = None

    def usable(self, now: float) -> bool:
        return now >= self.skip_until

    def failed(self, exc: BaseException, why: str = "") -> None:
        self.failures += 1
        if not self.failing:
            _log.warning(
                "replica %s failed (%s%s); reads go to the primary, it is tried again in %.0f s",
                self.where,
                why or type(exc).__name__,
                "" if why else f": {exc}",
                RETRY_AFTER,
            )
        self.failing = True
        self.replayed = -1  # when it answers again, it may be another server (re-cloned)
        self.skip_until = time.monotonic() + RETRY_AFTER

    def succeeded(self) -> None:
        if self.failing:
            _log.info("replica %s answers again", self.where)
        self.failing = False

    async def _replay_position(self) -> int:
        position = await self.pool.run(_pool.fetchval, q.REPLAY_POSITION, idempotent=True)
        if position is None:
            raise _NotAStandby(self.where)
        self.replayed = max(self.replayed, position)
        return self.replayed

    def refresh(self) -> asyncio.Future[int]:
        """The replica's replay position, one query shared by every caller waiting for it."""
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.ensure_future(self._replay_position())
            probe.add_done_callback(_retrieve)
        return probe

    async def caught_up(self, position: int, max_wait: float) -> bool:
        """Whether the replica has applied `position`, waiting for it at most `max_wait`
        seconds; False (and the replica skipped or not waited for a while) otherwise."""
        deadline = time.monotonic() + max_wait
        pause = _POLL_FIRST
        while True:
            try:
                replayed = await asyncio.shield(self.refresh())
            except _NotAStandby as exc:
                self.failed(exc, "not a standby: pg_last_wal_replay_lsn() is NULL")
                return False
            except Exception as exc:  # whatever it is, the read goes to the primary
                self.failed(exc)
                return False
            self.succeeded()
            if replayed >= position:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.lagging_until = time.monotonic() + LAG_BACKOFF
                return False
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX)


class _NotAStandby(Exception):
    pass


def _retrieve(probe: asyncio.Future[int]) -> None:
    if not probe.cancelled():
        probe.exception()  # every waiter may have gone: never "exception was never retrieved"


async def _after_write(
    connection: Connection, work: Callable[..., Awaitable[T]], *args: Any
) -> tuple[T, int]:
    """`work`, then the primary's insert position: past the commit of what `work` wrote."""
    result = await work(connection, *args)
    try:
        return result, await write_position(connection)
    except Exception:  # the write is done; only its position is unknown
        return result, UNKNOWN


class Router:
    """Sends each read to a replica or the primary, and records each write's position."""

    def __init__(
        self,
        primary: GatedPool,
        replicas: Sequence[Replica],
        *,
        read_your_writes: bool,
        max_wait: float,
    ) -> None:
        self.primary = primary
        self.replicas = list(replicas)
        self.read_your_writes = read_your_writes
        self.max_wait = max_wait
        self.positions = Positions()
        self.floor = 0  # at open() and after each schema change: replicas must have applied it
        self.primary_reads = 0  # reads that went to the primary (no replica could take them)
        self._turn = itertools.count()

    async def close(self) -> None:
        for replica in self.replicas:
            probe = replica._probe
            if probe is not None and not probe.done():
                probe.cancel()
                with contextlib.suppress(BaseException):
                    await probe
        await asyncio.gather(*(r.pool.close() for r in self.replicas))

    # --- writes ---------------------------------------------------------------------------------

    async def write(
        self, session_ids: Sequence[str], work: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """`work` on the primary; then remember, for each session it wrote, the position a
        replica must reach to show the write."""
        try:
            done: tuple[T, int] = await self.primary.run(_after_write, work, *args)
        except BaseException as exc:
            if not isinstance(exc, StorageError):  # maybe written: read these on the primary
                self.positions.note(session_ids, UNKNOWN)
            raise
        self.positions.note(session_ids, done[1])
        return done[0]

    # --- reads ----------------------------------------------------------------------------------

    async def read(
        self, session_id: str | None, work: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """`work` on a replica that has applied what this read must see, else on the
        primary. `session_id`: the session read (read-your-writes), None for a listing."""
        needed = self.floor
        if session_id is not None and self.read_your_writes:
            needed = max(needed, self.positions.get(session_id))
        replica = None if needed == UNKNOWN else await self._choose(needed)
        if replica is not None:
            try:
                result = await replica.pool.run(work, *args, idempotent=True)
            except Exception as exc:
                if isinstance(exc, StorageError) and not isinstance(exc, StorageUnavailableError):
                    raise  # decided by the store (e.g. an ownership error): the same anywhere
                if _connection_failed(exc):
                    replica.failed(exc)
                else:  # e.g. a query cancelled by a recovery conflict on the standby
                    _log.info("replica %s: %s; read on the primary", replica.where, exc)
            else:
                replica.succeeded()
                replica.reads += 1
                if session_id is not None and self.read_your_writes:
                    self.positions.forget(session_id, min(r.replayed for r in self.replicas))
                return result
        self.primary_reads += 1
        return await self.primary.run(work, *args, idempotent=True)

    async def _choose(self, needed: int) -> Replica | None:
        """A replica known to have applied `needed`; else one that gets there within the
        wait; else None (read the primary)."""
        now = time.monotonic()
        start = next(self._turn)
        count = len(self.replicas)
        order = [self.replicas[(start + i) % count] for i in range(count)]
        usable = [r for r in order if r.usable(now)]
        for replica in usable:
            if replica.replayed >= needed:
                return self._taken(replica, now)
        for replica in usable:
            if replica.lagging_until > now:
                continue
            self._taken(replica, now)
            return replica if await replica.caught_up(needed, self.max_wait) else None
        return None

    @staticmethod
    def _taken(replica: Replica, now: float) -> Replica:
        if replica.failing:  # one probe at a time while it is failing: the others skip it
            replica.skip_until = now + RETRY_AFTER
        return replica

    # --- figures --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "replica_reads": sum(r.reads for r in self.replicas),
            "primary_reads": self.primary_reads,
            "positions_kept": len(self.positions),
            "replicas": [
                {
                    "where": r.where,
                    "reads": r.reads,
                    "failures": r.failures,
                    "skipped": not r.usable(time.monotonic()),
                    "replayed": r.replayed,
                }
                for r in self.replicas
            ],
        }


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """The store's replica options, checked."""

    urls: tuple[str, ...] = ()
    read_your_writes: bool = True
    max_wait: float = 0.05
    timeout: float = 2.0

    @classmethod
    def checked(
        cls, urls: object, read_your_writes: object, max_wait: object, timeout: object
    ) -> ReplicaOptions:
        if isinstance(urls, str | bytes) or not isinstance(urls, Sequence):
            raise ConfigurationError(
                f"replica_urls must be a list of PostgreSQL URLs, got {type(urls).__name__}"
            )
        if type(read_your_writes) is not bool:
            raise ConfigurationError(
                f"read_your_writes must be True or False, got {read_your_writes!r}"
            )
        return cls(
            tuple(normalize_url(url) for url in urls),
            read_your_writes,
            check_seconds("replica_max_wait", max_wait, allow_zero=True),
            check_seconds("replica_timeout", timeout),
        )


async def open_router(
    primary: GatedPool,
    options: ReplicaOptions,
    describe: Callable[[], str],
    *,
    max_size: int,
    statement_cache_size: int,
    command_timeout: float | None,
    max_inactive_connection_lifetime: float,
) -> Router:
    """A pool per replica, with no connection yet (a replica that is down does not stop the
    store from opening; its first read finds out), and the router over them."""
    replicas: list[Replica] = []
    try:
        for url in options.urls:
            pool = await _pool.create_pool(
                url,
                min_size=0,
                max_size=max_size,
                max_inactive_connection_lifetime=max_inactive_connection_lifetime,
                statement_cache_size=statement_cache_size,
                command_timeout=command_timeout,
                connect_timeout=options.timeout,
            )
            at = where(url)
            gated = GatedPool(
                pool,
                owned=True,
                acquire_timeout=options.timeout,
                describe=lambda at=at: f"{describe()} replica {at}",  # type: ignore[misc]
            )
            replicas.append(Replica(url, gated, at))
        router = Router(
            primary, replicas, read_your_writes=options.read_your_writes, max_wait=options.max_wait
        )
        async with primary.connection() as connection:  # replicas answer from here on
            router.floor = await write_position(connection)
    except BaseException:
        await asyncio.gather(*(r.pool.close() for r in replicas))
        raise
    return router


class Routed:
    """One call's way to the servers, shaped like `GatedPool.run`: a read of a session (or a
    listing: no session), or a write of sessions."""

    __slots__ = ("_router", "_session_id", "_written")

    def __init__(
        self, router: Router, session_id: str | None, written: Sequence[str] | None
    ) -> None:
        self._router = router
        self._session_id = session_id
        self._written = written

    async def run(
        self, work: Callable[..., Awaitable[T]], *args: Any, idempotent: bool = False
    ) -> T:
        if self._written is not None:
            return await self._router.write(self._written, work, *args)
        return await self._router.read(self._session_id, work, *args)
