"""The SQLite driver's SQL, as named templates formatted once per store with its (checked) names.

Values are always bound (``?``); the only text spliced in is the table name, which
`_checks.check_name` has validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._activity import ActivityQuery
from .._paging import ListQuery

COLUMNS = (
    "session_id, session_type, user_id, agent_id, team_id, workflow_id, session_data, agent_data, "
    "team_data, workflow_data, metadata, summary, created_at, updated_at, version, run_count, "
    "incarnation"
)
# JSON comes back as bytes (CAST AS BLOB): orjson reads UTF-8 bytes directly, which saves making a
# str of every document only to encode it again.
SELECT_COLUMNS = (
    "session_id, session_type, user_id, agent_id, team_id, workflow_id, "
    "CAST(session_data AS BLOB), CAST(agent_data AS BLOB), CAST(team_data AS BLOB), "
    "CAST(workflow_data AS BLOB), CAST(metadata AS BLOB), CAST(summary AS BLOB), "
    "created_at, updated_at, version, run_count, incarnation"
)
# The entity a session counts under in `activity`: its agent, else its team, else its workflow.
ENTITY = "coalesce(agent_id, team_id, workflow_id)"
# Positions in a row selected with SELECT_COLUMNS.
SID, TYPE, USER, AGENT, TEAM, WORKFLOW, DATA = 0, 1, 2, 3, 4, 5, 6
CREATED, UPDATED, VERSION, RUN_COUNT, INCARNATION = 12, 13, 14, 15, 16

# The session_data an append leaves: ?1 replaces it, ?2 (an RFC 7396 merge patch) is merged into
# it by SQLite's json_patch, which keeps numbers and strings exactly as written. A document that
# held (or receives) integers beyond 64 bits keeps the codec's leading-space mark, so that it is
# read with the exact parser (see `_codec.loads`).
_NEW_DATA = """CASE
        WHEN ?1 IS NOT NULL THEN ?1
        WHEN ?2 IS NOT NULL THEN
            (CASE WHEN substr({old}, 1, 1) = ' ' OR substr(?2, 1, 1) = ' ' THEN ' ' ELSE '' END)
            || json_patch({old}, ?2)
        ELSE {old} END"""

_SELECT_SESSION = 'SELECT {select} FROM "{t}" WHERE session_id = ?'
# A session is live until its expiry (epoch microseconds; NULL: never) has passed: every read
# leaves the others out, whether or not `purge_expired` has deleted them yet.
LIVE = "(expires_at IS NULL OR expires_at > {now})"
# read: ?1 session_id, ?2 now.
_READ_SESSION = 'SELECT {select} FROM "{t}" WHERE session_id = ?1 AND {live}'
# The owner, version, run count, incarnation, and the latest lease token: the session's own, or
# its lease row's when newer (a session deleted and created again by an unfenced write).
_SELECT_OWNER = """
    SELECT user_id, version, run_count, incarnation,
        max(coalesce(lease_token, 0),
            coalesce((SELECT token FROM "{t}_leases" l WHERE l.session_id = s.session_id), 0)),
        expires_at,
        CASE WHEN json_type(session_data) = 'object' THEN NULL ELSE substr(session_data, 1, 80) END
    FROM "{t}" s WHERE session_id = ?
"""
# The token of a session's lease row (a write that creates the session starts from it).
_LEASE_TOKEN = 'SELECT token FROM "{t}_leases" WHERE session_id = ?'
_SELECT_RUNS_FROM = """
    SELECT CAST(body AS BLOB), run_id FROM "{t}_runs" WHERE session_id = ? AND seq >= ? ORDER BY seq
"""
# The runs of the sessions of a listing page (?1: a JSON array of their ids), one row per run, in
# seq order within each session. One row per run costs SQLite less than one aggregated row per
# session: `group_concat` copies every body into a growing string (408 against 269 us for a page
# of 10 sessions of about 10 runs, SQLite 3.40), and the driver joins the bodies once to decode.
_SELECT_RUNS_OF_PAGE = """
    SELECT session_id, CAST(body AS BLOB), run_id FROM "{t}_runs"
    WHERE session_id IN (SELECT value FROM json_each(?1)) ORDER BY session_id, seq
"""
# The runs of a session whose ids are in ?2 (a JSON array): an append's retry check.
_SELECT_RUN_IDS = """
    SELECT run_id, seq, CAST(body AS BLOB) FROM "{t}_runs"
    WHERE session_id = ?1 AND run_id IN (SELECT value FROM json_each(?2))
"""
# An upsert's check that no run before its offset (?2) holds the id of a run it wrote (?3). By the
# run-id index: left to itself SQLite walks the `(session_id, seq)` key below the offset for the
# ORDER BY, every run of the history (572 against 8.6 us for a session of 1,000 runs).
_HELD_RUN_ID = """
    SELECT run_id FROM "{t}_runs" INDEXED BY "{t}_runs_id"
    WHERE session_id = ?1 AND seq < ?2 AND run_id IN (SELECT value FROM json_each(?3))
    ORDER BY seq LIMIT 1
"""
# usage(): sessions and runs, and the bytes of each of the store's tables with its indexes
# (SQLite's dbstat table, aggregated per b-tree; ?1 a JSON array of the table names).
_USAGE_COUNTS = 'SELECT count(*), coalesce(sum(run_count), 0) FROM "{t}"'
_USAGE_BYTES = """
    SELECT m.tbl_name, sum(d.pgsize) FROM dbstat('main', 1) d
    JOIN sqlite_schema m ON m.name = d.name
    WHERE m.tbl_name IN (SELECT value FROM json_each(?1)) GROUP BY m.tbl_name
"""
# Which of the sessions in ?1 (a JSON array of ids) exist: an upsert_many's check.
_SELECT_EXISTING = """
    SELECT session_id FROM "{t}" WHERE session_id IN (SELECT value FROM json_each(?1))
"""
_SELECT_RUN = """
    SELECT CAST(r.body AS BLOB) FROM "{t}_runs" r JOIN "{t}" s ON s.session_id = r.session_id
    WHERE r.session_id = ?1 AND r.run_id = ?2 AND (?3 IS NULL OR s.user_id = ?3)
        AND (s.expires_at IS NULL OR s.expires_at > ?4)
"""
# The new row's lease_token is its lease row's token: a stale holder's fence stays refused.
_INSERT_SESSION = """
    INSERT INTO "{t}" ({cols}, lease_token, expires_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
            (SELECT token FROM "{t}_leases" WHERE session_id = ?), ?)
"""
# A fenced write (the fence NULL: none) passes when no lease newer than its token was taken:
# neither the session's lease_token nor its lease row holds a larger one.
_FENCE_OK = """({fence} IS NULL OR (coalesce(lease_token, 0) <= {fence} AND NOT EXISTS (
        SELECT 1 FROM "{t}_leases" l WHERE l.session_id = {sid} AND l.token > {fence})))"""
# Ownership, if_version and the fence are checked by the UPDATE itself; no row back means one of
# them failed (or the session does not exist) and only then is the row read to say which. Runs
# before the session's `runs_offset` were not loaded by the caller and are kept: run_count
# restarts from min(stored run_count, runs_offset). ?18 the new expiry (NULL: keep). An expired
# session is not updated: the write removes it and creates it anew (`_work._stored`).
_UPDATE_SESSION = """
    UPDATE "{t}" SET session_type = ?1, agent_id = ?2, team_id = ?3, workflow_id = ?4,
        session_data = ?5, agent_data = ?6, team_data = ?7, workflow_data = ?8, metadata = ?9,
        summary = ?10, updated_at = ?11, version = version + 1,
        run_count = min(run_count, ?12) + ?13, expires_at = coalesce(?18, expires_at)
    WHERE session_id = ?14 AND user_id IS ?15 AND (?16 IS NULL OR version = ?16)
        AND {fence_ok} AND {live_now11}
    RETURNING created_at, version, run_count, incarnation
"""
# append_runs: ?1 session_data, ?2 state_patch (never merged into a state stored encrypted: a JSON
# string, see `_rules.sealed_key`), ?3 now, ?4 runs appended, ?5 session_id,
# ?6 user_id (NULL: no owner check; the owner of a new session), ?7 if_version, ?8 incarnation,
# ?9 fence (NULL: none), ?10 the expiry of a session it creates, ?11 the new expiry of one it
# updates (NULL: keep).
_APPEND_INSERT = """
    INSERT INTO "{t}" ({cols}, lease_token, expires_at)
    VALUES (?5, 'agent', ?6, NULL, NULL, NULL, {new_data_insert}, NULL, NULL, NULL,
            NULL, NULL, ?3, ?3, 1, ?4, ?8,
            (SELECT token FROM "{t}_leases" WHERE session_id = ?5), ?10)
    RETURNING {select}
"""
# Without an expiry to set (?11 NULL), the UPDATE leaves expires_at out of the SET: SQLite
# rewrites the entries of every index holding a column the SET names, even when its value does
# not change, and the entity index holds expires_at. When the caller gave run ids (?12: one id, or
# a JSON array of several), the UPDATE also checks that the session holds none of them: the
# common case (a first attempt) then needs no statement of its own for the retry check.
_APPEND_UPDATE = """
    UPDATE "{t}" SET session_data = {new_data}, updated_at = ?3,
        version = version + 1, run_count = run_count + ?4{set_expires}
    WHERE session_id = ?5 AND (?6 IS NULL OR user_id = ?6) AND (?7 IS NULL OR version = ?7)
        AND (?2 IS NULL OR substr(session_data, 1, 1) <> '"') AND {append_fence_ok}
        AND {live_now3}{ids_absent}
    RETURNING {select}
"""
_SET_EXPIRES = ", expires_at = coalesce(?11, expires_at)"
_IDS_ABSENT = """
        AND NOT EXISTS (SELECT 1 FROM "{t}_runs" WHERE session_id = ?5 AND run_id {match})"""
_ONE_ID, _SEVERAL_IDS = "= ?12", "IN (SELECT value FROM json_each(?12))"
# pop_runs, truncate_runs, clear_runs: the history shrinks to ?2 runs.
_SHRINK = """
    UPDATE "{t}" SET run_count = ?2, version = version + 1, updated_at = ?3 WHERE session_id = ?1
"""
_DELETE_RUNS_BEFORE = 'DELETE FROM "{t}_runs" WHERE session_id = ? AND seq < ?'
# Runs moved to the start of the history in two passes (negative seqs in between), so that no
# two rows ever hold one (session_id, seq).
_MOVE_RUNS_DOWN = """
    UPDATE "{t}_runs" SET seq = -1 - (seq - ?2) WHERE session_id = ?1 AND seq >= ?2
"""
_MOVE_RUNS_BACK = 'UPDATE "{t}_runs" SET seq = -1 - seq WHERE session_id = ?1 AND seq < 0'
# fork_session: ?1 the new id, ?2 the source id, ?3 now, ?4 runs copied, ?5 incarnation, ?6 the
# copy's expiry (a new session's).
_FORK_SESSION = """
    INSERT INTO "{t}" ({cols}, lease_token, expires_at)
    SELECT ?1, session_type, user_id, agent_id, team_id, workflow_id, session_data, agent_data,
        team_data, workflow_data, metadata, summary, ?3, ?3, 1, ?4, ?5,
        (SELECT token FROM "{t}_leases" WHERE session_id = ?1), ?6
    FROM "{t}" WHERE session_id = ?2
    RETURNING {select}
"""
# The copies keep their source's write times.
_FORK_RUNS = """
    INSERT INTO "{t}_runs" (session_id, seq, run_id, body, created_at)
    SELECT ?1, seq, run_id, body, created_at FROM "{t}_runs" WHERE session_id = ?2 AND seq < ?3
"""
# A run's created_at is the time of the write that stored it (the session's updated_at then).
_INSERT_RUN = """
    INSERT INTO "{t}_runs" (session_id, seq, run_id, body, created_at) VALUES (?, ?, ?, ?, ?)
"""
# Rewriting a run that did not change costs a lookup, not a page write. A run rewritten under
# its own id keeps its time; another run at that position gets the time of this write.
_UPSERT_RUN = """
    INSERT INTO "{t}_runs" (session_id, seq, run_id, body, created_at) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (session_id, seq) DO UPDATE SET run_id = excluded.run_id, body = excluded.body,
        created_at = CASE WHEN run_id IS excluded.run_id THEN created_at
                          ELSE excluded.created_at END
    WHERE run_id IS NOT excluded.run_id OR body IS NOT excluded.body
"""
_DELETE_RUNS_FROM = 'DELETE FROM "{t}_runs" WHERE session_id = ? AND seq >= ?'
_DELETE_SESSION = 'DELETE FROM "{t}" WHERE session_id = ?'
# delete_session: ?2 the user_id filter (NULL: none); the expiry says whether it was still live.
_DELETE_SESSION_OF = """
    DELETE FROM "{t}" WHERE session_id = ?1 AND (?2 IS NULL OR user_id = ?2) RETURNING expires_at
"""
# purge_expired and delete_user: up to ?2 sessions (expired by ?1, or of the user ?1) and then
# the runs of those (?1 a JSON array of their ids).
_DELETE_EXPIRED = """
    DELETE FROM "{t}" WHERE session_id IN (
        SELECT session_id FROM "{t}" WHERE expires_at <= ?1 LIMIT ?2) RETURNING session_id
"""
_DELETE_OF_USER = """
    DELETE FROM "{t}" WHERE session_id IN (
        SELECT session_id FROM "{t}" WHERE user_id = ?1 LIMIT ?2) RETURNING session_id
"""
_DELETE_RUNS_OF = 'DELETE FROM "{t}_runs" WHERE session_id IN (SELECT value FROM json_each(?1))'
# rotate_keys: a run's body written again (the session row is checked and written first).
_RESEAL_RUN = 'UPDATE "{t}_runs" SET body = ?1 WHERE session_id = ?2 AND run_id = ?3'
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
    read_session: str
    select_owner: str
    lease_token: str
    select_runs_from: str
    select_runs_of_page: str
    select_run_ids: str
    held_run_id: str
    select_existing: str
    usage_counts: str
    usage_bytes: str
    select_run: str
    insert_session: str
    update_session: str
    append_insert: str
    # The append's UPDATE by (sets an expiry, ids given: 0, 1, 2 for several), with the number
    # of parameters it takes (see `_APPEND_UPDATE`).
    append_updates: dict[tuple[bool, int], tuple[str, int]]
    shrink: str
    delete_runs_before: str
    move_runs_down: str
    move_runs_back: str
    fork_session: str
    fork_runs: str
    insert_run: str
    upsert_run: str
    delete_runs_from: str
    delete_session: str
    delete_session_of: str
    delete_expired: str
    delete_of_user: str
    delete_runs_of: str
    reseal_run: str
    history_exists: str
    create_history: str
    select_history: str
    insert_history: str
    schema_version: str
    drop: tuple[str, ...]

    @classmethod
    def for_table(cls, table: str) -> SQL:
        def f(template: str, **extra: str) -> str:
            return template.format(
                **extra,
                t=table,
                cols=COLUMNS,
                select=SELECT_COLUMNS,
                new_data=_NEW_DATA.format(old="session_data"),
                new_data_insert=_NEW_DATA.format(old="'{}'"),
                fence_ok=_FENCE_OK.format(t=table, fence="?17", sid="?14"),
                append_fence_ok=_FENCE_OK.format(t=table, fence="?9", sid="?5"),
                live=LIVE.format(now="?2"),
                live_now11=LIVE.format(now="?11"),
                live_now3=LIVE.format(now="?3"),
            )

        return cls(
            table=table,
            history_table=f"{table}_migrations",
            select_session=f(_SELECT_SESSION),
            read_session=f(_READ_SESSION),
            select_owner=f(_SELECT_OWNER),
            lease_token=f(_LEASE_TOKEN),
            select_runs_from=f(_SELECT_RUNS_FROM),
            select_runs_of_page=f(_SELECT_RUNS_OF_PAGE),
            select_run_ids=f(_SELECT_RUN_IDS),
            held_run_id=f(_HELD_RUN_ID),
            select_existing=f(_SELECT_EXISTING),
            usage_counts=f(_USAGE_COUNTS),
            usage_bytes=_USAGE_BYTES,
            select_run=f(_SELECT_RUN),
            insert_session=f(_INSERT_SESSION),
            update_session=f(_UPDATE_SESSION),
            append_insert=f(_APPEND_INSERT),
            append_updates={
                (expiry, ids): (
                    f(
                        _APPEND_UPDATE,
                        set_expires=_SET_EXPIRES if expiry else "",
                        ids_absent=(
                            ""
                            if not ids
                            else _IDS_ABSENT.format(t=table, match=(_ONE_ID, _SEVERAL_IDS)[ids - 1])
                        ),
                    ),
                    12 if ids else 11 if expiry else 9,
                )
                for expiry in (False, True)
                for ids in (0, 1, 2)
            },
            shrink=f(_SHRINK),
            delete_runs_before=f(_DELETE_RUNS_BEFORE),
            move_runs_down=f(_MOVE_RUNS_DOWN),
            move_runs_back=f(_MOVE_RUNS_BACK),
            fork_session=f(_FORK_SESSION),
            fork_runs=f(_FORK_RUNS),
            insert_run=f(_INSERT_RUN),
            upsert_run=f(_UPSERT_RUN),
            delete_runs_from=f(_DELETE_RUNS_FROM),
            delete_session=f(_DELETE_SESSION),
            delete_session_of=f(_DELETE_SESSION_OF),
            delete_expired=f(_DELETE_EXPIRED),
            delete_of_user=f(_DELETE_OF_USER),
            delete_runs_of=f(_DELETE_RUNS_OF),
            reseal_run=f(_RESEAL_RUN),
            history_exists=_HISTORY_EXISTS,
            create_history=f(_CREATE_HISTORY),
            select_history=f(_SELECT_HISTORY),
            insert_history=f(_INSERT_HISTORY),
            schema_version=f(_SCHEMA_VERSION),
            drop=(
                f('DROP TABLE IF EXISTS "{t}_leases"'),
                f('DROP TABLE IF EXISTS "{t}_runs"'),
                f('DROP TABLE IF EXISTS "{t}"'),
                f('DROP TABLE IF EXISTS "{t}_migrations"'),
            ),
        )

    def append_update(self, expiry: bool, ids: int) -> tuple[str, int]:
        """The append's UPDATE and its parameter count: `expiry` when it sets one (?11), `ids`
        the number of run ids the caller gave (?12 checks the session holds none of them)."""
        return self.append_updates[expiry, min(ids, 2)]

    def listing(
        self, query: ListQuery, now: int, *, ids_only: bool = False, count: bool = False
    ) -> tuple[str, list[Any]]:
        """A keyset listing of the sessions live at `now`: filters, then
        `(updated_at, session_id) < cursor`, newest first. Fetches one row more than the limit
        so the caller knows whether a next page exists."""
        where: list[str] = [LIVE.format(now="?")]
        params: list[Any] = [now]
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
        columns = "count(*)" if count else "session_id" if ids_only else SELECT_COLUMNS
        sql = f'SELECT {columns} FROM "{self.table}" WHERE ' + " AND ".join(where)
        if count:
            return sql, params
        sql += " ORDER BY updated_at DESC, session_id DESC"
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit + 1)
        return sql, params

    def activity(self, query: ActivityQuery, now: int) -> tuple[tuple[str, list[Any]], ...]:
        """`activity`'s three counts (see `ActivityCounts`) over the sessions live at `now`: per
        entity, active sessions, runs per entity and bucket. Each is one GROUP BY (or one
        aggregate) in the database."""
        t, runs = f'"{self.table}"', f'"{self.table}_runs"'
        live = LIVE.format(now="?")
        owner = "" if query.user_id is None else " AND user_id = ?"
        mine = [] if query.user_id is None else [query.user_id]
        hour, day, week = query.active_after_us
        entities = (
            f"SELECT {ENTITY}, count(*), coalesce(sum(run_count), 0) FROM {t} "
            f"WHERE {live}{owner} GROUP BY 1",
            [now, *mine],
        )
        active = (
            "SELECT coalesce(sum(updated_at > ?), 0), coalesce(sum(updated_at > ?), 0), count(*) "
            f"FROM {t} WHERE updated_at > ? AND updated_at <= ? AND {live}{owner}",
            [hour, day, week, query.now_us, now, *mine],
        )
        # Runs grouped by session first (one lookup of the session per session and bucket, not
        # per run), from the (created_at, session_id) index.
        turns = (
            f"SELECT {ENTITY}, r.b, sum(r.n) FROM ("
            f"SELECT session_id, (created_at - ?) / ? AS b, count(*) AS n FROM {runs} "
            "WHERE created_at >= ? AND created_at <= ? GROUP BY session_id, b"
            f") r JOIN {t} s ON s.session_id = r.session_id"
            " WHERE (s.expires_at IS NULL OR s.expires_at > ?)"
            + ("" if query.user_id is None else " AND s.user_id = ?")
            + " GROUP BY 1, 2",
            [query.since_us, query.bucket_us, query.since_us, query.now_us, now, *mine],
        )
        return entities, active, turns
