"""The SQLite driver's calls: plain functions of a `sqlite3.Connection` (their last argument),
run on the connection's thread by `_connection`, inside the transaction of their batch.

Ownership and `if_version` are part of each write's conditions; when a write changes nothing,
`_rules.decide` says why (or that the session may be created).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

import orjson

from .._activity import ActivityCounts, ActivityQuery
from .._crypto import PAYLOAD_FIELDS, Reseal
from .._encoding import EncodedAppend, EncodedRun, EncodedSession
from .._paging import ListQuery
from .._rules import (
    RETRY,
    OwnerRule,
    Stored,
    Verdict,
    conflict,
    decide,
    fenced,
    repeated_run_id,
    sealed_key,
)
from .._time import now_us
from ..errors import InvalidInputError
from ..models import Session
from ._connection import RunOnThread, on_connection_thread
from ._rows import StoredRow, run_count, session_from_row
from ._sql import SID, SQL, USER

__all__ = [
    "Appended",
    "activity",
    "append",
    "count",
    "delete",
    "delete_batch",
    "drop",
    "fork",
    "get_run",
    "list_ids",
    "list_sessions",
    "ping",
    "pop_runs",
    "read_session",
    "reseal",
    "truncate_runs",
    "upsert",
    "usage",
]

Appended = tuple[Sequence[Any], int, list[bytes], list[str]]
"""What an append returns: the session row, the position of the first run, the runs' bodies and
ids (those appended, or on a retry those already stored)."""


def _new_incarnation() -> str:
    return uuid.uuid4().hex


def _runs_from(
    sql: SQL, session_id: str, start: int, db: sqlite3.Connection
) -> tuple[list[bytes], list[str]]:
    bodies: list[bytes] = []
    ids: list[str] = []
    for body, run_id in db.execute(sql.select_runs_from, (session_id, start)):
        bodies.append(body)
        ids.append(run_id)
    return bodies, ids


def read_session(
    sql: SQL,
    store: str,
    session_id: str,
    user_id: str | None,
    last_runs: int | None,
    db: sqlite3.Connection,
) -> Session | None:
    row = db.execute(sql.read_session, (session_id, now_us())).fetchone()
    if row is None or (user_id is not None and row[USER] != user_id):
        return None
    total = run_count(row)
    start = 0 if last_runs is None else max(0, total - last_runs)
    bodies, ids = _runs_from(sql, session_id, start, db) if start < total else ([], [])
    return session_from_row(row, bodies, ids, start, store)


PageRuns = dict[str, tuple[list[bytes], list[str]]]
"""The runs of a listing page by session: their bodies and their ids, in seq order."""


def list_sessions(
    sql: SQL, query: ListQuery, db: sqlite3.Connection, *, runs_here: int | None = None
) -> tuple[list[Any], PageRuns, bool]:
    """The rows of one listing page (decoded by the caller, on the event loop, so that decoding
    runs beside the next batch's SQL), and with `include_runs` their runs. On the event loop, a
    page holding more than `runs_here` runs raises `RunOnThread` before reading them."""
    statement, params = sql.listing(query, now_us())
    rows = db.execute(statement, params).fetchall()
    more = query.limit is not None and len(rows) > query.limit
    if more:
        del rows[query.limit :]
    runs: PageRuns = {}
    if (
        query.include_runs
        and runs_here is not None
        and not on_connection_thread()
        and sum(run_count(row) for row in rows) > runs_here
    ):
        raise RunOnThread
    if query.include_runs and rows:
        page = orjson.dumps([row[SID] for row in rows]).decode()
        for session_id, group in groupby(
            db.execute(sql.select_runs_of_page, (page,)), key=itemgetter(0)
        ):
            bodies: list[bytes] = []
            ids: list[str] = []
            for _, body, run_id in group:
                bodies.append(body)
                ids.append(run_id)
            runs[session_id] = (bodies, ids)
    return rows, runs, more


def count(sql: SQL, query: ListQuery, db: sqlite3.Connection) -> int:
    statement, params = sql.listing(query, now_us(), count=True)
    total: int = db.execute(statement, params).fetchone()[0]
    return total


def usage(sql: SQL, db: sqlite3.Connection) -> tuple[int, int, dict[str, int]]:
    sessions, runs = db.execute(sql.usage_counts).fetchone()
    tables = [sql.table, f"{sql.table}_runs", sql.history_table, f"{sql.table}_leases"]
    try:
        rows = db.execute(sql.usage_bytes, (orjson.dumps(tables).decode(),)).fetchall()
    except sqlite3.OperationalError:  # a SQLite built without the dbstat table
        rows = []
    return int(sessions), int(runs), {name: int(size) for name, size in rows}


def list_ids(sql: SQL, query: ListQuery, db: sqlite3.Connection) -> list[str]:
    statement, params = sql.listing(query, now_us(), ids_only=True)
    return [row[0] for row in db.execute(statement, params)]


def _owner_row(sql: SQL, session_id: str, db: sqlite3.Connection) -> Any:
    """The session's owner row (`select_owner`), None when absent; an expired session is
    deleted here, with its runs, and is absent: a write then creates the session anew."""
    row = db.execute(sql.select_owner, (session_id,)).fetchone()
    if row is not None and row[5] is not None and row[5] <= now_us():
        db.execute(sql.delete_session, (session_id,))
        db.execute(sql.delete_runs_from, (session_id, 0))
        return None
    return row


def _stored(sql: SQL, session_id: str, db: sqlite3.Connection) -> Stored | None:
    row = _owner_row(sql, session_id, db)
    return None if row is None else Stored(row[0], row[1], row[4], sealed_key(row[6]))


def _check_fence_to_create(
    sql: SQL, label: str, session_id: str, fence: int | None, db: sqlite3.Connection
) -> None:
    """A fenced write about to create the session: refused when its lease row holds a newer
    token (under the write lock, so no lease can be taken in between)."""
    if fence is None:
        return
    row = db.execute(sql.lease_token, (session_id,)).fetchone()
    if row is not None and row[0] > fence:
        raise fenced(label, session_id, fence, row[0])


def upsert(
    sql: SQL,
    label: str,
    store: str,
    sessions: list[EncodedSession],
    if_version: int | None,
    db: sqlite3.Connection,
) -> list[StoredRow]:
    now = now_us()
    if len(sessions) == 1:
        return [_upsert_one(sql, label, store, sessions[0], if_version, now, db)]
    # A batch (upsert_many, no if_version): the sessions not stored yet are inserted together,
    # two statements for the lot; the others are written one by one. Under the write lock the
    # check of which exist and the writes see one state.
    ids = orjson.dumps([enc.session_id for enc in sessions]).decode()
    existing = {row[0] for row in db.execute(sql.select_existing, (ids,))}
    new = [enc for enc in sessions if enc.session_id not in existing and enc.fence is None]
    written = _insert_new(new, now, sql, db)
    return [
        written[enc.session_id]
        if enc.session_id in written
        else _upsert_one(sql, label, store, enc, if_version, now, db)
        for enc in sessions
    ]


def _insert_new(
    sessions: list[EncodedSession], now: int, sql: SQL, db: sqlite3.Connection
) -> dict[str, StoredRow]:
    written: dict[str, StoredRow] = {}
    rows: list[tuple[Any, ...]] = []
    runs: list[tuple[Any, ...]] = []
    for enc in sessions:
        sid, incarnation = enc.session_id, _new_incarnation()
        rows.append(
            (
                sid,
                enc.session_type,
                enc.user_id,
                enc.agent_id,
                enc.team_id,
                enc.workflow_id,
                enc.session_data.decode(),
                *(None if f is None else f.decode() for f in enc.optional_json()),
                now,
                now,
                1,
                len(enc.runs),
                incarnation,
                sid,
                enc.expiry.on_create(now),
            )
        )
        runs += [(sid, i, r.run_id, r.body.decode(), now) for i, r in enumerate(enc.runs)]
        written[sid] = (now, now, 1, 0, incarnation)
    if rows:
        db.executemany(sql.insert_session, rows)
    if runs:
        db.executemany(sql.insert_run, runs)
    return written


def _upsert_one(
    sql: SQL,
    label: str,
    store: str,
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
                enc.fence,
                enc.expiry.on_update(now),
            ),
        ).fetchone()
        if updated is not None:
            created, version, total, incarnation = updated
            start = total - len(enc.runs)
            # Read from this store, this incarnation of the row, at the version this write
            # replaced: the runs it holds unchanged are stored as they are and need no write.
            skip = enc.may_skip_unchanged(store, incarnation, version - 1)
            rows = [
                (sid, start + i, r.run_id, r.body.decode(), now)
                for i, r in enumerate(enc.runs)
                if not (skip and r.unchanged)
            ]
            if rows:
                db.executemany(sql.upsert_run, rows)
            # Each run id once in the session: none of the ids written held before start.
            given = enc.kept_runs_may_hold(skipping=skip)
            if start and given:
                ids = orjson.dumps(given).decode()
                held = db.execute(sql.held_run_id, (sid, start, ids)).fetchone()
                if held is not None:
                    raise repeated_run_id(
                        label, sid, held[0], enc.runs_offset, enc.version, version - 1
                    )
            db.execute(sql.delete_runs_from, (sid, total))
            return created, now, version, start, incarnation
        stored = _stored(sql, sid, db)
        verdict = decide(
            label,
            sid,
            stored,
            user_id=enc.user_id,
            if_version=if_version,
            rule=OwnerRule.EXACT,
            fence=enc.fence,
        )
        if verdict is Verdict.CREATE:
            _check_fence_to_create(sql, label, sid, enc.fence, db)
            incarnation = _new_incarnation()
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
                    incarnation,
                    sid,
                    enc.expiry.on_create(now),
                ),
            )
            if enc.runs:
                db.executemany(
                    sql.insert_run,
                    [(sid, i, r.run_id, r.body.decode(), now) for i, r in enumerate(enc.runs)],
                )
            return now, now, 1, 0, incarnation
    raise RETRY.exhausted(label, sid)


def _stored_runs(
    sql: SQL, append: EncodedAppend, db: sqlite3.Connection
) -> dict[str, tuple[int, bytes]]:
    """The runs of this append whose ids the session already holds: {id: (seq, body)}."""
    rows = db.execute(
        sql.select_run_ids, (append.session_id, orjson.dumps(append.given_ids).decode())
    )
    return {run_id: (seq, body) for run_id, seq, body in rows}


def _update(
    sql: SQL,
    append: EncodedAppend,
    head: tuple[Any, ...],
    fresh: list[EncodedRun],
    given: list[str],
    expiry: tuple[int | None, int | None],
    db: sqlite3.Connection,
) -> Any:
    """The append's UPDATE of an existing session for the runs `fresh`, checking that none of
    the ids `given` is stored yet: the new row, or None when a check failed."""
    statement, count = sql.append_update(expiry[1] is not None, len(given))
    ids = None if not given else given[0] if len(given) == 1 else orjson.dumps(given).decode()
    params = (*head, len(fresh), append.session_id, append.user_id, append.if_version, None)
    return db.execute(statement, (*params, append.fence, *expiry, ids)[:count]).fetchone()


def append(sql: SQL, label: str, append: EncodedAppend, db: sqlite3.Connection) -> Appended:
    """Append the runs whose ids are new, and update the state, in one write (under the write
    lock, so the check of stored ids and the write see the same session). When every run was
    already stored (a retry of an append that was applied), nothing is written.

    The UPDATE comes first and checks itself that none of the given ids is stored; only when it
    changes nothing (a retry, a new or expired session, a failed check) are the stored ids
    looked up and the reason found."""
    sid, uid = append.session_id, append.user_id
    runs = append.runs
    given = append.given_ids
    data = None if append.session_data is None else append.session_data.decode()
    patch = None if append.state_patch is None else append.state_patch.decode()
    now = now_us()
    head = (data, patch, now)
    expiry = (append.expiry.on_create(now), append.expiry.on_update(now))
    row = _update(sql, append, head, runs, given, expiry, db)
    if row is None and given:
        stored = _stored_runs(sql, append, db)
        if stored and _stored(sql, sid, db) is None:
            stored = {}  # the runs of an expired session, deleted with it
        if stored:
            fresh = [r for r in runs if r.run_id not in stored]
            if not fresh:
                decide(
                    label,
                    sid,
                    _stored(sql, sid, db),
                    user_id=uid,
                    if_version=None,
                    rule=OwnerRule.IF_GIVEN,
                    fence=append.fence,
                )
                row = db.execute(sql.select_session, (sid,)).fetchone()
                found = [stored[r.run_id] for r in runs]
                return (
                    row,
                    min(seq for seq, _ in found),
                    [body for _, body in found],
                    [r.run_id for r in runs],
                )
            runs = fresh  # under the write lock, none of these ids can be stored meanwhile
            row = _update(sql, append, head, runs, [], expiry, db)
    if row is None:
        decide(
            label,
            sid,
            _stored(sql, sid, db),
            user_id=uid,
            if_version=append.if_version,
            rule=OwnerRule.IF_GIVEN,
            fence=append.fence,
            patch=patch is not None,
        )
        # Under the write lock the row cannot have changed since the UPDATE: it is absent.
        _check_fence_to_create(sql, label, sid, append.fence, db)
        row = db.execute(
            sql.append_insert,
            (*head, len(runs), sid, uid, append.if_version, _new_incarnation(), None, expiry[0]),
        ).fetchone()
    start = run_count(row) - len(runs)
    if len(runs) == 1:
        db.execute(sql.insert_run, (sid, start, runs[0].run_id, runs[0].body.decode(), now))
    elif runs:
        db.executemany(
            sql.insert_run,
            [(sid, start + i, r.run_id, r.body.decode(), now) for i, r in enumerate(runs)],
        )
    return row, start, [r.body for r in runs], [r.run_id for r in runs]


def get_run(
    sql: SQL, session_id: str, run_id: str, user_id: str | None, db: sqlite3.Connection
) -> bytes | None:
    row = db.execute(sql.select_run, (session_id, run_id, user_id, now_us())).fetchone()
    return None if row is None else bytes(row[0])


def _owned(
    sql: SQL, label: str, session_id: str, user_id: str | None, db: sqlite3.Connection
) -> int | None:
    """The run count of a session the caller may write, or None when it is absent."""
    row = _owner_row(sql, session_id, db)
    if row is None:
        return None
    stored = Stored(row[0], row[1])
    decide(label, session_id, stored, user_id=user_id, if_version=None, rule=OwnerRule.IF_GIVEN)
    total: int = row[2]
    return total


def pop_runs(
    sql: SQL, label: str, session_id: str, user_id: str | None, n: int, db: sqlite3.Connection
) -> list[bytes]:
    total = _owned(sql, label, session_id, user_id, db)
    if not total:
        return []
    keep = max(total - n, 0)
    bodies = [body for body, _ in db.execute(sql.select_runs_from, (session_id, keep))]
    db.execute(sql.delete_runs_from, (session_id, keep))
    db.execute(sql.shrink, (session_id, keep, now_us()))
    return bodies


def truncate_runs(
    sql: SQL,
    label: str,
    session_id: str,
    user_id: str | None,
    keep_last: int,
    db: sqlite3.Connection,
) -> int:
    total = _owned(sql, label, session_id, user_id, db)
    if not total or total <= keep_last:
        return 0
    removed = total - keep_last
    db.execute(sql.delete_runs_before, (session_id, removed))
    if keep_last:
        db.execute(sql.move_runs_down, (session_id, removed))
        db.execute(sql.move_runs_back, (session_id,))
    db.execute(sql.shrink, (session_id, keep_last, now_us()))
    return removed


def fork(
    sql: SQL,
    label: str,
    store: str,
    ttl_us: int | None,
    session_id: str,
    new_session_id: str,
    at_run: str | None,
    user_id: str | None,
    db: sqlite3.Connection,
) -> Session | None:
    source = _owner_row(sql, session_id, db)
    if source is None or (user_id is not None and source[0] != user_id):
        return None
    target = _owner_row(sql, new_session_id, db)
    if target is not None:
        raise conflict(label, new_session_id, 0, target[1])
    copied = source[2]
    if at_run is not None:
        found = db.execute(
            sql.select_run_ids, (session_id, orjson.dumps([at_run]).decode())
        ).fetchone()
        if found is None:
            raise InvalidInputError(
                f"{label}: run {at_run!r} is not in session {session_id!r}; nothing was written"
            )
        copied = found[1] + 1
    now = now_us()
    expires = None if ttl_us is None else now + ttl_us
    row = db.execute(
        sql.fork_session, (new_session_id, session_id, now, copied, _new_incarnation(), expires)
    ).fetchone()
    db.execute(sql.fork_runs, (new_session_id, session_id, copied))
    return session_from_row(row, [], [], copied, store)


def delete(sql: SQL, session_id: str, user_id: str | None, db: sqlite3.Connection) -> bool:
    """Delete the session and its runs; False when it was absent, another user's, or expired
    (gone already for every call: its rows are deleted all the same)."""
    gone = db.execute(sql.delete_session_of, (session_id, user_id)).fetchone()
    if gone is None:
        return False
    db.execute(sql.delete_runs_from, (session_id, 0))
    return gone[0] is None or gone[0] > now_us()


def activity(sql: SQL, query: ActivityQuery, db: sqlite3.Connection) -> ActivityCounts:
    """The counts of `activity`, in one read transaction (one snapshot)."""
    (entities, e_params), (active, a_params), (turns, t_params) = sql.activity(query, now_us())
    hour, day, week = db.execute(active, a_params).fetchone()
    return ActivityCounts(
        entities=[(e, n, r) for e, n, r in db.execute(entities, e_params)],
        active=(hour, day, week),
        turns=[(e, b, n) for e, b, n in db.execute(turns, t_params)],
    )


def delete_batch(
    sql: SQL, user_id: str | None, batch: int, db: sqlite3.Connection
) -> tuple[int, int]:
    """Up to `batch` sessions of `user_id` (None: expired ones) and their runs, in one
    transaction: (sessions, runs) deleted."""
    if user_id is None:
        gone = db.execute(sql.delete_expired, (now_us(), batch)).fetchall()
    else:
        gone = db.execute(sql.delete_of_user, (user_id, batch)).fetchall()
    if not gone:
        return 0, 0
    ids = orjson.dumps([row[0] for row in gone]).decode()
    runs = db.execute(sql.delete_runs_of, (ids,)).rowcount
    return len(gone), runs


def reseal(sql: SQL, reseal: Reseal, db: sqlite3.Connection) -> bool:
    """Store the re-encrypted values of a session still at `reseal.version` (under the write
    lock, so nothing changes it in between); its version and times stay."""
    if not set(reseal.fields) <= set(PAYLOAD_FIELDS):
        raise ValueError(f"not payload columns: {sorted(reseal.fields)}")
    columns = ", ".join(f"{name} = ?" for name in reseal.fields)
    values = [body.decode() for body in reseal.fields.values()]
    check = f'SELECT 1 FROM "{sql.table}" WHERE session_id = ? AND version = ?'
    if not db.execute(check, (reseal.session_id, reseal.version)).fetchone():
        return False
    if columns:
        db.execute(
            f'UPDATE "{sql.table}" SET {columns} WHERE session_id = ?',
            (*values, reseal.session_id),
        )
    db.executemany(
        sql.reseal_run, [(r.new.decode(), reseal.session_id, r.run_id) for r in reseal.runs]
    )
    return True


def ping(db: sqlite3.Connection) -> None:
    db.execute("SELECT 1").fetchone()


def drop(sql: SQL, db: sqlite3.Connection) -> None:
    for statement in sql.drop:
        db.execute(statement)
