"""`activity()` on MongoDB: three aggregation pipelines, each grouped by the server (no session
document comes back), returning the `ActivityCounts` of `_activity`.

A run's write time is its run document's ``_id``: an ObjectId the server makes when the write
that stored the run first copies it to the runs collection, whose first four bytes are that
time in seconds. So run documents carry their time without a field of their own, a time range
of runs starts as a range of ``_id`` (its index), and runs written before this code count too.
A run document may also carry ``t`` (int64 microseconds), which then wins: a copy that
fork_session or truncate_runs makes of a run (a new document, a new ``_id``) keeps its
original's time if the copy carries it, as ``"t": WRITTEN_US`` in the copy's projection; without
it, such copies count at the time they were made. Runs of a write still held in the session's
``pending`` (a write in flight, or one left by a writer that died, until the session's next
write) are in the totals and not yet in a bucket; a run rewritten at its position keeps the
time of the first write there.

Wire it into `MongoStore` as::

    async def _activity(self, query: ActivityQuery) -> ActivityCounts:
        return await self._shielded(_activity.activity(self._live(self._writer).parts, query))
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from bson import ObjectId

from .._activity import ActivityCounts, ActivityQuery
from .._time import from_us, now_us, to_us
from ._queries import WRITTEN_US, Collections, aggregate, live

__all__ = ["WRITTEN_US", "active_pipeline", "activity", "entity_pipeline", "turns_pipeline"]

# A session counts under its agent, else its team, else its workflow (None, or absent: neither).
ENTITY: Final = {"$ifNull": ["$agent_id", {"$ifNull": ["$team_id", "$workflow_id"]}]}
# A run's write time in microseconds: its ``t`` when it has one (a copy made by fork or truncate
# that carries its original's time), else the time in its ObjectId (made when it was written).


def _owner(query: ActivityQuery, field: str = "user_id") -> dict[str, Any]:
    return {} if query.user_id is None else {field: query.user_id}


def entity_pipeline(query: ActivityQuery, now: int) -> list[dict[str, Any]]:
    """Sessions and the sum of their run counts per entity."""
    return [
        {"$match": {**_owner(query), "$and": [live(now)]}},
        {"$group": {"_id": ENTITY, "sessions": {"$sum": 1}, "runs": {"$sum": "$run_count"}}},
    ]


def active_pipeline(query: ActivityQuery, now: int) -> list[dict[str, Any]]:
    """Sessions updated in the last hour, day and week up to `now` (times are int64 us)."""
    hour, day, week = query.active_after_us

    def after(us: int) -> dict[str, Any]:
        return {"$sum": {"$cond": [{"$gt": ["$updated_at", us]}, 1, 0]}}

    return [
        {
            "$match": {
                "updated_at": {"$gt": week, "$lte": query.now_us},
                **_owner(query),
                "$and": [live(now)],
            }
        },
        {"$group": {"_id": None, "hour": after(hour), "day": after(day), "week": {"$sum": 1}}},
    ]


def turns_pipeline(
    query: ActivityQuery, sessions_collection: str, now: int
) -> list[dict[str, Any]]:
    """Runs per entity and bucket, by their write time (`WRITTEN_US`): grouped by session and
    bucket first (one lookup of the session per group, not per run), then only the runs of the
    session's current incarnation (`gen`) within its history (``seq < run_count``) count."""
    # `now` included: ids are made to the second, so the whole of now's second is in range.
    until = from_us(query.now_us).replace(microsecond=0) + timedelta(seconds=1)
    return [
        # A run's id is never older than its time (a copy is made after its original), so the
        # ids from `since` on hold every run written since then: a range of the _id index.
        {"$match": {"_id": {"$gte": ObjectId.from_datetime(from_us(query.since_us))}}},
        {"$addFields": {"written": WRITTEN_US}},
        {"$match": {"written": {"$gte": query.since_us, "$lt": to_us(until)}}},
        {
            "$group": {
                "_id": {
                    "session_id": "$session_id",
                    "gen": "$gen",
                    "bucket": {
                        "$toLong": {
                            "$floor": {
                                "$divide": [
                                    {"$subtract": ["$written", query.since_us]},
                                    query.bucket_us,
                                ]
                            }
                        }
                    },
                },
                "seqs": {"$push": "$seq"},
            }
        },
        {
            "$lookup": {
                "from": sessions_collection,
                "localField": "_id.session_id",
                "foreignField": "_id",
                "as": "session",
            }
        },
        {"$unwind": "$session"},
        {
            "$match": {
                "$expr": {"$eq": ["$session.gen", "$_id.gen"]},
                **_owner(query, "session.user_id"),
                "$or": [
                    {"session.expires_at": None},
                    {"session.expires_at": {"$gt": from_us(now)}},
                ],
            }
        },
        {
            "$project": {
                "entity": {
                    "$ifNull": [
                        "$session.agent_id",
                        {"$ifNull": ["$session.team_id", "$session.workflow_id"]},
                    ]
                },
                "bucket": "$_id.bucket",
                "runs": {
                    "$size": {
                        "$filter": {
                            "input": "$seqs",
                            "as": "seq",
                            "cond": {"$lt": ["$$seq", "$session.run_count"]},
                        }
                    }
                },
            }
        },
        {
            "$group": {
                "_id": {"entity": "$entity", "bucket": "$bucket"},
                "runs": {"$sum": "$runs"},
            }
        },
    ]


async def activity(parts: Collections, query: ActivityQuery) -> ActivityCounts:
    now = now_us()  # what is live now, whatever `query.now_us` says
    entities = await aggregate(parts.sessions, entity_pipeline(query, now))
    active = await aggregate(parts.sessions, active_pipeline(query, now))
    turns = await aggregate(parts.runs, turns_pipeline(query, parts.sessions.name, now))
    counts = active[0] if active else {"hour": 0, "day": 0, "week": 0}
    return ActivityCounts(
        entities=[(e["_id"], int(e["sessions"]), int(e["runs"])) for e in entities],
        active=(int(counts["hour"]), int(counts["day"]), int(counts["week"])),
        turns=[
            (t["_id"].get("entity"), int(t["_id"]["bucket"]), int(t["runs"]))
            for t in turns
            if t["runs"]
        ],
    )
