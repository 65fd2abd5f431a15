"""The SQLite driver's calls: plain functions of a `sqlite3.Connection` (their last argument),
run on the connection's thread by `_connection`, inside the transaction of their batch.

Ownership and `if_version` are part of each write's conditions; when a write changes nothing,
`_rules.decide` says why (or that the session may be created).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .._encoding import EncodedSession
from .._paging import ListQuery
from .._rules import RETRY, OwnerRule, Stored, Verdict, decide
from .._time import now_us
from ..models import Session
from ._rows import StoredRow, run_count, session_from_row
from ._sql import SID, SQL, USER

__all__ = [
    "append",
    "delete",
    "drop",
    "list_ids",
    "list_sessions",
    "read_session",
    "upsert",
]


def read_session(
    sql: SQL, session_id: str, user_id: str | None, last_runs: int | None, db: sqlite3.Connection
) -> Session | None:
    row = db.execute(sql.select_session, (session_id,)).fetchone()
    if row is None or (user_id is not None and row[USER] != user_id):
        return None
    count = run_count(row)
    start = 0 if last_runs is None else max(0, count - last_runs)
    bodies = []
    if start < count:
        bodies = [r[0] for r in db.execute(sql.select_runs_from, (session_id, start))]
    return session_from_row(row, bodies, start)


def list_sessions(sql: SQL, query: ListQuery, db: sqlite3.Connection) -> tuple[list[Session], bool]:
    statement, params = sql.listing(query)
    rows = db.execute(statement, params).fetchall()
    more = query.limit is not None and len(rows) > query.limit
    if more:
        del rows[query.limit :]
    sessions = []
    for row in rows:
        if query.include_runs:
            bodies = [r[0] for r in db.execute(sql.select_runs_from, (row[SID], 0))]
            sessions.append(session_from_row(row, bodies, 0))
        else:  # no runs loaded: an `upsert` of this session keeps its whole history
            sessions.append(session_from_row(row, [], run_count(row)))
    return sessions, more


def list_ids(sql: SQL, query: ListQuery, db: sqlite3.Connection) -> list[str]:
    statement, params = sql.listing(query, ids_only=True)
    return [row[0] for row in db.execute(statement, params)]


def _stored(sql: SQL, session_id: str, db: sqlite3.Connection) -> Stored | None:
    row = db.execute(sql.select_owner, (session_id,)).fetchone()
    return None if row is None else Stored(row[0], row[1])


def upsert(
    sql: SQL,
    label: str,
    sessions: list[EncodedSession],
    if_version: int | None,
    db: sqlite3.Connection,
) -> list[StoredRow]:
    now = now_us()
    return [_upsert_one(sql, label, enc, if_version, now, db) for enc in sessions]


def _upsert_one(
    sql: SQL,
    label: str,
    enc: EncodedSession,
    if_version: int | None,
    now: int,
    db: sqlite3.Connection,
) -> StoredRow:
    sid = enc.session_id
    json_fields = (
        enc.session_data.decode(),
        *(None if f is None else f.decode() for f in enc.optional_json()),
    )
    for _ in range(RETRY.attempts):  # under the write lock: once, in practice
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
            created, version, count = updated
            start = count - len(enc.runs)
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
            db.execute(sql.delete_runs_from, (sid, count))
            return created, now, version, start
        stored = _stored(sql, sid, db)
        verdict = decide(
            label, sid, stored, user_id=enc.user_id, if_version=if_version, rule=OwnerRule.EXACT
        )
        if verdict is Verdict.CREATE:
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
            return now, now, 1, 0
    raise RETRY.exhausted(label, sid)


def append(
    sql: SQL,
    label: str,
    session_id: str,
    user_id: str | None,
    runs: list[tuple[str, str]],
    session_data: str | None,
    db: sqlite3.Connection,
) -> tuple[Sequence[Any], int]:
    """Returns the session row as written and the seq of the first appended run."""
    now = now_us()
    row = db.execute(
        sql.append_update, (session_data, now, len(runs), session_id, user_id, user_id)
    ).fetchone()
    if row is not None:
        start = run_count(row) - len(runs)
    else:
        stored = _stored(sql, session_id, db)
        decide(label, session_id, stored, user_id=user_id, if_version=None, rule=OwnerRule.IF_GIVEN)
        # Under the write lock the row cannot have changed since the UPDATE: it is absent.
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


def delete(sql: SQL, session_id: str, user_id: str | None, db: sqlite3.Connection) -> bool:
    if user_id is None:
        deleted = db.execute(sql.delete_session, (session_id,)).rowcount
    else:
        deleted = db.execute(sql.delete_session_of, (session_id, user_id)).rowcount
    if deleted:
        db.execute(sql.delete_runs_from, (session_id, 0))
    return bool(deleted)


def drop(sql: SQL, db: sqlite3.Connection) -> None:
    for statement in sql.drop:
        db.execute(statement)
