"""SQLite schema migrations. Append only: a released migration never changes (its checksum is
recorded), a new schema change is a new entry at the end. ``{table}`` is the store's table name."""

from __future__ import annotations

from ..migrations import Migration

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
)
