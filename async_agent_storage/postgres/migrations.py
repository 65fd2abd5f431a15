"""PostgreSQL schema migrations. Append only: a released migration never changes (its checksum is
recorded), a new schema change is a new entry at the end.

Placeholders: ``{table}`` and ``{runs}`` are the quoted, schema-qualified sessions and runs tables;
``{name}`` is the bare table name, for index names (an index lives in its table's schema).
"""

from __future__ import annotations

from ..migrations import Migration

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
)
