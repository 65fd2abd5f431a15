"""PostgreSQL rows as `Session`s, and encoded sessions as statement parameters. JSON crosses the
wire as text (see `_jsonb` for how `jsonb` is kept lossless)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from .. import _codec as codec
from .._activity import ActivityCounts, ActivityQuery
from .._encoding import (
    EncodedAppend,
    EncodedRun,
    EncodedSession,
    RunList,
    RunSource,
    decode_runs,
    session_from_encoded,
)
from .._time import to_us
from ..models import Session, trusted_session
from . import _sql as q
from ._jsonb import from_db, to_db

__all__ = [
    "activity_counts",
    "appended_session",
    "retried_session",
    "session_columns",
    "session_from_row",
    "written_sessions",
]


def _optional_db(data: bytes | None) -> str | None:
    return None if data is None else to_db(data)


def session_columns(enc: EncodedSession) -> tuple[Any, ...]:
    """$1..$12 of the upsert statements."""
    return (
        enc.session_id,
        enc.session_type,
        enc.user_id,
        enc.agent_id,
        enc.team_id,
        enc.workflow_id,
        to_db(enc.session_data),
        *(_optional_db(f) for f in enc.optional_json()),
    )


def _optional(text: str | None) -> Any:
    return None if text is None else from_db(text)


def _session(
    row: Any, session_data: Any, runs: list[Any], run_ids: list[str], runs_offset: int
) -> Session:
    return trusted_session(
        session_id=row[q.SID],
        session_type=row[q.TYPE],
        user_id=row[q.USER],
        agent_id=row[q.AGENT],
        team_id=row[q.TEAM],
        workflow_id=row[q.WORKFLOW],
        session_data=session_data,
        agent_data=_optional(row[q.AGENT_DATA]),
        team_data=_optional(row[q.TEAM_DATA]),
        workflow_data=_optional(row[q.WORKFLOW_DATA]),
        metadata=_optional(row[q.METADATA]),
        summary=_optional(row[q.SUMMARY]),
        runs=runs,
        runs_offset=runs_offset,
        created_at=row[q.CREATED],
        updated_at=row[q.UPDATED],
        version=row[q.VERSION],
        run_ids=run_ids,
    )


def session_from_row(
    row: Any,
    runs: list[str] | None,
    run_ids: list[str] | None,
    runs_offset: int,
    store: str | None = None,
) -> Session:
    """A row selected with `_sql`'s session columns, the bodies of its runs and their ids. With
    `store` (the token of the store that read it) the row was selected with its runs and its
    `xmin` (`_sql._WITH_RUNS`): the runs are a `RunList` that keeps their text, so that an upsert
    need not send those it leaves unchanged (`_writes.upsert`)."""
    ids = list(run_ids or ())
    if not runs:
        return _session(row, from_db(row[q.DATA]), [], ids, runs_offset)
    decoded: list[Any] = from_db("[" + ",".join(runs) + "]")
    if store is not None:
        source = RunSource(store, row[q.SID], row[q.ROW_VERSION], row[q.VERSION], runs_offset)
        decoded = RunList(decoded, tuple(runs), tuple(ids), source)
    return _session(row, from_db(row[q.DATA]), decoded, ids, runs_offset)


def appended_session(row: Any, append: EncodedAppend, runs: list[EncodedRun]) -> Session:
    """The session an append wrote: the row it returned (its `session_data` only when the append
    replaced it: the caller has the one it passed) and the runs it appended."""
    data = append.session_data
    session_data = codec.loads(data) if data is not None else from_db(row[q.DATA])
    decoded = decode_runs([r.body for r in runs])
    ids = [r.run_id for r in runs]
    return _session(row, session_data, decoded, ids, row[q.RUN_COUNT] - len(runs))


def retried_session(row: Any, bodies: list[str], run_ids: list[str], start: int) -> Session:
    """The session as stored, with the runs an append had already written (found by id)."""
    decoded = from_db("[" + ",".join(bodies) + "]")
    return _session(row, from_db(row[q.DATA]), decoded, run_ids, start)


def written_sessions(sessions: list[EncodedSession], rows: list[Any]) -> list[Session]:
    """The sessions an `upsert_many` wrote, in the caller's order, from its rows (session id,
    created_at, updated_at, version, run_count)."""
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


def activity_counts(rows: list[Any], query: ActivityQuery) -> ActivityCounts:
    """The rows of `_sql.SQL.activity` (a kind tag first: 0 entity totals, 1 active sessions,
    2 runs per entity and time bucket) as the `_activity` hook's answer."""
    active = next((r[2], r[3], r[4]) for r in rows if r[0] == 1)
    return ActivityCounts(
        entities=[(r[1], r[2], r[3]) for r in rows if r[0] == 0],
        active=active,
        turns=[
            (r[1], (to_us(r[5].replace(tzinfo=UTC)) - query.since_us) // query.bucket_us, r[2])
            for r in rows
            if r[0] == 2
        ],
    )
