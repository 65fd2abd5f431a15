"""append_runs on MongoDB: one atomic update of the session document (the `pending` protocol of
`_queries`) that appends the runs, replaces or merge-patches the state (`_patch`), and checks the
owner and `if_version` in its filter.

Exactly once: when some run carries an id the caller gave (the only ids a retry can repeat), the
session is read first (its version, and the ids of its history on the ``session_run_id`` index);
the runs it already holds are left out, and the update applies only if no write since that read
added one of the others (`_queries.unseen_since`, on the session's ``ids_log``), so no retry can
slip in between the check and the append, while appends of other runs go on at the same time (a
miss reads again, under `_rules.RETRY`). When every run is already there, nothing is written.
Appends without given ids pay none of this: one update. The settle of `_writes` (the runs copied
to the runs collection) runs after the answer, in the background (`Writer.settle_later`).
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
from .._rules import RETRY, OwnerRule, Stored, Verdict, conflict, decide
from .._time import now_us
from ..models import Session
from . import _bson, _leases
from . import _queries as q
from ._patch import patch_expression
from ._queries import Entry, RunDoc
from ._reads import StoredRun, decode_run, runs_by_id
from ._rows import run_doc, session_from_doc
from ._writes import Slot, Writer, sealed_of, stale_entries

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
    created_with: int | None = None  # a fenced append's lease token for a session it creates

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
    # A few appends of a session between update and settle at a time, per store: appends to one
    # session faster than their settles would pile their runs up in the document (16 MiB at most).
    slot = await writer.slot(append.session_id)
    try:
        return await _append(writer, append, runs, stored_data, patch, data, slot)
    finally:
        slot.release()  # unless the settle's task has it


async def _append(
    writer: Writer,
    append: EncodedAppend,
    runs: list[_Run],
    stored_data: tuple[Any, bool] | None,
    patch: tuple[dict[str, Any], bool] | None,
    data: dict[str, Any] | None,
    slot: Slot,
) -> Session:
    given = append.given_ids
    created_with: int | None = None  # a fenced append's lease token for a session it creates
    for attempt in range(RETRY.attempts):
        plan: _Plan | Session | None
        if given:
            plan = await _check_stored(writer, append, runs, given)
        else:
            plan = _Plan(runs, append.if_version, created_with=created_with)
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
                lease_token=plan.created_with,
                expiry=append.expiry,
            )
            after = await _update(writer, append, plan, pipeline, data is not None)
            if isinstance(after, int):
                created_with = after  # absent, and the fence is current: create it next
                continue
            if after is not None:
                if append.fence is not None and after["version"] == 1:
                    await _leases.after_create(writer.parts, append.session_id, append.fence)
                return await _appended(writer, after, plan.runs, data, now, slot)
        await RETRY.pause(attempt)
    raise RETRY.exhausted(writer.label, append.session_id)


async def _check_stored(
    writer: Writer, append: EncodedAppend, runs: list[_Run], given: list[str]
) -> _Plan | Session | None:
    """The plan of an append whose runs carry given ids, from the session as stored: the runs it
    does not hold yet, at its version; or the session as stored with them when it holds them
    all; or None when the history changed while it was read."""
    sid, expected, fence = append.session_id, append.if_version, append.fence
    doc = await writer.live_doc(sid, q.READ_FIELDS)
    if doc is None:
        if expected:
            raise conflict(writer.label, sid, expected, 0)
        created_with = None
        if fence is not None:
            created_with = await _leases.check_create(writer.parts, writer.label, sid, fence)
        return _Plan(runs, 0, logged=_given(runs), created_with=created_with)
    stored_version = int(doc["version"])
    token = doc.get("lease_token")
    if fence is not None and token is None:  # no token on the document yet: write it there
        token = await _leases.fence_state(writer.parts, sid, token)
    owner = Stored(doc.get("user_id"), stored_version, token or 0, sealed_of(doc))
    decide(
        writer.label, sid, owner, user_id=append.user_id, if_version=None,
        rule=OwnerRule.IF_GIVEN, fence=fence, patch=append.state_patch is not None,
    )  # fmt: skip
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
) -> dict[str, Any] | int | None:
    """The one atomic update, returning the document as written (without the runs of `pending`,
    nor a state the call replaced); None when it missed and should be tried again. A fenced
    append updates only, until it finds the session absent and its fence current: then this
    returns the lease token the session it creates takes (`_leases.check_create`)."""
    sid, uid, fence = append.session_id, append.user_id, append.fence
    filter_: dict[str, Any] = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
    filter_.update(q.fence_filter(fence))
    if append.state_patch is not None:  # never into a state stored encrypted (a string)
        filter_["session_data"] = {"$type": "object"}
    filter_ = q.live_filter(filter_, now_us())
    if plan.version == 0:
        filter_["version"] = {"$exists": False}
    elif plan.version is not None:
        if plan.gen is not None:
            filter_["gen"] = plan.gen
        if plan.unseen and plan.logged:
            filter_.update(q.unseen_since(plan.version, plan.logged))
        else:
            filter_["version"] = plan.version
    create = plan.version is None or plan.version == 0
    if fence is not None and plan.created_with is None:
        create = False
    try:
        after: dict[str, Any] | None = await writer.parts.sessions.find_one_and_update(
            filter_,
            pipeline,
            projection=q.WITHOUT_DATA_OR_PENDING_RUNS if replaced else q.PENDING_WITHOUT_RUNS,
            upsert=create,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:
        after = None  # the session exists: another user's, or created meanwhile
    if after is not None or (plan.reread and fence is None):
        return after
    patch = append.state_patch is not None
    verdict = decide(
        writer.label,
        sid,
        await writer.stored(sid, fenced=fence is not None, patch=patch),
        user_id=uid,
        if_version=None if plan.reread else plan.version,  # a plan from a read: read again
        rule=OwnerRule.IF_GIVEN,
        fence=fence,
        patch=patch,
    )
    if plan.reread:
        return None
    if verdict is Verdict.CREATE and fence is not None:
        return await _leases.check_create(writer.parts, writer.label, sid, fence)
    return None  # changed between the two statements: try again


async def _appended(
    writer: Writer,
    after: dict[str, Any],
    runs: list[_Run],
    data: dict[str, Any] | None,
    now: int,
    slot: Slot,
) -> Session:
    version, count = after["version"], after["run_count"]
    start = count - len(runs)
    entries = [Entry(version, start, [r.doc.item() for r in runs])] if runs else []
    await writer.settle_later(
        after["_id"],
        after["gen"],
        entries,
        stale=stale_entries(after, now),
        holds=after.get("holds"),
        slot=slot,
    )
    return session_from_doc(
        after, [r.value for r in runs], start, [r.run_id for r in runs], session_data=data
    )
