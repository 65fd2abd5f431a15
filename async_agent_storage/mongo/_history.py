"""The run-level writes on MongoDB: pop_runs, truncate_runs (clear_runs) and fork_session. Each is
atomic without a multi-document transaction, like every other write here (see `_queries`).

- pop_runs is one atomic update that lowers ``run_count`` and holds the seqs it removed (no lock,
  no retry: concurrent pops and appends all go through at once), then reads those runs back as
  they were and releases its hold (`_queries`, "pop_runs without a lock").
- truncate_runs copies the runs it keeps to a new incarnation of the history (``gen``), renumbered
  from 0, then switches the session to it with a compare-and-set on the version it read (tried
  again under `_rules.RETRY` when another write came first); the old incarnation's runs are
  deleted afterwards, best effort. It touches the runs it keeps, never the ones it removes.
- fork_session copies the runs, then the session document, the document only if the source is
  still at the version read, so the copy is of one state of the source.

The copies are made inside the database (an aggregation of the runs collection into itself,
``$merge``): the history does not travel through Python, except the runs of writes still in
`pending`, which are in the session document already read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from .._rules import RETRY, OwnerRule, Stored, conflict, decide
from .._time import now_us
from ..errors import InvalidInputError, StorageUnavailableError
from ..models import Session
from . import _queries as q
from ._queries import Entry
from ._reads import StoredRun, decode_run, in_flight, newer, runs_by_id
from ._rows import session_from_doc
from ._writes import Writer, any_hold

__all__ = ["fork", "pop_runs", "truncate_runs"]

_log = logging.getLogger("async_agent_storage.mongo")


async def _owned(writer: Writer, sid: str, uid: str | None) -> dict[str, Any] | None:
    """The session's history fields, None when it is absent; `SessionOwnershipError` when it is
    another user's."""
    doc: dict[str, Any] | None = await writer.parts.sessions.find_one(
        q.live_filter({"_id": sid}, now_us()), q.HISTORY_FIELDS
    )
    if doc is not None:
        stored = Stored(doc.get("user_id"), doc["version"])
        decide(writer.label, sid, stored, user_id=uid, if_version=None, rule=OwnerRule.IF_GIVEN)
    return doc


async def _forget(writer: Writer, sid: str, gen: ObjectId, why: str) -> None:
    """Delete the runs of an incarnation no session points at (best effort: they are never read,
    they only take space)."""
    try:
        await writer.parts.runs.delete_many({"session_id": sid, "gen": gen})
    except PyMongoError as exc:
        _log.warning("%s: session %r: %s runs are not deleted: %s", writer.label, sid, why, exc)


# --- pop_runs -------------------------------------------------------------------------------------


async def pop_runs(writer: Writer, sid: str, uid: str | None, n: int) -> list[dict[str, Any]]:
    await writer.settled([sid])  # a pop deletes the runs it read back
    sessions = writer.parts.sessions
    filter_: dict[str, Any] = {"_id": sid, "run_count": {"$gt": 0}}
    if uid is not None:
        filter_["user_id"] = uid
    for attempt in range(RETRY.attempts):
        before: dict[str, Any] | None = await sessions.find_one_and_update(
            q.live_filter(filter_, now_us()),
            q.pop_pipeline(n, now_us()),
            projection=q.HISTORY_FIELDS,
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            try:
                return await _read_back(writer, before, n)
            finally:
                await _release(writer, sid, before["gen"], before["version"] + 1)
        doc = await _owned(writer, sid, uid)
        if doc is None or not doc["run_count"]:
            return []
        await RETRY.pause(attempt)  # it had no runs an instant ago
    raise RETRY.exhausted(writer.label, sid)


async def _read_back(writer: Writer, before: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """The runs a pop removed, as they were in the session it updated (`before`): from its
    `pending` entries, or from the runs collection, where its hold keeps them."""
    sid, count, version, gen = before["_id"], before["run_count"], before["version"], before["gen"]
    low = max(count - n, 0)
    found = in_flight(before, low)
    rows = await writer.parts.runs.find(q.runs_range(sid, gen, low, count), q.RUN_FIELDS).to_list(
        None
    )
    for row in rows:
        if row["version"] <= version:
            newer(found, row)
    if len(found) != count - low:
        raise StorageUnavailableError(
            f"{writer.label}: session {sid!r}: {count - low} run(s) were popped, but some were "
            f"overwritten before they could be read back (the pop took over "
            f"{q.HOLD_US // 1_000_000}s)",
            maybe_committed=True,
        )
    if not any_hold(before.get("holds"), now_us()):  # else an older pop may still need them
        try:
            await writer.parts.runs.delete_many(q.runs_range(sid, gen, low, count))
        except PyMongoError as exc:
            _log.warning("%s: session %r: popped runs are not deleted: %s", writer.label, sid, exc)
    return [decode_run(found[seq]) for seq in range(low, count)]


async def _release(writer: Writer, sid: str, gen: ObjectId, version: int) -> None:
    """Remove a pop's hold, and move the writes it kept in `pending` to the runs collection."""
    try:
        doc = await writer.parts.sessions.find_one_and_update(
            {"_id": sid, "gen": gen},
            q.release_hold(version),
            projection={"pending": 1, "holds": 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None and doc.get("pending"):
            entries = [Entry(e["v"], e["start"], e["runs"]) for e in doc["pending"]]
            await writer.move(sid, gen, entries, holds=doc.get("holds"))
    except PyMongoError as exc:
        _log.warning(
            "%s: session %r: releasing a pop's hold failed (it expires in %ds): %s",
            writer.label,
            sid,
            q.HOLD_US // 1_000_000,
            exc,
        )


# --- copies ---------------------------------------------------------------------------------------


async def _copy_history(
    writer: Writer,
    doc: Mapping[str, Any],
    low: int,
    high: int,
    *,
    to_session: str,
    to_gen: ObjectId,
    version: int,
) -> None:
    """Copy the runs ``low .. high-1`` of the session as `doc` has it to the history `to_gen` of
    `to_session`, from seq 0: those in the runs collection with an aggregation into itself, those
    of writes still in `pending` (newer than the runs collection's) from `doc`. A write that
    changes the history meanwhile is seen by the caller's compare-and-set."""
    parts = writer.parts
    sid, gen = doc["_id"], doc["gen"]
    pending = {seq: run for seq, run in in_flight(doc, low).items() if seq < high}
    if pending:
        rows = await parts.runs.find(
            {"session_id": sid, "gen": gen, "seq": {"$in": list(pending)}},
            {"_id": 0, "seq": 1, "version": 1},
        ).to_list(None)
        for row in rows:
            if row["version"] > pending[row["seq"]].version:
                del pending[row["seq"]]  # copied already, and rewritten since by a newer write
    await q.aggregate(
        parts.runs,
        q.copy_runs_pipeline(
            sid,
            gen,
            low,
            high,
            skip=list(pending),
            into=parts.runs.name,
            to_session=to_session,
            to_gen=to_gen,
            version=version,
        ),
    )
    if pending:
        await parts.runs.insert_many(
            [_run_document(run, low, to_session, to_gen, version) for run in pending.values()]
        )


def _run_document(
    run: StoredRun, low: int, session_id: str, gen: ObjectId, version: int
) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "gen": gen,
        "seq": run.seq - low,
        "version": version,
        "run_id": run.run_id,
        "run": run.run,
        "esc": run.esc,
    }


# --- truncate_runs --------------------------------------------------------------------------------


async def truncate_runs(writer: Writer, sid: str, uid: str | None, keep: int) -> int:
    await writer.settled([sid])  # the old history's runs are deleted after the switch
    parts = writer.parts
    for attempt in range(RETRY.attempts):
        doc = await _owned(writer, sid, uid)
        if doc is None or doc["run_count"] <= keep:
            return 0
        count: int = doc["run_count"]
        version, gen, new_gen = doc["version"], doc["gen"], ObjectId()
        if keep:
            await _copy_history(
                writer,
                doc,
                count - keep,
                count,
                to_session=sid,
                to_gen=new_gen,
                version=version + 1,
            )
        result = await parts.sessions.update_one(
            q.compare_and_set(sid, version, gen), q.switch_gen(new_gen, keep, version + 1, now_us())
        )
        if result.matched_count:
            if not any_hold(doc.get("holds"), now_us()):  # else a pop is reading some back
                await _forget(writer, sid, gen, "truncated")
            return count - keep
        if keep:
            await _forget(writer, sid, new_gen, "unused copied")
        await RETRY.pause(attempt)
    raise RETRY.exhausted(writer.label, sid)


# --- fork_session ---------------------------------------------------------------------------------


async def fork(
    writer: Writer,
    sid: str,
    new_sid: str,
    at_run: str | None,
    uid: str | None,
    ttl_us: int | None = None,
) -> Session | None:
    parts = writer.parts
    filter_ = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
    for attempt in range(RETRY.attempts):
        doc = await parts.sessions.find_one(q.live_filter(filter_, now_us()), q.FORK_FIELDS)
        if doc is None:
            return None
        gen, copied = doc["gen"], doc["run_count"]
        if at_run is not None:
            found = await runs_by_id(parts, doc, [at_run])
            if found is None:
                await RETRY.pause(attempt)
                continue
            if at_run not in found:
                raise InvalidInputError(
                    f"{writer.label}: run {at_run!r} is not in session {sid!r}; nothing was written"
                )
            copied = found[at_run].seq + 1
        existing = await writer.stored(new_sid)  # an expired one is deleted here
        if existing is not None:
            raise conflict(writer.label, new_sid, 0, existing.version)
        new_gen = ObjectId()
        if copied:
            await _copy_history(
                writer, doc, 0, copied, to_session=new_sid, to_gen=new_gen, version=1
            )
        pipeline = q.fork_pipeline(
            sid,
            gen,
            doc.get("rewritten"),
            {"session_data": doc.get("session_data"), "esc": doc.get("esc", 0)},
            into=parts.sessions.name,
            new_session_id=new_sid,
            new_gen=new_gen,
            run_count=copied,
            now=(now := now_us()),
            expires_at=None if ttl_us is None else now + ttl_us,
        )
        await q.aggregate(parts.sessions, pipeline)
        created: dict[str, Any] | None = await parts.sessions.find_one({"_id": new_sid})
        if created is not None and created["gen"] == new_gen:
            return session_from_doc(created, [], copied, [])
        if copied:
            await _forget(writer, new_sid, new_gen, "unused forked")
        if created is not None:  # created meanwhile by another call
            raise conflict(writer.label, new_sid, 0, created["version"])
        await RETRY.pause(attempt)  # the source changed while it was copied
    raise RETRY.exhausted(writer.label, sid)
