"""`SqliteStore`: the embedded default, on the standard library's `sqlite3`.

Layout: a sessions table (one row per session, JSON fields as TEXT that SQLite's JSON1 functions
read) and a runs table keyed by ``(session_id, seq)``, so that appending runs and reading the last
N runs cost the same whatever the length of the history. WAL lets readers run beside the writer;
writes go through one connection that commits concurrent writes together (group commit, see
`_connection`). The calls themselves are in `_work`, run on the connections' threads.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeVar, Unpack

from .._activity import ActivityCounts, ActivityQuery
from .._checks import DEFAULT_TABLE_NAME, check_int_option, check_name, check_seconds
from .._crypto import Reseal
from .._encoding import EncodedAppend, EncodedSession, decode_runs
from .._leases import Busy, Grant
from .._paging import ListQuery, PageKey, page_key
from .._store import StoreBase, StoreOptions
from ..errors import ConfigurationError
from ..models import Session
from . import _connection as conn
from . import _leases as leases
from . import _work as work
from ._errors import ERRORS
from ._migrations import MIGRATIONS, MigrationTarget
from ._rows import listed_session, session_from_row, stored_session
from ._sql import SQL

__all__ = ["SqliteStore"]

T = TypeVar("T")
_MIN_SQLITE: Final = (3, 35, 0)  # RETURNING
# Reads move to the separate reader connections once the writer's batch has run this long (it is
# then waiting for another process's lock).
_READ_STALL: Final = 0.010
# Writes between two WAL checkpoints when the store makes them (a checkpoint syncs the file, and
# the writer's calls wait for it). The benchmark's append turn, in-process, 16 / 64 callers:
# every 100 writes 2,412 / 1,564 turns/s and a WAL of 3.3 MB; every 400, 3,007 / 2,908 and
# 12 MB; every 1,000, 3,331 / 3,293 and 29 MB (SQLite's own interval keeps about 4 MB).
_CHECKPOINT_EVERY: Final = 400
# The most runs a call run on the event loop reads or writes (`inline`): more go to the thread.
_HERE_RUNS: Final = 256
# The largest listing page run on the event loop (`inline`); with its runs, at most
# `_HERE_RUNS` of them (a page that holds more runs again on the thread).
_HERE_PAGE: Final = 100


@dataclass(slots=True)
class _Connections:
    writer: conn.Batcher
    readers: conn.ReaderPool
    checkpoints: conn.Checkpoints | None


class SqliteStore(StoreBase):
    """Session storage in one SQLite file: zero set-up, one machine, many processes.

    ```python
    store = SqliteStore(db_file="tmp/data.db", auto_upgrade_schema=True)
    async with store:
        session = await store.read("s1", user_id="u1")
    ```

    Options (beside those every store takes: `StoreOptions`):

    - `db_file`: the database file (its folder is created); None keeps everything in memory, for
      tests (the data lives as long as the store is open).
    - `busy_timeout`: seconds to wait for another process's write lock before
      `StorageUnavailableError`.
    - `reader_connections`: connections that serve reads while the writer waits for another
      process's lock (WAL lets them). Otherwise reads run on the writer's connection, between
      write batches: with one thread doing all the SQL the event loop keeps the other core.
    - `synchronous`: ``"NORMAL"`` (default) survives a crash of the process; ``"FULL"`` also a
      power loss, at the cost of one fsync per commit (group commit shares it between writes).
    - `max_batch`: the most writes committed in one transaction.
    - `inline`: short calls (a read with `last_runs`, `get_run`, appends, upserts and pops of
      up to 256 runs, leases, listing pages of up to 100 sessions holding up to 256 runs) run on
      the event loop itself, in batches, while the connection's thread has nothing to run (True,
      the default): a thread hop costs more than their SQL, and the two threads would take the
      GIL from each other. A batch blocks the loop for its SQL (about 0.1 ms a call, 0.1-0.2 ms
      a listing page, at most 16 calls); a batch that finds another process's lock, and every
      longer call (whole histories, larger listings, counts, bulk writes, deletes, purges), runs
      on the thread, and so do WAL checkpoints (every 400 writes). A listing page that turns out
      to hold more runs runs again on the thread. False: every call on the thread, the event
      loop never runs SQL.
    - `page_size`: the page size in bytes of a new database file (a power of two from 512 to
      65536; None, the default: SQLite's, 4096). 8192 stores runs of 1 to 2 KB in about 12 %
      fewer bytes and costs the turn about a tenth of its throughput from 16 callers. A file
      that exists keeps its pages: opening it with another `page_size` raises
      `ConfigurationError`.
    """

    backend: ClassVar[str] = "sqlite"
    _errors = ERRORS

    def __init__(
        self,
        table_name: str = DEFAULT_TABLE_NAME,
        db_file: str | os.PathLike[str] | None = None,
        *,
        busy_timeout: float = 5.0,
        reader_connections: int = 1,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        max_batch: int = 256,
        page_size: int | None = None,
        inline: bool = True,
        **options: Unpack[StoreOptions],
    ) -> None:
        self._setup(migrations=MIGRATIONS, options=options)
        self.table_name = check_name(table_name)
        if db_file is not None and not isinstance(db_file, str | os.PathLike):
            raise ConfigurationError(f"db_file must be a path or None, got {db_file!r}")
        self.db_file = ":memory:" if db_file is None else os.fspath(db_file)
        if not isinstance(self.db_file, str) or not self.db_file or "\x00" in self.db_file:
            raise ConfigurationError(f"db_file={db_file!r} is not a usable path")
        self.busy_timeout = check_seconds("busy_timeout", busy_timeout, allow_zero=True)
        self.reader_connections = check_int_option(
            "reader_connections", reader_connections, low=0, high=64
        )
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.synchronous = synchronous
        self.max_batch = check_int_option("max_batch", max_batch, low=1)
        if page_size is not None and (
            check_int_option("page_size", page_size, low=512, high=65536) & (page_size - 1)
        ):
            raise ConfigurationError(f"page_size must be a power of two, got {page_size!r}")
        self.page_size = page_size
        if not isinstance(inline, bool):
            raise ConfigurationError(f"inline must be True or False, got {inline!r}")
        self.inline = inline
        self._sql = SQL.for_table(self.table_name)
        self._lease_sql = leases.LeaseSQL.for_table(self.table_name)
        self._io: _Connections | None = None

    @property
    def label(self) -> str:
        return f"sqlite {self.db_file!r} table {self.table_name!r}"

    @property
    def in_memory(self) -> bool:
        return self.db_file == ":memory:"

    # --- connections ----------------------------------------------------------------------------

    async def _connect(
        self, *, query_only: bool = False, auto_checkpoint: bool = True
    ) -> conn.ConnectionThread:
        if not self.in_memory:
            Path(self.db_file).parent.mkdir(parents=True, exist_ok=True)
        return await conn.connect(
            self.db_file,
            busy_timeout=self.busy_timeout,
            synchronous=self.synchronous,
            query_only=query_only,
            page_size=self.page_size,
            auto_checkpoint=auto_checkpoint,
        )

    async def _open_resources(self) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ConfigurationError(
                f"SQLite {sqlite3.sqlite_version} is too old; async-agent-storage needs 3.35+"
            )
        opened: list[conn.ConnectionThread] = []
        # Commits on the event loop leave WAL checkpoints to a thread (see `conn.Checkpoints`).
        checkpointed = self.inline and not self.in_memory
        try:
            opened.append(await self._connect(auto_checkpoint=not checkpointed))
            if not self.in_memory:  # each connection to :memory: is its own database
                for _ in range(self.reader_connections):
                    opened.append(await self._connect(query_only=True))
        except BaseException:
            for connection in opened:
                await connection.close()
            raise
        checkpoints = (
            conn.Checkpoints(opened[0], _CHECKPOINT_EVERY, beside=opened[1] if opened[1:] else None)
            if checkpointed
            else None
        )
        writer = conn.Batcher(
            opened[0],
            conn.run_writes,
            max_batch=self.max_batch,
            here=conn.run_writes_here if self.inline else None,
            committed=None if checkpoints is None else checkpoints.committed,
        )
        readers = conn.ReaderPool(
            writer, opened[1:], max_batch=self.max_batch, stall=_READ_STALL, here=self.inline
        )
        self._io = _Connections(writer, readers, checkpoints)

    async def _close_resources(self) -> None:
        io, self._io = self._io, None
        if io is None:
            return
        await io.writer.drain()
        await io.readers.drain()
        for connection in [io.writer.connection, *io.readers.connections]:
            await connection.close()

    @asynccontextmanager
    async def _migration_target(self) -> AsyncIterator[MigrationTarget]:
        """On the writer's connection, paused between batches; before `open()`, on a connection
        made for the occasion."""
        io = self._io
        if io is not None:
            # Reads on the writer's connection wait too: they must not see a half-done migration.
            async with io.writer.paused() as connection, io.readers.primary.paused():
                yield MigrationTarget(connection, self._sql, self.label)
            return
        connection = await self._connect()
        try:
            yield MigrationTarget(connection, self._sql, self.label)
        finally:
            await connection.close()

    # --- the calls ------------------------------------------------------------------------------

    async def _read(
        self, session_id: str, user_id: str | None, last_runs: int | None
    ) -> Session | None:
        return await self._live(self._io).readers.run(
            partial(work.read_session, self._sql, self.token, session_id, user_id, last_runs),
            here=last_runs is not None and last_runs <= _HERE_RUNS,
        )

    async def _write(self, call: conn.Work[T], *, here: bool) -> T:
        """Run the write `call`; `here`: it is short (one session, at most `_HERE_RUNS` runs)
        and may run on the event loop, else it runs on the connection's thread."""
        return await self._live(self._io).writer.call(call, here=here)

    async def _upsert(self, session: EncodedSession, if_version: int | None) -> Session:
        rows = await self._write(
            partial(work.upsert, self._sql, self.label, self.token, [session], if_version),
            here=len(session.runs) <= _HERE_RUNS,
        )
        return stored_session(session, rows[0], self.token)

    async def _upsert_many(self, sessions: list[EncodedSession], returning: bool) -> list[Session]:
        rows = await self._write(
            partial(work.upsert, self._sql, self.label, self.token, sessions, None), here=False
        )
        self._wrote(sum(len(enc.runs) for enc in sessions))
        if not returning:
            return []
        return [
            stored_session(enc, row, self.token) for enc, row in zip(sessions, rows, strict=True)
        ]

    async def _append(self, append: EncodedAppend) -> Session:
        row, start, bodies, ids = await self._write(
            partial(work.append, self._sql, self.label, append),
            here=len(append.runs) <= _HERE_RUNS,
        )
        return session_from_row(row, bodies, ids, start, self.token)

    async def _delete(self, session_id: str, user_id: str | None) -> bool:
        # A session's whole history is deleted: on the thread.
        return await self._write(partial(work.delete, self._sql, session_id, user_id), here=False)

    async def _get_run(
        self, session_id: str, run_id: str, user_id: str | None
    ) -> dict[str, Any] | None:
        body = await self._live(self._io).readers.run(
            partial(work.get_run, self._sql, session_id, run_id, user_id), here=True
        )
        return None if body is None else decode_runs([body])[0]

    async def _pop_runs(
        self, session_id: str, user_id: str | None, count: int
    ) -> list[dict[str, Any]]:
        bodies = await self._write(
            partial(work.pop_runs, self._sql, self.label, session_id, user_id, count),
            here=count <= _HERE_RUNS,
        )
        return decode_runs(bodies) if bodies else []

    async def _truncate_runs(self, session_id: str, user_id: str | None, keep_last: int) -> int:
        return await self._write(
            partial(work.truncate_runs, self._sql, self.label, session_id, user_id, keep_last),
            here=False,  # may delete a whole history
        )

    async def _count(self, query: ListQuery) -> int:
        return await self._live(self._io).readers.run(partial(work.count, self._sql, query))

    async def _usage(self) -> tuple[int, int, dict[str, int]]:
        return await self._live(self._io).readers.run(partial(work.usage, self._sql))

    async def _fork(
        self, session_id: str, new_session_id: str, at_run: str | None, user_id: str | None
    ) -> Session | None:
        return await self._write(
            partial(
                work.fork,
                self._sql,
                self.label,
                self.token,
                self._default_expiry.ttl_us,
                session_id,
                new_session_id,
                at_run,
                user_id,
            ),
            here=False,
        )

    async def _list_page(self, query: ListQuery) -> tuple[list[Session], PageKey | None]:
        rows, runs, more = await self._live(self._io).readers.run(
            partial(work.list_sessions, self._sql, query, runs_here=_HERE_RUNS),
            here=query.limit is not None and query.limit <= _HERE_PAGE,
        )
        sessions = [
            listed_session(row, runs.get(row[0]), query.include_runs, self.token) for row in rows
        ]
        return sessions, page_key(sessions, more)

    async def _list_ids(self, query: ListQuery) -> list[str]:
        return await self._live(self._io).readers.run(partial(work.list_ids, self._sql, query))

    async def _activity(self, query: ActivityQuery) -> ActivityCounts:
        return await self._live(self._io).readers.run(partial(work.activity, self._sql, query))

    async def _drop(self) -> None:
        await self._write(partial(work.drop, self._sql), here=False)

    async def _purge_expired(self, batch: int) -> tuple[int, int]:
        sessions, runs = await self._write(
            partial(work.delete_batch, self._sql, None, batch), here=False
        )
        self._wrote(runs)
        return sessions, runs

    async def _delete_user(self, user_id: str, batch: int) -> tuple[int, int]:
        sessions, runs = await self._write(
            partial(work.delete_batch, self._sql, user_id, batch), here=False
        )
        self._wrote(runs)
        return sessions, runs

    def _wrote(self, runs: int) -> None:
        """A bulk write stored or deleted `runs` runs: as many appends' worth of WAL, toward the
        next checkpoint (the batcher counts each call once)."""
        io = self._io
        if io is not None and io.checkpoints is not None:
            io.checkpoints.committed(runs)

    async def _reseal(self, reseal: Reseal) -> bool:
        return await self._write(partial(work.reseal, self._sql, reseal), here=False)

    async def _take_lease(
        self, session_id: str, user_id: str | None, holder: str, ttl: float
    ) -> Grant | Busy:
        return await self._write(
            partial(leases.take, self._lease_sql, self.label, session_id, user_id, holder, ttl),
            here=True,
        )

    async def _renew_lease(
        self, session_id: str, holder: str, token: int, ttl: float
    ) -> Grant | Busy:
        return await self._write(
            partial(leases.renew, self._lease_sql, session_id, holder, token, ttl), here=True
        )

    async def _release_lease(self, session_id: str, holder: str, token: int) -> None:
        await self._write(
            partial(leases.release, self._lease_sql, session_id, holder, token), here=True
        )

    async def _ping(self) -> None:
        await self._live(self._io).readers.run(work.ping)

    def _stats(self) -> dict[str, Any]:
        io = self._live(self._io)
        return {
            "write_batches": io.writer.batches,
            "write_batches_on_loop": io.writer.batches_here,
            "writes": io.writer.calls,
            "writes_in_flight": io.writer.load,
            "read_batches": io.readers.batches,
            "reads": io.readers.reads,
            "reads_beside_writer": io.readers.reads_beside_writer,
            "reads_in_flight": io.readers.in_flight,
            "reader_connections": len(io.readers.connections),
            "checkpoints": 0 if io.checkpoints is None else io.checkpoints.done,
        }
