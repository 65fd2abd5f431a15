"""Connections of the SQLite driver: one thread per connection, batches of calls, one thread hop
per batch.

Each connection (a `sqlite3.Connection`) lives on a thread of its own that runs, in order, what
is queued for it (`ConnectionThread`): the event loop never waits on SQLite. A call costs one hop
between the event loop and that thread (about 150 us on a 2-core VM, far more than the SQL of a
session read), so the driver never sends statements one by one: each connection has a `Batcher`,
and while one batch runs on the thread the next calls queue up and go together as the next batch,
which the thread starts itself when the one before ends. A batch of reads runs in one read
transaction; a batch of writes in one write transaction with a savepoint per write (group
commit). At low load a batch is one call and nothing waits; under load one hop serves many calls.

The thread is the driver's own (aiosqlite's thread works the same way, but a whole batch on it
needs its private queue): nothing here depends on a third-party package's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from queue import SimpleQueue
from typing import Any, TypeVar

from ..errors import ConfigurationError, StoreClosedError

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)
BatchRunner = Callable[[Sequence[Work[Any]], sqlite3.Connection], list[Outcome]]
Call = tuple[Work[Any], "asyncio.Future[Any]"]
Done = Callable[[bool, Any], None]  # called on the event loop with (True, result) or (False, error)
_Item = tuple[Done, Work[Any]] | None  # None: stop


def _resolve(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller gave up waiting
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ConnectionThread:
    """One `sqlite3.Connection` and the thread that owns it: `submit(work)` queues
    `work(connection)` there and returns a future of its result, resolved on the event loop;
    `submit_then(work, done)` calls `done(ok, value)` on the event loop instead (one step less
    on the loop than a future's callback)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._db: sqlite3.Connection | None = None
        self._started: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = False

    async def start(self) -> None:
        """Open the connection on its thread (an error opening it is raised here)."""
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        self._thread.start()
        self.running = True
        try:
            await self._started
        except BaseException:
            self.running = False
            raise

    def _serve(self) -> None:
        loop, started = self._loop, self._started
        assert loop is not None
        assert started is not None
        try:
            self._db = self._connect()
        except BaseException as exc:
            loop.call_soon_threadsafe(_resolve, started, False, exc)
            return
        loop.call_soon_threadsafe(_resolve, started, True, None)
        while True:
            item = self._queue.get()
            if item is None:
                break
            done, work = item
            try:
                result: Any = work(self._db)
            except BaseException as exc:
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            with contextlib.suppress(RuntimeError):  # the event loop is gone (interpreter exit)
                loop.call_soon_threadsafe(done, *outcome)
        self._db.close()

    def submit(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work(connection)` on the thread; the future holds its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.submit_then(work, partial(_resolve, future))
        return future

    def submit_then(self, work: Work[Any], done: Done) -> None:
        """Queue `work(connection)` on the thread; `done(ok, value)` runs on the event loop
        with its result (True, result) or what it raised (False, exception)."""
        if not self.running:
            raise StoreClosedError("the SQLite connection is closed")
        self._queue.put_nowait((done, work))

    async def close(self) -> None:
        """Finish what is queued, close the connection, end the thread."""
        if not self.running:
            return
        self.running = False
        self._queue.put_nowait(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)


async def run(connection: ConnectionThread, work: Work[T]) -> T:
    """Run `work(sqlite3_connection)` on the connection's own thread."""
    return await connection.submit(work)


# SQLite answers SQLITE_BUSY at once, without waiting for `busy_timeout`, when waiting could
# deadlock, e.g. two connections switching a new file to WAL while others read its schema.
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _enter_wal(db: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL (once per file: the mode is stored in it), trying again while
    SQLite answers busy at once, for up to `busy_timeout` seconds, as its busy handler would."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.002
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
            if code not in _BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _configure(
    wal: bool,
    busy_timeout: float,
    synchronous: str,
    query_only: bool,
    page_size: int | None,
    db: sqlite3.Connection,
) -> None:
    if page_size is not None:
        # Takes effect on a file that has no pages yet, so before the switch to WAL writes them.
        db.execute(f"PRAGMA page_size = {page_size}")
    if wal:
        _enter_wal(db, busy_timeout)
    if page_size is not None:
        actual = db.execute("PRAGMA page_size").fetchone()[0]
        if actual != page_size:
            raise ConfigurationError(
                f"page_size={page_size} applies to new database files only; this one has "
                f"{actual}-byte pages. Leave page_size out, or convert the file with every "
                f'process using it stopped: sqlite3 FILE "PRAGMA journal_mode=DELETE; '
                f'PRAGMA page_size={page_size}; VACUUM; PRAGMA journal_mode=WAL;"'
            )
    db.execute(f"PRAGMA synchronous = {synchronous}")
    # Up to 64 MiB of pages cached per connection (SQLite's default is 2 MiB): a session read
    # touches a dozen pages, and going to the OS for each costs more than the SQL.
    db.execute("PRAGMA cache_size = -65536")
    if query_only:
        db.execute("PRAGMA query_only = ON")


def _open(
    path: str, busy_timeout: float, synchronous: str, query_only: bool, page_size: int | None
) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, cached_statements=256)
    try:
        _configure(path != ":memory:", busy_timeout, synchronous, query_only, page_size, db)
    except BaseException:
        db.close()
        raise
    return db


async def connect(
    path: str,
    *,
    busy_timeout: float,
    synchronous: str,
    query_only: bool = False,
    page_size: int | None = None,
) -> ConnectionThread:
    """Open one connection in autocommit mode (transactions are explicit), configured, on a thread
    of its own. `page_size`: that of a new file; `ConfigurationError` when the file has others."""
    name = "async-agent-storage sqlite" + (" reader" if query_only else "")
    connection = ConnectionThread(
        partial(_open, path, busy_timeout, synchronous, query_only, page_size), name=name
    )
    await connection.start()
    return connection


# --- what a batch does on the thread ------------------------------------------------------


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


def run_writes(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome]:
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


# --- batching ------------------------------------------------------------------------------


def _take(queue: deque[Call], limit: int) -> list[Call]:
    """Up to `limit` queued calls, dropping those cancelled before they started. The event loop
    and the connection's thread both take from `queue` (each `popleft` is atomic)."""
    batch: list[Call] = []
    while len(batch) < limit:
        try:
            work, future = queue.popleft()
        except IndexError:
            break
        if not future.done():
            batch.append((work, future))
    return batch


Pulled = tuple[list[Call], list[Outcome]] | None


class Batcher:
    """The calls of one connection, run in batches on the connection's thread.

    Calls queue here, on the event loop. A *job* on the connection's thread takes what is queued
    when it starts (up to `max_batch` calls) and runs it as one batch. While a job runs, the next
    call submits one more, which waits on the thread behind it: when a batch ends, the thread
    starts the next at once with every call queued meanwhile, instead of waiting for the event
    loop to start it (under load the loop is busy resuming the callers of the batch that just
    ended; measured at 16 callers, the thread waited for it 13 % of the time). At low load a call
    submits a job and nothing waits.

    Cancellation: a call cancelled before its batch starts is dropped (it never runs); once its
    batch started it runs to the end with the batch and only the caller's wait is cancelled.
    """

    def __init__(
        self, connection: ConnectionThread, runner: BatchRunner, *, max_batch: int
    ) -> None:
        self.connection = connection
        self._runner = runner
        self._max_batch = max_batch
        self._queue: deque[Call] = deque()
        self._jobs = 0  # jobs submitted whose outcome the event loop has not handled yet
        # A submitted job has not started taking calls: calls queued now will be in its batch.
        # Set on the event loop, cleared on the thread before the job takes its calls.
        self._unpulled = False
        self._running = False  # a batch runs on the thread (set there)
        self._started = 0.0  # when it started, `time.monotonic()` (set there)
        self._paused = 0
        self._idle: list[asyncio.Future[None]] = []
        self.batches = 0  # batches run: one transaction each
        self.calls = 0  # calls they carried

    @property
    def load(self) -> int:
        """Calls queued, plus one while a job is in flight."""
        return len(self._queue) + (self._jobs > 0)

    @property
    def in_flight(self) -> bool:
        """A job is queued on the thread or running there."""
        return self._jobs > 0

    def busy_for(self) -> float:
        """Seconds the batch running on the thread has been running (0 when none runs)."""
        return time.monotonic() - self._started if self._running else 0.0

    def submit(self, work: Work[T]) -> asyncio.Future[T]:
        """Queue `work`; the future holds its outcome once its batch has run."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, future))
        self._kick()
        return future

    async def call(self, work: Work[T]) -> T:
        return await self.submit(work)

    def take_queued(self) -> list[Call]:
        """Every queued call that has not started, for another batcher to run."""
        calls = _take(self._queue, len(self._queue))
        if not self._jobs:
            self._wake_idle()
        return calls

    def enqueue(self, call: Call) -> None:
        """A call taken from another batcher (its caller still waits on its future)."""
        self._queue.append(call)
        self._kick()

    def _kick(self) -> None:
        """Submit a job for the queued calls, unless one that has not started will take them."""
        if self._paused or self._unpulled or not self._queue:
            return
        # Set before the job is queued: the thread may start it, and clear the flag, at once.
        self._unpulled = True
        try:
            self.connection.submit_then(self._pull, self._finished)
        except StoreClosedError as exc:
            self._unpulled = False
            self._settle(_take(self._queue, len(self._queue)), exc)
            return
        self._jobs += 1

    def _pull(self, db: sqlite3.Connection) -> Pulled:
        """On the thread: take the queued calls and run them as one batch."""
        # Cleared before taking: a call queued after this line submits a job of its own (at
        # worst one that finds nothing); cleared after, a call could be left with no job.
        self._unpulled = False
        batch = _take(self._queue, self._max_batch)
        if not batch:
            return None
        self._started = time.monotonic()
        self._running = True
        try:
            outcomes = self._runner([work for work, _ in batch], db)
        except BaseException as exc:  # not expected: the runners catch what they can
            outcomes = [(False, exc)] * len(batch)
        finally:
            self._running = False
        return batch, outcomes

    def _finished(self, ok: bool, pulled: Any) -> None:
        """On the event loop: a job's outcome."""
        self._jobs -= 1
        if ok and pulled is not None:  # `_pull` raises nothing: what its batch raised is in it
            batch, outcomes = pulled
            self.batches += 1
            self.calls += len(batch)
            self._settle(batch, outcomes)
        self._kick()
        if not self._jobs and not self._queue:
            self._wake_idle()

    @staticmethod
    def _settle(batch: list[Call], outcomes: list[Outcome] | BaseException) -> None:
        for i, (_, future) in enumerate(batch):
            if future.done():  # the caller was cancelled while its call ran
                continue
            ok, value = (False, outcomes) if isinstance(outcomes, BaseException) else outcomes[i]
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _wake_idle(self) -> None:
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(waiter)
            await waiter

    async def drain(self) -> None:
        """Wait until everything queued has run."""
        await self._until(lambda: not self._jobs and not self._queue)

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[ConnectionThread]:
        """Hold the connection between batches (for a migration); calls queue meanwhile."""
        self._paused += 1
        try:
            await self._until(lambda: not self._jobs)
            yield self.connection
        finally:
            self._paused -= 1
            self._kick()


class ReaderPool:
    """Where reads go. By default to the writer's own connection, through a batcher of their own:
    one thread doing all the SQL beside the event loop is what this workload runs fastest with
    (two threads, two cores, little GIL contention; the benchmark measured a third less client CPU
    per turn than with separate reader threads). Reads still see only committed data: a read batch
    runs between write batches, never inside one.

    Separate reader connections (WAL lets them read while a write is in progress) take the reads
    when the writer's batch has been running longer than `stall`: in practice when the writer is
    waiting for another process's write lock, which can last up to `busy_timeout`. A read for the
    writer's connection stays in its batcher's queue until a job on the thread takes it (never in
    the thread's own queue, where it could not be taken back), and moves to the reader connections
    the moment the write batch ahead of it has run for `stall`, whenever it arrived."""

    def __init__(
        self,
        writer: Batcher,
        readers: Sequence[ConnectionThread],
        *,
        max_batch: int,
        stall: float,
    ) -> None:
        self._writer = writer
        self._primary = Batcher(writer.connection, run_reads, max_batch=max_batch)
        self._readers = [Batcher(c, run_reads, max_batch=max_batch) for c in readers]
        self._stall = stall
        self._stall_timer: asyncio.TimerHandle | None = None
        self.connections = list(readers)

    def _watch_stall(self) -> None:
        """Check, when the write batch ahead of the queued reads will have run for `stall`,
        whether they must move (once armed, the timer serves every read queued meanwhile)."""
        if self._stall_timer is not None:
            return
        delay = self._stall - self._writer.busy_for()
        self._stall_timer = asyncio.get_running_loop().call_later(
            max(delay, 0.0), self._check_stall
        )

    def _check_stall(self) -> None:
        self._stall_timer = None
        if not self._primary._queue:
            return
        if self._writer.busy_for() >= self._stall:
            # The write batch has run for `stall`: the reads waiting for it go to the reader
            # connections, which WAL lets read meanwhile.
            for call in self._primary.take_queued():
                min(self._readers, key=lambda b: b.load).enqueue(call)
        elif self._writer.in_flight:
            self._watch_stall()

    @property
    def primary(self) -> Batcher:
        """The batcher of the reads that run on the writer's connection."""
        return self._primary

    @property
    def _batchers(self) -> list[Batcher]:
        return [self._primary, *self._readers]

    @property
    def in_flight(self) -> int:
        return sum(b.load for b in self._batchers)

    @property
    def batches(self) -> int:
        return sum(b.batches for b in self._batchers)

    @property
    def reads(self) -> int:
        return sum(b.calls for b in self._batchers)

    @property
    def reads_beside_writer(self) -> int:
        """Reads served by the separate reader connections."""
        return sum(b.calls for b in self._readers)

    async def run(self, work: Work[T]) -> T:
        if not self._readers:
            return await self._primary.call(work)
        if max(self._writer.busy_for(), self._primary.busy_for()) > self._stall:
            return await min(self._readers, key=lambda b: b.load).call(work)
        future = self._primary.submit(work)
        if self._writer.in_flight:  # the read may wait behind a write batch
            self._watch_stall()
        return await future

    async def drain(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        for batcher in self._batchers:
            await batcher.drain()
