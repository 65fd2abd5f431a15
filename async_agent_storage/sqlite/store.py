"""`SqliteStore`: the embedded default, on aiosqlite.

Layout: a sessions table (one row per session, JSON fields as TEXT that SQLite's JSON1 functions
read) and a runs table keyed by ``(session_id, seq)``, so that appending runs and reading the last
N runs cost the same whatever the length of the history. WAL lets readers run beside the writer;
writes go through one connection that commits concurrent writes together (group commit).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import aiosqlite

from .. import _common as common
from .. import codec
from .. import migrations as migration_runner
from .._base import StoreBase, page_key
from ..errors import (
    ConfigurationError,
    MigrationError,
    SessionConflictError,
    SessionOwnershipError,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
)
from ..migrations import AppliedMigration, Migration
from ..models import MigrationReport, Session
from . import _connection as conn
from . import sql as q
from .migrations import MIGRATIONS
from .sql import SQL

__all__ = ["SqliteStore"]

T = TypeVar("T")
_MIN_SQLITE: Final = (3, 35, 0)  # RETURNING
# Reads move to the separate reader connections once the writer's batch has run this long (it is
# then waiting for another process's lock).
_READ_STALL: Final = 0.010
# Result codes that mean "the storage cannot serve this now" (worth retrying later).
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOLFS,
    }
)


_State = common.StoreState


class SqliteStore(StoreBase):
    """Session storage in one SQLite file: zero set-up, one machine, many processes.

    ```python
    store = SqliteStore(db_file="tmp/data.db", auto_upgrade_schema=True)
    async with store:
        session = await store.read("s1", user_id="u1")
    ```

    - `db_file`: the database file (its folder is created); None keeps everything in memory, for
      tests (the data lives as long as the store is open).
    - `auto_upgrade_schema`: upgrade an older schema at `open()`; without it `open()` raises
      `MigrationError` on an older schema. A missing schema is always created.
    - `busy_timeout`: seconds to wait for another process's write lock before
      `StorageUnavailableError`.
    - `reader_connections`: connections that serve reads while the writer waits for another
      process's lock (WAL lets them). Otherwise reads run on the writer's connection, between
      write batches: with one thread doing all the SQL the event loop keeps the other core.
    - `synchronous`: ``"NORMAL"`` (default) survives a crash of the process; ``"FULL"`` also a
      power loss, at the cost of one fsync per commit (group commit shares it between writes).
    - `max_session_bytes`: the largest JSON payload one write may carry.
    - `max_batch`: the most writes committed in one transaction.
    """

    def __init__(
        self,
        table_name: str = common.DEFAULT_TABLE_NAME,
        db_file: str | os.PathLike[str] | None = None,
        *,
        auto_upgrade_schema: bool = False,
        busy_timeout: float = 5.0,
        reader_connections: int = 1,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        max_session_bytes: int = codec.DEFAULT_MAX_SESSION_BYTES,
        max_batch: int = 256,
    ) -> None:
        self.table_name = common.check_name(table_name)
        self.db_file = ":memory:" if db_file is None else os.fspath(db_file)
        if not self.db_file or "\x00" in self.db_file:
            raise ConfigurationError(f"db_file={db_file!r} is not a usable path")
        self.auto_upgrade_schema = bool(auto_upgrade_schema)
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        if type(reader_connections) is not int or not 0 <= reader_connections <= 64:
            raise ConfigurationError(
                f"reader_connections must be an int from 0 to 64, got {reader_connections!r}"
            )
        self.reader_connections = reader_connections
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.synchronous = synchronous
        self.max_session_bytes = common.check_max_bytes(max_session_bytes)
        if type(max_batch) is not int or max_batch < 1:
            raise ConfigurationError(f"max_batch must be an int >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.migrations: Sequence[Migration] = MIGRATIONS
        self._sql = SQL.for_table(self.table_name)
        self._label = f"sqlite {self.db_file!r} table {self.table_name!r}"
        self._state = _State.NEW
        self._lifecycle = asyncio.Lock()
        self._writer: conn.Batcher | None = None
        self._readers: conn.ReaderPool | None = None

    def __repr__(self) -> str:
        return (
            f"SqliteStore(table_name={self.table_name!r}, db_file={self.db_file!r}, "
            f"state={self._state.value})"
        )

    @property
    def in_memory(self) -> bool:
        return self.db_file == ":memory:"

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, then create the schema if missing (or upgrade it when allowed)."""
        async with self._lifecycle:
            if self._state is _State.OPEN:
                return
            if self._state is _State.CLOSED:
                raise StoreClosedError(f"{self._label}: a closed store cannot be reopened")
            if sqlite3.sqlite_version_info < _MIN_SQLITE:
                raise ConfigurationError(
                    f"SQLite {sqlite3.sqlite_version} is too old; async-agent-storage needs 3.35+"
                )
            opened: list[aiosqlite.Connection] = []
            try:
                if not self.in_memory:
                    Path(self.db_file).parent.mkdir(parents=True, exist_ok=True)
                writer = await self._connect()
                opened.append(writer)
                await migration_runner.ensure_schema(
                    self._migration_target(writer),
                    self.migrations,
                    auto_upgrade=self.auto_upgrade_schema,
                )
                if not self.in_memory:  # each connection to :memory: is its own database
                    for _ in range(self.reader_connections):
                        opened.append(await self._connect(query_only=True))
            except BaseException as exc:
                for connection in opened:
                    await connection.close()
                if isinstance(exc, sqlite3.Error | OSError):
                    raise self._translate(exc) from exc
                raise
            self._writer = conn.Batcher(writer, conn.run_writes, max_batch=self.max_batch)
            self._readers = conn.ReaderPool(
                self._writer, opened[1:], max_batch=self.max_batch, stall=_READ_STALL
            )
            self._state = _State.OPEN

    async def _connect(self, *, query_only: bool = False) -> aiosqlite.Connection:
        return await conn.connect(
            self.db_file,
            busy_timeout=self.busy_timeout,
            synchronous=self.synchronous,
            query_only=query_only,
        )

    async def close(self) -> None:
        """Finish queued writes and close every connection. Idempotent."""
        async with self._lifecycle:
            if self._state is not _State.OPEN:
                self._state = _State.CLOSED
                return
            self._state = _State.CLOSED
            writer, readers = self._writer, self._readers
            self._writer = self._readers = None
            assert writer is not None
            assert readers is not None
            await writer.drain()
            await readers.drain()
            for connection in [writer.connection, *readers.connections]:
                await connection.close()

    def _open_parts(self) -> tuple[conn.Batcher, conn.ReaderPool]:
        if self._state is not _State.OPEN or self._writer is None or self._readers is None:
            state = "was closed" if self._state is _State.CLOSED else "is not open yet"
            raise StoreClosedError(
                f"{self._label}: the store {state}; use `async with store:` or `await store.open()`"
            )
        return self._writer, self._readers

    # --- the boundary where sqlite3 errors become StorageErrors -----------------------------------

    def _translate(self, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        message = str(exc)
        if isinstance(exc, sqlite3.Error):
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # the primary result code
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                return StorageUnavailableError(
                    f"{self._label}: database is locked by another connection for longer than "
                    f"busy_timeout={self.busy_timeout:g}s ({message})"
                )
            if code in _UNAVAILABLE_CODES:
                return StorageUnavailableError(f"{self._label}: {message}")
            if "no such table" in message:
                return MigrationError(
                    f"{self._label}: the store's tables do not exist ({message}); they were "
                    "dropped or never created: run `await store.upgrade_schema()`"
                )
            # Corruption, "file is not a database", a constraint or a bug: retrying will not help.
            return StorageError(f"{self._label}: {type(exc).__name__}: {message}")
        if isinstance(exc, OSError):
            return StorageUnavailableError(f"{self._label}: {exc}")
        return StorageError(f"{self._label}: {type(exc).__name__}: {message}")

    async def _read(self, work: conn.Work[T]) -> T:
        _, readers = self._open_parts()
        try:
            return await readers.run(work)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def _write(self, work: conn.Work[T]) -> T:
        writer, _ = self._open_parts()
        try:
            return await writer.call(work)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    # --- sessions -------------------------------------------------------------------------------

    async def read(
        self, session_id: str, *, user_id: str | None = None, last_runs: int | None = None
    ) -> Session | None:
        """The session, or None when it does not exist or belongs to another user than `user_id`.
        `last_runs=N` loads only the last N runs; the cost does not grow with the history."""
        sid = common.check_id(session_id, "session_id")
        uid = common.check_optional_id(user_id, "user_id")
        tail = common.check_last_runs(last_runs)
        return await self._read(partial(_read_session, self._sql, sid, uid, tail))

    async def upsert(self, session: Session, *, if_version: int | None = None) -> Session:
        """Write the whole session and return what was stored, with its new version.

        With `if_version`, the write happens only if the stored version is `if_version` (0: the
        session must not exist); otherwise `SessionConflictError`. Without it the last writer wins.
        A session read with `last_runs` (or listed) keeps its older runs: only its tail is replaced.
        """
        enc = common.encode_session(session, max_bytes=self.max_session_bytes)
        expected = common.check_if_version(if_version)
        rows = await self._write(partial(_upsert, self._sql, self._label, [enc], expected))
        return _stored(enc, rows[0])

    async def upsert_many(self, sessions: Sequence[Session]) -> list[Session]:
        """Write many sessions in one transaction: all of them, or none (last writer wins)."""
        encoded = common.encode_sessions(sessions, max_bytes=self.max_session_bytes)
        if not encoded:
            return []
        rows = await self._write(partial(_upsert, self._sql, self._label, encoded, None))
        return [_stored(enc, row) for enc, row in zip(encoded, rows, strict=True)]

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
        work = partial(
            _append,
            self._sql,
            self._label,
            sid,
            uid,
            [(r.run_id, r.body.decode()) for r in encoded],
            None if data is None else data.decode(),
        )
        row, start = await self._write(work)
        return _row_to_session(row, [r.body for r in encoded], start)

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when it is absent or another user's."""
        sid = common.check_id(session_id, "session_id")
        uid = common.check_optional_id(user_id, "user_id")
        return await self._write(partial(_delete, self._sql, sid, uid))

    # --- listing --------------------------------------------------------------------------------

    async def _list_page(
        self, query: common.ListQuery
    ) -> tuple[list[Session], tuple[int, str] | None]:
        sessions, more = await self._read(partial(_list_sessions, self._sql, query))
        return sessions, page_key(sessions, more)

    async def _list_ids(self, query: common.ListQuery) -> list[str]:
        return await self._read(partial(_list_ids, self._sql, query))

    # --- schema ---------------------------------------------------------------------------------

    async def upgrade_schema(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations, one transaction each under SQLite's write lock, or with
        ``dry_run=True`` report them without changing anything.

        Works on a store that is not open yet (it connects just for this), which is how to upgrade
        a database that `open()` refused because `auto_upgrade_schema` is off."""
        async with self._migration_connection() as connection:
            try:
                return await migration_runner.upgrade(
                    self._migration_target(connection), self.migrations, dry_run=dry_run
                )
            except (sqlite3.Error, OSError) as exc:
                raise self._translate(exc) from exc

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 when there is none). Works on a store
        that is not open yet."""
        if self._state is _State.OPEN:
            return await self._read(partial(_schema_version, self._sql))
        async with self._migration_connection() as connection:
            try:
                return await conn.run(connection, partial(_schema_version, self._sql))
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    @asynccontextmanager
    async def _migration_connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer connection, paused between batches; or, before `open()`, a connection made
        for the occasion."""
        if self._state is _State.OPEN:
            writer, readers = self._open_parts()
            # Reads on the writer's connection wait too: they must not see a half-done migration.
            async with writer.paused() as connection, readers.primary.paused():
                yield connection
            return
        if self._state is _State.CLOSED:
            self._open_parts()  # raises StoreClosedError
        if not self.in_memory:
            Path(self.db_file).parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = await self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc) from exc
        try:
            yield connection
        finally:
            await connection.close()

    async def drop(self) -> None:
        """Delete the store's tables and all their data. `upgrade_schema()` creates them again."""
        await self._write(partial(_drop, self._sql))

    def _migration_target(self, connection: aiosqlite.Connection) -> _MigrationTarget:
        return _MigrationTarget(connection, self._sql, self._label, self._translate)


# --- work run on a connection's thread ------------------------------------------------------------
# Plain functions of a sqlite3 connection (the last argument), run by `_connection.run`.


def _loads(data: bytes) -> Any:
    # SQLite keeps the text exactly as the codec wrote it: its big-integer mark is reliable.
    return codec.loads(data, marked=True)


def _row_to_session(row: Sequence[Any], bodies: Sequence[str | bytes], runs_offset: int) -> Session:
    loads = _loads
    return common.build_session(
        session_id=row[q.SID],
        session_type=row[q.TYPE],
        user_id=row[q.USER],
        agent_id=row[q.AGENT],
        team_id=row[q.TEAM],
        workflow_id=row[q.WORKFLOW],
        session_data=loads(row[q.DATA]),
        agent_data=None if row[7] is None else loads(row[7]),
        team_data=None if row[8] is None else loads(row[8]),
        workflow_data=None if row[9] is None else loads(row[9]),
        metadata=None if row[10] is None else loads(row[10]),
        summary=None if row[11] is None else loads(row[11]),
        runs=common.decode_runs(bodies, marked=True),
        runs_offset=runs_offset,
        created_at=common.from_us(row[q.CREATED]),
        updated_at=common.from_us(row[q.UPDATED]),
        version=row[q.VERSION],
    )


def _read_session(
    sql: SQL, session_id: str, user_id: str | None, last_runs: int | None, db: sqlite3.Connection
) -> Session | None:
    row = db.execute(sql.select_session, (session_id,)).fetchone()
    if row is None or (user_id is not None and row[q.USER] != user_id):
        return None
    run_count = row[q.RUN_COUNT]
    start = 0 if last_runs is None else max(0, run_count - last_runs)
    bodies = []
    if start < run_count:
        bodies = [r[0] for r in db.execute(sql.select_runs_from, (session_id, start))]
    return _row_to_session(row, bodies, start)


def _list_sessions(
    sql: SQL, query: common.ListQuery, db: sqlite3.Connection
) -> tuple[list[Session], bool]:
    statement, params = sql.listing(query)
    rows = db.execute(statement, params).fetchall()
    more = query.limit is not None and len(rows) > query.limit
    if more:
        del rows[query.limit :]
    sessions = []
    for row in rows:
        if query.include_runs:
            bodies = [r[0] for r in db.execute(sql.select_runs_from, (row[q.SID], 0))]
            sessions.append(_row_to_session(row, bodies, 0))
        else:  # no runs loaded: an `upsert` of this session keeps its whole history
            sessions.append(_row_to_session(row, [], row[q.RUN_COUNT]))
    return sessions, more


def _list_ids(sql: SQL, query: common.ListQuery, db: sqlite3.Connection) -> list[str]:
    statement, params = sql.listing(query, ids_only=True)
    return [row[0] for row in db.execute(statement, params)]


def _schema_version(sql: SQL, db: sqlite3.Connection) -> int:
    if db.execute(sql.history_exists, (sql.history_table,)).fetchone() is None:
        return 0
    return int(db.execute(sql.schema_version).fetchone()[0])


_StoredRow = tuple[int, int, int, int]  # created_at, updated_at, version, runs_offset


def _stored(enc: common.EncodedSession, row: _StoredRow) -> Session:
    created_us, updated_us, version, start = row
    return common.session_from_encoded(
        enc,
        created_at=common.from_us(created_us),
        updated_at=common.from_us(updated_us),
        version=version,
        runs_offset=start,
    )


def _upsert(
    sql: SQL,
    label: str,
    sessions: list[common.EncodedSession],
    if_version: int | None,
    db: sqlite3.Connection,
) -> list[_StoredRow]:
    now = common.now_us()
    stored: list[_StoredRow] = []
    for enc in sessions:
        sid = enc.session_id
        json_fields = (
            enc.session_data.decode(),
            *(None if f is None else f.decode() for f in _optional_json(enc)),
        )
        updated = db.execute(
            sql.update_session,
            (
                enc.session_type,
                enc.agent_id,
                enc.team_id,
                enc.workflow_id,
                *json_fields,
                now,
                enc.runs_offset,
                len(enc.runs),
                sid,
                enc.user_id,
                if_version,
                if_version,
            ),
        ).fetchone()
        if updated is not None:
            created, version, run_count = updated
            start = run_count - len(enc.runs)
            # Still at the version it was read at: the runs it holds unchanged are stored as they
            # are, at their places, and need no write.
            skip = version - 1 == enc.base_version
            rows = [
                (sid, start + i, r.run_id, r.body.decode())
                for i, r in enumerate(enc.runs)
                if not (skip and r.unchanged)
            ]
            if rows:
                db.executemany(sql.upsert_run, rows)
            db.execute(sql.delete_runs_from, (sid, run_count))
        else:
            _refuse_write(db, sql, label, sid, enc.user_id, if_version)
            created, version, start = now, 1, 0
            db.execute(
                sql.insert_session,
                (
                    sid,
                    enc.session_type,
                    enc.user_id,
                    enc.agent_id,
                    enc.team_id,
                    enc.workflow_id,
                    *json_fields,
                    now,
                    now,
                    1,
                    len(enc.runs),
                ),
            )
            if enc.runs:
                db.executemany(
                    sql.insert_run,
                    [(sid, i, r.run_id, r.body.decode()) for i, r in enumerate(enc.runs)],
                )
        stored.append((created, now, version, start))
    return stored


def _refuse_write(
    db: sqlite3.Connection,
    sql: SQL,
    label: str,
    session_id: str,
    user_id: str | None,
    if_version: int | None,
) -> None:
    """The conditional UPDATE changed nothing: raise why, or return if the session is absent and
    may be created."""
    row = db.execute(sql.select_owner, (session_id,)).fetchone()
    if row is not None and row[0] != user_id:
        raise SessionOwnershipError(
            f"{label}: session {session_id!r} belongs to another user; it cannot be written as "
            f"user_id={user_id!r}",
            session_id=session_id,
        )
    actual = 0 if row is None else row[1]
    if row is not None or (if_version is not None and if_version != 0):
        expected = 0 if if_version is None else if_version
        raise SessionConflictError(
            f"{label}: session {session_id!r} is at version {actual}, not {expected}; "
            "read it again, re-apply the change and retry",
            session_id=session_id,
            expected=expected,
            actual=actual,
        )


def _optional_json(enc: common.EncodedSession) -> tuple[bytes | None, ...]:
    return (enc.agent_data, enc.team_data, enc.workflow_data, enc.metadata, enc.summary)


def _append(
    sql: SQL,
    label: str,
    session_id: str,
    user_id: str | None,
    runs: list[tuple[str, str]],
    session_data: str | None,
    db: sqlite3.Connection,
) -> tuple[Sequence[Any], int]:
    now = common.now_us()
    row = db.execute(
        sql.append_update, (session_data, now, len(runs), session_id, user_id, user_id)
    ).fetchone()
    if row is not None:
        start = row[q.RUN_COUNT] - len(runs)
    else:
        if db.execute(sql.select_owner, (session_id,)).fetchone() is not None:
            raise SessionOwnershipError(
                f"{label}: session {session_id!r} belongs to another user; user_id={user_id!r} "
                "cannot append to it",
                session_id=session_id,
            )
        start = 0
        row = db.execute(
            sql.append_insert, (session_id, user_id, session_data, now, now, len(runs))
        ).fetchone()
    if len(runs) == 1:
        db.execute(sql.insert_run, (session_id, start, *runs[0]))
    elif runs:
        db.executemany(
            sql.insert_run,
            [(session_id, start + i, run_id, body) for i, (run_id, body) in enumerate(runs)],
        )
    return row, start


def _delete(sql: SQL, session_id: str, user_id: str | None, db: sqlite3.Connection) -> bool:
    if user_id is None:
        deleted = db.execute(sql.delete_session, (session_id,)).rowcount
    else:
        deleted = db.execute(sql.delete_session_of, (session_id, user_id)).rowcount
    if deleted:
        db.execute(sql.delete_runs_from, (session_id, 0))
    return bool(deleted)


def _drop(sql: SQL, db: sqlite3.Connection) -> None:
    for statement in sql.drop:
        db.execute(statement)


# --- migrations -----------------------------------------------------------------------------------


class _MigrationTransaction:
    def __init__(self, connection: aiosqlite.Connection, sql: SQL, translate: Any) -> None:
        self._connection = connection
        self._sql = sql
        self._translate = translate

    async def applied(self) -> list[AppliedMigration]:
        try:
            return await conn.run(self._connection, partial(_history, self._sql))
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def apply(self, migration: Migration) -> datetime:
        now = common.now_us()
        try:
            await conn.run(self._connection, partial(_apply, self._sql, migration, now))
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        return common.from_us(now)


class _MigrationTarget:
    """SQLite's lock is the write lock: each step runs in its own BEGIN IMMEDIATE transaction."""

    def __init__(
        self,
        connection: aiosqlite.Connection,
        sql: SQL,
        label: str,
        translate: Any,
    ) -> None:
        self._connection = connection
        self._sql = sql
        self.label = label
        self._translate = translate

    async def applied(self) -> list[AppliedMigration]:
        # Read without the lock: the same query a transaction makes under it.
        return await _MigrationTransaction(self._connection, self._sql, self._translate).applied()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MigrationTransaction]:
        try:
            await conn.run(self._connection, partial(_begin_migration, self._sql))
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        try:
            yield _MigrationTransaction(self._connection, self._sql, self._translate)
        except BaseException:
            await asyncio.shield(conn.run(self._connection, _rollback))
            raise
        try:
            await asyncio.shield(conn.run(self._connection, _commit))
        except sqlite3.Error as exc:
            await asyncio.shield(conn.run(self._connection, _rollback))
            raise self._translate(exc) from exc


def _history(sql: SQL, db: sqlite3.Connection) -> list[AppliedMigration]:
    if db.execute(sql.history_exists, (sql.history_table,)).fetchone() is None:
        return []
    return [
        AppliedMigration(version, name, checksum, common.from_us(applied_at))
        for version, name, checksum, applied_at in db.execute(sql.select_history)
    ]


def _begin_migration(sql: SQL, db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(sql.create_history)
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _apply(sql: SQL, migration: Migration, now: int, db: sqlite3.Connection) -> None:
    for step in migration.steps:
        db.execute(step.format(table=sql.table))
    db.execute(sql.insert_history, (migration.version, migration.name, migration.checksum, now))


def _commit(db: sqlite3.Connection) -> None:
    db.execute("COMMIT")


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        db.execute("ROLLBACK")
