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
# The same on the event loop: None when the database was busy and the batch must go to the thread.
HereRunner = Callable[[Sequence[Work[Any]], sqlite3.Connection], list[Outcome] | None]
# A queued call: its work, its caller's future, and whether it may run on the event loop.
Call = tuple[Work[Any], "asyncio.Future[Any]", bool]
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
    on the loop than a future's callback).

    `here()` lends the connection to the event loop itself while the thread has nothing of it to
    run (`jobs == 0`), with a busy timeout of 0: a call run there never waits for another
    process's lock (it gets SQLITE_BUSY and goes to the thread, which waits up to
    `busy_timeout`)."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], name: str, busy_timeout: float = 0.0
    ) -> None:
        self._connect = connect
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._db: sqlite3.Connection | None = None
        self._started: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy_ms = round(busy_timeout * 1000)
        self._waits = True  # the connection's busy timeout is `_busy_ms` (else 0)
        self.running = False
        self.jobs = 0  # queued for the thread or running there, until reported on the loop
        self._reports = 0  # jobs reported so far
        # Called on the event loop when the thread has nothing left to run (True), or (False)
        # after two more jobs ended without that: (registered at report, callback).
        self._idle_waiters: list[tuple[int, Callable[[bool], None]]] = []

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
        _thread_state.serving = True
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
                if not self._waits:  # the event loop used it last
                    self._db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                    self._waits = True
                result: Any = work(self._db)
            except BaseException as exc:
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, result)
            with contextlib.suppress(RuntimeError):  # the event loop is gone (interpreter exit)
                loop.call_soon_threadsafe(self._report, done, *outcome)
        self._db.close()

    def _report(self, done: Done, ok: bool, value: Any) -> None:
        self.jobs -= 1
        self._reports += 1
        done(ok, value)
        if self._idle_waiters:
            self._wake_waiters()

    def when_idle(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(True)` on the event loop once the thread has no job left, or
        `callback(False)` once two more jobs ended without that (a thread kept busy by other
        calls must not hold back this one for long)."""
        self._idle_waiters.append((self._reports, callback))

    def _wake_waiters(self) -> None:
        idle = not self.jobs
        waiters, self._idle_waiters = self._idle_waiters, []
        for registered, callback in waiters:
            if idle or self._reports - registered >= 2:
                callback(idle)
            else:
                self._idle_waiters.append((registered, callback))

    def here(self) -> sqlite3.Connection:
        """The connection, for the event loop to use now: only while `jobs == 0` (the thread
        then runs nothing of it), and not past the current callback."""
        db = self._db
        assert db is not None
        assert not self.jobs
        if self._waits:
            db.execute("PRAGMA busy_timeout = 0")
            self._waits = False
        return db

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
        self.jobs += 1
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


_thread_state = threading.local()


def on_connection_thread() -> bool:
    """Whether the caller runs on a connection's own thread (else on the event loop)."""
    return getattr(_thread_state, "serving", False)


class RunOnThread(Exception):
    """Raised by a call run on the event loop that finds itself longer than it looked (a
    listing whose page holds more runs than a call there may read): its batch runs again on the
    connection's thread. Only reads raise it, before they return anything."""


# SQLite answers SQLITE_BUSY at once, without waiting for `busy_timeout`, when waiting could
# deadlock, e.g. two connections switching a new file to WAL while others read its schema.
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock this one needs."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    return isinstance(exc, sqlite3.OperationalError) and code in _BUSY


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
            if not _busy(exc) or time.monotonic() + delay > deadline:
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
    path: str,
    busy_timeout: float,
    synchronous: str,
    query_only: bool,
    page_size: int | None,
    auto_checkpoint: bool = True,
) -> sqlite3.Connection:
    # Used by its thread, and by the event loop while that thread has nothing of it to run
    # (`ConnectionThread.here`): never by both at once.
    db = sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,
        cached_statements=256,
        check_same_thread=False,
    )
    try:
        _configure(path != ":memory:", busy_timeout, synchronous, query_only, page_size, db)
        if not auto_checkpoint:
            # A commit that reaches 1,000 pages of WAL would copy them into the database file
            # and sync it, tens of milliseconds the event loop must not wait for: `Checkpoints`
            # runs them as jobs on the connection's thread instead.
            db.execute("PRAGMA wal_autocheckpoint = 0")
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
    auto_checkpoint: bool = True,
) -> ConnectionThread:
    """Open one connection in autocommit mode (transactions are explicit), configured, on a thread
    of its own. `page_size`: that of a new file; `ConfigurationError` when the file has others.
    `auto_checkpoint=False`: its commits leave checkpoints to `Checkpoints`."""
    name = "async-agent-storage sqlite" + (" reader" if query_only else "")
    connection = ConnectionThread(
        partial(_open, path, busy_timeout, synchronous, query_only, page_size, auto_checkpoint),
        name=name,
        busy_timeout=busy_timeout,
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


def run_reads_here(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome] | None:
    """`run_reads` on the event loop: None when a read found the database busy (rare under WAL:
    recovery, a checkpoint resetting the log) or itself too long for the loop (`RunOnThread`),
    to run the batch again on the thread."""
    outcomes = run_reads(works, db)
    if any(not ok and (_busy(value) or isinstance(value, RunOnThread)) for ok, value in outcomes):
        return None
    return outcomes


def run_writes_here(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome] | None:
    """`run_writes` on the event loop: None, with nothing run, when another connection holds the
    write lock (the batch then goes to the thread, which waits for it)."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return None if _busy(exc) else [(False, exc)] * len(works)
    return _write_batch(works, db)


def run_writes(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome]:
    """One write transaction for a batch of writes, each in a savepoint so that one write failing
    (a version conflict, say) undoes that write only. Nothing is reported done before COMMIT."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return [(False, exc)] * len(works)
    return _write_batch(works, db)


def _write_batch(works: Sequence[Work[Any]], db: sqlite3.Connection) -> list[Outcome]:
    """The writes of a batch, in the write transaction just begun, then COMMIT."""
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

HERE_BATCH = 16
"""The most calls one batch run on the event loop carries: about 2 ms of SQL for 16 appends,
the loop's wait per batch (64 made the turn no faster and the wait four times longer)."""

HERE_BATCH_LOADED = 8
"""The calls one batch on the event loop takes when more than `HERE_BATCH` are queued: the loop
is saturated then, and each batch's sessions are decoded, used by their callers and freed while
they are still in the core's cache (the append turn, this checkout against batches of 16, 7
rounds: +13 % turns a second at 64 and 256 callers, level at 1 and 16)."""


def _take(queue: deque[Call], limit: int) -> list[Call]:
    """Up to `limit` queued calls, cancelled ones included (the caller leaves those out). The
    event loop and the connection's thread both take from `queue` (each `popleft` is atomic)."""
    taken: list[Call] = []
    while len(taken) < limit:
        try:
            taken.append(queue.popleft())
        except IndexError:
            break
    return taken


def _live(taken: list[Call]) -> list[Call]:
    """The calls whose callers still wait (a call cancelled before its batch starts never runs)."""
    return [call for call in taken if not call[1].done()]


# What a job did: the calls it took from the queue, those of them it ran, and their outcomes.
Pulled = tuple[list[Call], list[Call], list[Outcome]] | None


class Batcher:
    """The calls of one connection, run in batches.

    Calls queue here, on the event loop. A *job* on the connection's thread takes what is queued
    when it starts (up to `max_batch` calls) and runs it as one batch. While a job runs, the next
    call submits one more, which waits on the thread behind it: when a batch ends, the thread
    starts the next at once with every call queued meanwhile, instead of waiting for the event
    loop to start it (under load the loop is busy resuming the callers of the batch that just
    ended). At low load a call submits a job and nothing waits.

    With `here` (a runner for the event loop), short calls run on the event loop itself while the
    connection's thread has nothing of it to run: every call queued by the end of the loop's
    current iteration as one batch, when they are at most `HERE_BATCH`, else `HERE_BATCH_LOADED`
    of them, the rest in the next iteration. A thread hop costs more than their SQL
    (two thread wake-ups, and the two threads taking the GIL from each other). A batch that finds
    the database locked by another process goes to the thread, which waits for the lock.

    Cancellation: a call cancelled before its batch starts is dropped (it never runs); once its
    batch started it runs to the end with the batch and only the caller's wait is cancelled.
    """

    def __init__(
        self,
        connection: ConnectionThread,
        runner: BatchRunner,
        *,
        max_batch: int,
        here: HereRunner | None = None,
        committed: Callable[[int], None] | None = None,
    ) -> None:
        self.connection = connection
        self._runner = runner
        self._here = here
        self._committed = committed  # told how many calls each batch ran
        self._max_batch = max_batch
        self._queue: deque[Call] = deque()
        # Calls that must run on the thread, queued or taken by a job not reported yet (changed
        # on the event loop only).
        self._long = 0
        self._jobs = 0  # jobs scheduled or submitted whose outcome has not been handled yet
        # A job has not started taking calls: calls queued now will be in its batch. Set on the
        # event loop; cleared where the job runs, before it takes its calls.
        self._unpulled = False
        self._running = False  # a batch runs on the thread (set there)
        self._started = 0.0  # when it started, `time.monotonic()` (set there)
        self._paused = 0
        self._idle: list[asyncio.Future[None]] = []
        self.batches = 0  # batches run: one transaction each
        self.calls = 0  # calls they carried
        self.batches_here = 0  # batches run on the event loop

    @property
    def load(self) -> int:
        """Calls queued, plus one while a job is in flight."""
        return len(self._queue) + (self._jobs > 0)

    @property
    def in_flight(self) -> bool:
        """A job is scheduled, queued on the thread or running there."""
        return self._jobs > 0

    def busy_for(self) -> float:
        """Seconds the batch running on the thread has been running (0 when none runs)."""
        return time.monotonic() - self._started if self._running else 0.0

    def submit(self, work: Work[T], *, here: bool = False) -> asyncio.Future[T]:
        """Queue `work`; the future holds its outcome once its batch has run. `here`: it is
        short enough to run on the event loop (when the batcher has a runner for it)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._append((work, future, here))
        return future

    async def call(self, work: Work[T], *, here: bool = False) -> T:
        return await self.submit(work, here=here)

    def _append(self, call: Call) -> None:
        self._queue.append(call)
        if not call[2]:
            self._long += 1
        self._kick()

    def _forget(self, taken: list[Call]) -> None:
        """`taken` has left the queue for good (run, moved, or failed)."""
        self._long -= sum(1 for call in taken if not call[2])

    def take_queued(self) -> list[Call]:
        """Every queued call that has not started, for another batcher to run."""
        taken = _take(self._queue, len(self._queue))
        self._forget(taken)
        if not self._jobs:
            self._wake_idle()
        return _live(taken)

    def enqueue(self, call: Call) -> None:
        """A call taken from another batcher (its caller still waits on its future)."""
        self._append(call)

    def _kick(self) -> None:
        """Start a job for the queued calls, unless one that has not started will take them."""
        if self._paused or self._unpulled or not self._queue:
            return
        # Set before the job is queued: the thread may start it, and clear the flag, at once.
        self._unpulled = True
        self._jobs += 1
        if self._here is not None and not self._long:
            # At the end of this loop iteration: the calls made meanwhile go in the same batch.
            asyncio.get_running_loop().call_soon(self._run_here)
            return
        self._submit()

    def _submit(self) -> None:
        """Queue a job on the thread (`_unpulled` and `_jobs` already count it)."""
        try:
            self.connection.submit_then(self._pull, self._finished)
        except StoreClosedError as exc:
            self._unpulled = False
            self._jobs -= 1
            taken = _take(self._queue, len(self._queue))
            self._forget(taken)
            self._settle(taken, exc)

    def _pull(self, db: sqlite3.Connection) -> Pulled:
        """On the thread: take the queued calls and run them as one batch."""
        # Cleared before taking: a call queued after this line starts a job of its own (at
        # worst one that finds nothing); cleared after, a call could be left with no job.
        self._unpulled = False
        return self._run(_take(self._queue, self._max_batch), db)

    def _run(self, taken: list[Call], db: sqlite3.Connection) -> Pulled:
        """On the thread: run the calls `taken` from the queue as one transaction."""
        if not taken:
            return None
        live = _live(taken)
        if not live:
            return taken, [], []
        self._started = time.monotonic()
        self._running = True
        try:
            outcomes = self._runner([work for work, _, _ in live], db)
        except BaseException as exc:  # not expected: the runners catch what they can
            outcomes = [(False, exc)] * len(live)
        finally:
            self._running = False
        return taken, live, outcomes

    def _run_here(self) -> None:
        """On the event loop: run the queued calls here if the thread has nothing of the
        connection (else as a job on the thread)."""
        connection = self.connection
        if self._long or not connection.running or self._paused:
            self._submit()  # a call needs the thread (or the connection is held): queue there
            return
        if connection.jobs:
            # The thread has the connection (a checkpoint, a long call, a batch waiting for a
            # lock): wait for it to finish, then run here. Queued behind it on the thread
            # instead, the calls would keep the thread busy and never come back to the loop.
            connection.when_idle(self._after_wait)
            return
        self._unpulled = False
        queued = len(self._queue)
        taken = _take(self._queue, queued if queued <= HERE_BATCH else HERE_BATCH_LOADED)
        live = _live(taken)
        if live:
            assert self._here is not None
            try:
                outcomes = self._here([work for work, _, _ in live], connection.here())
            except BaseException as exc:  # not expected: the runners catch what they can
                outcomes = [(False, exc)] * len(live)
            if outcomes is None:  # another process holds a lock: the thread waits for it
                try:
                    connection.submit_then(partial(self._run, taken), self._finished)
                except StoreClosedError as exc:
                    self._jobs -= 1
                    self._forget(taken)
                    self._settle(taken, exc)
                return
            self.batches_here += 1
            self._done(taken, live, outcomes)
        else:
            self._forget(taken)
        self._jobs -= 1
        self._next()

    def _after_wait(self, idle: bool) -> None:
        if idle:
            self._run_here()
        else:
            self._submit()

    def _finished(self, ok: bool, pulled: Any) -> None:
        """On the event loop: a job's outcome (`_pull` and `_run` raise nothing: what a batch
        raised is in its outcomes)."""
        self._jobs -= 1
        if ok and pulled is not None:
            self._done(*pulled)
        self._next()

    def _done(self, taken: list[Call], live: list[Call], outcomes: list[Outcome]) -> None:
        self._forget(taken)
        if not live:
            return
        self.batches += 1
        self.calls += len(live)
        self._settle(live, outcomes)
        if self._committed is not None:
            self._committed(len(live))

    def _next(self) -> None:
        self._kick()
        if not self._jobs and not self._queue:
            self._wake_idle()

    @staticmethod
    def _settle(batch: list[Call], outcomes: list[Outcome] | BaseException) -> None:
        for i, (_, future, _) in enumerate(batch):
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


class Checkpoints:
    """WAL checkpoints for a writer whose commits do not make them (`auto_checkpoint=False`):
    after about `every` writes (`committed` counts them, a bulk write by its runs), one
    checkpoint, in two steps when there is a connection `beside` the writer (a reader's).

    1. A PASSIVE checkpoint on the connection beside the writer copies the frames written so far
       into the database file, on that connection's thread, while the writer goes on writing.
    2. A PASSIVE checkpoint as a job on the writer's own thread then copies the frames written
       during step 1. The writer's calls wait for it, as they wait for a checkpoint SQLite makes
       inside a commit, so it copies every frame and the next write starts the WAL over.

    Step 1 alone never catches up with the writes that go on meanwhile (the WAL grew by hundreds
    of megabytes under load). Step 2 alone makes the writer wait for all the copying: 13-18 ms
    every 400 writes of the benchmark's append turn, in-process at 1 to 64 callers, against 6-8 ms
    for step 2 after step 1 (about 1 ms timed alone; under load 2.6-4 ms of the thread's CPU,
    the rest syncing the two files and taking the GIL back). One checkpoint at a time; a failed
    step is tried again after the next `every` writes."""

    def __init__(
        self, connection: ConnectionThread, every: int, beside: ConnectionThread | None = None
    ) -> None:
        self._connection = connection
        self._beside = beside
        self._every = every
        self._writes = 0
        self._running = False
        self.done = 0
        self.copied_beside = 0  # first steps that ran on the connection beside the writer

    def committed(self, writes: int) -> None:
        self._writes += writes
        if self._writes < self._every or self._running or not self._connection.running:
            return
        self._writes = 0
        self._running = True
        beside = self._beside
        if beside is not None and beside.running:
            beside.submit_then(_checkpoint, self._copied)
        else:
            self._connection.submit_then(_checkpoint, self._finished)

    def _copied(self, ok: bool, value: Any) -> None:
        if not ok or not self._connection.running:
            self._running = False
            return
        self.copied_beside += 1
        # Always: the frames it reports are those in the WAL when it started, so it cannot tell
        # whether the writer added more meanwhile.
        self._connection.submit_then(_checkpoint, self._finished)

    def _finished(self, ok: bool, value: Any) -> None:
        self._running = False
        self.done += ok


def _checkpoint(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


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
        here: bool = False,
    ) -> None:
        self._writer = writer
        self._primary = Batcher(
            writer.connection,
            run_reads,
            max_batch=max_batch,
            here=run_reads_here if here else None,
        )
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

    async def run(self, work: Work[T], *, here: bool = False) -> T:
        """Run the read `work`; `here`: it is short enough to run on the event loop."""
        if not self._readers:
            return await self._primary.call(work, here=here)
        if max(self._writer.busy_for(), self._primary.busy_for()) > self._stall:
            return await min(self._readers, key=lambda b: b.load).call(work)
        future = self._primary.submit(work, here=here)
        if self._writer.in_flight:  # the read may wait behind a write batch
            self._watch_stall()
        return await future

    async def drain(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        for batcher in self._batchers:
            await batcher.drain()
