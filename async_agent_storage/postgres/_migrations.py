"""PostgreSQL schema migrations, and how the runner applies them here.

`MIGRATIONS` is append only: a released migration never changes (its checksum is recorded), a new
schema change is a new entry at the end. Placeholders: ``{table}`` and ``{runs}`` are the quoted,
schema-qualified sessions and runs tables; ``{name}`` is the bare table name, for index names (an
index lives in its table's schema); ``{merge_patch}`` the store's merge-patch function;
``{leases}`` the leases table and ``{take_lease}`` the function that takes a lease.

The migration lock is ``pg_advisory_xact_lock`` on a hash of the store's history table, taken
at the start of each step's transaction (`MigrationTarget.transaction`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from .._migrations import AppliedMigration, Migration
from . import _sql as q
from ._pool import Connection
from ._sql import SQL

__all__ = ["MIGRATIONS", "MigrationTarget", "advisory_key"]

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="create sessions and runs tables",
        steps=(
            # Ids compare byte-wise (COLLATE "C"): the listing order and the keyset cursors are
            # the same on every server, whatever its locale, and comparisons are cheaper.
            # run_count is the next run's seq: appends and tails never scan the history.
            """
            CREATE TABLE {table} (
                session_id    text COLLATE "C" PRIMARY KEY,
                session_type  text NOT NULL,
                user_id       text COLLATE "C",
                agent_id      text COLLATE "C",
                team_id       text COLLATE "C",
                workflow_id   text COLLATE "C",
                session_data  jsonb NOT NULL,
                agent_data    jsonb,
                team_data     jsonb,
                workflow_data jsonb,
                metadata      jsonb,
                summary       jsonb,
                created_at    timestamptz NOT NULL,
                updated_at    timestamptz NOT NULL,
                version       bigint NOT NULL,
                run_count     integer NOT NULL
            )
            """,
            """
            CREATE TABLE {runs} (
                session_id text COLLATE "C" NOT NULL,
                seq        integer NOT NULL,
                run_id     text NOT NULL,
                body       jsonb NOT NULL,
                PRIMARY KEY (session_id, seq)
            )
            """,
            """
            CREATE INDEX "{name}_user_idx" ON {table} (user_id, updated_at DESC, session_id DESC)
            """,
        ),
    ),
    Migration(
        version=2,
        name="index recency and entity ids",
        steps=(
            """
            CREATE INDEX "{name}_recent_idx" ON {table} (updated_at DESC, session_id DESC)
            """,
            """
            CREATE INDEX "{name}_agent_idx" ON {table} (agent_id, updated_at DESC, session_id DESC)
                WHERE agent_id IS NOT NULL
            """,
            """
            CREATE INDEX "{name}_team_idx" ON {table} (team_id, updated_at DESC, session_id DESC)
                WHERE team_id IS NOT NULL
            """,
            """
            CREATE INDEX "{name}_workflow_idx"
                ON {table} (workflow_id, updated_at DESC, session_id DESC)
                WHERE workflow_id IS NOT NULL
            """,
        ),
    ),
    Migration(
        version=3,
        name="merge patches and run ids",
        steps=(
            # RFC 7396 JSON merge patch, applied inside the database by append_runs(state_patch=).
            # Objects merge key by key, a null removes the key, anything else replaces.
            """
            CREATE OR REPLACE FUNCTION {merge_patch}(target jsonb, patch jsonb) RETURNS jsonb
            LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
            DECLARE
                result jsonb;
                key text;
                value jsonb;
            BEGIN
                IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
                    RETURN patch;
                END IF;
                IF target IS NULL OR jsonb_typeof(target) <> 'object' THEN
                    result := '{{}}'::jsonb;
                ELSE
                    result := target;
                END IF;
                FOR key, value IN SELECT * FROM jsonb_each(patch) LOOP
                    IF jsonb_typeof(value) = 'null' THEN
                        result := result - key;
                    ELSE
                        result := jsonb_set(
                            result, ARRAY[key], {merge_patch}(result -> key, value)
                        );
                    END IF;
                END LOOP;
                RETURN result;
            END
            $$
            """,
            # One id per run in a session. Ids written twice by earlier releases (a caller's
            # duplicates) keep the first; later ones get their position appended.
            """
            UPDATE {runs} r SET run_id = r.run_id || '~' || r.seq
            FROM (
                SELECT session_id, seq,
                       row_number() OVER (PARTITION BY session_id, run_id ORDER BY seq) AS n
                FROM {runs}
            ) d
            WHERE d.session_id = r.session_id AND d.seq = r.seq AND d.n > 1
            """,
            # Checked at the end of each statement (an upsert may move ids between positions).
            """
            ALTER TABLE {runs} ADD CONSTRAINT "{name}_runs_run_id"
                UNIQUE (session_id, run_id) DEFERRABLE INITIALLY IMMEDIATE
            """,
        ),
    ),
    Migration(
        version=4,
        name="run write times",
        steps=(
            # When the write that stored a run ran (its transaction's now(), the session's
            # updated_at then), for counting runs over time in the database (`activity`). Runs
            # stored before this step have none (NULL): they count in the totals, not in any time
            # bucket. A column without a default is added without rewriting the table.
            "ALTER TABLE {runs} ADD COLUMN created_at timestamptz",
            # Runs in a time range with their session and position, from the index alone.
            """
            CREATE INDEX "{name}_runs_created_idx" ON {runs} (created_at) INCLUDE (session_id, seq)
            """,
        ),
    ),
    Migration(
        version=5,
        name="session leases",
        steps=(
            # One row per session ever leased (store.lease): its holder, its token (grows by one
            # per lease, never reset: rows are taken over, never deleted) and its expiry, by the
            # server's clock. A session deleted and created again keeps its lease row.
            """
            CREATE TABLE {leases} (
                session_id text COLLATE "C" PRIMARY KEY,
                holder     text NOT NULL,
                token      bigint NOT NULL,
                expires_at timestamptz NOT NULL
            )
            """,
            # The token of the session's latest lease, written when a lease is taken: a write
            # fenced with an older token is refused by the write's own statement.
            "ALTER TABLE {table} ADD COLUMN lease_token bigint",
            # Taking a lease, in one round trip and one transaction (a function call is one
            # statement, which works through transaction poolers). Each statement of a VOLATILE
            # function takes a new snapshot: the UPDATE of the session, which runs after the
            # lease row is locked, sees every write that committed before, including a fenced
            # write that created the session while holding that row FOR SHARE (see `_writes`).
            # Returns ('granted', token, holder, expiry), ('busy', NULL, holder, expiry) or
            # ('not_owner', ...): the owner is checked first (IF_GIVEN: NULL checks none), so
            # another user learns nothing of the lease.
            """
            CREATE OR REPLACE FUNCTION {take_lease}(
                p_session_id text, p_user_id text, p_holder text, p_ttl double precision
            ) RETURNS TABLE (o_outcome text, o_token bigint, o_holder text, o_expires timestamptz)
            LANGUAGE plpgsql VOLATILE AS $$
            DECLARE
                v_owner text;
                v_token bigint;
                v_expires timestamptz;
            BEGIN
                IF p_user_id IS NOT NULL THEN
                    SELECT s.user_id INTO v_owner FROM {table} s WHERE s.session_id = p_session_id;
                    IF FOUND AND v_owner IS DISTINCT FROM p_user_id THEN
                        RETURN QUERY SELECT 'not_owner'::text, NULL::bigint, NULL::text,
                            NULL::timestamptz;
                        RETURN;
                    END IF;
                END IF;
                INSERT INTO {leases} AS l (session_id, holder, token, expires_at)
                VALUES (p_session_id, p_holder, 1,
                        clock_timestamp() + p_ttl * interval '1 second')
                ON CONFLICT (session_id) DO UPDATE SET
                    holder = excluded.holder, token = l.token + 1,
                    expires_at = excluded.expires_at
                WHERE l.expires_at <= clock_timestamp()
                RETURNING l.token, l.expires_at INTO v_token, v_expires;
                IF NOT FOUND THEN
                    RETURN QUERY SELECT 'busy'::text, NULL::bigint, l.holder, l.expires_at
                        FROM {leases} l WHERE l.session_id = p_session_id;
                    RETURN;
                END IF;
                UPDATE {table} s SET lease_token = greatest(coalesce(s.lease_token, 0), v_token)
                WHERE s.session_id = p_session_id;
                RETURN QUERY SELECT 'granted'::text, v_token, p_holder, v_expires;
            END
            $$
            """,
        ),
    ),
    Migration(
        version=6,
        name="session expiry",
        steps=(
            # When the session expires (NULL: never), by the server's clock. Every read leaves an
            # expired session out at once; purge_expired deletes it. A column without a default
            # is added without rewriting the table.
            "ALTER TABLE {table} ADD COLUMN expires_at timestamptz",
            # purge_expired finds the expired sessions from this index alone.
            """
            CREATE INDEX "{name}_expires_idx" ON {table} (expires_at)
                WHERE expires_at IS NOT NULL
            """,
            # Taking a lease (migration 5) treats an expired session as absent: its owner no
            # longer refuses anyone (the write that follows creates the session anew).
            """
            CREATE OR REPLACE FUNCTION {take_lease}(
                p_session_id text, p_user_id text, p_holder text, p_ttl double precision
            ) RETURNS TABLE (o_outcome text, o_token bigint, o_holder text, o_expires timestamptz)
            LANGUAGE plpgsql VOLATILE AS $$
            DECLARE
                v_owner text;
                v_token bigint;
                v_expires timestamptz;
            BEGIN
                IF p_user_id IS NOT NULL THEN
                    SELECT s.user_id INTO v_owner FROM {table} s WHERE s.session_id = p_session_id
                        AND (s.expires_at IS NULL OR s.expires_at > now());
                    IF FOUND AND v_owner IS DISTINCT FROM p_user_id THEN
                        RETURN QUERY SELECT 'not_owner'::text, NULL::bigint, NULL::text,
                            NULL::timestamptz;
                        RETURN;
                    END IF;
                END IF;
                INSERT INTO {leases} AS l (session_id, holder, token, expires_at)
                VALUES (p_session_id, p_holder, 1,
                        clock_timestamp() + p_ttl * interval '1 second')
                ON CONFLICT (session_id) DO UPDATE SET
                    holder = excluded.holder, token = l.token + 1,
                    expires_at = excluded.expires_at
                WHERE l.expires_at <= clock_timestamp()
                RETURNING l.token, l.expires_at INTO v_token, v_expires;
                IF NOT FOUND THEN
                    RETURN QUERY SELECT 'busy'::text, NULL::bigint, l.holder, l.expires_at
                        FROM {leases} l WHERE l.session_id = p_session_id;
                    RETURN;
                END IF;
                UPDATE {table} s SET lease_token = greatest(coalesce(s.lease_token, 0), v_token)
                WHERE s.session_id = p_session_id;
                RETURN QUERY SELECT 'granted'::text, v_token, p_holder, v_expires;
            END
            $$
            """,
        ),
    ),
    Migration(
        version=7,
        name="run bodies as text",
        steps=(
            # A run's JSON as text, kept as the store wrote it (with `_jsonb`'s encoding, as
            # before) and returned as it is: a read no longer converts every run from `jsonb`'s
            # binary form back to text, which was most of its server time (docs/benchmarks.md).
            # `text`, not `json`: the previous release's statements still run on it (they
            # compare bodies with `IS DISTINCT FROM`, which `json` cannot, and insert `jsonb`,
            # which text takes by assignment), so its processes keep working during a rolling
            # upgrade. Queries on run bodies cast them: `body::jsonb->>'key'`. This step
            # rewrites the runs table once, under an exclusive lock.
            "ALTER TABLE {runs} ALTER COLUMN body TYPE text USING body::text",
        ),
    ),
)


def advisory_key(sql: SQL) -> int:
    """The advisory lock of one store's schema: a signed 64-bit hash of its qualified name."""
    digest = hashlib.blake2b(
        f"async-agent-storage:{sql.history_table}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _history(connection: Connection, sql: SQL) -> list[AppliedMigration]:
    if not await connection.fetchval(q.TABLE_EXISTS, sql.history_table):
        return []
    return [
        AppliedMigration(row[0], row[1], row[2], row[3])
        for row in await connection.fetch(sql.select_history)
    ]


class _Transaction:
    def __init__(self, connection: Connection, sql: SQL) -> None:
        self._connection = connection
        self._sql = sql

    async def applied(self) -> list[AppliedMigration]:
        return await _history(self._connection, self._sql)

    async def apply(self, migration: Migration) -> datetime:
        names = self._sql.migration_names()
        for step in migration.steps:
            await self._connection.execute(step.format(**names))
        applied_at: datetime = await self._connection.fetchval(
            self._sql.insert_history, migration.version, migration.name, migration.checksum
        )
        return applied_at


class MigrationTarget:
    """Each step runs in its own transaction holding `pg_advisory_xact_lock` on the store's name:
    processes opening one database at once take turns, and each re-reads the history first."""

    def __init__(self, connection: Connection, sql: SQL, label: str) -> None:
        self._connection = connection
        self._sql = sql
        self.label = label
        self.changed = False  # a transaction committed (the schema may have changed)

    async def applied(self) -> list[AppliedMigration]:
        return await _history(self._connection, self._sql)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        connection, sql = self._connection, self._sql
        transaction = connection.transaction()
        await transaction.start()
        try:
            await connection.execute(q.ADVISORY_LOCK, advisory_key(sql))
            if not await connection.fetchval(q.SCHEMA_EXISTS, sql.schema):
                await connection.execute(sql.create_schema)
            await connection.execute(sql.create_history)
            yield _Transaction(connection, sql)
        except BaseException:
            with contextlib.suppress(Exception):  # a broken connection: asyncpg resets it
                await asyncio.shield(transaction.rollback())
            raise
        await asyncio.shield(transaction.commit())
        self.changed = True
