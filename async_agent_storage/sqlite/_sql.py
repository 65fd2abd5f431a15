"""The SQLite driver's SQL, as named templates formatted once per store with its (checked) names.

Values are always bound (``?``); the only text spliced in is the table name, which
`_checks.check_name` has validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._paging import ListQuery

COLUMNS = (
    "session_id, session_type, user_id, agent_id, team_id, workflow_id, session_data, agent_data, "
    "team_data, workflow_data, metadata, summary, created_at, updated_at, version, run_count"
)
# JSON comes back as bytes (CAST AS BLOB): orjson reads UTF-8 bytes directly, which saves making a
# str of every document only to encode it again.
SELECT_COLUMNS = (
    "session_id, session_type, user_id, agent_id, team_id, workflow_id, "
    "CAST(session_data AS BLOB), CAST(agent_data AS BLOB), CAST(team_data AS BLOB), "
    "CAST(workflow_data AS BLOB), CAST(metadata AS BLOB), CAST(summary AS BLOB), "
    "created_at, updated_at, version, run_count"
)
# Positions in a row selected with SELECT_COLUMNS.
SID, TYPE, USER, AGENT, TEAM, WORKFLOW, DATA = 0, 1, 2, 3, 4, 5, 6
CREATED, UPDATED, VERSION, RUN_COUNT = 12, 13, 14, 15

_SELECT_SESSION = 'SELECT {select} FROM "{t}" WHERE session_id = ?'
_SELECT_OWNER = 'SELECT user_id, version, run_count, created_at FROM "{t}" WHERE session_id = ?'
_SELECT_RUNS_FROM = (
    'SELECT CAST(body AS BLOB) FROM "{t}_runs" WHERE session_id = ? AND seq >= ? ORDER BY seq'
)
_INSERT_SESSION = """
    INSERT INTO "{t}" ({cols})
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# Ownership and if_version are checked by the UPDATE itself; no row back means one of them failed
# (or the session does not exist) and only then is the row read to say which. Runs before the
# session's `runs_offset` were not loaded by the caller and are kept: run_count restarts from
# min(stored run_count, runs_offset).
_UPDATE_SESSION = """
    UPDATE "{t}" SET session_type = ?, agent_id = ?, team_id = ?, workflow_id = ?,
        session_data = ?, agent_data = ?, team_data = ?, workflow_data = ?, metadata = ?,
        summary = ?, updated_at = ?, version = version + 1, run_count = min(run_count, ?) + ?
    WHERE session_id = ? AND user_id IS ? AND (? IS NULL OR version = ?)
    RETURNING created_at, version, run_count
"""
_APPEND_INSERT = """
    INSERT INTO "{t}" ({cols})
    VALUES (?, 'agent', ?, NULL, NULL, NULL, coalesce(?, '{{}}'), NULL, NULL, NULL, NULL, NULL,
            ?, ?, 1, ?)
    RETURNING {select}
"""
_APPEND_UPDATE = """
    UPDATE "{t}" SET session_data = coalesce(?, session_data), updated_at = ?,
        version = version + 1, run_count = run_count + ?
    WHERE session_id = ? AND (? IS NULL OR user_id = ?)
    RETURNING {select}
"""
_INSERT_RUN = 'INSERT INTO "{t}_runs" (session_id, seq, run_id, body) VALUES (?, ?, ?, ?)'
# Rewriting a run that did not change costs a lookup, not a page write.
_UPSERT_RUN = """
    INSERT INTO "{t}_runs" (session_id, seq, run_id, body) VALUES (?, ?, ?, ?)
    ON CONFLICT (session_id, seq) DO UPDATE SET run_id = excluded.run_id, body = excluded.body
    WHERE run_id IS NOT excluded.run_id OR body IS NOT excluded.body
"""
_DELETE_RUNS_FROM = 'DELETE FROM "{t}_runs" WHERE session_id = ? AND seq >= ?'
_DELETE_SESSION = 'DELETE FROM "{t}" WHERE session_id = ?'
_DELETE_SESSION_OF = 'DELETE FROM "{t}" WHERE session_id = ? AND user_id = ?'
_HISTORY_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
_CREATE_HISTORY = """
    CREATE TABLE IF NOT EXISTS "{t}_migrations" (
        version    INTEGER PRIMARY KEY NOT NULL,
        name       TEXT NOT NULL,
        checksum   TEXT NOT NULL,
        applied_at INTEGER NOT NULL
    )
"""
_SELECT_HISTORY = (
    'SELECT version, name, checksum, applied_at FROM "{t}_migrations" ORDER BY version'
)
_INSERT_HISTORY = (
    'INSERT INTO "{t}_migrations" (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)'
)
_SCHEMA_VERSION = 'SELECT coalesce(max(version), 0) FROM "{t}_migrations"'


@dataclass(frozen=True, slots=True)
class SQL:
    """Every statement of one store, formatted for its table."""

    table: str
    history_table: str
    select_session: str
    select_owner: str
    select_runs_from: str
    insert_session: str
    update_session: str
    append_insert: str
    append_update: str
    insert_run: str
    upsert_run: str
    delete_runs_from: str
    delete_session: str
    delete_session_of: str
    history_exists: str
    create_history: str
    select_history: str
    insert_history: str
    schema_version: str
    drop: tuple[str, ...]

    @classmethod
    def for_table(cls, table: str) -> SQL:
        def f(template: str) -> str:
            return template.format(t=table, cols=COLUMNS, select=SELECT_COLUMNS)

        return cls(
            table=table,
            history_table=f"{table}_migrations",
            select_session=f(_SELECT_SESSION),
            select_owner=f(_SELECT_OWNER),
            select_runs_from=f(_SELECT_RUNS_FROM),
            insert_session=f(_INSERT_SESSION),
            update_session=f(_UPDATE_SESSION),
            append_insert=f(_APPEND_INSERT),
            append_update=f(_APPEND_UPDATE),
            insert_run=f(_INSERT_RUN),
            upsert_run=f(_UPSERT_RUN),
            delete_runs_from=f(_DELETE_RUNS_FROM),
            delete_session=f(_DELETE_SESSION),
            delete_session_of=f(_DELETE_SESSION_OF),
            history_exists=_HISTORY_EXISTS,
            create_history=f(_CREATE_HISTORY),
            select_history=f(_SELECT_HISTORY),
            insert_history=f(_INSERT_HISTORY),
            schema_version=f(_SCHEMA_VERSION),
            drop=(
                f('DROP TABLE IF EXISTS "{t}_runs"'),
                f('DROP TABLE IF EXISTS "{t}"'),
                f('DROP TABLE IF EXISTS "{t}_migrations"'),
            ),
        )

    def listing(self, query: ListQuery, *, ids_only: bool = False) -> tuple[str, list[Any]]:
        """A keyset listing: filters, then `(updated_at, session_id) < cursor`, newest first.
        Fetches one row more than the limit so the caller knows whether a next page exists."""
        where: list[str] = []
        params: list[Any] = []
        if query.user_id is not None:
            where.append("user_id = ?")
            params.append(query.user_id)
        if query.session_type is not None:
            where.append("session_type = ?")
            params.append(query.session_type)
        if query.entity_id is not None:
            where.append("(agent_id = ? OR team_id = ? OR workflow_id = ?)")
            params += [query.entity_id] * 3
        if query.updated_after_us is not None:
            where.append("updated_at > ?")
            params.append(query.updated_after_us)
        if query.after is not None:
            where.append("(updated_at, session_id) < (?, ?)")
            params += list(query.after)
        sql = f'SELECT {"session_id" if ids_only else SELECT_COLUMNS} FROM "{self.table}"'
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, session_id DESC"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit + 1)
        return sql, params
