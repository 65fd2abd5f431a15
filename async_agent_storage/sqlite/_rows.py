"""SQLite rows as `Session`s. SQLite keeps JSON text exactly as the codec wrote it, so every
document is decoded with its big-integer mark trusted (`marked=True`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _codec as codec
from .._encoding import EncodedSession, RunSource, decode_runs, session_from_encoded
from .._time import from_us
from ..models import Session, trusted_session
from ._sql import (
    AGENT,
    CREATED,
    DATA,
    INCARNATION,
    RUN_COUNT,
    SID,
    TEAM,
    TYPE,
    UPDATED,
    USER,
    VERSION,
    WORKFLOW,
)

__all__ = ["StoredRow", "session_from_row", "stored_session"]

StoredRow = tuple[int, int, int, int, str | None]
"""What an upsert wrote: created_at, updated_at, version, runs_offset, incarnation."""


def _loads(data: bytes | None) -> Any:
    return None if data is None else codec.loads(data, marked=True)


def session_from_row(
    row: Sequence[Any],
    bodies: Sequence[str | bytes],
    run_ids: list[str],
    runs_offset: int,
    store: str,
) -> Session:
    """A row selected with `_sql.SELECT_COLUMNS`, and its runs from `runs_offset` (bodies and ids).
    `store` is the token of the store that read it (see `RunSource`)."""
    incarnation = row[INCARNATION]
    source = (
        None
        if incarnation is None
        else RunSource(store, row[SID], incarnation, row[VERSION], runs_offset)
    )
    return trusted_session(
        session_id=row[SID],
        session_type=row[TYPE],
        user_id=row[USER],
        agent_id=row[AGENT],
        team_id=row[TEAM],
        workflow_id=row[WORKFLOW],
        session_data=codec.loads(row[DATA], marked=True),
        agent_data=_loads(row[7]),
        team_data=_loads(row[8]),
        workflow_data=_loads(row[9]),
        metadata=_loads(row[10]),
        summary=_loads(row[11]),
        runs=decode_runs(bodies, marked=True, ids=run_ids, source=source),
        runs_offset=runs_offset,
        created_at=from_us(row[CREATED]),
        updated_at=from_us(row[UPDATED]),
        version=row[VERSION],
        run_ids=run_ids,
    )


def run_count(row: Sequence[Any]) -> int:
    count: int = row[RUN_COUNT]
    return count


def stored_session(enc: EncodedSession, row: StoredRow, store: str) -> Session:
    """The session an upsert wrote, from what it sent and what the database assigned."""
    created_us, updated_us, version, start, incarnation = row
    source = (
        None
        if incarnation is None
        else RunSource(store, enc.session_id, incarnation, version, start)
    )
    return session_from_encoded(
        enc,
        created_at=from_us(created_us),
        updated_at=from_us(updated_us),
        version=version,
        runs_offset=start,
        source=source,
    )


def listed_session(
    row: Sequence[Any],
    runs: tuple[list[bytes], list[str]] | None,
    include_runs: bool,
    store: str,
) -> Session:
    """A listing's row as a `Session`: without runs (`runs_offset` = the count, so an upsert of
    it keeps the history), or with all of them (their bodies and ids, see `_work.PageRuns`)."""
    if not include_runs:
        return session_from_row(row, [], [], run_count(row), store)
    if runs is None:  # a session without runs
        return session_from_row(row, [], [], 0, store)
    bodies, ids = runs
    return session_from_row(row, bodies, ids, 0, store)
