"""`PostgresStore`: sessions in PostgreSQL, on asyncpg.

Layout: a sessions table (one row per session, JSON fields as `jsonb`, times as `timestamptz`) and
a runs table keyed by ``(session_id, seq)``, so that appending runs and reading the last N runs
cost the same whatever the length of the history. See `_sql` for the statements, `_jsonb` for how
values `jsonb` would change (NUL in strings, some floats) are stored losslessly, and `_pool` for
the connections.

Each hot call (read, upsert, append_runs, delete_session) is one prepared statement, one round
trip; decoding happens after the connection is back in the pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Final, Never

import asyncpg

from .. import _codec as codec
from .._checks import (
    DEFAULT_TABLE_NAME,
    check_int_option,
    check_name,
    check_optional_seconds,
    check_seconds,
)
from .._encoding import EncodedAppend, EncodedSession, session_from_encoded
from .._leases import Busy, Grant
from .._paging import ListQuery, PageKey, page_key
from .._store import StoreBase
from ..errors import ConfigurationError
from ..models import Session
from . import _leases, _pool, _writes
from . import _sql as q
from ._errors import ERRORS
from ._jsonb import from_db, to_db
from ._migrations import MIGRATIONS, MigrationTarget
from ._pool import Connection, GatedPool
from ._rows import appended_session, retried_session, session_columns, session_from_row
from ._sql import SQL
from ._url import normalize_url, where

__all__ = ["PostgresStore", "normalize_url"]

_MIN_SERVER: Final = 120000  # PostgreSQL 12


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
    - `require_user_id`: refuse every call made without a `user_id` (`InvalidInputError`), for
      multi-tenant servers where no call may reach another user's sessions.
    - `slow_call_threshold`: seconds; a call that takes longer is logged at WARNING (None: off).
    """

    backend: ClassVar[str] = "postgresql"
    _errors = ERRORS

    def __init__(
        self,
        table_name: str = DEFAULT_TABLE_NAME,
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
        require_user_id: bool = False,
        slow_call_threshold: float | None = None,
        **unknown: Never,
    ) -> None:
        self._setup(
            migrations=MIGRATIONS,
            auto_upgrade_schema=auto_upgrade_schema,
            max_session_bytes=max_session_bytes,
            require_user_id=require_user_id,
            slow_call_threshold=slow_call_threshold,
            unknown=unknown,
        )
        self.table_name = check_name(table_name)
        self.schema = None if schema is None else check_name(schema, "schema")
        if pool is None and db_url is None:
            raise ConfigurationError("PostgresStore needs db_url (or an asyncpg pool=)")
        if pool is not None and not isinstance(pool, asyncpg.Pool):
            raise ConfigurationError(f"pool must be an asyncpg.Pool, got {type(pool).__name__}")
        self.db_url = None if db_url is None else normalize_url(db_url)
        self.pool_min_size = check_int_option("pool_min_size", pool_min_size, low=0, high=10_000)
        self.pool_max_size = check_int_option("pool_max_size", pool_max_size, low=1, high=10_000)
        if self.pool_min_size > self.pool_max_size:
            raise ConfigurationError(
                f"pool_min_size={pool_min_size} is larger than pool_max_size={pool_max_size}"
            )
        if pool is not None:
            self.pool_max_size = pool.get_max_size()
        self.acquire_timeout = check_seconds("acquire_timeout", acquire_timeout)
        self.command_timeout = check_optional_seconds("command_timeout", command_timeout)
        self.statement_cache_size = check_int_option(
            "statement_cache_size", statement_cache_size, low=0
        )
        self.max_inactive_connection_lifetime = check_seconds(
            "max_inactive_connection_lifetime", max_inactive_connection_lifetime, allow_zero=True
        )
        self._given_pool = pool
        self._where = "(pool)" if self.db_url is None else where(self.db_url)
        self._sql: SQL | None = None
        if self.schema is not None:
            self._sql = SQL.for_table(self.schema, self.table_name)
        self._pool: GatedPool | None = None
        self._lease_sql: _leases.LeaseSQL | None = None

    @property
    def label(self) -> str:
        """Names the store in messages: ``postgresql host:5432/db table public.agent_sessions``."""
        schema = self._sql.schema if self._sql is not None else (self.schema or "(search_path)")
        return f"postgresql {self._where} table {schema}.{self.table_name}"

    # --- connections ----------------------------------------------------------------------------

    async def _open_resources(self) -> None:
        pool = self._given_pool
        if pool is None:
            assert self.db_url is not None
            try:
                pool = await _pool.create_pool(
                    self.db_url,
                    min_size=self.pool_min_size,
                    max_size=self.pool_max_size,
                    max_inactive_connection_lifetime=self.max_inactive_connection_lifetime,
                    statement_cache_size=self.statement_cache_size,
                    command_timeout=self.command_timeout,
                    connect_timeout=self.acquire_timeout,
                )
            except TimeoutError as exc:
                raise self._connect_timed_out() from exc
        gated = GatedPool(
            pool,
            owned=pool is not self._given_pool,
            acquire_timeout=self.acquire_timeout,
            describe=lambda: self.label,
        )
        try:
            async with gated.connection() as connection:
                await self._resolve(connection)
        except BaseException:
            await gated.close()
            raise
        self._pool = gated

    def _connect_timed_out(self) -> Exception:
        return _pool.connect_timed_out(self.label, self.acquire_timeout)

    async def _close_resources(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

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

    def _statements(self) -> SQL:
        assert self._sql is not None, "resolved at open()"
        return self._sql

    def _lease_statements(self) -> _leases.LeaseSQL:
        if self._lease_sql is None:
            self._lease_sql = _leases.LeaseSQL(self._statements())
        return self._lease_sql

    @asynccontextmanager
    async def _migration_target(self) -> AsyncIterator[MigrationTarget]:
        """On a pooled connection; before `open()`, on the pool passed in or a connection made
        for the occasion."""
        if self._pool is not None:
            async with self._pool.connection() as connection:
                yield MigrationTarget(connection, await self._resolve(connection), self.label)
            return
        if self._given_pool is not None:
            async with self._given_pool.acquire(timeout=self.acquire_timeout) as connection:
                yield MigrationTarget(connection, await self._resolve(connection), self.label)
            return
        assert self.db_url is not None
        try:
            connection = await _pool.connect(
                self.db_url,
                connect_timeout=self.acquire_timeout,
                statement_cache_size=self.statement_cache_size,
            )
        except TimeoutError as exc:
            raise self._connect_timed_out() from exc
        try:
            yield MigrationTarget(connection, await self._resolve(connection), self.label)
        finally:
            await _pool.close_connection(connection)

    # --- the calls ------------------------------------------------------------------------------

    async def _read(
        self, session_id: str, user_id: str | None, last_runs: int | None
    ) -> Session | None:
        tail = None if last_runs is None else min(last_runs, q.MAX_INT4)
        row = await self._live(self._pool).run(
            _fetchrow, self._statements().read, session_id, user_id, tail, idempotent=True
        )
        if row is None:
            return None
        start = 0 if tail is None else max(0, row[q.RUN_COUNT] - tail)
        return session_from_row(row, row[q.RUNS], row[q.RUN_IDS], start)

    async def _upsert(self, session: EncodedSession, if_version: int | None) -> Session:
        sql = self._statements()
        args = (
            *session_columns(session),
            min(session.runs_offset, q.MAX_INT4),
            [r.run_id for r in session.runs],
            [to_db(r.body) for r in session.runs],
            if_version,
            session.fence,  # the UPDATE's fence; NULL: the lease token of a session UPSERT creates
        )
        statement = sql.update if if_version or session.fence is not None else sql.upsert
        row = await self._live(self._pool).run(
            _writes.write_session, sql, self.label, statement, args, session, if_version
        )
        created, updated, version, run_count = row
        return session_from_encoded(
            session,
            created_at=created,
            updated_at=updated,
            version=version,
            runs_offset=run_count - len(session.runs),
        )

    async def _upsert_many(self, sessions: list[EncodedSession]) -> list[Session]:
        ordered = sorted(sessions, key=lambda e: e.session_id)  # one lock order for every batch
        rows = await self._live(self._pool).run(
            _writes.write_many, self._statements(), self.label, ordered
        )
        stored = {row[0]: row for row in rows}
        result = []
        for enc in sessions:
            _, created, updated, version, run_count = stored[enc.session_id]
            result.append(
                session_from_encoded(
                    enc,
                    created_at=created,
                    updated_at=updated,
                    version=version,
                    runs_offset=run_count - len(enc.runs),
                )
            )
        return result

    async def _append(self, append: EncodedAppend) -> Session:
        done = await self._live(self._pool).run(
            _writes.append, self._statements(), self.label, append
        )
        if done.retried is not None:
            return retried_session(done.row, *done.retried)
        return appended_session(done.row, append, done.runs)

    async def _get_run(
        self, session_id: str, run_id: str, user_id: str | None
    ) -> dict[str, Any] | None:
        body = await self._live(self._pool).run(
            _fetchval, self._statements().get_run, session_id, run_id, user_id, idempotent=True
        )
        return None if body is None else from_db(body)

    async def _pop_runs(
        self, session_id: str, user_id: str | None, count: int
    ) -> list[dict[str, Any]]:
        bodies = await self._live(self._pool).run(
            _writes.pop, self._statements(), self.label, session_id, user_id, count
        )
        return from_db("[" + ",".join(bodies) + "]") if bodies else []

    async def _truncate_runs(self, session_id: str, user_id: str | None, keep_last: int) -> int:
        return await self._live(self._pool).run(
            _writes.truncate, self._statements(), self.label, session_id, user_id, keep_last
        )

    async def _count(self, query: ListQuery) -> int:
        statement, params = self._statements().listing(query, count=True)
        total: int = await self._live(self._pool).run(
            _fetchval, statement, *params, idempotent=True
        )
        return total

    async def _fork(
        self, session_id: str, new_session_id: str, at_run: str | None, user_id: str | None
    ) -> Session | None:
        done = await self._live(self._pool).run(
            _writes.fork,
            self._statements(),
            self.label,
            session_id,
            new_session_id,
            at_run,
            user_id,
        )
        if done is None:
            return None
        row, copied = done
        return session_from_row(row, None, None, copied)

    async def _delete(self, session_id: str, user_id: str | None) -> bool:
        deleted = await self._live(self._pool).run(
            _fetchval, self._statements().delete, session_id, user_id
        )
        return bool(deleted)

    async def _list_page(self, query: ListQuery) -> tuple[list[Session], PageKey | None]:
        statement, params = self._statements().listing(query)
        rows = await self._live(self._pool).run(_fetch, statement, *params, idempotent=True)
        more = query.limit is not None and len(rows) > query.limit
        if more:
            del rows[query.limit :]
        if query.include_runs:
            sessions = [session_from_row(row, row[q.RUNS], row[q.RUN_IDS], 0) for row in rows]
        else:  # no runs loaded: an `upsert` of such a session keeps its whole history
            sessions = [session_from_row(row, None, None, row[q.RUN_COUNT]) for row in rows]
        return sessions, page_key(sessions, more)

    async def _list_ids(self, query: ListQuery) -> list[str]:
        statement, params = self._statements().listing(query, ids_only=True)
        rows = await self._live(self._pool).run(_fetch, statement, *params, idempotent=True)
        return [row[0] for row in rows]

    async def _ping(self) -> None:
        await self._live(self._pool).run(_fetchval, "SELECT 1", idempotent=True)

    def _stats(self) -> dict[str, Any]:
        gated = self._live(self._pool)
        pool = gated.pool
        size, idle = pool.get_size(), pool.get_idle_size()
        return {
            "pool_max_size": gated.max_size,
            "pool_size": size,
            "pool_idle": idle,
            "pool_in_use": size - idle,
            "pool_waiting": gated.waiting,
            "connections_replaced": gated.replaced,
        }

    async def _drop(self) -> None:
        await self._live(self._pool).run(self._drop_tables)

    async def _take_lease(
        self, session_id: str, user_id: str | None, holder: str, ttl: float
    ) -> Grant | Busy:
        return await self._live(self._pool).run(
            _leases.take, self._lease_statements(), self.label, session_id, user_id, holder, ttl
        )

    async def _renew_lease(
        self, session_id: str, holder: str, token: int, ttl: float
    ) -> Grant | Busy:
        sql = self._lease_statements()
        return await self._live(self._pool).run(_leases.renew, sql, session_id, holder, token, ttl)

    async def _release_lease(self, session_id: str, holder: str, token: int) -> None:
        sql = self._lease_statements()
        await self._live(self._pool).run(_leases.release, sql, session_id, holder, token)

    async def _drop_tables(self, connection: Connection) -> None:
        async with connection.transaction():
            for statement in self._statements().drop:
                await connection.execute(statement)


async def _fetchrow(connection: Connection, statement: str, *args: Any) -> Any:
    return await connection.fetchrow(statement, *args)


async def _fetchval(connection: Connection, statement: str, *args: Any) -> Any:
    return await connection.fetchval(statement, *args)


async def _fetch(connection: Connection, statement: str, *args: Any) -> list[Any]:
    rows: list[Any] = await connection.fetch(statement, *args)
    return rows
