"""The MongoDB driver's documents, filters, updates and pipelines, as named builders.

Three collections per store (``{name}`` is the checked collection name):

``{name}`` — one document per session::

    {_id: session_id, session_type, user_id, agent_id, team_id, workflow_id,
     session_data, agent_data, team_data, workflow_data, metadata, summary,   # BSON documents
     created_at, updated_at,          # int64 microseconds since the epoch, UTC
     version,                         # +1 per write
     run_count,                       # runs in the history: seqs 0 .. run_count-1
     gen,                             # ObjectId of this incarnation (a deleted, re-created
                                      #   session never sees the old one's runs)
     esc,                             # bit mask of the JSON fields stored in an escaped form
     pending: [{v, start, t, w, runs: [{run_id, run, esc}]}],   # see below
     log_since, ids_log: [{v, ids}],  # the run ids given to the latest appends (see below)
     holds: [{v, low, high, t}],      # seqs a pop_runs is reading back (see below)
     lease_token,                     # the token of the session's latest lease (`_leases`)
     expires_at}                      # a BSON date (None: never); the TTL index (migration 5)

``{name}_runs`` — one document per run, unique on ``(session_id, gen, seq)``::

    {session_id, gen, seq, version, run_id, run, esc}   # version: the session write that wrote it

``{name}_migrations`` — the migration history (``_id`` = version) and the lease lock document.

``{name}_leases`` — one document per session ever leased (`store.lease`, see `_leases`)::

    {_id: session_id, holder, token, expires}    # expires: a BSON date, the server's clock

**How a write is atomic without a multi-document transaction.** Every write (append, upsert) is
one atomic update of the session document. The runs it writes go into that same update, as an
entry of ``pending`` holding the runs and the session version that wrote them, so the write is
complete and visible the moment that update commits. Afterwards the writer copies the runs to the
runs collection (idempotent, conditional on ``version``: an older write never overwrites a newer
one) and removes its entry from ``pending`` (an append does this in the background, after its
caller has the answer: `_writes.Writer.settle_later`). Readers take each seq from the runs
collection or from ``pending``, whichever holds the higher version, so a crash or a cancellation
between the steps leaves nothing half-done: the runs stay readable from ``pending``, and the
next write to the session copies entries left behind for longer than a few seconds. ``pending``
holds only writes in flight, so the session document does not grow with the history.

**Exactly-once appends without a lock.** An append whose runs carry ids the caller gave reads which
of them the history holds, then writes the others on the condition that no write since its read
added any of them: ``ids_log`` holds the ids given to each of the last `LOG_SPAN` appends (by
version), and ``log_since`` the version from which it is complete (a write it cannot describe,
such as an upsert, moves it up). The condition (`unseen_since`) is then either "still at the
version read" or "``log_since`` <= that version and no later entry holds one of these ids", so
concurrent appends of different runs do not make each other try again. The log is bounded:
`LOG_SPAN` entries of at most `LOG_IDS` ids.

**pop_runs without a lock.** A pop is one atomic update too: it lowers ``run_count`` and adds a
``holds`` entry for the seqs it removed, then reads them back (from the runs collection, or from
the `pending` entries its update returned) and removes its hold. While a hold is there, no write
newer than the pop overwrites or deletes runs at those seqs in the runs collection: a write that
reuses them stays in `pending` (readers find it there), and the pop copies such entries when it
removes its hold. A hold older than `HOLD_US` (a pop that died) no longer counts.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bson import ObjectId
from pymongo import DeleteMany, UpdateOne

from .._encoding import Expiry
from .._paging import ListQuery
from .._time import from_us

JSON_FIELDS: Final = (
    "session_data",
    "agent_data",
    "team_data",
    "workflow_data",
    "metadata",
    "summary",
)
ESC_BIT: Final = {name: 1 << index for index, name in enumerate(JSON_FIELDS)}
IDENTITY_FIELDS: Final = ("session_type", "agent_id", "team_id", "workflow_id")

LIST_SORT: Final = [("updated_at", -1), ("_id", -1)]
RUN_SORT: Final = [("seq", 1)]
# A read never needs the ids of the latest appends (`ids_log`, for the writes' checks).
READ_FIELDS: Final = {"ids_log": 0}
# Listing without runs never loads the runs of writes in flight.
WITHOUT_PENDING: Final = {"pending": 0, "ids_log": 0}
# What a write needs to know of the document it wrote: everything but run bodies in flight.
PENDING_WITHOUT_RUNS: Final = {"pending.runs": 0, "ids_log": 0}
WITHOUT_DATA_OR_PENDING_RUNS: Final = {"pending.runs": 0, "ids_log": 0, "session_data": 0}
BEFORE_UPSERT: Final = {
    "holds": 1,
    "user_id": 1,
    "version": 1,
    "run_count": 1,
    "created_at": 1,
    "gen": 1,
    "pending.v": 1,
    "pending.t": 1,
}
RUN_FIELDS: Final = {"_id": 0, "seq": 1, "version": 1, "run_id": 1, "run": 1, "esc": 1}
# What the run-level calls read of a session: everything but its state and metadata.
HISTORY_FIELDS: Final = {
    "user_id": 1,
    "version": 1,
    "run_count": 1,
    "gen": 1,
    "pending": 1,
    "holds": 1,
    "rewritten": 1,
}
# What a fork reads of its source: the history, and the state that appends change.
FORK_FIELDS: Final = {**HISTORY_FIELDS, "session_data": 1, "esc": 1}
HOLD_US: Final = 60_000_000
"""How long a pop's hold counts (microseconds): a pop that died releases it this way."""


# When a run was written, in microseconds: its `t`, else the time in its document's ObjectId
# (to the second). A copied run (fork, truncate) keeps the original's.
WRITTEN_US: Final = {"$ifNull": ["$t", {"$multiply": [{"$toLong": {"$toDate": "$_id"}}, 1000]}]}


@dataclass(slots=True)
class Collections:
    """One store's collections (PyMongo's or Motor's async collection objects)."""

    database: Any
    sessions: Any
    runs: Any
    history: Any
    leases: Any


async def aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results of an aggregation, read to its end (PyMongo's async `aggregate` is a
    coroutine, Motor's gives a cursor that runs when read)."""
    cursor = collection.aggregate(pipeline)
    if inspect.isawaitable(cursor):
        cursor = await cursor
    rows: list[dict[str, Any]] = await cursor.to_list(None)
    return rows


@dataclass(slots=True)
class RunDoc:
    """One run in its stored form."""

    run_id: str
    run: Any  # the BSON form of the run's JSON object
    esc: bool  # `run` needs `_bson.decode`

    def item(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "run": self.run, "esc": self.esc}


@dataclass(slots=True)
class Entry:
    """A write's runs, as held in ``pending`` until copied to the runs collection."""

    version: int
    start: int
    runs: Sequence[dict[str, Any]]  # RunDoc.item() dicts


def session_fields(
    identity: dict[str, Any], json_fields: dict[str, Any], esc: int
) -> dict[str, Any]:
    """The fields an upsert replaces, in their stored form (the owner is never among them)."""
    return {**identity, **json_fields, "esc": esc}


def pending_entry(
    version: int, start: int, now: int, runs: Sequence[RunDoc], token: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"v": version, "start": start, "t": now}
    if token is not None:
        entry["w"] = token
    entry["runs"] = [r.item() for r in runs]
    return entry


def new_session_document(
    session_id: str,
    user_id: str | None,
    fields: dict[str, Any],
    *,
    now: int,
    runs: Sequence[RunDoc],
    gen: ObjectId,
    token: str | None = None,
    lease_token: int | None = None,
    expiry: Expiry | None = None,
) -> dict[str, Any]:
    """The document of a session written for the first time (version 1); `lease_token`: that
    of a fenced write (see `_leases`)."""
    document: dict[str, Any] = {
        "_id": session_id,
        "session_type": fields["session_type"],
        "user_id": user_id,
        **{k: v for k, v in fields.items() if k != "session_type"},
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "run_count": len(runs),
        "gen": gen,
        "log_since": 1,
    }
    if lease_token is not None:
        document["lease_token"] = lease_token
    if expiry is not None:
        document.update(expiry_on_create(expiry, now))
    if runs or token is not None:
        document["pending"] = [pending_entry(1, 0, now, runs, token)]
    return document


def live(now: int) -> dict[str, Any]:
    """A session not expired at `now` (microseconds): every read and write filters on it, so an
    expired session is gone at once, whatever the TTL monitor has done yet."""
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": from_us(now)}}]}


def expired(now: int) -> dict[str, Any]:
    return {"expires_at": {"$lte": from_us(now)}}


def live_filter(filter_: dict[str, Any], now: int) -> dict[str, Any]:
    """`filter_` and `live` (under ``$and``: the filter may hold an ``$or`` of its own)."""
    return {**filter_, "$and": [*filter_.get("$and", ()), live(now)]}


def expiry_on_create(expiry: Expiry, now: int) -> dict[str, Any]:
    """The ``expires_at`` field of a document a write creates (none when it never expires)."""
    at = expiry.on_create(now)
    return {} if at is None else {"expires_at": from_us(at)}


def expiry_set(expiry: Expiry, now: int) -> dict[str, Any]:
    """The ``expires_at`` of an update pipeline that may create the document: `on_create` for a
    new one, `on_update` (else the stored one) for an existing one; nothing when neither
    changes it."""
    created, updated = expiry.on_create(now), expiry.on_update(now)
    if created is None and updated is None:
        return {}
    new = from_us(created) if created is not None else None
    kept = from_us(updated) if updated is not None else "$expires_at"
    return {"expires_at": {"$cond": [{"$ifNull": ["$version", False]}, kept, new]}}


def _literal(value: Any) -> dict[str, Any]:
    # User values inside a pipeline: a string "$x" would otherwise be read as a field path.
    return {"$literal": value}


_OLD_VERSION: Final = {"$ifNull": ["$version", 0]}
_NEW_VERSION: Final = {"$add": [_OLD_VERSION, 1]}
_OLD_COUNT: Final = {"$ifNull": ["$run_count", 0]}


def _append_pending(entry: dict[str, Any]) -> dict[str, Any]:
    return {"$concatArrays": [{"$ifNull": ["$pending", []]}, [entry]]}


def fence_filter(fence: int | None) -> dict[str, Any]:
    """The filter of a write fenced with `fence`: no newer lease was taken (a document without
    ``lease_token`` misses it once, see `_leases.fence_state`)."""
    return {} if fence is None else {"lease_token": {"$lte": fence}}


def _created_lease_token(lease_token: int | None) -> dict[str, Any]:
    return {"lease_token": {"$ifNull": ["$lease_token", lease_token]}} if lease_token else {}


def upsert_pipeline(
    fields: dict[str, Any],
    *,
    runs_offset: int,
    runs: Sequence[RunDoc],
    now: int,
    gen: ObjectId,
    lease_token: int | None = None,
    expiry: Expiry | None = None,
) -> list[dict[str, Any]]:
    """One atomic update that writes a whole session (creating it when missing): the history is
    kept up to ``min(runs_offset, run_count)`` and replaced from there by `runs`. `lease_token`:
    the one a fenced write gives the session it creates."""
    start = {"$min": [_OLD_COUNT, runs_offset]}
    update: dict[str, Any] = {name: _literal(value) for name, value in fields.items()}
    update.update(
        created_at={"$ifNull": ["$created_at", now]},
        updated_at=now,
        version=_NEW_VERSION,
        run_count={"$add": [start, len(runs)]},
        gen={"$ifNull": ["$gen", gen]},
        log_since=_NEW_VERSION,  # a new history: the ids of the old one say nothing of it
        ids_log="$$REMOVE",
        rewritten=_NEW_VERSION,  # (see `fork_pipeline`)
        **_created_lease_token(lease_token),
        **({} if expiry is None else expiry_set(expiry, now)),
    )
    if runs:
        entry = {
            "v": _NEW_VERSION,
            "start": start,
            "t": now,
            "runs": _literal([r.item() for r in runs]),
        }
        update["pending"] = _append_pending(entry)
    return [{"$set": update}]


STORED_STATE: Final = {"$ifNull": ["$session_data", _literal({})]}
"""The stored `session_data` in an update pipeline (a session being created has none yet)."""


def _esc_with(bit: int, value: bool) -> dict[str, Any]:
    """The stored ``esc`` with `bit` set to `value` (no bitwise operators: MongoDB < 6.3)."""
    old_esc = {"$ifNull": ["$esc", 0]}
    cleared = {"$subtract": [old_esc, {"$mod": [old_esc, 2 * bit]}]}
    kept_higher = {"$add": [cleared, {"$mod": [old_esc, bit]}]}
    return {"$add": [kept_higher, bit if value else 0]}


def append_pipeline(
    *,
    user_id: str | None,
    session_data: tuple[Any, bool] | None,
    patch: tuple[dict[str, Any], bool] | None,
    runs: Sequence[RunDoc],
    logged: Sequence[str] | None,
    now: int,
    gen: ObjectId,
    lease_token: int | None = None,
    expiry: Expiry | None = None,
) -> list[dict[str, Any]]:
    """One atomic update that appends runs after the last one, creating the session when
    missing (`lease_token`: the one a fenced write gives it), and replaces `session_data` (its
    stored form, and whether it is escaped) or applies `patch` to it (`_patch.patch_expression`
    over `STORED_STATE`, and whether it is escaped). `logged`: the run ids the caller gave,
    recorded in ``ids_log`` (None: none given)."""
    bit = ESC_BIT["session_data"]
    update: dict[str, Any] = {
        "session_type": {"$ifNull": ["$session_type", "agent"]},
        "user_id": {"$ifNull": ["$user_id", _literal(user_id)]},
        **{name: {"$ifNull": [f"${name}", None]} for name in IDENTITY_FIELDS[1:]},
    }
    if session_data is not None:
        value, escaped = session_data
        update["session_data"] = _literal(value)
        update["esc"] = _esc_with(bit, escaped)  # as this value needs
    elif patch is not None:
        expression, escaped = patch
        update["session_data"] = expression
        # Once escaped, always decoded: decoding a value that needs no decoding changes nothing.
        update["esc"] = _esc_with(bit, True) if escaped else {"$ifNull": ["$esc", 0]}
    else:
        update["session_data"] = STORED_STATE
        update["esc"] = {"$ifNull": ["$esc", 0]}
    for name in JSON_FIELDS[1:]:
        update[name] = {"$ifNull": [f"${name}", None]}
    update.update(
        created_at={"$ifNull": ["$created_at", now]},
        updated_at=now,
        version=_NEW_VERSION,
        run_count={"$add": [_OLD_COUNT, len(runs)]},
        gen={"$ifNull": ["$gen", gen]},
        log_since={"$ifNull": ["$log_since", _NEW_VERSION]},
        **_created_lease_token(lease_token),
        **({} if expiry is None else expiry_set(expiry, now)),
    )
    if logged:
        update.update(_log_ids(logged))
    if runs:
        entry = {
            "v": _NEW_VERSION,
            "start": _OLD_COUNT,
            "t": now,
            "runs": _literal([r.item() for r in runs]),
        }
        update["pending"] = _append_pending(entry)
    return [{"$set": update}]


LOG_SPAN: Final = 64
"""How many of the latest appends (by version) ``ids_log`` describes."""
LOG_IDS: Final = 16
"""The most ids one entry of ``ids_log`` holds; an append that gives more starts the log again."""


def _log_ids(ids: Sequence[str]) -> dict[str, Any]:
    if len(ids) > LOG_IDS:
        return {"log_since": _NEW_VERSION, "ids_log": "$$REMOVE"}
    oldest = {"$subtract": [_NEW_VERSION, LOG_SPAN]}
    kept = {
        "$filter": {"input": {"$ifNull": ["$ids_log", []]}, "cond": {"$gt": ["$$this.v", oldest]}}
    }
    return {
        "ids_log": {"$concatArrays": [kept, [{"v": _NEW_VERSION, "ids": _literal(list(ids))}]]},
        "log_since": {"$max": [{"$ifNull": ["$log_since", _NEW_VERSION]}, oldest]},
    }


def unseen_since(version: int, ids: Sequence[str]) -> dict[str, Any]:
    """The condition of an append planned on the session as read at `version`, which found none
    of `ids` in its history: no write since then added one of them."""
    added = {"ids_log": {"$elemMatch": {"v": {"$gt": version}, "ids": {"$in": list(ids)}}}}
    return {"$or": [{"version": version}, {"log_since": {"$lte": version}, "$nor": [added]}]}


def cas_update(
    fields: dict[str, Any],
    *,
    version: int,
    run_count: int,
    now: int,
    entry: dict[str, Any],
    expires_at: int | None = None,
) -> dict[str, Any]:
    """A whole-session update for `upsert_many`, whose caller read the stored version first;
    `expires_at` the new expiry (None: keep)."""
    return {
        "$set": {
            **fields,
            "updated_at": now,
            "version": version,
            "run_count": run_count,
            "log_since": version,
            "rewritten": version,  # (see `fork_pipeline`)
            **({} if expires_at is None else {"expires_at": from_us(expires_at)}),
        },
        "$unset": {"ids_log": ""},
        "$push": {"pending": entry},
    }


# --- runs -----------------------------------------------------------------------------------------


def runs_range(session_id: str, gen: ObjectId, low: int, high: int) -> dict[str, Any]:
    return {"session_id": session_id, "gen": gen, "seq": {"$gte": low, "$lt": high}}


def copy_runs(session_id: str, gen: ObjectId, entry: Entry) -> list[UpdateOne]:
    """Copy a write's runs to the runs collection unless a newer write already wrote the seq
    (the upsert then fails on the unique key, which the caller ignores)."""
    return [
        UpdateOne(
            {
                "session_id": session_id,
                "gen": gen,
                "seq": entry.start + i,
                "version": {"$lt": entry.version},
            },
            {
                "$set": {
                    "version": entry.version,
                    "run_id": item["run_id"],
                    "run": item["run"],
                    "esc": item["esc"],
                }
            },
            upsert=True,
        )
        for i, item in enumerate(entry.runs)
    ]


def runs_after(session_id: str, gen: ObjectId, run_count: int, version: int) -> dict[str, Any]:
    """The runs a write (at `version`) cut off the history: past `run_count`, so never read."""
    return {
        "session_id": session_id,
        "gen": gen,
        "seq": {"$gte": run_count},
        "version": {"$lt": version},
    }


def drop_runs_after(session_id: str, gen: ObjectId, run_count: int, version: int) -> DeleteMany:
    return DeleteMany(runs_after(session_id, gen, run_count, version))


def pull_entries(versions: Sequence[int]) -> dict[str, Any]:
    return {"$pull": {"pending": {"v": {"$in": list(versions)}}}}


def runs_by_id(
    session_id: str, gen: ObjectId, run_count: int, ids: Sequence[str], seqs: Sequence[int]
) -> dict[str, Any]:
    """The stored runs of the history that have one of `ids`, or sit at one of `seqs` (where a
    write in flight holds one of them, to see which of the two is newer)."""
    match: list[dict[str, Any]] = [{"run_id": {"$in": list(ids)}}]
    if seqs:
        match.append({"seq": {"$in": list(seqs)}})
    return {"session_id": session_id, "gen": gen, "seq": {"$lt": run_count}, "$or": match}


def compare_and_set(session_id: str, version: int, gen: ObjectId) -> dict[str, Any]:
    """The filter of a write planned on the session as read at `version` (`gen` too: a session
    deleted and created again starts at version 1 again)."""
    return {"_id": session_id, "version": version, "gen": gen}


def switch_gen(gen: ObjectId, run_count: int, version: int, now: int) -> dict[str, Any]:
    """truncate_runs: the history is now the runs copied to `gen` (the writes in `pending`, and
    the holds of pops, are of the previous one)."""
    return {
        "$set": {"gen": gen, "run_count": run_count, "version": version, "updated_at": now},
        "$unset": {"pending": "", "holds": ""},
    }


def copy_runs_pipeline(
    session_id: str,
    gen: ObjectId,
    low: int,
    high: int,
    *,
    skip: Sequence[int],
    into: str,
    to_session: str,
    to_gen: ObjectId,
    version: int,
) -> list[dict[str, Any]]:
    """An aggregation of the runs collection that copies the runs ``low .. high-1`` of a history
    to the history `to_gen` of `to_session`, from seq 0, inside the database. (``$merge`` on
    ``_id``, which is all mongoeco has: the copies get new ids; the unique key of the runs refuses
    a seq copied twice.) The seqs in `skip` are left out."""
    seqs: dict[str, Any] = {"$gte": low, "$lt": high}
    if skip:
        seqs["$nin"] = list(skip)
    return [
        {"$match": {"session_id": session_id, "gen": gen, "seq": seqs}},
        {
            "$project": {
                "_id": 0,
                "session_id": _literal(to_session),
                "gen": _literal(to_gen),
                "seq": {"$subtract": ["$seq", low]},
                "version": _literal(version),
                "run_id": 1,
                "run": 1,
                "esc": 1,
                "t": WRITTEN_US,
            }
        },
        {"$merge": {"into": into, "whenMatched": "fail", "whenNotMatched": "insert"}},
    ]


def fork_pipeline(
    session_id: str,
    gen: ObjectId,
    rewritten: int | None,
    state: dict[str, Any],
    *,
    into: str,
    new_session_id: str,
    new_gen: ObjectId,
    run_count: int,
    now: int,
    expires_at: int | None = None,
) -> list[dict[str, Any]]:
    """An aggregation of the sessions collection that copies the session to a new session
    (version 1, its own history `new_gen`), unless that id exists: an existing document is kept
    as it is (``whenMatched: keepExisting``; the caller sees whose `gen` the document has, rather
    than reading an error that mongoeco gives without a code).

    The copy is of the session as the caller read it: `state` (its ``session_data`` and
    ``esc``, which appends change) as read, the rest as stored, which only a rewrite of its
    history changes, and none may have happened since the read: the history is still `gen`
    (not truncated, deleted or created again) and its last rewrite (upsert, pop) is still
    `rewritten` (None: never). Appends since the read do not stop the copy: they add runs past
    the ones copied."""
    return [
        {"$match": {"_id": session_id, "gen": gen, "rewritten": rewritten}},
        {
            "$set": {
                **{name: _literal(value) for name, value in state.items()},
                "_id": _literal(new_session_id),
                "gen": _literal(new_gen),
                "version": 1,
                "run_count": run_count,
                "created_at": now,
                "updated_at": now,
                "log_since": 1,
                # A copy is a new session: the store's ttl from now, else none.
                "expires_at": None if expires_at is None else from_us(expires_at),
            }
        },
        {"$unset": ["pending", "ids_log", "holds", "rewritten"]},
        {"$merge": {"into": into, "whenMatched": "keepExisting", "whenNotMatched": "insert"}},
    ]


# --- pop_runs -------------------------------------------------------------------------------------


def pop_pipeline(count: int, now: int) -> list[dict[str, Any]]:
    """Remove the last `count` runs (fewer when the history is shorter) and hold their seqs."""
    low = {"$max": [{"$subtract": [_OLD_COUNT, count]}, 0]}
    active = {
        "$filter": {
            "input": {"$ifNull": ["$holds", []]},
            "cond": {"$gt": ["$$this.t", now - HOLD_US]},
        }
    }
    hold = {"v": _NEW_VERSION, "low": low, "high": _OLD_COUNT, "t": now}
    return [
        {
            "$set": {
                "run_count": low,
                "version": _NEW_VERSION,
                "updated_at": now,
                "holds": {"$concatArrays": [active, [hold]]},
                "rewritten": _NEW_VERSION,  # (see `fork_pipeline`)
            }
        }
    ]


def release_hold(version: int) -> dict[str, Any]:
    return {"$pull": {"holds": {"v": version}}}


# --- listing --------------------------------------------------------------------------------------


def listing_filter(query: ListQuery, now: int) -> dict[str, Any]:
    """The filter of a keyset listing of the sessions live at `now`: the filters, then
    ``(updated_at, _id) < cursor``."""
    conditions: list[dict[str, Any]] = [live(now)]
    if query.user_id is not None:
        conditions.append({"user_id": query.user_id})
    if query.session_type is not None:
        conditions.append({"session_type": query.session_type})
    if query.entity_id is not None:
        entity = query.entity_id
        conditions.append(
            {"$or": [{"agent_id": entity}, {"team_id": entity}, {"workflow_id": entity}]}
        )
    if query.updated_after_us is not None:
        conditions.append({"updated_at": {"$gt": query.updated_after_us}})
    if query.after is not None:
        updated, session_id = query.after
        conditions.append(
            {
                "$or": [
                    {"updated_at": {"$lt": updated}},
                    {"updated_at": updated, "_id": {"$lt": session_id}},
                ]
            }
        )
    if not conditions:
        return {}
    if len(conditions) == 1:
        return conditions[0]
    return {"$and": conditions}


# --- the migration lease ------------------------------------------------------------------------

LEASE_ID: Final = "lease"


def take_lease(owner: str, ttl_ms: int) -> list[dict[str, Any]]:
    """Take the lease when it is free, expired or ours; otherwise leave it as it is. Expiry is the
    server's clock (``$$NOW``), so hosts whose clocks differ agree on it. (A pipeline rather than
    an ``$expr`` filter: MongoDB refuses ``$expr`` in the filter of an upsert.)"""
    free = {
        "$or": [
            {"$eq": [{"$ifNull": ["$owner", None]}, None]},
            {"$eq": ["$owner", owner]},
            {"$lt": ["$expires", "$$NOW"]},
        ]
    }
    return [
        {
            "$set": {
                "owner": {"$cond": [free, owner, "$owner"]},
                "expires": {"$cond": [free, {"$add": ["$$NOW", ttl_ms]}, "$expires"]},
            }
        }
    ]


def renew_lease(ttl_ms: int) -> list[dict[str, Any]]:
    return [{"$set": {"expires": {"$add": ["$$NOW", ttl_ms]}}}]
