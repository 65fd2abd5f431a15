"""append_runs on MongoDB: one atomic update of the session document (the `pending` protocol of
`_queries`) that appends the runs, replaces or merge-patches the state (`_patch`), and checks the
owner and `if_version` in its filter.

Exactly once: when some run carries an id the caller gave (the only ids a retry can repeat), the
session is read first (its version, and the ids of its history on the ``session_run_id`` index);
the runs it already holds are left out, and the update applies only if no write since that read
added one of the others (`_queries.unseen_since`, on the session's ``ids_log``), so no retry can
slip in between the check and the append, while appends of other runs go on at the same time (a
miss reads again, under `_rules.RETRY`). When every run is already there, nothing is written.
Appends without given ids pay none of this: one update, then the settle of `_writes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .. import _codec as codec
from .._encoding import EncodedAppend, EncodedRun, decode_runs
from .._rules import RETRY, OwnerRule, Stored, conflict, decide
from .._time import now_us
from ..models import Session
from . import _bson
from . import _queries as q
from ._patch import patch_expression
from ._queries import Entry, RunDoc
from ._reads import StoredRun, decode_run, runs_by_id
from ._rows import run_doc, session_from_doc
from ._writes import Writer, stale_entries

__all__ = ["append"]


@dataclass(slots=True)
class _Run:
    run_id: str
    given: bool
    value: dict[str, Any]
    doc: RunDoc


@dataclass(slots=True)
class _Plan:
    """The condition of one attempt: at which version the update may apply."""

    runs: list[_Run]
    version: int | None  # the stored version it needs (0: the session must not exist)
    gen: ObjectId | None = None  # the incarnation read, when the plan comes from a read
    logged: list[str] | None = None  # the given ids it writes (None: none, or no read)
    unseen: bool = False  # `version` may have moved on, if no write added one of `logged`

    @property
    def reread(self) -> bool:
        """A miss means the session changed since it was read: read it again."""
        return self.logged is not None


async def append(writer: Writer, append: EncodedAppend) -> Session:
    data = None if append.session_data is None else codec.loads(append.session_data, marked=True)
    patch = None
    if append.state_patch is not None:
        patch = patch_expression(q.STORED_STATE, codec.loads(append.state_patch, marked=True))
    values = decode_runs([r.body for r in append.runs])
    runs = [
        _Run(r.run_id, r.given, v, run_doc(r.run_id, v))
        for r, v in zip(append.runs, values, strict=True)
    ]
    stored_data = None if data is None else _bson.encode(data)
    given = append.given_ids
    for attempt in range(RETRY.attempts):
        plan: _Plan | Session | None
        if given:
            plan = await _check_stored(writer, append, runs, given)
        else:
            plan = _Plan(runs, append.if_version)
        if isinstance(plan, Session):
            return plan  # every run was already stored: nothing written
        if plan is not None:
            now = now_us()
            pipeline = q.append_pipeline(
                user_id=append.user_id,
                session_data=stored_data,
                patch=patch,
                runs=[r.doc for r in plan.runs],
                logged=plan.logged,
                now=now,
                gen=ObjectId(),
            )
            after = await _update(writer, append, plan, pipeline, data is not None)
            if after is not None:
                return await _appended(writer, after, plan.runs, data, now)
        await RETRY.pause(attempt)
    raise RETRY.exhausted(writer.label, append.session_id)


async def _check_stored(
    writer: Writer, append: EncodedAppend, runs: list[_Run], given: list[str]
) -> _Plan | Session | None:
    """The plan of an append whose runs carry given ids, from the session as stored: the runs it
    does not hold yet, at its version; or the session as stored with them when it holds them
    all; or None when the history changed while it was read."""
    sid, expected = append.session_id, append.if_version
    doc = await writer.parts.sessions.find_one({"_id": sid}, q.READ_FIELDS)
    if doc is None:
        if expected:
            raise conflict(writer.label, sid, expected, 0)
        return _Plan(runs, 0, logged=_given(runs))
    stored_version = int(doc["version"])
    owner = Stored(doc.get("user_id"), stored_version)
    decide(
        writer.label, sid, owner, user_id=append.user_id, if_version=None, rule=OwnerRule.IF_GIVEN
    )
    stored = await runs_by_id(writer.parts, doc, given)
    if stored is None:
        return None
    fresh = [r for r in runs if r.run_id not in stored]
    if not fresh:
        return _as_stored(doc, append.runs, stored)
    if expected is not None and expected != stored_version:
        raise conflict(writer.label, sid, expected, stored_version)
    return _Plan(fresh, stored_version, doc["gen"], _given(fresh), unseen=expected is None)


def _given(runs: list[_Run]) -> list[str]:
    return [r.run_id for r in runs if r.given]


def _as_stored(
    doc: Mapping[str, Any], runs: list[EncodedRun], stored: dict[str, StoredRun]
) -> Session:
    """A retried append: the session as stored, with the runs the call brings again."""
    found = [stored[r.run_id] for r in runs]
    return session_from_doc(
        doc, [decode_run(s) for s in found], min(s.seq for s in found), [r.run_id for r in runs]
    )


async def _update(
    writer: Writer,
    append: EncodedAppend,
    plan: _Plan,
    pipeline: list[dict[str, Any]],
    replaced: bool,
) -> dict[str, Any] | None:
    """The one atomic update, returning the document as written (without the runs of `pending`,
    nor a state the call replaced); None when it missed and should be tried again."""
    sid, uid = append.session_id, append.user_id
    filter_: dict[str, Any] = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
    if plan.version == 0:
        filter_["version"] = {"$exists": False}
    elif plan.version is not None:
        if plan.gen is not None:
            filter_["gen"] = plan.gen
        if plan.unseen and plan.logged:
            filter_.update(q.unseen_since(plan.version, plan.logged))
        else:
            filter_["version"] = plan.version
    try:
        after: dict[str, Any] | None = await writer.parts.sessions.find_one_and_update(
            filter_,
            pipeline,
            projection=q.WITHOUT_DATA_OR_PENDING_RUNS if replaced else q.PENDING_WITHOUT_RUNS,
            upsert=plan.version is None or plan.version == 0,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        after = None  # the session exists: another user's, or created meanwhile
    if after is not None or plan.reread:
        return after
    decide(
        writer.label,
        sid,
        await writer.stored(sid),
        user_id=uid,
        if_version=plan.version,
        rule=OwnerRule.IF_GIVEN,
    )
    return None  # changed between the two statements: try again


async def _appended(
    writer: Writer,
    after: dict[str, Any],
    runs: list[_Run],
    data: dict[str, Any] | None,
    now: int,
) -> Session:
    version, count = after["version"], after["run_count"]
    start = count - len(runs)
    entries = [Entry(version, start, [r.doc.item() for r in runs])] if runs else []
    await writer.settle(
        after["_id"],
        after["gen"],
        entries,
        stale=stale_entries(after, now),
        holds=after.get("holds"),
    )
    return session_from_doc(
        after, [r.value for r in runs], start, [r.run_id for r in runs], session_data=data
    )
