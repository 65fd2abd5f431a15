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

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Final, Unpack

import asyncpg

from .._activity import ActivityCounts, ActivityQuery
from .._checks import (
    DEFAULT_TABLE_NAME,
    check_int_option,
    check_name,
    check_optional_seconds,
    check_seconds,
)
from .._crypto import Reseal
from .._encoding import EncodedAppend, EncodedSession, RunSource, session_from_encoded
from .._leases import Busy, Grant
from .._paging import ListQuery, PageKey, page_key
from .._store import StoreBase, StoreOptions
from ..errors import ConfigurationError
from ..models import Session
from . import _leases, _pool, _writes
from . import _sql as q
from ._errors import ERRORS
from ._jsonb import from_db
from ._migrations import MIGRATIONS, MigrationTarget
from ._pool import Connection, GatedPool, fetch, fetchrow, fetchval
from ._replicas import ReplicaOptions, Routed, Router, open_router, write_position
from ._rows import (
    activity_counts,
    appended_session,
    retried_session,
    session_from_row,
    written_sessions,
)
from ._sql import SQL
from ._url import normalize_url, where

__all__ = ["PostgresStore", "normalize_url"]

# The most sessions whose last row version a store remembers (`PostgresStore._seen`).
_ROW_VERSIONS: Final = 4096


class PostgresStore(StoreBase):
    """Session storage in PostgreSQL: production, many app replicas, one database.

    ```python
    store = PostgresStore(db_url="postgresql://ai:ai@localhost:5532/ai", pool_max_size=20)
    async with store:
        session = await store.read("s1", user_id="u1", last_runs=20)
    ```

    Options (beside those every store takes: `StoreOptions`):

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
    - `statement_cache_size`: named prepared statements kept per connection (default 100, 0
      with `pooler`); with 0 a call takes two round trips instead of one.
    - `pooler`: ``"transaction"`` behind a pooler in transaction mode (PgBouncer): no named
      prepared statements (>0 only with PgBouncer 1.21+'s ``max_prepared_statements``), no
      session state; the migration lock is transaction-scoped. None: a server.
    - `replica_urls`: streaming replicas that take listings and reads (see `_replicas` and
      docs/scaling.md); one that is down or lags is skipped, never an error. Writes then take
      one more round trip (the primary's WAL position).
    - `read_your_writes`: a read of a session this store wrote sees that write (a replica that
      applied it, else the primary); False: any read may be as stale as its replica.
    - `replica_max_wait`: seconds such a read may wait for a replica (0: never wait).
    - `replica_timeout`: seconds to get a replica connection before reading the primary.
    - `max_inactive_connection_lifetime`: seconds an idle pooled connection is kept (a call's
      connection is kept for the next call, and goes back to the pool after a second unused).
    - `pool`: an asyncpg pool of your own, used instead (its sizes and timeouts apply) and never
      closed by the store. It needs no codec or setup: JSON crosses the wire as text.
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
        statement_cache_size: int | None = None,
        pooler: str | None = None,
        replica_urls: Sequence[str] = (),
        read_your_writes: bool = True,
        replica_max_wait: float = 0.05,
        replica_timeout: float = 2.0,
        max_inactive_connection_lifetime: float = 300.0,
        pool: asyncpg.Pool | None = None,
        **options: Unpack[StoreOptions],
    ) -> None:
        self._setup(migrations=MIGRATIONS, options=options)
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
        if pooler not in (None, "transaction"):
            raise ConfigurationError(f'pooler must be None or "transaction", got {pooler!r}')
        self.pooler = pooler
        self.statement_cache_size = check_int_option(
            "statement_cache_size",
            (0 if pooler else 100) if statement_cache_size is None else statement_cache_size,
            low=0,
        )
        self.replicas = ReplicaOptions.checked(
            replica_urls, read_your_writes, replica_max_wait, replica_timeout
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
        # The row version (xmin) this store last read or wrote of each recent session: an upsert
        # of runs read at another one would not be written without them (`_writes.upsert`).
        self._row_versions: dict[str, str] = {}
        self._router: Router | None = None
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
                    connect_timeout=self.acquire_timeout,
                    **self._pool_settings(),
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
            if self.replicas.urls:
                self._router = await open_router(
                    gated, self.replicas, lambda: self.label, **self._pool_settings()
                )
        except BaseException:
            await gated.close()
            raise
        self._pool = gated

    def _pool_settings(self) -> dict[str, Any]:
        """What the primary's pool and each replica's share."""
        return {
            "max_size": self.pool_max_size,
            "max_inactive_connection_lifetime": self.max_inactive_connection_lifetime,
            "statement_cache_size": self.statement_cache_size,
            "command_timeout": self.command_timeout,
        }

    def _connect_timed_out(self) -> Exception:
        return _pool.connect_timed_out(self.label, self.acquire_timeout)

    async def _close_resources(self) -> None:
        pool, self._pool = self._pool, None
        router, self._router = self._router, None
        if router is not None:
            await router.close()
        if pool is not None:
            await pool.close()

    def _reads(self, session_id: str | None) -> GatedPool | Routed:
        """Where a read runs: the primary, or (with replicas) the router, for `session_id`
        (None: a listing)."""
        if self._router is None:
            return self._live(self._pool)
        return Routed(self._router, session_id, None)

    def _writes(self, *session_ids: str) -> GatedPool | Routed:
        """Where a write runs: the primary (with replicas, its position is recorded)."""
        pool = self._live(self._pool)
        if self._router is None:
            return pool
        return Routed(self._router, None, session_ids)

    async def _resolve(self, connection: Connection) -> SQL:
        """Check the server once and fix the schema the statements name."""
        schema = await _pool.check_server(connection, self.label)
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
                target = MigrationTarget(connection, await self._resolve(connection), self.label)
                yield target
                if self._router is not None and target.changed:  # replicas: after the change
                    self._router.floor = await write_position(connection)
            return
        if self._given_pool is not None:
            async with self._given_pool.acquire(timeout=self.acquire_timeout) as connection:
                yield MigrationTarget(connection, await self._resolve(connection), self.label)
            return
        assert self.db_url is not None
        async with _pool.one_connection(
            self.db_url, self.label, self.acquire_timeout, self.statement_cache_size
        ) as connection:
            yield MigrationTarget(connection, await self._resolve(connection), self.label)

    # --- the calls ------------------------------------------------------------------------------

    async def _read(
        self, session_id: str, user_id: str | None, last_runs: int | None
    ) -> Session | None:
        tail = None if last_runs is None else min(last_runs, q.MAX_INT4)
        row = await self._reads(session_id).run(
            fetchrow, self._statements().read, session_id, user_id, tail, idempotent=True
        )
        if row is None:
            return None
        start = 0 if tail is None else max(0, row[q.RUN_COUNT] - tail)
        self._seen(session_id, row[q.ROW_VERSION])
        return session_from_row(row, row[q.RUNS], row[q.RUN_IDS], start, self.token)

    def _seen(self, session_id: str, row_version: str | None) -> None:
        """Note the row version of a session as last read or written here (None: unknown)."""
        versions = self._row_versions
        versions.pop(session_id, None)
        if row_version is None:
            return
        versions[session_id] = row_version
        if len(versions) > _ROW_VERSIONS:
            del versions[next(iter(versions))]  # the least recently seen

    async def _upsert(self, session: EncodedSession, if_version: int | None) -> Session:
        row = await self._writes(session.session_id).run(
            _writes.upsert,
            self._statements(),
            self.label,
            session,
            if_version,
            self.token,
            self._row_versions.get(session.session_id),
        )
        created, updated, version, run_count, row_version = row
        self._seen(session.session_id, row_version)
        start = run_count - len(session.runs)
        return session_from_encoded(
            session,
            created_at=created,
            updated_at=updated,
            version=version,
            runs_offset=start,
            # The row version written: an upsert of the returned session need not send its
            # runs again (`_writes.upsert`).
            source=RunSource(self.token, session.session_id, row_version, version, start),
        )

    async def _upsert_many(self, sessions: list[EncodedSession], returning: bool) -> list[Session]:
        ordered = sorted(sessions, key=lambda e: e.session_id)  # one lock order for every batch
        rows = await self._writes(*(e.session_id for e in ordered)).run(
            _writes.write_many, self._statements(), self.label, ordered
        )
        return written_sessions(sessions, rows) if returning else []

    async def _append(self, append: EncodedAppend) -> Session:
        self._seen(append.session_id, None)  # this append makes another row version
        done = await self._writes(append.session_id).run(
            _writes.append, self._statements(), self.label, append
        )
        if done.retried is not None:
            return retried_session(done.row, *done.retried)
        return appended_session(done.row, append, done.runs)

    async def _get_run(
        self, session_id: str, run_id: str, user_id: str | None
    ) -> dict[str, Any] | None:
        body = await self._reads(session_id).run(
            fetchval, self._statements().get_run, session_id, run_id, user_id, idempotent=True
        )
        return None if body is None else from_db(body)

    async def _pop_runs(
        self, session_id: str, user_id: str | None, count: int
    ) -> list[dict[str, Any]]:
        bodies = await self._writes(session_id).run(
            _writes.pop, self._statements(), self.label, session_id, user_id, count
        )
        return from_db("[" + ",".join(bodies) + "]") if bodies else []

    async def _truncate_runs(self, session_id: str, user_id: str | None, keep_last: int) -> int:
        return await self._writes(session_id).run(
            _writes.truncate, self._statements(), self.label, session_id, user_id, keep_last
        )

    async def _count(self, query: ListQuery) -> int:
        statement, params = self._statements().listing(query, count=True)
        total: int = await self._reads(None).run(fetchval, statement, *params, idempotent=True)
        return total

    async def _usage(self) -> tuple[int, int, dict[str, int]]:
        sql = self._statements()
        names = [sql.name + suffix for suffix in ("", "_runs", "_migrations", "_leases")]
        pool = self._reads(None)
        sessions, runs = await pool.run(fetchrow, sql.usage_counts, idempotent=True)
        rows = await pool.run(fetch, q.USAGE_BYTES, sql.schema, names, idempotent=True)
        return int(sessions), int(runs), {row[0]: int(row[1]) for row in rows}

    async def _fork(
        self, session_id: str, new_session_id: str, at_run: str | None, user_id: str | None
    ) -> Session | None:
        done = await self._writes(new_session_id).run(
            _writes.fork,
            self._statements(),
            self.label,
            session_id,
            new_session_id,
            at_run,
            user_id,
            self._default_expiry.ttl_us,
        )
        if done is None:
            return None
        row, copied = done
        return session_from_row(row, None, None, copied)

    async def _delete(self, session_id: str, user_id: str | None) -> bool:
        deleted = await self._writes(session_id).run(
            fetchval, self._statements().delete, session_id, user_id
        )
        return bool(deleted)

    async def _list_page(self, query: ListQuery) -> tuple[list[Session], PageKey | None]:
        statement, params = self._statements().listing(query)
        rows = await self._reads(None).run(fetch, statement, *params, idempotent=True)
        more = query.limit is not None and len(rows) > query.limit
        if more:
            del rows[query.limit :]
        if query.include_runs:
            sessions = []
            for row in rows:
                self._seen(row[q.SID], row[q.ROW_VERSION])
                sessions.append(session_from_row(row, row[q.RUNS], row[q.RUN_IDS], 0, self.token))
        else:  # no runs loaded: an `upsert` of such a session keeps its whole history
            sessions = [session_from_row(row, None, None, row[q.RUN_COUNT]) for row in rows]
        return sessions, page_key(sessions, more)

    async def _list_ids(self, query: ListQuery) -> list[str]:
        statement, params = self._statements().listing(query, ids_only=True)
        rows = await self._reads(None).run(fetch, statement, *params, idempotent=True)
        return [row[0] for row in rows]

    async def _activity(self, query: ActivityQuery) -> ActivityCounts:
        statement, params = self._statements().activity(query)
        rows = await self._reads(None).run(fetch, statement, *params, idempotent=True)
        return activity_counts(rows, query)

    async def _ping(self) -> None:
        await self._live(self._pool).run(fetchval, "SELECT 1", idempotent=True)

    def _stats(self) -> dict[str, Any]:
        gated = self._live(self._pool)
        pool = gated.pool
        size, idle = pool.get_size(), pool.get_idle_size() + gated.kept
        return {
            "pool_max_size": gated.max_size,
            "pool_size": size,
            "pool_idle": idle,
            "pool_in_use": size - idle,
            "pool_waiting": gated.waiting,
            "connections_replaced": gated.replaced,
            **({} if self._router is None else self._router.stats()),
        }

    async def _drop(self) -> None:
        await self._live(self._pool).run(_writes.drop_tables, self._statements())

    async def _purge_expired(self, batch: int) -> tuple[int, int]:
        sql = self._statements()
        return await self._live(self._pool).run(_writes.delete_batch, sql, None, batch)

    async def _delete_user(self, user_id: str, batch: int) -> tuple[int, int]:
        sql = self._statements()
        return await self._live(self._pool).run(_writes.delete_batch, sql, user_id, batch)

    async def _reseal(self, reseal: Reseal) -> bool:
        return await self._writes(reseal.session_id).run(_writes.reseal, self._statements(), reseal)

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
