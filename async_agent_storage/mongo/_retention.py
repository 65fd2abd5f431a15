"""Retention on MongoDB: `purge_expired`, `delete_user` and `rotate_keys`' rewrite, without
multi-document transactions.

Each batch deletes the runs first, then the session documents (still on their condition:
expired, or the user's), so a crash in between leaves sessions that the next call finds and
finishes. The TTL index on ``expires_at`` (migration 5) is a safety net for stores nobody
purges: the server deletes a session document a day after it expired, but not its runs; so
when no expired session is left, `purge_expired` also deletes up to a batch of runs whose
incarnation no session document names (one aggregation over the runs collection).
"""

from __future__ import annotations

import inspect
from typing import Any, Final

from .. import _codec as codec
from .._crypto import PAYLOAD_FIELDS, Reseal
from .._time import now_us
from . import _bson
from . import _queries as q
from ._queries import Collections
from ._rows import run_doc

__all__ = ["TTL_GRACE_SECONDS", "delete_batch", "reseal"]

TTL_GRACE_SECONDS: Final = 86_400
"""How long after its expiry the TTL monitor deletes a session document nobody purged."""


async def _to_list(cursor: Any) -> list[dict[str, Any]]:
    if inspect.isawaitable(cursor):  # PyMongo's async aggregate is a coroutine
        cursor = await cursor
    rows: list[dict[str, Any]] = await cursor.to_list(None)
    return rows


async def delete_batch(parts: Collections, user_id: str | None, batch: int) -> tuple[int, int]:
    """Up to `batch` sessions of `user_id` (None: expired ones) and their runs: (sessions,
    runs) deleted."""
    now = now_us()
    condition = q.expired(now) if user_id is None else {"user_id": user_id}
    docs = await parts.sessions.find(condition, {"gen": 1}).limit(batch).to_list(None)
    if not docs:
        return (0, 0) if user_id is not None else (0, await _orphans(parts, batch))
    ids = [doc["_id"] for doc in docs]
    if user_id is None:  # that incarnation's runs (a session created anew has others)
        which: dict[str, Any] = {"$or": [{"session_id": d["_id"], "gen": d["gen"]} for d in docs]}
    else:  # every incarnation's
        which = {"session_id": {"$in": ids}}
    runs = (await parts.runs.delete_many(which)).deleted_count
    gone = await parts.sessions.delete_many({"_id": {"$in": ids}, **condition})
    return int(gone.deleted_count), int(runs)


async def _orphans(parts: Collections, batch: int) -> int:
    """Delete the runs of up to `batch` incarnations that no session document names."""
    pipeline = [
        {"$group": {"_id": {"s": "$session_id", "g": "$gen"}}},
        {
            "$lookup": {
                "from": parts.sessions.name,
                "localField": "_id.s",
                "foreignField": "_id",
                "as": "doc",
            }
        },
        {"$match": {"$expr": {"$eq": [{"$in": ["$_id.g", "$doc.gen"]}, False]}}},
        {"$limit": batch},
    ]
    groups = await _to_list(parts.runs.aggregate(pipeline))
    if not groups:
        return 0
    which = {"$or": [{"session_id": g["_id"]["s"], "gen": g["_id"]["g"]} for g in groups]}
    return int((await parts.runs.delete_many(which)).deleted_count)


async def reseal(parts: Collections, reseal: Reseal) -> bool:
    """Store re-encrypted values: the session's fields when it is still at `reseal.version`,
    then each run whose stored value is still the one read (a compare-and-set per run: no
    transaction ties them to the session document). A run still in ``pending`` (being copied)
    is left for the next rotation."""
    if not set(reseal.fields) <= set(PAYLOAD_FIELDS):
        raise ValueError(f"not payload fields: {sorted(reseal.fields)}")
    sid = reseal.session_id
    doc = await parts.sessions.find_one({"_id": sid, "version": reseal.version}, {"esc": 1})
    if doc is None:
        return False
    esc = doc.get("esc") or 0
    values: dict[str, Any] = {}
    for name, data in reseal.fields.items():
        values[name], escaped = _bson.encode(codec.loads(data, marked=True))
        esc = (esc | q.ESC_BIT[name]) if escaped else (esc & ~q.ESC_BIT[name])
    if values:
        done = await parts.sessions.update_one(
            {"_id": sid, "version": reseal.version}, {"$set": {**values, "esc": esc}}
        )
        if not done.matched_count:
            return False
    for run in reseal.runs:
        old = run_doc(run.run_id, run.old)
        new = run_doc(run.run_id, codec.loads(run.new, marked=True))
        await parts.runs.update_many(
            {"session_id": sid, "run_id": run.run_id, "run": old.run},
            {"$set": {"run": new.run, "esc": new.esc}},
        )
    return True
