"""SQLite schema migrations, and how the runner applies them here.

`MIGRATIONS` is append only: a released migration never changes (its checksum is recorded), a new
schema change is a new entry at the end. ``{table}`` is the store's table name.

The migration lock is SQLite's write lock: each step runs in its own ``BEGIN IMMEDIATE``
transaction, which also re-reads the history (`MigrationTarget.transaction`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial

from .._migrations import AppliedMigration, Migration
from .._time import from_us, now_us
from . import _connection as conn
from ._sql import SQL

__all__ = ["MIGRATIONS", "MigrationTarget"]

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="create sessions and runs tables",
        steps=(
            # JSON fields are TEXT that SQLite's JSON1 functions read; times are epoch microseconds.
            # run_count is the next run's seq: appends and tails never scan the history.
            """
            CREATE TABLE "{table}" (
                session_id    TEXT PRIMARY KEY NOT NULL,
                session_type  TEXT NOT NULL,
                user_id       TEXT,
                agent_id      TEXT,
                team_id       TEXT,
                workflow_id   TEXT,
                session_data  TEXT NOT NULL,
                agent_data    TEXT,
                team_data     TEXT,
                workflow_data TEXT,
                metadata      TEXT,
                summary       TEXT,
                created_at    INTEGER NOT NULL,
                updated_at    INTEGER NOT NULL,
                version       INTEGER NOT NULL,
                run_count     INTEGER NOT NULL
            )
            """,
            """
            CREATE TABLE "{table}_runs" (
                session_id TEXT NOT NULL,
                seq        INTEGER NOT NULL,
                run_id     TEXT NOT NULL,
                body       TEXT NOT NULL,
                PRIMARY KEY (session_id, seq)
            ) WITHOUT ROWID
            """,
            """
            CREATE INDEX "{table}_user_recent"
                ON "{table}" (user_id, updated_at DESC, session_id DESC)
            """,
        ),
    ),
    Migration(
        version=2,
        name="index recency and entity ids",
        steps=(
            """
            CREATE INDEX "{table}_recent" ON "{table}" (updated_at DESC, session_id DESC)
            """,
            """
            CREATE INDEX "{table}_agent_recent"
                ON "{table}" (agent_id, updated_at DESC, session_id DESC)
                WHERE agent_id IS NOT NULL
            """,
            """
            CREATE INDEX "{table}_team_recent"
                ON "{table}" (team_id, updated_at DESC, session_id DESC)
                WHERE team_id IS NOT NULL
            """,
            """
            CREATE INDEX "{table}_workflow_recent"
                ON "{table}" (workflow_id, updated_at DESC, session_id DESC)
                WHERE workflow_id IS NOT NULL
            """,
        ),
    ),
    Migration(
        version=3,
        name="runs in a rowid table",
        steps=(
            # A WITHOUT ROWID table keeps at most ~1 KB of a row in its b-tree page: a typical run
            # (1-4 KB of messages) spilled to an overflow page, which made the file 2.5x larger
            # and every append and tail read touch twice the pages. A rowid table keeps up to
            # ~4 KB in the page; the (session_id, seq) key becomes a unique index.
            """
            CREATE TABLE "{table}_runs_v3" (
                session_id TEXT NOT NULL,
                seq        INTEGER NOT NULL,
                run_id     TEXT NOT NULL,
                body       TEXT NOT NULL
            )
            """,
            """
            INSERT INTO "{table}_runs_v3" (session_id, seq, run_id, body)
            SELECT session_id, seq, run_id, body FROM "{table}_runs" ORDER BY session_id, seq
            """,
            'DROP TABLE "{table}_runs"',
            'ALTER TABLE "{table}_runs_v3" RENAME TO "{table}_runs"',
            'CREATE UNIQUE INDEX "{table}_runs_key" ON "{table}_runs" (session_id, seq)',
        ),
    ),
    Migration(
        version=4,
        name="run ids and row incarnations",
        steps=(
            # A run is found by its id (get_run, and the retry check of append_runs).
            'CREATE INDEX "{table}_runs_id" ON "{table}_runs" (session_id, run_id)',
            # A new id each time a session row is created: a session deleted and created again
            # is another incarnation, whose runs a copy read from the old one must not skip.
            'ALTER TABLE "{table}" ADD COLUMN incarnation TEXT',
        ),
    ),
    Migration(
        version=5,
        name="run write times",
        steps=(
            # When the write that stored a run ran (epoch microseconds), for counting runs over
            # time in the database (`activity`). Runs stored before this step have none (NULL):
            # they count in the totals, not in any time bucket. Adding a column rewrites no row.
            'ALTER TABLE "{table}_runs" ADD COLUMN created_at INTEGER',
            # Runs in a time range, and their sessions, from the index alone.
            'CREATE INDEX "{table}_runs_created" ON "{table}_runs" (created_at, session_id)',
            # A run's session's owner and entity from an index, not the session's row (a third
            # less time per run counted); appends change none of these columns.
            """
            CREATE INDEX "{table}_entity"
                ON "{table}" (session_id, user_id, agent_id, team_id, workflow_id)
            """,
        ),
    ),
    Migration(
        version=6,
        name="session leases",
        steps=(
            # One row per session ever leased (store.lease): its holder, its token (grows by one
            # per lease, never reset: rows are taken over, never deleted) and its expiry (epoch
            # microseconds). A session deleted and created again keeps its lease row.
            """
            CREATE TABLE "{table}_leases" (
                session_id TEXT PRIMARY KEY NOT NULL,
                holder     TEXT NOT NULL,
                token      INTEGER NOT NULL,
                expires_at INTEGER NOT NULL
            ) WITHOUT ROWID
            """,
            # The token of the session's latest lease, written when a lease is taken: a write
            # fenced with an older token is refused by the write's own statement.
            'ALTER TABLE "{table}" ADD COLUMN lease_token INTEGER',
        ),
    ),
    Migration(
        version=7,
        name="session expiry",
        steps=(
            # When the session expires (epoch microseconds; NULL: never). Every read leaves an
            # expired session out at once; purge_expired deletes it. Adding a column rewrites no
            # row.
            'ALTER TABLE "{table}" ADD COLUMN expires_at INTEGER',
            # purge_expired finds the expired sessions from this index alone.
            """
            CREATE INDEX "{table}_expires" ON "{table}" (expires_at)
                WHERE expires_at IS NOT NULL
            """,
            # activity's runs-per-bucket count joins each run's session on this index: it now
            # needs the expiry too, so that it stays an index-only lookup.
            'DROP INDEX "{table}_entity"',
            """
            CREATE INDEX "{table}_entity"
                ON "{table}" (session_id, user_id, agent_id, team_id, workflow_id, expires_at)
            """,
        ),
    ),
)


class _Transaction:
    def __init__(self, connection: conn.ConnectionThread, sql: SQL) -> None:
        self._connection = connection
        self._sql = sql

    async def applied(self) -> list[AppliedMigration]:
        return await conn.run(self._connection, partial(_history, self._sql))

    async def apply(self, migration: Migration) -> datetime:
        now = now_us()
        await conn.run(self._connection, partial(_apply, self._sql, migration, now))
        return from_us(now)


class MigrationTarget:
    """The runner's view of one store's tables on one connection."""

    def __init__(self, connection: conn.ConnectionThread, sql: SQL, label: str) -> None:
        self._connection = connection
        self._sql = sql
        self.label = label

    async def applied(self) -> list[AppliedMigration]:
        # Without the lock: the same query a transaction makes under it.
        return await _Transaction(self._connection, self._sql).applied()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        await conn.run(self._connection, partial(_begin, self._sql))
        try:
            yield _Transaction(self._connection, self._sql)
        except BaseException:
            await asyncio.shield(conn.run(self._connection, _rollback))
            raise
        try:
            await asyncio.shield(conn.run(self._connection, _commit))
        except sqlite3.Error:
            await asyncio.shield(conn.run(self._connection, _rollback))
            raise


def _history(sql: SQL, db: sqlite3.Connection) -> list[AppliedMigration]:
    if db.execute(sql.history_exists, (sql.history_table,)).fetchone() is None:
        return []
    return [
        AppliedMigration(version, name, checksum, from_us(applied_at))
        for version, name, checksum, applied_at in db.execute(sql.select_history)
    ]


def _begin(sql: SQL, db: sqlite3.Connection) -> None:
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
