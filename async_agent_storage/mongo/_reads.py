"""Reading sessions from MongoDB: a session document, then its runs from the runs collection and
from the session's `pending` writes, whichever holds the newer version of each seq (see
`_queries` for why). A read that finds its runs rewritten meanwhile reads again."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pymongo.errors import PyMongoError

from .._paging import ListQuery, PageKey
from .._rules import RETRY
from .._time import now_us
from ..models import Session
from . import _bson
from . import _queries as q
from ._queries import Collections, aggregate
from ._rows import session_from_doc

__all__ = [
    "StoredRun",
    "count",
    "decode_run",
    "get_run",
    "in_flight",
    "list_ids",
    "list_sessions",
    "load_runs",
    "newer",
    "read_session",
    "runs_by_id",
]


class StoredRun(NamedTuple):
    """One run of a history as stored: its seq, the write (version) that stored it, its id and
    its BSON form (`esc`: it needs `_bson.decode`)."""

    seq: int
    version: int
    run_id: str
    run: Any
    esc: bool


def decode_run(run: StoredRun) -> dict[str, Any]:
    value: dict[str, Any] = _bson.decode(run.run) if run.esc else run.run
    return value


async def read_session(
    parts: Collections, label: str, sid: str, uid: str | None, tail: int | None
) -> Session | None:
    filter_ = q.live_filter({"_id": sid} if uid is None else {"_id": sid, "user_id": uid}, now_us())
    projection = q.WITHOUT_PENDING if tail == 0 else q.READ_FIELDS
    for attempt in range(RETRY.attempts):
        doc = await parts.sessions.find_one(filter_, projection)
        if doc is None:
            return None
        count = doc["run_count"]
        low = 0 if tail is None else max(0, count - tail)
        runs = await load_runs(parts, doc, low)
        if runs is not None:
            return _session(doc, runs, low)
        await RETRY.pause(attempt)
    raise RETRY.exhausted(label, sid)


def _session(doc: Mapping[str, Any], runs: list[StoredRun], low: int) -> Session:
    return session_from_doc(doc, [decode_run(r) for r in runs], low, [r.run_id for r in runs])


def in_flight(doc: Mapping[str, Any], low: int) -> dict[int, StoredRun]:
    """The runs from seq `low` that the session's `pending` writes hold, the newest per seq."""
    count = doc["run_count"]
    found: dict[int, StoredRun] = {}
    for entry in doc.get("pending") or ():
        v, start = entry["v"], entry["start"]
        for index, item in enumerate(entry["runs"]):
            seq = start + index
            if low <= seq < count and (seq not in found or found[seq].version < v):
                found[seq] = StoredRun(seq, v, item["run_id"], item["run"], item["esc"])
    return found


def newer(found: dict[int, StoredRun], row: Mapping[str, Any]) -> None:
    seq, v = row["seq"], row["version"]
    if seq not in found or found[seq].version < v:
        found[seq] = StoredRun(seq, v, row["run_id"], row["run"], row["esc"])


async def load_runs(parts: Collections, doc: Mapping[str, Any], low: int) -> list[StoredRun] | None:
    """Runs ``low .. run_count-1`` of the session as `doc` has it, or None when a later write
    changed one of them meanwhile (the caller reads again)."""
    count = doc["run_count"]
    if low >= count:
        return []
    version = doc["version"]
    found = in_flight(doc, low)
    cursor = parts.runs.find(q.runs_range(doc["_id"], doc["gen"], low, count), q.RUN_FIELDS).sort(
        q.RUN_SORT
    )
    for row in await cursor.to_list(None):
        if row["version"] > version:
            return None  # rewritten by a write newer than `doc`
        newer(found, row)
    if len(found) != count - low:
        return None  # cut off by a newer write between the two reads
    return [found[seq] for seq in range(low, count)]


async def runs_by_id(
    parts: Collections, doc: Mapping[str, Any], ids: Sequence[str]
) -> dict[str, StoredRun] | None:
    """The runs of the session as `doc` has it (with its `pending`) whose ids are in `ids`, by id
    (the first one when a history holds an id twice); None when a later write changed the history
    meanwhile (the caller reads again). One query, on the ``session_run_id`` index."""
    count = doc["run_count"]
    if not count or not ids:
        return {}
    wanted = set(ids)
    found = in_flight(doc, 0)
    seqs = sorted(seq for seq, run in found.items() if run.run_id in wanted)
    rows = await parts.runs.find(
        q.runs_by_id(doc["_id"], doc["gen"], count, ids, seqs), q.RUN_FIELDS
    ).to_list(None)
    for row in rows:
        if row["version"] > doc["version"]:
            return None
        newer(found, row)
    by_id: dict[str, StoredRun] = {}
    for seq in sorted(found):
        run = found[seq]
        if run.run_id in wanted and run.run_id not in by_id:
            by_id[run.run_id] = run
    return by_id


async def get_run(
    parts: Collections, label: str, sid: str, rid: str, uid: str | None
) -> dict[str, Any] | None:
    filter_ = q.live_filter({"_id": sid} if uid is None else {"_id": sid, "user_id": uid}, now_us())
    for attempt in range(RETRY.attempts):
        doc = await parts.sessions.find_one(filter_, q.HISTORY_FIELDS)
        if doc is None:
            return None
        found = await runs_by_id(parts, doc, [rid])
        if found is not None:
            run = found.get(rid)
            return None if run is None else decode_run(run)
        await RETRY.pause(attempt)
    raise RETRY.exhausted(label, sid)


async def count(parts: Collections, query: ListQuery) -> int:
    total: int = await parts.sessions.count_documents(q.listing_filter(query, now_us()))
    return total


async def list_ids(parts: Collections, query: ListQuery) -> list[str]:
    cursor = parts.sessions.find(q.listing_filter(query, now_us()), {"_id": 1}).sort(q.LIST_SORT)
    return [doc["_id"] for doc in await cursor.to_list(None)]


async def list_sessions(
    parts: Collections, label: str, query: ListQuery
) -> tuple[list[Session], PageKey | None]:
    """The sessions of one listing, and the key of the last one when a next page exists."""
    cursor = parts.sessions.find(
        q.listing_filter(query, now_us()),
        q.READ_FIELDS if query.include_runs else q.WITHOUT_PENDING,
    ).sort(q.LIST_SORT)
    if query.limit is not None:
        cursor = cursor.limit(query.limit + 1)
    docs = await cursor.to_list(None)
    last = None
    if query.limit is not None and len(docs) > query.limit:
        del docs[query.limit :]
        last = (docs[-1]["updated_at"], docs[-1]["_id"])
    if not query.include_runs:
        # No runs loaded: an `upsert` of such a session keeps its whole history.
        return [session_from_doc(d, [], d["run_count"], []) for d in docs], last
    sessions: list[Session] = []
    for start in range(0, len(docs), 32):
        chunk = docs[start : start + 32]
        loaded = await asyncio.gather(*(load_runs(parts, d, 0) for d in chunk))
        for doc, runs in zip(chunk, loaded, strict=True):
            if runs is not None:
                sessions.append(_session(doc, runs, 0))
                continue
            # Rewritten while listed: read it again as it is now.
            again = await read_session(parts, label, doc["_id"], query.user_id, None)
            if again is not None:
                sessions.append(again)
    return sessions, last


async def usage(parts: Collections) -> tuple[int, int, dict[str, int]]:
    """Sessions, runs (the sum of the histories), and the bytes of each collection with its
    indexes (empty when the server does not report them)."""
    sessions = await parts.sessions.count_documents({})
    totals = await aggregate(
        parts.sessions, [{"$group": {"_id": None, "runs": {"$sum": "$run_count"}}}]
    )
    sizes: dict[str, int] = {}
    for collection in (parts.sessions, parts.runs, parts.history):
        try:
            stats = await parts.database.command("collStats", collection.name)
        except PyMongoError:
            return sessions, int(totals[0]["runs"]) if totals else 0, {}
        sizes[collection.name] = int(stats.get("size", 0)) + int(stats.get("totalIndexSize", 0))
    return sessions, int(totals[0]["runs"]) if totals else 0, sizes
