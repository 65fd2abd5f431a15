"""Reading sessions from MongoDB: a session document, then its runs from the runs collection and
from the session's `pending` writes, whichever holds the newer version of each seq (see
`_queries` for why). A read that finds its runs rewritten meanwhile reads again."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from .._paging import ListQuery, PageKey
from .._rules import RETRY
from ..models import Session
from . import _bson
from . import _queries as q
from ._queries import Collections
from ._rows import session_from_doc

__all__ = ["list_ids", "list_sessions", "load_runs", "read_session"]


async def read_session(
    parts: Collections, label: str, sid: str, uid: str | None, tail: int | None
) -> Session | None:
    filter_ = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
    projection = q.WITHOUT_PENDING if tail == 0 else None
    for attempt in range(RETRY.attempts):
        doc = await parts.sessions.find_one(filter_, projection)
        if doc is None:
            return None
        count = doc["run_count"]
        low = 0 if tail is None else max(0, count - tail)
        runs = await load_runs(parts, doc, low)
        if runs is not None:
            return session_from_doc(doc, runs, low)
        await RETRY.pause(attempt)
    raise RETRY.exhausted(label, sid)


async def load_runs(
    parts: Collections, doc: Mapping[str, Any], low: int
) -> list[dict[str, Any]] | None:
    """Runs ``low .. run_count-1`` of the session as `doc` has it, or None when a later write
    changed one of them meanwhile (the caller reads again)."""
    count = doc["run_count"]
    if low >= count:
        return []
    version = doc["version"]
    found: dict[int, tuple[int, Any, bool]] = {}
    for entry in doc.get("pending") or ():
        v, start = entry["v"], entry["start"]
        for index, item in enumerate(entry["runs"]):
            seq = start + index
            if low <= seq < count and (seq not in found or found[seq][0] < v):
                found[seq] = (v, item["run"], item["esc"])
    cursor = parts.runs.find(q.runs_range(doc["_id"], doc["gen"], low, count), q.RUN_FIELDS).sort(
        q.RUN_SORT
    )
    for row in await cursor.to_list(None):
        seq, v = row["seq"], row["version"]
        if v > version:
            return None  # rewritten by a write newer than `doc`
        if seq not in found or found[seq][0] < v:
            found[seq] = (v, row["run"], row["esc"])
    if len(found) != count - low:
        return None  # cut off by a newer write between the two reads
    decode = _bson.decode
    runs = []
    for seq in range(low, count):
        _, run, escaped = found[seq]
        runs.append(decode(run) if escaped else run)
    return runs


async def list_ids(parts: Collections, query: ListQuery) -> list[str]:
    cursor = parts.sessions.find(q.listing_filter(query), {"_id": 1}).sort(q.LIST_SORT)
    return [doc["_id"] for doc in await cursor.to_list(None)]


async def list_sessions(
    parts: Collections, label: str, query: ListQuery
) -> tuple[list[Session], PageKey | None]:
    """The sessions of one listing, and the key of the last one when a next page exists."""
    cursor = parts.sessions.find(
        q.listing_filter(query), None if query.include_runs else q.WITHOUT_PENDING
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
        return [session_from_doc(d, [], d["run_count"]) for d in docs], last
    sessions: list[Session] = []
    for start in range(0, len(docs), 32):
        chunk = docs[start : start + 32]
        loaded = await asyncio.gather(*(load_runs(parts, d, 0) for d in chunk))
        for doc, runs in zip(chunk, loaded, strict=True):
            if runs is not None:
                sessions.append(session_from_doc(doc, runs, 0))
                continue
            # Rewritten while listed: read it again as it is now.
            again = await read_session(parts, label, doc["_id"], query.user_id, None)
            if again is not None:
                sessions.append(again)
    return sessions, last
