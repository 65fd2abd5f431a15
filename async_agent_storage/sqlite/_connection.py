"""Connections of the SQLite driver: a thread call per transaction, readers, a group-commit writer.

aiosqlite gives each connection its own thread and runs every call of that connection there, in
order. A call costs one hop between the event loop and that thread (about 150 µs on a 2-core VM),
so the driver never sends statements one by one: a read is one call that runs its statements in
one read transaction, and the writer runs a whole batch of writes, one transaction with a
savepoint per write, in one call (aiosqlite's `_execute` queues any callable on the connection's
thread; it is the one private name used, which is why aiosqlite is pinned below 0.23).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar, cast

import aiosqlite

from ..errors import StorageError, StoreClosedError

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


def _with_sqlite(connection: aiosqlite.Connection, work: Work[T]) -> T:
    return work(connection._conn)


async def run(connection: aiosqlite.Connection, work: Work[T]) -> T:
    """Run `work(sqlite3_connection)` on the connection's own thread."""
    result = await connection._execute(_with_sqlite, connection, work)  # type: ignore[no-untyped-call]
    return cast(T, result)


def _configure(wal: bool, synchronous: str, query_only: bool, db: sqlite3.Connection) -> None:
    if wal:
        db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    if query_only:
        db.execute("PRAGMA query_only = ON")


async def connect(
    path: str, *, busy_timeout: float, synchronous: str, query_only: bool = False
) -> aiosqlite.Connection:
    """Open one connection in autocommit mode (transactions are explicit) and configure it."""
    connection = await aiosqlite.connect(
        path, timeout=busy_timeout, isolation_level=None, cached_statements=256
    )
    try:
        await run(connection, partial(_configure, path != ":memory:", synchronous, query_only))
    except BaseException:
        await connection.close()
        raise
    return connection


def run_reads(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome]:
    """A batch of reads in one read transaction: they all see one committed snapshot."""
    outcomes: list[Outcome] = []
    nested = db.in_transaction  # in-memory stores read on the writer, which may be migrating
    if not nested:
        db.execute("BEGIN")
    try:
        for work in works:
            try:
                outcomes.append((True, work(db)))
            except Exception as exc:
                outcomes.append((False, exc))
    finally:
        if not nested:
            db.execute("COMMIT")
    return outcomes


Pending = deque[tuple[Work[Any], "asyncio.Future[Any]"]]


def _take(queue: Pending, limit: int) -> list[tuple[Work[Any], asyncio.Future[Any]]]:
    """Up to `limit` queued calls, dropping those cancelled before they started."""
    batch: list[tuple[Work[Any], asyncio.Future[Any]]] = []
    while queue and len(batch) < limit:
        work, future = queue.popleft()
        if not future.done():
            batch.append((work, future))
    return batch


def _settle(
    batch: Sequence[tuple[Work[Any], asyncio.Future[Any]]], outcomes: list[Outcome]
) -> None:
    for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():  # the caller was cancelled while its call ran
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class ReaderPool:
    """Reader connections, each with its own thread, reading in batches.

    A read is queued; a connection with nothing in flight takes everything queued (up to
    `max_batch`) and runs it in one call, in one read transaction. At low load a batch is one read
    and nothing waits; under load one thread hop serves many reads."""

    def __init__(self, connections: Sequence[aiosqlite.Connection], *, max_batch: int) -> None:
        self.connections = list(connections)
        self._idle = list(self.connections)
        self._queue: Pending = deque()
        self._max_batch = max_batch
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.reads = 0

    @property
    def in_flight(self) -> int:
        return len(self.connections) - len(self._idle) + len(self._queue)

    async def run(self, work: Work[T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            batch = _take(self._queue, self._max_batch)
            if not batch:
                return
            connection = self._idle.pop()
            self.batches += 1
            self.reads += len(batch)
            task = asyncio.get_running_loop().create_task(self._run_batch(connection, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(
        self, connection: aiosqlite.Connection, batch: list[tuple[Work[Any], asyncio.Future[Any]]]
    ) -> None:
        try:
            outcomes = await run(connection, partial(run_reads, [w for w, _ in batch]))
        except Exception as exc:  # the connection failed (closed): fail the whole batch
            outcomes = [(False, exc)] * len(batch)
        finally:
            self._idle.append(connection)
        _settle(batch, outcomes)
        self._dispatch()

    async def close(self) -> None:
        """Wait for the reads in flight."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def run_batch(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome]:
    """One write transaction for a batch of writes, each in a savepoint so that one write failing
    (a version conflict, say) undoes that write only. Nothing is reported done before COMMIT."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return [(False, exc)] * len(works)
    outcomes: list[Outcome] = []
    try:
        if len(works) == 1:  # alone in its transaction: no savepoint needed
            try:
                outcomes.append((True, works[0](db)))
            except Exception as exc:
                db.execute("ROLLBACK")
                return [(False, exc)]
        else:
            for work in works:
                db.execute("SAVEPOINT write")
                try:
                    value = work(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO write")
                    db.execute("RELEASE write")
                    outcomes.append((False, exc))
                else:
                    db.execute("RELEASE write")
                    outcomes.append((True, value))
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        return [(False, exc)] * len(works)
    return outcomes


class GroupCommitWriter:
    """The single writer connection. Writes submitted while a batch runs are committed together in
    the next transaction: under load, one commit (and one thread hop) serves many writes.

    Cancellation: a write cancelled before its batch starts is dropped (nothing written); once its
    batch started it commits with the batch, and only the caller's wait is cancelled.
    """

    def __init__(self, connection: aiosqlite.Connection, *, max_batch: int, label: str) -> None:
        self.connection = connection
        self._max_batch = max_batch
        self._label = label
        self._queue: deque[tuple[Work[Any], asyncio.Future[Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._exclusive = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0  # transactions committed (or attempted)
        self.writes = 0  # writes they carried

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._drain(), name=f"async-agent-storage writer {self._label}"
        )

    async def submit(self, work: Work[T]) -> T:
        if self._closing:
            raise StoreClosedError(f"{self._label}: the store is closing")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        self._wakeup.set()
        return await future

    def exclusive(self) -> asyncio.Lock:
        """Held around each batch; hold it to use the writer connection directly (migrations)."""
        return self._exclusive

    async def _drain(self) -> None:
        batch: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = _take(self._queue, self._max_batch)
                if not batch:
                    continue
                self.batches += 1
                self.writes += len(batch)
                async with self._exclusive:
                    outcomes = await asyncio.shield(
                        run(self.connection, partial(run_batch, [w for w, _ in batch]))
                    )
                _settle(batch, outcomes)
        except BaseException as exc:
            # Never leave a caller waiting forever: fail what is queued.
            failure = StorageError(f"{self._label}: the writer stopped: {exc!r}")
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.set_exception(failure)
            self._queue.clear()
            raise

    async def close(self) -> None:
        """Finish queued writes, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
