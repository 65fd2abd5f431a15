"""Writing sessions to MongoDB without multi-document transactions (see `_queries` for the
protocol): each write is one atomic update of its session document, which carries the runs it
writes in `pending`; the writer then copies them to the runs collection ("settles" them).

An append settles in the background (`Writer.settle_later`): its caller has its answer after the
one update, since readers merge `pending` anyway (up to `SETTLES_IN_FLIGHT` at a time; past
that, an append settles before it answers, so a server that falls behind slows the callers
down rather than growing a backlog). At most `APPENDS_PER_SESSION` appends of one session are
between their update and the end of their settle in one store (`Writer.slot`); the next waits
for one of them, so one session's document never piles up the runs of more appends than that,
while that many concurrent appends to one session still run side by side. A write of
this store that deletes or rewrites runs of a session (upsert, delete, pop, truncate, a key
rotation's rewrite, retention batches) first waits for that session's settles too, so a settle
never copies runs after the write removed or re-encrypted them; `close()` waits for them all.

Ownership and `if_version` are part of each update's filter; when an update misses, `_rules.decide`
says why, from the owner and version stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial
from typing import Any, Final, cast

from bson import ObjectId
from pymongo import ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from .._observe import logger_for
from .._rules import (
    RETRY,
    OwnerRule,
    Stored,
    Verdict,
    decide,
    not_owner,
    owns,
    repeated_run_id,
    sealed_key,
)
from .._time import from_us, now_us
from ..errors import SessionOwnershipError
from ..models import Session
from . import _leases
from . import _queries as q
from ._queries import Collections, Entry
from ._reads import runs_by_id
from ._rows import Prepared

PINNED_ROUNDS: Final = 4
"""How many times `RETRY.attempts` an upsert whose update is pinned to the history it checked
(`Writer._check_kept_runs`) may try."""

__all__ = ["Slot", "Writer", "any_hold", "held", "stale_entries"]

_log = logger_for("mongodb")

# An entry of `pending` older than this is taken to be left behind by a writer that died, and is
# copied to the runs collection by the next write of the session.
_STALE_US: Final = 10_000_000
# The most appends' settles one store runs in the background; past it, an append settles before
# it answers, as if the server were that much slower (the backlog, and its memory, stay bounded).
SETTLES_IN_FLIGHT: Final = 128
# The most appends of one session between their update and the end of their settle, per store;
# past it, the next append to that session waits for one of them. Bounds the runs waiting in the
# session document (MongoDB caps it at 16 MiB) without making a few concurrent appends to one
# session (tools, sub-agents) queue behind each other's settles.
APPENDS_PER_SESSION: Final = 8
_DUPLICATE_KEY: Final = 11000


def held(
    holds: Iterable[Mapping[str, Any]] | None, version: int, low: int, high: int | None, now: int
) -> bool:
    """Whether a pop older than the write at `version` still holds one of the seqs
    ``low .. high-1`` (to the end when `high` is None): that write must not copy runs there yet,
    nor delete any (see `_queries`)."""
    for hold in holds or ():
        if (
            hold["v"] < version
            and hold["t"] > now - q.HOLD_US
            and low < hold["high"]
            and (high is None or hold["low"] < high)
        ):
            return True
    return False


def any_hold(holds: Iterable[Mapping[str, Any]] | None, now: int) -> bool:
    """Whether a pop is still reading runs of the history back."""
    return any(hold["t"] > now - q.HOLD_US for hold in holds or ())


def stale_entries(before: Mapping[str, Any] | None, now: int) -> list[int]:
    """Versions of the `pending` entries left behind by writers that did not finish."""
    if before is None:
        return []
    return [e["v"] for e in before.get("pending") or () if e.get("t", 0) < now - _STALE_US]


@dataclass(slots=True)
class _Planned:
    """One session of an `upsert_many` batch, planned against the version read before."""

    item: Prepared
    new: bool
    gen: ObjectId
    version: int
    start: int
    created_at: int
    old_count: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    stale: list[int] = field(default_factory=list)
    holds: list[dict[str, Any]] = field(default_factory=list)

    def session(self, now: int) -> Session:
        return self.item.session(
            created_at=self.created_at, updated_at=now, version=self.version, start=self.start
        )


def _plan(p: Prepared, doc: Mapping[str, Any] | None, now: int) -> _Planned:
    if doc is None:
        return _Planned(p, True, ObjectId(), 1, 0, now, 0)
    count = doc["run_count"]
    return _Planned(
        p,
        False,
        doc["gen"],
        doc["version"] + 1,
        min(p.runs_offset, count),
        doc["created_at"],
        count,
        stale=stale_entries(doc, now),
        holds=doc.get("holds") or [],
    )


def sealed_of(doc: Mapping[str, Any]) -> str | None:
    """The key id of a session's state stored encrypted (a string, not an object), else None."""
    state = doc.get("session_data")
    if state is None or isinstance(state, dict):
        return None
    return sealed_key(state if isinstance(state, str) else "")


class _Room:
    """The places of one session's appends in one store."""

    __slots__ = ("places", "users")

    def __init__(self, size: int) -> None:
        self.places = asyncio.Semaphore(size)
        self.users = 0  # holding a place or waiting for one


class Slot:
    """An append's place among its session's (`Writer.slot`). The append releases it when it
    ends, unless it handed it to its settle's task (`hand_to`), which releases it when done."""

    __slots__ = ("_held", "_room", "_sid", "_writer")

    def __init__(self, writer: Writer, sid: str, room: _Room) -> None:
        self._writer, self._sid, self._room, self._held = writer, sid, room, True

    def hand_to(self, task: asyncio.Task[None]) -> None:
        self._held = False
        task.add_done_callback(lambda _: self._writer._leave(self._sid, self._room))

    def release(self) -> None:
        if self._held:
            self._held = False
            self._writer._leave(self._sid, self._room)


class Writer:
    """The writes of one store's collections."""

    def __init__(self, parts: Collections, label: str) -> None:
        self.parts = parts
        self.label = label
        # The settles running in the background, by session id.
        self.settling: dict[str, set[asyncio.Task[None]]] = {}
        # The sessions with appends between their update and the end of their settle.
        self._rooms: dict[str, _Room] = {}

    # --- settles in the background --------------------------------------------------------------

    @property
    def settles_in_flight(self) -> int:
        return sum(map(len, self.settling.values()))

    async def settle_later(
        self,
        sid: str,
        gen: ObjectId,
        entries: list[Entry],
        *,
        stale: Sequence[int] = (),
        holds: Iterable[Mapping[str, Any]] | None = None,
        slot: Slot | None = None,
    ) -> None:
        """`settle` in a task of its own, after the caller has its answer; inline when
        `SETTLES_IN_FLIGHT` are running already. Nothing is lost when it fails or never runs:
        the runs stay readable in `pending` (see `settle`). `slot`, the append's, is released
        when the settle ends."""
        if not entries and not stale:
            return
        if self.settles_in_flight >= SETTLES_IN_FLIGHT:
            await self.settle(sid, gen, entries, stale=stale, holds=holds)
            return
        task = asyncio.ensure_future(self.settle(sid, gen, entries, stale=stale, holds=holds))
        self.settling.setdefault(sid, set()).add(task)
        task.add_done_callback(partial(self._settled, sid))
        if slot is not None:
            slot.hand_to(task)

    def _settled(self, sid: str, task: asyncio.Task[None]) -> None:
        tasks = self.settling.get(sid)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self.settling[sid]
        if task.cancelled():
            return
        exc = task.exception()  # `settle` logs what the database raised; this is anything else
        if exc is not None:
            _log.warning(
                "%s: session %r is written; moving its new runs out of the session document "
                "failed and is left to its next write: %r",
                self.label,
                sid,
                exc,
                exc_info=exc,
            )

    async def slot(self, sid: str) -> Slot:
        """One of the `APPENDS_PER_SESSION` places of session `sid`, waiting for one when all
        are taken. Released by `settle_later` when the append's settle ends, or by the append
        itself when it hands nothing over (see `Slot`)."""
        room = self._rooms.get(sid)
        if room is None:
            room = self._rooms[sid] = _Room(APPENDS_PER_SESSION)
        room.users += 1
        try:
            await room.places.acquire()
        except BaseException:
            self._leave(sid, room, taken=False)
            raise
        return Slot(self, sid, room)

    def _leave(self, sid: str, room: _Room, *, taken: bool = True) -> None:
        if taken:
            room.places.release()
        room.users -= 1
        if not room.users:
            del self._rooms[sid]

    async def settled(self, sids: Iterable[str] | None = None) -> None:
        """Wait for the settles in flight of these sessions (None: of every session) when the
        call is made. Waiting never cancels them, nor raises what they raised."""
        if sids is None:
            tasks = [t for running in self.settling.values() for t in running]
        else:
            tasks = [t for sid in sids for t in self.settling.get(sid, ())]
        if tasks:
            await asyncio.wait(tasks)

    async def live_doc(self, sid: str, projection: Mapping[str, Any]) -> dict[str, Any] | None:
        """The session's document, None when absent; an expired session is deleted here, with
        its runs, and is absent: a write then creates it anew."""
        doc: dict[str, Any] | None = await self.parts.sessions.find_one({"_id": sid}, projection)
        expires = None if doc is None else doc.get("expires_at")
        if expires is not None and expires.replace(tzinfo=UTC) <= from_us(now_us()):
            await self.purge(sid)
            return None
        return doc

    async def purge(self, sid: str) -> None:
        """Delete the session when it has expired, and the runs of that incarnation."""
        gone = await self.parts.sessions.find_one_and_delete(
            {"_id": sid, **q.expired(now_us())}, projection={"gen": 1}
        )
        if gone is not None:
            await self.parts.runs.delete_many({"session_id": sid, "gen": gone["gen"]})

    async def stored(self, sid: str, *, fenced: bool = False, patch: bool = False) -> Stored | None:
        """The owner and version of a session (None: absent, or expired: then deleted); for a
        fenced write that missed, its latest lease token too (`_leases.fence_state`); for a
        patch that missed, whether its state is stored encrypted (`sealed_of`)."""
        fields = {"user_id": 1, "version": 1, "lease_token": 1, "expires_at": 1}
        if patch:
            fields["session_data"] = 1
        doc = await self.live_doc(sid, fields)
        if doc is None:
            return None
        token = doc.get("lease_token")
        if fenced:
            token = await _leases.fence_state(self.parts, sid, token)
        return Stored(doc.get("user_id"), int(doc["version"]), token or 0, sealed_of(doc))

    # --- upsert ---------------------------------------------------------------------------------

    async def upsert(self, p: Prepared, expected: int | None) -> Session:
        await self.settled([p.session_id])  # this write may cut runs off the end
        now = now_us()
        gen = ObjectId()
        before: dict[str, Any] | None = None
        if expected == 0:
            await self._insert_new(p, now, gen)
        else:
            before = await self._update_whole(p, expected, now, gen)
        if before is None and p.fence is not None:
            await _leases.after_create(self.parts, p.session_id, p.fence)
        if before is None:
            version, start, created, old_count = 1, 0, now, 0
        else:
            version, gen, created = before["version"] + 1, before["gen"], before["created_at"]
            old_count = before["run_count"]
            start = min(p.runs_offset, old_count)
        run_count = start + len(p.run_docs)
        entries = [Entry(version, start, [r.item() for r in p.run_docs])] if p.run_docs else []
        await self.settle(
            p.session_id,
            gen,
            entries,
            truncate=(run_count, version) if run_count < old_count else None,
            stale=stale_entries(before, now),
            holds=None if before is None else before.get("holds"),
        )
        return p.session(created_at=created, updated_at=now, version=version, start=start)

    async def _insert_new(self, p: Prepared, now: int, gen: ObjectId) -> None:
        """An upsert with ``if_version=0``: the session must not exist."""
        created_with = None
        if p.fence is not None:
            created_with = await _leases.check_create(self.parts, self.label, p.session_id, p.fence)
        document = q.new_session_document(
            p.session_id,
            p.user_id,
            p.fields,
            now=now,
            runs=p.run_docs,
            gen=gen,
            lease_token=created_with,
            expiry=p.expiry,
        )
        for attempt in range(RETRY.attempts):
            try:
                await self.parts.sessions.insert_one(document)
                return
            except DuplicateKeyError:
                stored = await self.stored(p.session_id, fenced=p.fence is not None)
                decide(
                    self.label, p.session_id, stored, user_id=p.user_id, if_version=0,
                    rule=OwnerRule.EXACT, fence=p.fence,
                )  # fmt: skip
                await RETRY.pause(attempt)  # deleted since: insert again
        raise RETRY.exhausted(self.label, p.session_id)

    async def _update_whole(
        self, p: Prepared, expected: int | None, now: int, gen: ObjectId
    ) -> dict[str, Any] | None:
        """The one update of an upsert; returns the document as it was before (None: created).
        A fenced upsert only updates, until it finds the session absent and its fence current
        (`_leases.check_create`): then it may create it."""
        filter_: dict[str, Any] = {"_id": p.session_id, "user_id": p.user_id}
        if expected is not None:
            filter_["version"] = expected
        filter_.update(q.fence_filter(p.fence))
        base = q.live_filter(filter_, now)
        created_with: int | None = None  # a fenced upsert's lease token for a session it creates
        checked = bool(p.runs_offset and p.given_ids)
        # A checked update misses whenever another rewrite lands between its check and itself:
        # under many concurrent rewriters of one session that is most rounds, so it gets more.
        rounds = RETRY.attempts * (PINNED_ROUNDS if checked else 1)
        for attempt in range(rounds):
            # Runs kept before the offset must not hold this write's run ids: checked first,
            # and the update then applies only to the history checked (`_check_kept_runs`).
            pin = await self._check_kept_runs(p) if checked else None
            filter_ = base if pin is None else {**pin, **base}
            pipeline = q.upsert_pipeline(
                p.fields,
                runs_offset=p.runs_offset,
                runs=p.run_docs,
                now=now,
                gen=gen,
                lease_token=created_with,
                expiry=p.expiry,
            )
            create = (
                expected is None and pin is None and (p.fence is None or created_with is not None)
            )
            try:
                before: dict[str, Any] | None = await self.parts.sessions.find_one_and_update(
                    filter_,
                    pipeline,
                    projection=q.BEFORE_UPSERT,
                    upsert=create,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                # The filter missed a session that exists: another user's, or one just created.
                before, missed = None, True
            else:
                missed = before is None and not create
            if not missed:
                return before
            verdict = decide(
                self.label,
                p.session_id,
                await self.stored(p.session_id, fenced=p.fence is not None),
                user_id=p.user_id,
                if_version=expected,
                rule=OwnerRule.EXACT,
                fence=p.fence,
            )
            if verdict is Verdict.CREATE and p.fence is not None:
                created_with = await _leases.check_create(
                    self.parts, self.label, p.session_id, p.fence
                )
            elif verdict is Verdict.RETRY:
                await RETRY.pause(min(attempt, RETRY.attempts - 1))
        raise RETRY.exhausted(self.label, p.session_id, rounds)

    async def _check_kept_runs(self, p: Prepared) -> dict[str, Any] | None:
        """Before an upsert that keeps the runs before its offset: raise `repeated_run_id` when
        one of them holds the id of a run the write brings; else what the update's filter must
        add so that it applies only to the history checked (None: the session is absent, or not
        the caller's, which the update then says).

        Only a rewrite can move a run before the offset (an upsert or a pop: `rewritten`; a
        truncation, deletion or re-creation: `gen`), so those are pinned, and appends meanwhile
        do not make the update miss: they add runs at or past the run count checked, which is
        at or past the offset. An offset past that count is pinned to the version too, as runs
        appended meanwhile may then land before it."""
        for attempt in range(RETRY.attempts):
            doc = await self.live_doc(p.session_id, q.HISTORY_FIELDS)
            if doc is None or not owns(doc.get("user_id"), p.user_id, OwnerRule.EXACT):
                return None
            current, held = await self._held_run_id(p, doc)
            if not current:  # written meanwhile
                await RETRY.pause(attempt)
                continue
            version = int(doc["version"])
            if held is None:
                pin = {"gen": doc["gen"], "rewritten": doc.get("rewritten")}
                if p.runs_offset > doc["run_count"]:
                    pin["version"] = version
                return pin
            if p.fence is not None:  # a lost lease says so first
                stored = await self.stored(p.session_id, fenced=True)
                decide(
                    self.label, p.session_id, stored, user_id=p.user_id, if_version=None,
                    rule=OwnerRule.EXACT, fence=p.fence,
                )  # fmt: skip
            raise repeated_run_id(self.label, p.session_id, held, p.runs_offset, p.version, version)
        raise RETRY.exhausted(self.label, p.session_id)

    async def _held_run_id(self, p: Prepared, doc: Mapping[str, Any]) -> tuple[bool, str | None]:
        """Whether `doc` (with `HISTORY_FIELDS`) is still the session's history, and the id of
        the first of its runs before the write's offset that the write brings again (None:
        none does)."""
        found = await runs_by_id(self.parts, doc, p.given_ids)
        if found is None:
            return False, None
        start = min(p.runs_offset, doc["run_count"])
        held = sorted((run.seq, run_id) for run_id, run in found.items() if run.seq < start)
        return True, held[0][1] if held else None

    # --- moving runs out of the session document ------------------------------------------------

    async def settle(
        self,
        sid: str,
        gen: ObjectId,
        entries: list[Entry],
        *,
        truncate: tuple[int, int] | None = None,
        stale: Sequence[int] = (),
        holds: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """Copy a committed write's runs to the runs collection and drop them from `pending`
        (with any entries left behind by writers that died). The write is complete without this:
        when it fails, readers keep finding the runs in `pending` and a later write finishes it."""
        try:
            await self.move(sid, gen, entries, truncate=truncate, stale=stale, holds=holds)
        except PyMongoError as exc:
            _log.warning(
                "%s: session %r is written; moving its new runs out of the session document "
                "failed and is left to its next write: %s",
                self.label,
                sid,
                exc,
            )

    async def move(
        self,
        sid: str,
        gen: ObjectId,
        entries: list[Entry],
        *,
        truncate: tuple[int, int] | None = None,
        stale: Sequence[int] = (),
        holds: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """`settle`, raising what fails. `holds`: those of the session as the write found it;
        an entry at seqs a pop still holds stays in `pending` (the pop moves it, see
        `_queries`)."""
        parts = self.parts
        now = now_us()
        operations: list[Any] = []
        pulled: list[int] = []
        for entry in entries:
            if not held(holds, entry.version, entry.start, entry.start + len(entry.runs), now):
                operations += q.copy_runs(sid, gen, entry)
                pulled.append(entry.version)
        if stale:
            doc = await parts.sessions.find_one(
                {"_id": sid, "gen": gen}, {"pending": 1, "holds": 1}
            )
            doc = doc or {}
            for raw in doc.get("pending") or ():
                entry = Entry(raw["v"], raw["start"], raw["runs"])
                end = entry.start + len(entry.runs)
                if raw["v"] in stale and not held(
                    doc.get("holds"), raw["v"], raw["start"], end, now
                ):
                    operations += q.copy_runs(sid, gen, entry)
                    pulled.append(entry.version)
        if truncate is not None and not held(holds, truncate[1], truncate[0], None, now):
            operations.append(q.drop_runs_after(sid, gen, *truncate))
        if operations:
            await self._bulk_runs(operations)
        if pulled:
            pull = await parts.sessions.update_one({"_id": sid, "gen": gen}, q.pull_entries(pulled))
            if pull.matched_count == 0:
                # This history of the session is gone (deleted, expired, erased or replaced by
                # another store object or process since the write): the copies just made are
                # its runs' only trace, and must not outlive it.
                await parts.runs.delete_many({"session_id": sid, "gen": gen})

    async def _bulk_runs(self, operations: list[Any]) -> None:
        try:
            await self.parts.runs.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            # A duplicate key is a seq a newer write already holds: nothing to copy.
            errors = exc.details.get("writeErrors") or []
            if exc.details.get("writeConcernErrors") or any(
                e.get("code") != _DUPLICATE_KEY for e in errors
            ):
                raise

    # --- upsert_many ----------------------------------------------------------------------------

    async def upsert_many(self, items: list[Prepared], returning: bool = True) -> list[Session]:
        await self.settled([p.session_id for p in items])
        now = now_us()
        todo = {p.session_id: p for p in items}
        done: dict[str, Session | None] = {}
        settled: list[_Planned] = []
        expired = self.parts.sessions.find(
            {"_id": {"$in": list(todo)}, **q.expired(now)}, {"_id": 1}
        )
        for doc in await expired.to_list(None):  # an expired session is created anew
            await self.purge(doc["_id"])
        for attempt in range(RETRY.attempts):
            stored = {
                d["_id"]: d
                for d in await self.parts.sessions.find(
                    {"_id": {"$in": list(todo)}}, q.BEFORE_UPSERT
                ).to_list(None)
            }
            for sid, p in todo.items():
                doc = stored.get(sid)
                if doc is not None and not owns(doc.get("user_id"), p.user_id, OwnerRule.EXACT):
                    error = not_owner(self.label, sid, p.user_id)
                    if done:
                        error = SessionOwnershipError(
                            f"{error}; its owner changed during the batch, after "
                            f"{len(done)} other session(s) were written",
                            session_id=sid,
                        )
                    raise error
            if not await self._check_kept_runs_of(todo, stored):
                await RETRY.pause(attempt)
                continue
            plans = [_plan(p, stored.get(p.session_id), now) for p in todo.values()]
            failed = await self._bulk_sessions(plans, now)
            for index, plan in enumerate(plans):
                if index not in failed:
                    done[plan.item.session_id] = plan.session(now) if returning else None
                    settled.append(plan)
                    del todo[plan.item.session_id]
            if not todo:
                break
            await RETRY.pause(attempt)
        else:
            raise RETRY.exhausted(self.label, next(iter(todo)))
        await self._settle_many(settled)
        if not returning:
            return []
        return [cast(Session, done[p.session_id]) for p in items]  # every one built

    async def _check_kept_runs_of(
        self, todo: Mapping[str, Prepared], stored: Mapping[str, Mapping[str, Any]]
    ) -> bool:
        """`_check_kept_runs` for a batch, against the documents it read (`stored`, which the
        batch's updates then require unchanged): False when one changed meanwhile."""
        for sid, p in todo.items():
            if sid not in stored or not p.runs_offset or not p.given_ids:
                continue
            doc = await self.parts.sessions.find_one({"_id": sid}, q.HISTORY_FIELDS)
            if doc is None or (doc["version"], doc["gen"]) != (
                stored[sid]["version"],
                stored[sid]["gen"],
            ):
                return False
            current, held = await self._held_run_id(p, doc)
            if not current:
                return False
            if held is not None:
                raise repeated_run_id(
                    self.label, sid, held, p.runs_offset, p.version, int(doc["version"])
                )
        return True

    async def _bulk_sessions(self, plans: list[_Planned], now: int) -> set[int]:
        """One bulk write of compare-and-set updates; returns the positions that did not apply."""
        operations: list[Any] = []
        for plan in plans:
            p = plan.item
            entry = q.pending_entry(plan.version, plan.start, now, p.run_docs, plan.token)
            if plan.new:
                document = q.new_session_document(
                    p.session_id,
                    p.user_id,
                    p.fields,
                    now=now,
                    runs=p.run_docs,
                    gen=plan.gen,
                    token=plan.token,
                    expiry=p.expiry,
                )
                operations.append(
                    ReplaceOne(
                        {"_id": p.session_id, "version": {"$exists": False}}, document, upsert=True
                    )
                )
            else:
                update = q.cas_update(
                    p.fields,
                    version=plan.version,
                    run_count=plan.start + len(p.run_docs),
                    now=now,
                    entry=entry,
                    expires_at=p.expiry.on_update(now),
                )
                operations.append(
                    UpdateOne(
                        {"_id": p.session_id, "version": plan.version - 1, "gen": plan.gen}, update
                    )
                )
        failed: set[int] = set()
        try:
            result = await self.parts.sessions.bulk_write(operations, ordered=False)
            matched = result.matched_count
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors") or ():
                if error.get("code") != _DUPLICATE_KEY:
                    raise
                failed.add(error["index"])  # created meanwhile: plan it again
            matched = exc.details.get("nMatched", 0)
        updates = [i for i, plan in enumerate(plans) if not plan.new]
        if matched < len(updates):
            # Some compare-and-set missed (another writer came first): the ones that applied
            # hold their token in `pending`.
            ids = [plans[i].item.session_id for i in updates]
            docs = await self.parts.sessions.find({"_id": {"$in": ids}}, {"pending.w": 1}).to_list(
                None
            )
            tokens = {d["_id"]: {e.get("w") for e in d.get("pending") or ()} for d in docs}
            for i in updates:
                plan = plans[i]
                if plan.token not in tokens.get(plan.item.session_id, ()):
                    failed.add(i)
        return failed

    async def _settle_many(self, plans: list[_Planned]) -> None:
        now = now_us()
        held_by_pops = [p for p in plans if held(p.holds, p.version, 0, None, now)]
        plans = [p for p in plans if not held(p.holds, p.version, 0, None, now)]
        for plan in held_by_pops:  # rare: one at a time, minding the holds
            p = plan.item
            entries = [Entry(plan.version, plan.start, [r.item() for r in p.run_docs])]
            run_count = plan.start + len(p.run_docs)
            truncate = (run_count, plan.version) if run_count < plan.old_count else None
            await self.settle(
                p.session_id,
                plan.gen,
                entries,
                truncate=truncate,
                stale=plan.stale,
                holds=plan.holds,
            )
        if not plans:
            return
        try:
            operations: list[Any] = []
            for plan in plans:
                p = plan.item
                if p.run_docs:
                    entry = Entry(plan.version, plan.start, [r.item() for r in p.run_docs])
                    operations += q.copy_runs(p.session_id, plan.gen, entry)
                run_count = plan.start + len(p.run_docs)
                if run_count < plan.old_count:
                    operations.append(
                        q.drop_runs_after(p.session_id, plan.gen, run_count, plan.version)
                    )
            if operations:
                await self._bulk_runs(operations)
            await self.parts.sessions.update_many(
                {"_id": {"$in": [plan.item.session_id for plan in plans]}},
                {"$pull": {"pending": {"w": {"$in": [plan.token for plan in plans]}}}},
            )
        except PyMongoError as exc:
            _log.warning(
                "%s: a batch of %d sessions is written; moving its runs out of the session "
                "documents failed and is left to their next writes: %s",
                self.label,
                len(plans),
                exc,
            )
        for plan in plans:
            if plan.stale:
                await self.settle(plan.item.session_id, plan.gen, [], stale=plan.stale)

    # --- delete ---------------------------------------------------------------------------------

    async def delete(self, sid: str, uid: str | None) -> bool:
        await self.settled([sid])
        filter_ = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
        doc = await self.parts.sessions.find_one_and_delete(
            filter_, projection={"gen": 1, "holds": 1, "expires_at": 1}
        )
        if doc is None:
            return False
        expires = doc.get("expires_at")
        live = expires is None or expires.replace(tzinfo=UTC) > from_us(now_us())
        if any_hold(doc.get("holds"), now_us()):
            # A pop is reading some of them back; they are never read otherwise.
            return live
        try:
            await self.parts.runs.delete_many({"session_id": sid, "gen": doc["gen"]})
        except PyMongoError as exc:
            # The session is gone; its runs can no longer be read (a re-created session is
            # another incarnation), they only take space.
            _log.warning("%s: session %r is deleted, its runs are not: %s", self.label, sid, exc)
        return live
