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
     pending: [{v, start, t, w, runs: [{run_id, run, esc}]}]}   # see below

``{name}_runs`` — one document per run, unique on ``(session_id, gen, seq)``::

    {session_id, gen, seq, version, run_id, run, esc}   # version: the session write that wrote it

``{name}_migrations`` — the migration history (``_id`` = version) and the lease lock document.

**How a write is atomic without a multi-document transaction.** Every write (append, upsert) is
one atomic update of the session document. The runs it writes go into that same update, as an
entry of ``pending`` holding the runs and the session version that wrote them, so the write is
complete and visible the moment that update commits. Afterwards the writer copies the runs to the
runs collection (idempotent, conditional on ``version``: an older write never overwrites a newer
one) and removes its entry from ``pending``. Readers take each seq from the runs collection or
from ``pending``, whichever holds the higher version, so a crash or a cancellation between the
steps leaves nothing half-done: the runs stay readable from ``pending``, and the next write to the
session copies entries left behind for longer than a few seconds. ``pending`` holds only writes
in flight, so the session document does not grow with the history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bson import ObjectId
from pymongo import DeleteMany, UpdateOne

from .._paging import ListQuery

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
# Listing without runs never loads the runs of writes in flight.
WITHOUT_PENDING: Final = {"pending": 0}
# What a write needs to know of the document it replaced: everything but run bodies in flight.
PENDING_WITHOUT_RUNS: Final = {"pending.runs": 0}
WITHOUT_DATA_OR_PENDING_RUNS: Final = {"pending.runs": 0, "session_data": 0}
BEFORE_UPSERT: Final = {
    "user_id": 1,
    "version": 1,
    "run_count": 1,
    "created_at": 1,
    "gen": 1,
    "pending.v": 1,
    "pending.t": 1,
}
RUN_FIELDS: Final = {"_id": 0, "seq": 1, "version": 1, "run": 1, "esc": 1}


@dataclass(slots=True)
class Collections:
    """One store's collections (PyMongo's or Motor's async collection objects)."""

    database: Any
    sessions: Any
    runs: Any
    history: Any


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
) -> dict[str, Any]:
    """The document of a session written for the first time (version 1)."""
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
    }
    if runs or token is not None:
        document["pending"] = [pending_entry(1, 0, now, runs, token)]
    return document


def _literal(value: Any) -> dict[str, Any]:
    # User values inside a pipeline: a string "$x" would otherwise be read as a field path.
    return {"$literal": value}


_OLD_VERSION: Final = {"$ifNull": ["$version", 0]}
_NEW_VERSION: Final = {"$add": [_OLD_VERSION, 1]}
_OLD_COUNT: Final = {"$ifNull": ["$run_count", 0]}


def _append_pending(entry: dict[str, Any]) -> dict[str, Any]:
    return {"$concatArrays": [{"$ifNull": ["$pending", []]}, [entry]]}


def upsert_pipeline(
    fields: dict[str, Any], *, runs_offset: int, runs: Sequence[RunDoc], now: int, gen: ObjectId
) -> list[dict[str, Any]]:
    """One atomic update that writes a whole session (creating it when missing): the history is
    kept up to ``min(runs_offset, run_count)`` and replaced from there by `runs`."""
    start = {"$min": [_OLD_COUNT, runs_offset]}
    update: dict[str, Any] = {name: _literal(value) for name, value in fields.items()}
    update.update(
        created_at={"$ifNull": ["$created_at", now]},
        updated_at=now,
        version=_NEW_VERSION,
        run_count={"$add": [start, len(runs)]},
        gen={"$ifNull": ["$gen", gen]},
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


def append_pipeline(
    *,
    user_id: str | None,
    session_data: tuple[Any, bool] | None,
    runs: Sequence[RunDoc],
    now: int,
    gen: ObjectId,
) -> list[dict[str, Any]]:
    """One atomic update that appends runs after the last one (and replaces `session_data` when
    given), creating the session when missing."""
    bit = ESC_BIT["session_data"]
    old_esc = {"$ifNull": ["$esc", 0]}
    update: dict[str, Any] = {
        "session_type": {"$ifNull": ["$session_type", "agent"]},
        "user_id": {"$ifNull": ["$user_id", _literal(user_id)]},
        **{name: {"$ifNull": [f"${name}", None]} for name in IDENTITY_FIELDS[1:]},
    }
    if session_data is None:
        update["session_data"] = {"$ifNull": ["$session_data", _literal({})]}
        update["esc"] = old_esc
    else:
        value, escaped = session_data
        update["session_data"] = _literal(value)
        # Clear the session_data bit, then set it as this value needs.
        cleared = {"$subtract": [old_esc, {"$mod": [old_esc, 2 * bit]}]}
        kept_higher = {"$add": [cleared, {"$mod": [old_esc, bit]}]}
        update["esc"] = {"$add": [kept_higher, bit if escaped else 0]}
    for name in JSON_FIELDS[1:]:
        update[name] = {"$ifNull": [f"${name}", None]}
    update.update(
        created_at={"$ifNull": ["$created_at", now]},
        updated_at=now,
        version=_NEW_VERSION,
        run_count={"$add": [_OLD_COUNT, len(runs)]},
        gen={"$ifNull": ["$gen", gen]},
    )
    if runs:
        entry = {
            "v": _NEW_VERSION,
            "start": _OLD_COUNT,
            "t": now,
            "runs": _literal([r.item() for r in runs]),
        }
        update["pending"] = _append_pending(entry)
    return [{"$set": update}]


def cas_update(
    fields: dict[str, Any],
    *,
    version: int,
    run_count: int,
    now: int,
    entry: dict[str, Any],
) -> dict[str, Any]:
    """A whole-session update for `upsert_many`, whose caller read the stored version first."""
    return {
        "$set": {**fields, "updated_at": now, "version": version, "run_count": run_count},
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


def drop_runs_after(session_id: str, gen: ObjectId, run_count: int, version: int) -> DeleteMany:
    """Remove runs a write cut off the history (they are past `run_count`, so never read)."""
    return DeleteMany(
        {
            "session_id": session_id,
            "gen": gen,
            "seq": {"$gte": run_count},
            "version": {"$lt": version},
        }
    )


def pull_entries(versions: Sequence[int]) -> dict[str, Any]:
    return {"$pull": {"pending": {"v": {"$in": list(versions)}}}}


# --- listing --------------------------------------------------------------------------------------


def listing_filter(query: ListQuery) -> dict[str, Any]:
    """The filter of a keyset listing: the filters, then ``(updated_at, _id) < cursor``."""
    conditions: list[dict[str, Any]] = []
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
