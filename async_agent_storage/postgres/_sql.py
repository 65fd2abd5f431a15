"""The PostgreSQL driver's SQL, as named templates formatted once per store with its (checked,
quoted) names.

Values are always bound (``$1``...); the only text spliced in is the schema and table names,
which `_checks.check_name` validated (or the server's `current_schema()`, quoted).

JSON crosses the wire as text (``$n::text::jsonb`` in, ``column::text`` out): the statements
then work on any asyncpg connection, whatever `jsonb` codec it has registered (a pool passed in
keeps its own), and the store decodes with the shared codec. See `_jsonb` for the encoding.
Run bodies are `text` (migration 7): kept as written and read back as they are, with no
conversion from `jsonb`'s binary form, the largest part of a read's server time; they are
written with `_jsonb`'s encoding all the same, so old and new rows read back alike. A read keeps
each body's text and the row's `xmin`, so that an upsert need not send the runs it left as they
were (`update_skipping`).

Every hot statement is one round trip. The session row is written first (``INSERT ... ON
CONFLICT DO UPDATE`` or ``UPDATE``, which lock it and see its latest committed version, so
concurrent writers of one session queue on that row) and the runs are written from its
``RETURNING`` in the same statement.

Runs live at ``seq`` 0 .. ``run_count - 1``. A data-modifying statement cannot see rows that
another transaction committed after the statement's snapshot was taken, so a ``DELETE`` racing
with an append may leave that append's runs behind at ``seq >= run_count``: every read therefore
bounds ``seq`` by ``run_count``, and every write of runs is an upsert that overwrites such
leftovers. They cost space only, until the next write or delete of that session removes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._activity import ActivityQuery
from .._paging import ListQuery
from .._time import from_us

# The merge-patch function applied to the stored state in the append statements: `_patch`
# replaces it by an expression.
MERGE_CALL = "{merge_patch}(s.session_data, $6::text::jsonb)"
PATCH_FIRST = 13  # the first parameter of that expression

# Positions in a row selected with `_COLUMNS`; `RUNS` and `RUN_IDS` are the aggregated runs and
# their ids, and `ROW_VERSION` the row's `xmin` (as text), when selected (`_WITH_RUNS`).
SID, TYPE, USER, AGENT, TEAM, WORKFLOW, DATA = 0, 1, 2, 3, 4, 5, 6
AGENT_DATA, TEAM_DATA, WORKFLOW_DATA, METADATA, SUMMARY = 7, 8, 9, 10, 11
CREATED, UPDATED, VERSION, RUN_COUNT, RUNS, RUN_IDS, ROW_VERSION = 12, 13, 14, 15, 16, 17, 18

MAX_INT4 = 2**31 - 1

# A session is live until its expiry (NULL: never) has passed, by the server's clock: every read
# leaves the others out, whether or not `purge_expired` has deleted them yet.
LIVE = "({s}expires_at IS NULL OR {s}expires_at > now())"
_LIVE_S = LIVE.format(s="s.")
# The expiry a write leaves: $a the caller's expires_at, $c a new session's time-to-live and $u
# an existing one's (sliding), both in microseconds; NULL: none (an update keeps the stored one).
_EXPIRES_NEW = "coalesce({a}::timestamptz, now() + {c}::bigint * interval '1 microsecond')"
_EXPIRES_SET = (
    "coalesce({a}::timestamptz, now() + {u}::bigint * interval '1 microsecond', s.expires_at)"
)

_COLUMNS = (
    "s.session_id, s.session_type, s.user_id, s.agent_id, s.team_id, s.workflow_id, "
    "s.session_data::text, s.agent_data::text, s.team_data::text, s.workflow_data::text, "
    "s.metadata::text, s.summary::text, s.created_at, s.updated_at, s.version, s.run_count"
)

# The runs of session `s` from seq `{first}`: their bodies and their ids, in order. Each body's
# text is kept (`RunList`), so that an upsert of runs the caller left unchanged need not send them
# (`update_skipping`).
_RUNS_OF = """LEFT JOIN LATERAL (
    SELECT array_agg(r.body ORDER BY r.seq) AS bodies,
           array_agg(r.run_id ORDER BY r.seq) AS ids
    FROM {runs} r
    WHERE r.session_id = s.session_id AND r.seq >= {first} AND r.seq < s.run_count
) runs ON true"""

# $1 session_id, $2 user_id filter (NULL: none), $3 last_runs (NULL: all).
# The columns of a session selected with its runs: the row's `xmin` is the identity of the row
# version read (any write of the session, and a delete and create again, makes a new one).
_WITH_RUNS = _COLUMNS + ", runs.bodies, runs.ids, s.xmin::text"

_READ = """
SELECT {with_runs}
FROM {t} s {runs_of}
WHERE s.session_id = $1 AND ($2::text IS NULL OR s.user_id = $2::text) AND {live}
"""

# Write the runs of `up` (one row: the session as just written): the ids `{ids}` and bodies
# `{bodies}` go to seq run_count - n .. run_count - 1. A run that did not change is not rewritten.
# A run's created_at is the time of the write that stored it (the session's updated_at); a run
# rewritten under its own id keeps its time.
_WRITE_RUNS = """
runs AS (
    INSERT INTO {runs} AS r (session_id, seq, run_id, body, created_at)
    SELECT {sid}, up.run_count - cardinality({ids}::text[]) + t.ord::integer - 1,
           t.run_id, t.body, up.updated_at
    FROM up, unnest({ids}::text[], {bodies}::text[]) WITH ORDINALITY AS t(run_id, body, ord)
    ON CONFLICT (session_id, seq) DO UPDATE SET run_id = excluded.run_id, body = excluded.body,
        created_at = CASE WHEN r.run_id = excluded.run_id THEN r.created_at
                          ELSE excluded.created_at END
    WHERE (r.run_id, r.body) IS DISTINCT FROM (excluded.run_id, excluded.body)
)"""

# The runs past the new end of the history (an upsert that shortened it).
_DROP_TAIL = """
tail AS (
    DELETE FROM {runs} r USING up WHERE r.session_id = $1 AND r.seq >= up.run_count
)"""

# A fenced write ({fence} NULL: none) passes when no lease newer than its token was taken: the
# session row's lease_token, which taking a lease writes in the same transaction as the lease row
# (an UPDATE re-checks it on the row it locked, so it serializes with that transaction), and the
# lease row itself (a session deleted and created again by an unfenced write has no token).
_FENCE_OK = """({fence}::bigint IS NULL OR (coalesce(s.lease_token, 0) <= {fence}::bigint
        AND NOT EXISTS (SELECT 1 FROM {leases} l
                        WHERE l.session_id = $1 AND l.token > {fence}::bigint)))"""

# upsert, $1..$12 the session's columns, $13 runs_offset, $14 run ids, $15 run bodies,
# $16 if_version (NULL or 0 here; 0: the session must not exist), $17 the lease token of a
# session it creates (NULL, or under a fence the token of its lease row, see `_writes`),
# $18..$20 the expiry (`_EXPIRES_NEW`, `_EXPIRES_SET`).
# The session's runs before min(runs_offset, stored run_count) were not loaded: they are kept.
# The owner never changes: the stored user_id must be the session's, NULL included. An expired
# session is not updated: the write deletes it and creates it anew (`_writes._stored`).
_UPSERT = """
WITH up AS (
    INSERT INTO {t} AS s (session_id, session_type, user_id, agent_id, team_id, workflow_id,
        session_data, agent_data, team_data, workflow_data, metadata, summary,
        created_at, updated_at, version, run_count, lease_token, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9::text::jsonb,
        $10::text::jsonb, $11::text::jsonb, $12::text::jsonb, now(), now(), 1,
        cardinality($14::text[]), $17::bigint, {expires_new})
    ON CONFLICT (session_id) DO UPDATE SET
        session_type = excluded.session_type, agent_id = excluded.agent_id,
        team_id = excluded.team_id, workflow_id = excluded.workflow_id,
        session_data = excluded.session_data, agent_data = excluded.agent_data,
        team_data = excluded.team_data, workflow_data = excluded.workflow_data,
        metadata = excluded.metadata, summary = excluded.summary,
        updated_at = excluded.updated_at, version = s.version + 1,
        run_count = least($13::integer, s.run_count) + cardinality($14::text[]),
        expires_at = {expires_set}
    WHERE s.user_id IS NOT DISTINCT FROM excluded.user_id
      AND ($16::bigint IS NULL OR s.version = $16::bigint) AND {live}
    RETURNING s.created_at, s.updated_at, s.version, s.run_count, s.xmin::text AS row_version
),
{tail},
{write_runs}
SELECT created_at, updated_at, version, run_count, row_version FROM up
"""

# upsert with if_version >= 1 or a fence: the same parameters but $17, the fence; only an existing
# session at that version (if given) owned by the same user, with no newer lease, is written.
_UPDATE = """
WITH up AS (
    UPDATE {t} AS s SET
        session_type = $2, agent_id = $4, team_id = $5, workflow_id = $6,
        session_data = $7::text::jsonb, agent_data = $8::text::jsonb,
        team_data = $9::text::jsonb, workflow_data = $10::text::jsonb,
        metadata = $11::text::jsonb, summary = $12::text::jsonb,
        updated_at = now(), version = s.version + 1,
        run_count = least($13::integer, s.run_count) + cardinality($14::text[]),
        expires_at = {expires_set}
    WHERE s.session_id = $1 AND s.user_id IS NOT DISTINCT FROM $3::text
      AND ($16::bigint IS NULL OR s.version = $16::bigint) AND {fence_ok} AND {live}
      AND ($19::bigint IS NULL OR true)  -- a new session's ttl: the UPSERT's parameters
      {guard}
    RETURNING s.created_at, s.updated_at, s.version, s.run_count, s.xmin::text AS row_version
),
{tail},
{write_runs}
SELECT created_at, updated_at, version, run_count, row_version FROM up
"""

# `update` of a session read with `RunList` runs, sending only the runs after those the caller
# left unchanged ($13 the seq of the first run sent): it writes only when the row is the very
# version that was read ($21 its xmin, $22 its version), whose runs are then the ones read. When
# it writes nothing, the driver sends the whole write as usual.
_SKIP_GUARD = "AND s.xmin::text = $21::text AND s.version = $22::bigint"

# append_runs: $1 session_id, $2 user_id (NULL: no owner check; the owner of a new session),
# $3 session_data (NULL: keep), $4 run ids, $5 run bodies, $6 state_patch (NULL: none; an RFC 7396
# merge patch applied by the store's merge-patch function, never to a state stored encrypted: a
# JSON string, see `_rules.sealed_key`), $7 if_version (NULL: any; 0: the
# session must not exist), $8 the lease token of a session it creates (NULL, or under a fence the
# token of its lease row, see `_writes`), $9..$11 the expiry (`_EXPIRES_NEW`, `_EXPIRES_SET`),
# $12 the session_data of a session it creates (the data, or the patch applied to {} in Python:
# the merge-patch function runs only on a stored state). A patch is usually bound as an expression
# instead of the function's call (`MERGE_CALL`, see `_patch`), its values from $13 on.
# Returns the session without runs (session_data only
# when it was not replaced: the caller has the one it passed). A run id the session holds
# already fails the statement on the runs' unique (session_id, run_id) constraint, checked at
# its end: the driver then appends only the new ones (see `PostgresStore._append_row`).
_APPEND = """
WITH up AS (
    INSERT INTO {t} AS s (session_id, session_type, user_id, session_data,
        created_at, updated_at, version, run_count, lease_token, expires_at)
    SELECT $1, 'agent', $2,
        coalesce($12::text::jsonb, '{{}}'::jsonb),
        now(), now(), 1, cardinality($4::text[]), $8::bigint, {append_expires_new}
    WHERE $7::bigint IS NULL OR $7::bigint = 0
    ON CONFLICT (session_id) DO UPDATE SET
        session_data = CASE WHEN $3::text IS NOT NULL THEN excluded.session_data
                            WHEN $6::text IS NOT NULL
                                THEN {merge_call}
                            ELSE s.session_data END,
        updated_at = excluded.updated_at, version = s.version + 1,
        run_count = s.run_count + cardinality($4::text[]), expires_at = {append_expires_set}
    WHERE ($2::text IS NULL OR s.user_id = $2::text)
      AND ($7::bigint IS NULL OR s.version = $7::bigint) AND {live}
      AND ($6::text IS NULL OR jsonb_typeof(s.session_data) = 'object')
    RETURNING s.session_id, s.session_type, s.user_id, s.agent_id, s.team_id, s.workflow_id,
        CASE WHEN $3::text IS NULL THEN s.session_data::text END,
        s.agent_data::text, s.team_data::text, s.workflow_data::text, s.metadata::text,
        s.summary::text, s.created_at, s.updated_at, s.version, s.run_count
),
{write_runs}
SELECT * FROM up
"""
# With if_version >= 1 or a fence ($8) the append is an UPDATE of an existing session (a fenced
# append that creates the session is `_APPEND` under the lease row's lock, see `_writes`), with
# the same parameters.
_APPEND_UPDATE = """
WITH up AS (
    UPDATE {t} AS s SET
        session_data = CASE WHEN $3::text IS NOT NULL THEN $3::text::jsonb
                            WHEN $6::text IS NOT NULL
                                THEN {merge_call}
                            ELSE s.session_data END,
        updated_at = now(), version = s.version + 1,
        run_count = s.run_count + cardinality($4::text[]), expires_at = {append_expires_set}
    WHERE s.session_id = $1 AND ($2::text IS NULL OR s.user_id = $2::text)
      AND ($7::bigint IS NULL OR s.version = $7::bigint) AND {append_fence_ok} AND {live}
      AND ($6::text IS NULL OR jsonb_typeof(s.session_data) = 'object')
      AND ($10::bigint IS NULL OR true)  -- a new session's ttl and state: the INSERT's parameters
      AND ($12::text IS NULL OR true)
    RETURNING s.session_id, s.session_type, s.user_id, s.agent_id, s.team_id, s.workflow_id,
        CASE WHEN $3::text IS NULL THEN s.session_data::text END,
        s.agent_data::text, s.team_data::text, s.workflow_data::text, s.metadata::text,
        s.summary::text, s.created_at, s.updated_at, s.version, s.run_count
),
{write_runs}
SELECT * FROM up
"""

# The runs of a session whose ids are in $2, with the session's run_count (runs at seq >=
# run_count are leftovers, not part of the history; those of an expired session too): an
# append's retry check.
_SELECT_RUN_IDS = """
SELECT r.run_id, r.seq, r.body::text, CASE WHEN {live} THEN s.run_count ELSE 0 END
FROM {runs} r JOIN {t} s ON s.session_id = r.session_id
WHERE r.session_id = $1 AND r.run_id = ANY($2::text[])
"""
_SELECT_SESSION = "SELECT {cols} FROM {t} s WHERE s.session_id = $1"
_DELETE_LEFTOVERS = """
DELETE FROM {runs} r USING {t} s
WHERE s.session_id = $1 AND r.session_id = $1 AND r.seq >= s.run_count
"""

# get_run: $1 session_id, $2 run_id, $3 user_id filter (NULL: none).
_GET_RUN = """
SELECT r.body::text FROM {runs} r JOIN {t} s ON s.session_id = r.session_id
WHERE r.session_id = $1 AND r.run_id = $2 AND r.seq < s.run_count
  AND ($3::text IS NULL OR s.user_id = $3::text) AND {live}
"""

# pop_runs, truncate_runs, clear_runs: in a transaction that first locks the session row.
_LOCK = """
SELECT user_id, version, run_count FROM {t} s WHERE session_id = $1 AND {live} FOR UPDATE
"""
# The runs from seq $2 removed ($3: the run_count before; later seqs are leftovers), the history
# cut to $2 runs. Returns the removed runs of the history, oldest first.
_POP = """
WITH gone AS (
    DELETE FROM {runs} WHERE session_id = $1 AND seq >= $2 RETURNING seq, body
),
up AS (
    UPDATE {t} SET run_count = $2, version = version + 1, updated_at = now()
    WHERE session_id = $1
)
SELECT body::text FROM gone WHERE seq < $3 ORDER BY seq
"""
# truncate: $2 runs removed from the start, $3 the run_count before. The kept runs move to seq 0
# in two passes (negative seqs in between), so no two rows ever hold one (session_id, seq).
_TRUNCATE = """
WITH gone AS (
    DELETE FROM {runs} WHERE session_id = $1 AND (seq < $2 OR seq >= $3)
),
up AS (
    UPDATE {t} SET run_count = $3 - $2, version = version + 1, updated_at = now()
    WHERE session_id = $1
)
UPDATE {runs} SET seq = -1 - (seq - $2) WHERE session_id = $1 AND seq >= $2 AND seq < $3
"""
_MOVE_BACK = "UPDATE {runs} SET seq = -1 - seq WHERE session_id = $1 AND seq < 0"

# fork_session, in a transaction: $1 source, the source row locked for share (no write changes it
# while it is copied).
_FORK_SOURCE = """
SELECT user_id, run_count FROM {t} s WHERE session_id = $1 AND {live} FOR SHARE
"""
_RUN_SEQ = """
SELECT r.seq FROM {runs} r JOIN {t} s ON s.session_id = r.session_id
WHERE r.session_id = $1 AND r.run_id = $2 AND r.seq < s.run_count
"""
# $1 source, $2 new id, $3 runs copied, $4 a new session's time-to-live (microseconds, NULL:
# none). Nothing when the new id exists.
_FORK = """
WITH new AS (
    INSERT INTO {t} AS s (session_id, session_type, user_id, agent_id, team_id, workflow_id,
        session_data, agent_data, team_data, workflow_data, metadata, summary,
        created_at, updated_at, version, run_count, expires_at)
    SELECT $2, session_type, user_id, agent_id, team_id, workflow_id, session_data, agent_data,
        team_data, workflow_data, metadata, summary, now(), now(), 1, $3,
        now() + $4::bigint * interval '1 microsecond'
    FROM {t} WHERE session_id = $1
    ON CONFLICT (session_id) DO NOTHING
    RETURNING {cols}
),
runs AS (
    INSERT INTO {runs} (session_id, seq, run_id, body, created_at)
    SELECT $2, r.seq, r.run_id, r.body, r.created_at FROM {runs} r, new
    WHERE r.session_id = $1 AND r.seq < $3
)
SELECT * FROM new
"""

# delete_session: $1 session_id, $2 user_id filter (NULL: none); counts the session only when it
# had not expired (an expired one is gone already for every call; its rows go all the same).
_DELETE = """
WITH gone AS (
    DELETE FROM {t} WHERE session_id = $1 AND ($2::text IS NULL OR user_id = $2::text)
    RETURNING session_id, expires_at
),
runs AS (
    DELETE FROM {runs} r USING gone WHERE r.session_id = gone.session_id
)
SELECT count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now()) FROM gone
"""

# Only on the error path of a write: who owns the session, at which version it is, and the token
# of its latest lease (its own, or its lease row's when newer). An expired session is deleted
# here with its runs, and is absent: the write then creates it anew.
_SELECT_OWNER = """
WITH gone AS (
    DELETE FROM {t} WHERE session_id = $1 AND expires_at <= now() RETURNING session_id
),
runs AS (
    DELETE FROM {runs} r USING gone WHERE r.session_id = gone.session_id
)
SELECT s.user_id, s.version,
       greatest(coalesce(s.lease_token, 0),
                coalesce((SELECT l.token FROM {leases} l WHERE l.session_id = $1), 0)),
       CASE WHEN jsonb_typeof(s.session_data) <> 'object' THEN left(s.session_data::text, 80) END
FROM {t} s WHERE s.session_id = $1 AND NOT EXISTS (SELECT 1 FROM gone)
"""
# The expired sessions among $1 (ids), deleted with their runs: before a batch or a fork that
# may create them.
_PURGE_IDS = """
WITH gone AS (
    DELETE FROM {t} WHERE session_id = ANY($1::text[]) AND expires_at <= now()
    RETURNING session_id
)
DELETE FROM {runs} r USING gone WHERE r.session_id = gone.session_id
"""
# purge_expired and delete_user: up to $2 sessions (expired, or of the user $1) and their runs,
# in one statement; (sessions, runs) deleted. Rows being written are skipped by the purge.
_DELETE_BATCH = """
WITH gone AS (
    DELETE FROM {t} WHERE session_id IN (
        SELECT session_id FROM {t} WHERE {which} LIMIT $2 FOR UPDATE {skip}
    ) RETURNING session_id
),
runs AS (
    DELETE FROM {runs} r USING gone WHERE r.session_id = gone.session_id RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM runs)
"""
# rotate_keys: a run's body written again (after the session row, locked by its own UPDATE).
_RESEAL_RUN = "UPDATE {runs} SET body = $3::text WHERE session_id = $1 AND run_id = $2"
# A fenced write creating its session: the lease row's token, locked until the write commits, so
# no lease can be taken (and no new holder start its turn) in between.
_LOCK_LEASE = "SELECT token FROM {leases} WHERE session_id = $1 FOR SHARE"

# upsert_many, in one transaction: lock the sessions that exist (in session_id order, so two
# batches never deadlock), check owners and compute each one's run_count, then write all.
_LOCK_MANY = """
SELECT session_id, user_id, run_count FROM {t}
WHERE session_id = ANY($1::text[]) ORDER BY session_id FOR UPDATE
"""
_UPSERT_MANY = """
WITH up AS (
    INSERT INTO {t} AS s (session_id, session_type, user_id, agent_id, team_id, workflow_id,
        session_data, agent_data, team_data, workflow_data, metadata, summary,
        created_at, updated_at, version, run_count, expires_at)
    SELECT i.session_id, i.session_type, i.user_id, i.agent_id, i.team_id, i.workflow_id,
        i.session_data::jsonb, i.agent_data::jsonb, i.team_data::jsonb, i.workflow_data::jsonb,
        i.metadata::jsonb, i.summary::jsonb, now(), now(), 1, i.run_count, {many_expires_new}
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::integer[])
        AS i(session_id, session_type, user_id, agent_id, team_id, workflow_id, session_data,
             agent_data, team_data, workflow_data, metadata, summary, run_count)
    ON CONFLICT (session_id) DO UPDATE SET
        session_type = excluded.session_type, agent_id = excluded.agent_id,
        team_id = excluded.team_id, workflow_id = excluded.workflow_id,
        session_data = excluded.session_data, agent_data = excluded.agent_data,
        team_data = excluded.team_data, workflow_data = excluded.workflow_data,
        metadata = excluded.metadata, summary = excluded.summary,
        updated_at = excluded.updated_at, version = s.version + 1,
        run_count = excluded.run_count, expires_at = {many_expires_set}
    WHERE s.user_id IS NOT DISTINCT FROM excluded.user_id
    RETURNING s.session_id, s.created_at, s.updated_at, s.version, s.run_count
),
tail AS (
    DELETE FROM {runs} r USING unnest($1::text[], $13::integer[]) AS c(session_id, run_count)
    WHERE r.session_id = c.session_id AND r.seq >= c.run_count
),
runs AS (
    INSERT INTO {runs} AS r (session_id, seq, run_id, body, created_at)
    SELECT t.session_id, t.seq, t.run_id, t.body, now()
    FROM unnest($14::text[], $15::integer[], $16::text[], $17::text[])
        AS t(session_id, seq, run_id, body)
    ON CONFLICT (session_id, seq) DO UPDATE SET run_id = excluded.run_id, body = excluded.body,
        created_at = CASE WHEN r.run_id = excluded.run_id THEN r.created_at
                          ELSE excluded.created_at END
    WHERE (r.run_id, r.body) IS DISTINCT FROM (excluded.run_id, excluded.body)
)
SELECT session_id, created_at, updated_at, version, run_count FROM up
"""

# activity: $1 now, $2..$4 an hour, a day, a week before it, $5 since, $6 the bucket's unit for
# date_trunc ('hour' or 'day', UTC), $7 user_id filter (NULL: none). A session counts under its
# agent, else its team, else its workflow. Rows: (kind, entity, a, b, c, bucket): kind 0 per
# entity (a sessions, b runs), kind 1 the active sessions (a hour, b day, c week), kind 2 the runs
# (a) of an entity in a bucket (its start, UTC). Runs at seq >= run_count are leftovers, not
# history. One statement: one snapshot.
_ACTIVITY = """
SELECT 0, coalesce(agent_id, team_id, workflow_id), count(*), coalesce(sum(run_count), 0), 0,
       NULL::timestamp
FROM {t} WHERE ($7::text IS NULL OR user_id = $7::text) AND {live_t}
GROUP BY 2
UNION ALL
SELECT 1, NULL, count(*) FILTER (WHERE updated_at > $2::timestamptz),
       count(*) FILTER (WHERE updated_at > $3::timestamptz), count(*), NULL
FROM {t}
WHERE updated_at > $4::timestamptz AND updated_at <= $1::timestamptz
  AND ($7::text IS NULL OR user_id = $7::text) AND {live_t}
UNION ALL
SELECT 2, coalesce(s.agent_id, s.team_id, s.workflow_id), count(*), 0, 0,
       date_trunc($6::text, r.created_at AT TIME ZONE 'UTC')
FROM {runs} r JOIN {t} s ON s.session_id = r.session_id AND r.seq < s.run_count
WHERE r.created_at >= $5::timestamptz AND r.created_at <= $1::timestamptz
  AND ($7::text IS NULL OR s.user_id = $7::text) AND {live}
GROUP BY 2, 6
"""

# usage(): sessions and runs; then the bytes of the store's tables with their indexes and TOAST
# ($1 the schema, $2 the table names).
_USAGE_COUNTS = "SELECT count(*), coalesce(sum(run_count), 0) FROM {t}"
USAGE_BYTES = """
SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p')
"""

# --- schema and migrations ------------------------------------------------------------------

# $1 the quoted, qualified name of a table: NULL when it does not exist.
TABLE_EXISTS = "SELECT to_regclass($1) IS NOT NULL"
SCHEMA_EXISTS = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)"
SERVER_FACTS = (
    "SELECT current_schema(), current_setting('server_version_num')::integer, "
    "current_setting('server_encoding')"
)
ADVISORY_LOCK = "SELECT pg_advisory_xact_lock($1)"
# The time of the current transaction: what now() gives its statements.
TRANSACTION_TIME = "SELECT now()"
# WAL positions as byte offsets (read-your-writes on replicas, see `_replicas`): the primary's
# insert position, taken after a write committed, is past that write's commit record; a standby
# has applied the write once its replay position reaches it (NULL: not a standby).
WRITE_POSITION = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
REPLAY_POSITION = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
_CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"
_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS {history} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL
)
"""
_SELECT_HISTORY = "SELECT version, name, checksum, applied_at FROM {history} ORDER BY version"
_INSERT_HISTORY = """
INSERT INTO {history} (version, name, checksum, applied_at) VALUES ($1, $2, $3, now())
RETURNING applied_at
"""
_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM {history}"


def quote(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class SQL:
    """Every statement of one store, formatted for its schema and table."""

    schema: str
    name: str
    table: str
    runs_table: str
    history_table: str
    leases_table: str
    merge_patch: str
    merge_call: str  # the function applied to the stored state in `append`, `append_update`
    take_lease: str
    read: str
    upsert: str
    update: str
    update_skipping: str
    append: str
    append_update: str
    select_run_ids: str
    select_session: str
    delete_leftovers: str
    get_run: str
    lock: str
    pop: str
    truncate: str
    move_back: str
    fork_source: str
    run_seq: str
    fork: str
    delete: str
    select_owner: str
    usage_counts: str
    purge_ids: str
    delete_expired: str
    delete_of_user: str
    reseal_run: str
    lock_lease: str
    lock_many: str
    upsert_many: str
    create_schema: str
    create_history: str
    select_history: str
    insert_history: str
    schema_version: str
    drop: tuple[str, ...]

    @staticmethod
    def runs_name_of(name: str) -> str:
        """The runs table's name (unquoted) for the sessions table `name`."""
        return name + "_runs"

    @property
    def runs_name(self) -> str:
        return self.runs_name_of(self.name)

    @classmethod
    def for_table(cls, schema: str, name: str) -> SQL:
        t = f"{quote(schema)}.{quote(name)}"
        runs = f"{quote(schema)}.{quote(cls.runs_name_of(name))}"
        history = f"{quote(schema)}.{quote(name + '_migrations')}"
        leases = f"{quote(schema)}.{quote(name + '_leases')}"
        merge_patch = f"{quote(schema)}.{quote(name + '_merge_patch')}"
        take_lease = f"{quote(schema)}.{quote(name + '_take_lease')}"

        def f(template: str, **extra: str) -> str:
            return template.format(
                t=t,
                runs=runs,
                history=history,
                leases=leases,
                cols=_COLUMNS,
                with_runs=_WITH_RUNS,
                merge_patch=merge_patch,
                merge_call=MERGE_CALL.format(merge_patch=merge_patch),
                fence_ok=_FENCE_OK.format(fence="$17", leases=leases),
                append_fence_ok=_FENCE_OK.format(fence="$8", leases=leases),
                live=_LIVE_S,
                expires_new=_EXPIRES_NEW.format(a="$18", c="$19"),
                expires_set=_EXPIRES_SET.format(a="$18", u="$20"),
                append_expires_new=_EXPIRES_NEW.format(a="$9", c="$10"),
                append_expires_set=_EXPIRES_SET.format(a="$9", u="$11"),
                many_expires_new=_EXPIRES_NEW.format(a="NULL", c="$18"),
                many_expires_set=_EXPIRES_SET.format(a="NULL", u="$19"),
                **extra,
            )

        write_runs = f(_WRITE_RUNS, sid="$1", ids="$14", bodies="$15")
        append_runs = f(_WRITE_RUNS, sid="$1", ids="$4", bodies="$5")
        tail = f(_DROP_TAIL)
        return cls(
            schema=schema,
            name=name,
            table=t,
            runs_table=runs,
            history_table=history,
            leases_table=leases,
            merge_patch=merge_patch,
            merge_call=MERGE_CALL.format(merge_patch=merge_patch),
            take_lease=take_lease,
            read=f(_READ, runs_of=f(_RUNS_OF, first="greatest(s.run_count - $3::integer, 0)")),
            upsert=f(_UPSERT, tail=tail, write_runs=write_runs),
            update=f(_UPDATE, tail=tail, write_runs=write_runs, guard=""),
            update_skipping=f(_UPDATE, tail=tail, write_runs=write_runs, guard=_SKIP_GUARD),
            append=f(_APPEND, write_runs=append_runs),
            append_update=f(_APPEND_UPDATE, write_runs=append_runs),
            select_run_ids=f(_SELECT_RUN_IDS),
            select_session=f(_SELECT_SESSION),
            delete_leftovers=f(_DELETE_LEFTOVERS),
            get_run=f(_GET_RUN),
            lock=f(_LOCK),
            pop=f(_POP),
            truncate=f(_TRUNCATE),
            move_back=f(_MOVE_BACK),
            fork_source=f(_FORK_SOURCE),
            run_seq=f(_RUN_SEQ),
            fork=f(_FORK),
            delete=f(_DELETE),
            select_owner=f(_SELECT_OWNER),
            usage_counts=f(_USAGE_COUNTS),
            purge_ids=f(_PURGE_IDS),
            delete_expired=f(
                _DELETE_BATCH, which="expires_at <= now() AND $1::text IS NULL", skip="SKIP LOCKED"
            ),
            delete_of_user=f(_DELETE_BATCH, which="user_id = $1::text", skip=""),
            reseal_run=f(_RESEAL_RUN),
            lock_lease=f(_LOCK_LEASE),
            lock_many=f(_LOCK_MANY),
            upsert_many=f(_UPSERT_MANY),
            create_schema=_CREATE_SCHEMA.format(schema=quote(schema)),
            create_history=f(_CREATE_HISTORY),
            select_history=f(_SELECT_HISTORY),
            insert_history=f(_INSERT_HISTORY),
            schema_version=f(_SCHEMA_VERSION),
            drop=(
                f"DROP TABLE IF EXISTS {leases}",
                f"DROP TABLE IF EXISTS {runs}",
                f"DROP TABLE IF EXISTS {t}",
                f"DROP TABLE IF EXISTS {history}",
                f"DROP FUNCTION IF EXISTS {merge_patch}(jsonb, jsonb)",
                f"DROP FUNCTION IF EXISTS {take_lease}(text, text, text, double precision)",
            ),
        )

    def migration_names(self) -> dict[str, str]:
        """What the ``{placeholders}`` of a migration step stand for."""
        return {
            "table": self.table,
            "runs": self.runs_table,
            "name": self.name,
            "merge_patch": self.merge_patch,
            "leases": self.leases_table,
            "take_lease": self.take_lease,
        }

    def listing(
        self, query: ListQuery, *, ids_only: bool = False, count: bool = False
    ) -> tuple[str, list[Any]]:
        """A keyset listing: filters, then ``(updated_at, session_id) < cursor``, newest first.
        Fetches one row more than the limit so the caller knows whether a next page exists."""
        where: list[str] = []
        params: list[Any] = []

        def bind(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if query.user_id is not None:
            where.append(f"s.user_id = {bind(query.user_id)}")
        if query.session_type is not None:
            where.append(f"s.session_type = {bind(query.session_type)}")
        if query.entity_id is not None:
            entity = bind(query.entity_id)
            where.append(
                f"(s.agent_id = {entity} OR s.team_id = {entity} OR s.workflow_id = {entity})"
            )
        where.append(_LIVE_S)
        if query.updated_after_us is not None:
            where.append(f"s.updated_at > {bind(from_us(query.updated_after_us))}")
        if query.after is not None:
            updated_us, session_id = query.after
            where.append(
                f"(s.updated_at, s.session_id) < ({bind(from_us(updated_us))}, {bind(session_id)})"
            )
        source = f"{self.table} s"
        if count:
            columns = "count(*)"
        elif ids_only:
            columns = "s.session_id"
        elif query.include_runs:
            columns = _WITH_RUNS
            source += " " + _RUNS_OF.format(runs=self.runs_table, first="0")
        else:
            columns = _COLUMNS
        sql = f"SELECT {columns} FROM {source} WHERE " + " AND ".join(where)
        if count:
            return sql, params
        sql += " ORDER BY s.updated_at DESC, s.session_id DESC"
        if query.limit is not None:
            sql += f" LIMIT {bind(query.limit + 1)}"
        return sql, params

    def activity(self, query: ActivityQuery) -> tuple[str, list[Any]]:
        """`activity`'s three counts (see `ActivityCounts`) in one statement (`_ACTIVITY`)."""
        hour, day, week = query.active_after_us
        params: list[Any] = [
            from_us(query.now_us),
            from_us(hour),
            from_us(day),
            from_us(week),
            from_us(query.since_us),
            query.bucket,
            query.user_id,
        ]
        statement = _ACTIVITY.format(
            t=self.table, runs=self.runs_table, live=_LIVE_S, live_t=LIVE.format(s="")
        )
        return statement, params
