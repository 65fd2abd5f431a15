"""The PostgreSQL driver's writes: functions of a pooled connection, run by `GatedPool.run`.

Each hot write is one statement whose conditions carry the owner and the version; when it changes
nothing, `_rules.decide` says why from what is stored (the only second round trip, on the error
path). The calls that remove runs or copy a session take the session's row lock first, in a
transaction, so that what they read and what they write are one state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg

from .. import _codec as codec
from .._crypto import PAYLOAD_FIELDS, Reseal
from .._encoding import EncodedAppend, EncodedRun, EncodedSession, Expiry, merge_patch
from .._rules import (
    RETRY,
    OwnerRule,
    Stored,
    Verdict,
    conflict,
    decide,
    fenced,
    not_owner,
    owns,
    repeated_run_id,
    sealed_key,
)
from .._time import from_us
from ..errors import InvalidInputError, SessionConflictError
from ._jsonb import to_db
from ._patch import patched_statement
from ._patch import plan as patch_plan
from ._pool import Connection
from ._rows import session_columns
from ._sql import MAX_INT4, PATCH_FIRST, SQL, TRANSACTION_TIME

__all__ = [
    "Appended",
    "append",
    "delete_batch",
    "expiry_args",
    "fork",
    "pop",
    "reseal",
    "truncate",
    "write_many",
    "write_session",
]


def expiry_args(expiry: Expiry) -> tuple[Any, Any, Any]:
    """The statements' expiry parameters: the caller's expires_at, a new session's
    time-to-live and an existing one's (when it slides), in microseconds (see `_sql`)."""
    at = None if expiry.at_us is None else from_us(expiry.at_us)
    return at, expiry.ttl_us, expiry.ttl_us if expiry.slide else None


async def _stored(connection: Connection, sql: SQL, session_id: str) -> Stored | None:
    row = await connection.fetchrow(sql.select_owner, session_id)
    return None if row is None else Stored(row[0], row[1], row[2], sealed_key(row[3]))


async def _create_fenced(
    connection: Connection,
    sql: SQL,
    label: str,
    session_id: str,
    fence: int,
    statement: str,
    args: tuple[Any, ...],
    token_at: int,
) -> Any:
    """A fenced write whose session does not exist: in one transaction, lock the session's lease
    row (FOR SHARE: a lease being taken waits for this write to commit, and this write waits for
    a lease being taken), refuse the write when that lease is newer than the fence, else run the
    creating statement (`statement`, whose parameter at `token_at` is the new row's
    lease_token)."""
    async with connection.transaction():
        latest = await connection.fetchval(sql.lock_lease, session_id)
        if latest is not None and latest > fence:
            raise fenced(label, session_id, fence, latest)
        return await connection.fetchrow(statement, *args[:token_at], latest, *args[token_at + 1 :])


def _duplicate_run_id(exc: asyncpg.UniqueViolationError, sql: SQL) -> bool:
    return getattr(exc, "constraint_name", None) == f"{sql.name}_runs_run_id"


async def upsert(
    connection: Connection,
    sql: SQL,
    label: str,
    enc: EncodedSession,
    if_version: int | None,
    store: str,
    row_version: str | None,
) -> Any:
    """upsert(): the session's row (created_at, updated_at, version, run_count, xmin) as
    written.

    A session read by this store object (`store`, its token) at the row version it last saw
    (`row_version`), whose first runs the caller left as they were read (same text, same id), is
    first written without sending them (`update_skipping`), which applies only if the row is
    still the version that was read, and so still holds those runs. Otherwise (another writer
    came in between), and for any other session, the whole write is sent."""
    kept = _kept_runs(enc, store, row_version)
    if kept:
        row = await _write_skipping(connection, sql, enc, if_version, kept)
        if row is not None:
            return row
    args = (
        *session_columns(enc),
        min(enc.runs_offset, MAX_INT4),
        [r.run_id for r in enc.runs],
        [to_db(r.body) for r in enc.runs],
        if_version,
        enc.fence,  # the UPDATE's fence; NULL: the lease token of a session UPSERT creates
        *expiry_args(enc.expiry),
    )
    statement = sql.update if if_version or enc.fence is not None else sql.upsert
    return await write_session(connection, sql, label, statement, args, enc, if_version)


def _kept_runs(enc: EncodedSession, store: str, row_version: str | None) -> int:
    """How many of the first runs of `enc` are unchanged since this store read them, at the row
    version it last saw (an older copy would only make `update_skipping` miss)."""
    source = enc.read_here(store)
    if source is None or source.incarnation != row_version:
        return 0
    kept = 0
    for run in enc.runs:
        if not run.unchanged:
            break
        kept += 1
    return kept


async def _write_skipping(
    connection: Connection, sql: SQL, enc: EncodedSession, if_version: int | None, kept: int
) -> Any:
    """`update_skipping`: the row as written, or None when the row is not the version read (or
    the write would fail: the whole write then says why)."""
    assert enc.source is not None
    runs = enc.runs[kept:]
    try:
        return await connection.fetchrow(
            sql.update_skipping,
            *session_columns(enc),
            min(enc.runs_offset + kept, MAX_INT4),
            [r.run_id for r in runs],
            [to_db(r.body) for r in runs],
            if_version,
            enc.fence,
            *expiry_args(enc.expiry),
            enc.source.incarnation,
            enc.source.version,
        )
    except asyncpg.UniqueViolationError:
        return None


async def write_session(
    connection: Connection,
    sql: SQL,
    label: str,
    statement: str,
    args: tuple[Any, ...],
    enc: EncodedSession,
    if_version: int | None,
) -> Any:
    """One upsert statement (which creates a missing session itself), retried when the session
    changed between it and the check of why it wrote nothing. A fenced write is an UPDATE (its
    last parameter the fence); one whose session is absent is `_create_fenced`."""
    for _ in range(RETRY.attempts):
        try:
            row = await connection.fetchrow(statement, *args)
            if row is None and enc.fence is not None:
                verdict = decide(
                    label,
                    enc.session_id,
                    await _stored(connection, sql, enc.session_id),
                    user_id=enc.user_id,
                    if_version=if_version,
                    rule=OwnerRule.EXACT,
                    fence=enc.fence,
                )
                if verdict is Verdict.CREATE:
                    row = await _create_fenced(
                        connection, sql, label, enc.session_id, enc.fence, sql.upsert, args, 16
                    )
        except asyncpg.UniqueViolationError as exc:
            if not _duplicate_run_id(exc, sql):
                raise
            error = await _repeated_run_id(connection, sql, label, enc)
            if error is None:  # the runs before the offset changed again since: try again
                continue
            raise error from exc
        if row is not None:
            return row
        decide(
            label,
            enc.session_id,
            await _stored(connection, sql, enc.session_id),
            user_id=enc.user_id,
            if_version=if_version,
            rule=OwnerRule.EXACT,
            fence=enc.fence,
        )
    raise RETRY.exhausted(label, enc.session_id)


async def _repeated_run_id(
    connection: Connection, sql: SQL, label: str, enc: EncodedSession
) -> SessionConflictError | InvalidInputError | None:
    """After the runs' unique key refused an upsert: the error for the first run of `enc` whose
    id a run before the write's offset holds (`repeated_run_id` tells a caller's mistake from a
    session changed since the copy was read), or None when no run holds one now."""
    rows = await connection.fetch(sql.select_run_ids, enc.session_id, [r.run_id for r in enc.runs])
    stored = await _stored(connection, sql, enc.session_id)
    held = [(seq, run_id) for run_id, seq, _, count in rows if seq < min(enc.runs_offset, count)]
    if stored is None or not held:
        return None
    return repeated_run_id(
        label, enc.session_id, min(held)[1], enc.runs_offset, enc.version, stored.version
    )


# A batch of at least this many sessions, none of which exists, is written by COPY (binary)
# instead of the INSERT ... SELECT FROM unnest statement: the server's work a session is about a
# third less and the client encodes no arrays. For a single session it gains nothing (COPY takes
# two more round trips); from three it does (docs/benchmarks.md, "Bulk loads by COPY").
COPY_FROM = 3

# The columns `session_columns` gives values for, then those a new session's row adds.
_SESSION_COPY_COLUMNS = (
    *("session_id", "session_type", "user_id", "agent_id", "team_id", "workflow_id"),
    *PAYLOAD_FIELDS,
    *("created_at", "updated_at", "version", "run_count", "expires_at"),
)
_RUN_COPY_COLUMNS = ("session_id", "seq", "run_id", "body", "created_at")


class _CopyRefused(Exception):
    """A copied batch met a row it would have had to merge with (a session created since the
    lock, or runs a racing delete left behind): the batch is written again by the statement."""


async def write_many(
    connection: Connection, sql: SQL, label: str, encoded: list[EncodedSession]
) -> list[Any]:
    """`_write_many`; when a run before a session's offset holds the id of a run the batch
    writes to it (the runs' unique key rolls the batch back), the error that makes."""
    copy = len(encoded) >= COPY_FROM
    for _ in range(RETRY.attempts):
        try:
            return await _write_many(connection, sql, label, encoded, copy)
        except _CopyRefused:
            copy = False
        except asyncpg.UniqueViolationError as exc:
            if not _duplicate_run_id(exc, sql):
                raise
            for enc in encoded:
                if enc.runs_offset and enc.runs:
                    error = await _repeated_run_id(connection, sql, label, enc)
                    if error is not None:
                        raise error from exc
    raise RETRY.exhausted(label, encoded[0].session_id)


async def _write_many(
    connection: Connection, sql: SQL, label: str, encoded: list[EncodedSession], copy: bool
) -> list[Any]:
    """One transaction: lock the sessions that exist (in session_id order, so two batches never
    deadlock), check their owners, then write them all in one statement; or, with `copy` and
    when none exists, by COPY (`_copy_new`)."""
    sids = [enc.session_id for enc in encoded]
    expiry = encoded[0].expiry  # the store's: one for the whole batch
    async with connection.transaction():
        await connection.execute(sql.purge_ids, sids)  # expired ones are created anew
        existing = {row[0]: (row[1], row[2]) for row in await connection.fetch(sql.lock_many, sids)}
        if copy and not existing:
            return await _copy_new(connection, sql, encoded, expiry)
        columns: list[list[Any]] = [[] for _ in range(12)]
        run_counts: list[int] = []
        runs: tuple[list[Any], ...] = ([], [], [], [])  # session ids, seqs, run ids, bodies
        for enc in encoded:
            start = 0
            if enc.session_id in existing:
                owner, stored_count = existing[enc.session_id]
                if not owns(owner, enc.user_id, OwnerRule.EXACT):
                    raise not_owner(label, enc.session_id, enc.user_id)
                start = min(enc.runs_offset, stored_count)
            for column, value in zip(columns, session_columns(enc), strict=True):
                column.append(value)
            run_counts.append(start + len(enc.runs))
            for i, run in enumerate(enc.runs):
                for column, value in zip(
                    runs, (enc.session_id, start + i, run.run_id, to_db(run.body)), strict=True
                ):
                    column.append(value)
        rows: list[Any] = await connection.fetch(
            sql.upsert_many, *columns, run_counts, *runs, *expiry_args(expiry)[1:]
        )
        if len(rows) != len(encoded):
            # A session created by another user since the lock: nothing is kept.
            written = {row[0] for row in rows}
            missing = next(enc for enc in encoded if enc.session_id not in written)
            raise not_owner(label, missing.session_id, missing.user_id)
    return rows


async def _copy_new(
    connection: Connection, sql: SQL, encoded: list[EncodedSession], expiry: Expiry
) -> list[Any]:
    """Create every session of `encoded` (none exists: the caller's transaction locked none) and
    its runs by COPY, with what `upsert_many`'s statement writes for a new session: the
    transaction's time as created_at and updated_at (and each run's created_at), version 1, the
    expiry from the store's time-to-live. The rows it returns are the statement's. Raises
    `_CopyRefused` when a unique key refuses a row (the transaction is then rolled back)."""
    now = await connection.fetchval(TRANSACTION_TIME)
    expires = None if expiry.ttl_us is None else now + timedelta(microseconds=expiry.ttl_us)
    sessions: list[tuple[Any, ...]] = []
    rows: list[tuple[Any, ...]] = []
    for enc in encoded:
        sid, count = enc.session_id, len(enc.runs)
        sessions.append((*session_columns(enc), now, now, 1, count, expires))
        rows.append((sid, now, now, 1, count))
    # The runs' rows are made as asyncpg sends them (it writes every 512 KiB it has encoded), so
    # that making the later ones overlaps the server storing the earlier ones.
    runs = (
        (enc.session_id, i, run.run_id, to_db(run.body), now)
        for enc in encoded
        for i, run in enumerate(enc.runs)
    )
    try:
        await connection.copy_records_to_table(
            sql.name, schema_name=sql.schema, columns=_SESSION_COPY_COLUMNS, records=sessions
        )
        if any(enc.runs for enc in encoded):
            await connection.copy_records_to_table(
                sql.runs_name, schema_name=sql.schema, columns=_RUN_COPY_COLUMNS, records=runs
            )
    except asyncpg.UniqueViolationError as exc:
        raise _CopyRefused from exc
    return rows


@dataclass(slots=True)
class Appended:
    """What an append did: the session row it returned, and the runs it appended; or, for a
    retry of an append already applied, the row as stored and those runs as stored."""

    row: Any
    runs: list[EncodedRun]
    retried: tuple[list[str], list[str], int] | None = None  # bodies, ids, start


def _patched_empty(patch: bytes | None, patch_db: str | None) -> str | None:
    """The state of a session an append with this patch creates: the patch applied to {}, which
    is the patch itself when it holds no null (no key to delete), the common case: then nothing
    is decoded again."""
    if patch is None:
        return None
    if b"null" not in patch:
        return patch_db
    return to_db(codec.dumps(merge_patch({}, codec.loads(patch))))


async def append(connection: Connection, sql: SQL, label: str, append: EncodedAppend) -> Appended:
    """The append statement; when a run id is already stored (the runs' unique constraint,
    checked at the end of the statement, rolls the whole statement back), append only the new
    runs, or nothing when every run is there."""
    runs = append.runs
    data = None if append.session_data is None else to_db(append.session_data)
    fence = append.fence
    # With a fence, an UPDATE of an existing session; an absent one is `_create_fenced`.
    updating = bool(append.if_version) or fence is not None
    statement, creating = sql.append_update if updating else sql.append, sql.append
    patch, merge = None, ()
    if append.state_patch is not None:
        plan = patch_plan(append.state_patch)
        if plan is None:  # applied by the merge-patch function
            patch = to_db(append.state_patch)
        else:  # bound as an expression instead of the function's call; nothing to rewrite
            patch = append.state_patch.decode()
            statement = patched_statement(statement, sql.merge_call, plan.shape, PATCH_FIRST)
            creating = patched_statement(creating, sql.merge_call, plan.shape, PATCH_FIRST)
            merge = tuple(plan.args)
    created = data if patch is None else _patched_empty(append.state_patch, patch)
    for _ in range(RETRY.attempts):
        args: tuple[Any, ...] = (
            append.session_id,
            append.user_id,
            data,
            [r.run_id for r in runs],
            [to_db(r.body) for r in runs],
            patch,
            append.if_version,
            fence,
            *expiry_args(append.expiry),
            created,
            *merge,
        )
        try:
            row = await connection.fetchrow(statement, *args)
            if row is None and append.if_version is not None and append.given_ids:
                # A retry of an append that was applied (the version has moved on since): it
                # returns as the first call did, whatever the version.
                found = await _stored_runs(connection, sql, append.session_id, runs)
                if found is not None and all(r.run_id in found for r in runs):
                    return await _retried(connection, sql, label, append, runs, found)
            if row is None and fence is not None:
                verdict = decide(
                    label,
                    append.session_id,
                    await _stored(connection, sql, append.session_id),
                    user_id=append.user_id,
                    if_version=append.if_version,
                    rule=OwnerRule.IF_GIVEN,
                    fence=fence,
                    patch=patch is not None,
                )
                if verdict is Verdict.CREATE:
                    row = await _create_fenced(
                        connection,
                        sql,
                        label,
                        append.session_id,
                        fence,
                        creating,
                        args,
                        7,  # $8
                    )
        except asyncpg.UniqueViolationError as exc:
            if not _duplicate_run_id(exc, sql):
                raise
            found = await _stored_runs(connection, sql, append.session_id, runs)
            if found is None:
                continue  # only runs left behind past the history's end: removed, try again
            fresh = [r for r in runs if r.run_id not in found]
            if not fresh:
                return await _retried(connection, sql, label, append, runs, found)
            runs = fresh
            continue
        if row is not None:
            return Appended(row, runs)
        decide(
            label,
            append.session_id,
            await _stored(connection, sql, append.session_id),
            user_id=append.user_id,
            if_version=append.if_version,
            rule=OwnerRule.IF_GIVEN,
            fence=fence,
            patch=patch is not None,
        )
        # Deleted between the two statements: the next attempt creates it.
    raise RETRY.exhausted(label, append.session_id)


async def _stored_runs(
    connection: Connection, sql: SQL, session_id: str, runs: list[EncodedRun]
) -> dict[str, tuple[int, str]] | None:
    """{id: (seq, body)} of the runs whose ids the session holds; None after removing runs left
    past the history's end by a delete that raced an append (their ids do not count)."""
    rows = await connection.fetch(sql.select_run_ids, session_id, [r.run_id for r in runs])
    if any(seq >= count for _, seq, _, count in rows):
        await connection.execute(sql.delete_leftovers, session_id)
        await _stored(connection, sql, session_id)  # deletes the session when it expired
        return None
    return {run_id: (seq, body) for run_id, seq, body, _ in rows}


async def _retried(
    connection: Connection,
    sql: SQL,
    label: str,
    append: EncodedAppend,
    runs: list[EncodedRun],
    found: dict[str, tuple[int, str]],
) -> Appended:
    decide(
        label,
        append.session_id,
        await _stored(connection, sql, append.session_id),
        user_id=append.user_id,
        if_version=None,
        rule=OwnerRule.IF_GIVEN,
        fence=append.fence,
    )
    row = await connection.fetchrow(sql.select_session, append.session_id)
    stored = [found[r.run_id] for r in runs]
    bodies = [body for _, body in stored]
    return Appended(row, runs, (bodies, [r.run_id for r in runs], min(s for s, _ in stored)))


async def _locked(
    connection: Connection, sql: SQL, label: str, session_id: str, user_id: str | None
) -> int | None:
    """Lock the session row (inside a transaction); its run count, or None when absent."""
    row = await connection.fetchrow(sql.lock, session_id)
    if row is None:
        return None
    decide(
        label, session_id, Stored(row[0], row[1]), user_id=user_id, if_version=None,
        rule=OwnerRule.IF_GIVEN,
    )  # fmt: skip
    count: int = row[2]
    return count


async def pop(
    connection: Connection, sql: SQL, label: str, session_id: str, user_id: str | None, n: int
) -> list[str]:
    async with connection.transaction():
        total = await _locked(connection, sql, label, session_id, user_id)
        if not total:
            return []
        rows = await connection.fetch(sql.pop, session_id, max(total - n, 0), total)
    return [row[0] for row in rows]


async def truncate(
    connection: Connection,
    sql: SQL,
    label: str,
    session_id: str,
    user_id: str | None,
    keep_last: int,
) -> int:
    async with connection.transaction():
        total = await _locked(connection, sql, label, session_id, user_id)
        if not total or total <= keep_last:
            return 0
        removed = total - keep_last
        await connection.execute(sql.truncate, session_id, removed, total)
        await connection.execute(sql.move_back, session_id)
    return removed


async def fork(
    connection: Connection,
    sql: SQL,
    label: str,
    session_id: str,
    new_session_id: str,
    at_run: str | None,
    user_id: str | None,
    ttl_us: int | None,
) -> tuple[Any, int] | None:
    """The new session's row and its run count; None when the source is absent or another
    user's."""
    async with connection.transaction():
        await connection.execute(sql.purge_ids, [new_session_id])  # an expired one is gone
        source = await connection.fetchrow(sql.fork_source, session_id)
        if source is None or (user_id is not None and source[0] != user_id):
            return None
        copied: int = source[1]
        if at_run is not None:
            seq = await connection.fetchval(sql.run_seq, session_id, at_run)
            if seq is None:
                raise InvalidInputError(
                    f"{label}: run {at_run!r} is not in session {session_id!r}; nothing was written"
                )
            copied = seq + 1
        row = await connection.fetchrow(sql.fork, session_id, new_session_id, copied, ttl_us)
        if row is None:
            target = await _stored(connection, sql, new_session_id)
            raise conflict(label, new_session_id, 0, 0 if target is None else target.version)
    return row, copied


async def drop_tables(connection: Connection, sql: SQL) -> None:
    """drop(): the store's tables and functions, in one transaction."""
    async with connection.transaction():
        for statement in sql.drop:
            await connection.execute(statement)


async def delete_batch(
    connection: Connection, sql: SQL, user_id: str | None, batch: int
) -> tuple[int, int]:
    """Up to `batch` sessions of `user_id` (None: expired ones) and their runs, in one
    statement: (sessions, runs) deleted."""
    statement = sql.delete_expired if user_id is None else sql.delete_of_user
    row = await connection.fetchrow(statement, user_id, batch)
    return int(row[0]), int(row[1])


async def reseal(connection: Connection, sql: SQL, reseal: Reseal) -> bool:
    """Store the re-encrypted values of a session still at `reseal.version`, in one
    transaction whose first statement locks the session row (every write of the session locks
    it first too); its version and times stay."""
    if not set(reseal.fields) <= set(PAYLOAD_FIELDS):
        raise ValueError(f"not payload columns: {sorted(reseal.fields)}")
    names = list(reseal.fields)
    columns = ", ".join(f"{name} = ${i + 3}::text::jsonb" for i, name in enumerate(names))
    statement = (
        f"UPDATE {sql.table} SET {columns or 'version = version'} "
        "WHERE session_id = $1 AND version = $2 RETURNING 1"
    )
    async with connection.transaction():
        values = [to_db(reseal.fields[name]) for name in names]
        if await connection.fetchval(statement, reseal.session_id, reseal.version, *values) is None:
            return False
        if reseal.runs:
            await connection.executemany(
                sql.reseal_run,
                [(reseal.session_id, r.run_id, to_db(r.new)) for r in reseal.runs],
            )
    return True
