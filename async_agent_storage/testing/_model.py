"""A session's history against a model, in the conformance suite: hypothesis draws a program of
run-level calls (appends with and without run ids, state patches and replaces, upserts of an
edited tail, pops, truncations, clears, forks, lookups by run id, deletes) and runs it on the
store and on `HistoryModel`, a plain Python statement of the rules every driver shares. After
each call the session as read must be the model's: the same runs in the same order, the same
ids where the model knows them (ids the store assigns are learned as they come back), each id
once, the same version and state.

The drivers each write these rules in their own SQL or update operators; this is the test that
catches one drifting from the others on a sequence no hand-written test thought of.

Mixed into `SessionStoreConformance`; every driver runs it unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .._encoding import merge_patch
from ..errors import (
    InvalidInputError,
    SessionConflictError,
    SessionFencedError,
    SessionOwnershipError,
)
from ..models import Session
from ..protocol import SessionStore

__all__ = ["HistoryModel", "HistoryModelConformance", "ListingModelConformance"]

_IDS = ["r0", "r1", "r2", "r3", "r4", "r5"]  # run ids a program may give (None: the store's)
_given_id = st.one_of(st.none(), st.sampled_from(_IDS))
_user = st.sampled_from([None, None, "u1", "u2"])  # user_id (None: no owner check on appends)
_state = st.one_of(
    st.none(),
    st.tuples(
        st.just("patch"),
        st.sampled_from(["a", "b"]),
        st.sampled_from([1, "x", None, {"c": 1}, {"c": None, "d": [1]}]),
    ),
    st.tuples(st.just("replace"), st.integers(0, 3)),
)
_append = st.tuples(
    st.just("append"),
    st.lists(_given_id, min_size=1, max_size=3).filter(
        lambda ids: len([i for i in ids if i]) == len({i for i in ids if i})
    ),
    _state,
    _user,
    st.booleans(),  # the ids by `run_ids=` (the runs carry none) instead of their own key
)
_append_if = st.tuples(
    st.just("append_if"),
    st.lists(_given_id, min_size=1, max_size=2).filter(
        lambda ids: len([i for i in ids if i]) == len({i for i in ids if i})
    ),
    st.booleans(),  # a stale version
    _user,
)
_upsert_whole = st.tuples(
    st.just("upsert_whole"),
    st.lists(_given_id, max_size=3),
    st.sampled_from([None, "current", "other"]),  # if_version
    _user,
)
_upsert_tail = st.tuples(
    st.just("upsert_tail"),
    st.integers(0, 4),
    st.sampled_from(
        ["keep", "add", "drop_first", "change_last", "offset0", "offset_past", "repeat_kept"]
    ),
    _given_id,
    st.booleans(),  # written by upsert_many, beside a new session
)
_program = st.lists(
    st.one_of(
        _append,
        _append,
        _upsert_tail,
        _upsert_tail,
        _append_if,
        _upsert_whole,
        st.tuples(st.just("pop"), st.integers(1, 3)),
        st.tuples(st.just("truncate"), st.integers(0, 4)),
        st.tuples(st.just("clear")),
        st.tuples(st.just("fork"), st.one_of(st.none(), st.integers(0, 8))),
        st.tuples(st.just("fork_refused"), st.sampled_from(["onto_existing", "unknown_run"])),
        st.tuples(st.just("get_run"), st.sampled_from(_IDS)),
        st.tuples(st.just("lease")),
        st.tuples(st.just("fenced_append"), st.booleans(), _given_id),  # with a stale token
        st.tuples(st.just("expire"), st.booleans()),  # by an upsert, else by an append
        st.tuples(st.just("delete")),
        st.tuples(
            st.just("intrude"),
            st.sampled_from(["pop", "truncate", "clear", "get_run", "fork", "delete", "lease"]),
        ),
    ),
    min_size=1,
    max_size=12,
)


@dataclass
class HistoryModel:
    """One session as the rules say it is: its runs as (id, body), an id None while the store
    assigned it and the model has not seen it yet."""

    exists: bool = False
    owner: str | None = None
    version: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    runs: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)

    def refuses(self, user: str | None, *, exact: bool) -> bool:
        """Whether a write as `user` is another user's (an append without a user checks no
        owner; an upsert's user must be the owner, None included)."""
        if not self.exists or (user is None and not exact):
            return False
        return self.owner != user

    def ids(self) -> set[str]:
        return {i for i, _ in self.runs if i is not None}

    def write(self, runs: list[tuple[str | None, dict[str, Any]]]) -> None:
        self.runs = runs
        self.version += 1

    def learn(self, run_ids: list[str], offset: int) -> None:
        """Ids the store returned for the runs from `offset`."""
        for i, run_id in enumerate(run_ids):
            known, body = self.runs[offset + i]
            assert known in (None, run_id), (offset + i, known, run_id)
            self.runs[offset + i] = (run_id, body)


def _new_state(state: dict[str, Any], change: Any) -> dict[str, Any]:
    if change is None:
        return state
    if change[0] == "patch":
        return merge_patch(state, {"session_state": {change[1]: change[2]}})  # type: ignore[no-any-return]
    return {"replaced": change[1]}


def _state_args(change: Any) -> dict[str, Any]:
    if change is None:
        return {}
    if change[0] == "patch":
        return {"state_patch": {"session_state": {change[1]: change[2]}}}
    return {"session_data": {"replaced": change[1]}}


class _Program:
    """One drawn program running on a store and on the model: a method per kind of call, each
    named as the call's first item."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.sid = f"m-{uuid.uuid4().hex[:12]}"
        self.model = HistoryModel()
        self.where = ""
        self._bodies = iter(range(10**6))
        self.tokens: list[int] = []  # the tokens of the leases taken, oldest first

    def body(self, run_id: str | None) -> dict[str, Any]:
        """A new run, carrying `run_id` as its own id when given."""
        run: dict[str, Any] = {"n": next(self._bodies)}
        if run_id is not None:
            run["run_id"] = run_id
        return run

    async def append(
        self, op: tuple[Any, ...], runs: list[dict[str, Any]] | None = None, **extra: Any
    ) -> None:
        store, sid, model, where = self.store, self.sid, self.model, self.where
        args = {"user_id": op[3], **_state_args(op[2]), **extra}
        if op[4]:  # ids by position: a prefix of ids, the rest the store's
            cut = op[1].index(None) if None in op[1] else len(op[1])
            given = [(i if n < cut else None, self.body(None)) for n, i in enumerate(op[1])]
            args["run_ids"] = op[1][:cut]
        elif runs is not None:
            given = list(zip(op[1], runs, strict=True))
        else:
            given = [(i, self.body(i)) for i in op[1]]
        if model.refuses(op[3], exact=False):
            with pytest.raises(SessionOwnershipError):
                await store.append_runs(sid, [b for _, b in given], **args)
            return
        result = await store.append_runs(sid, [b for _, b in given], **args)
        stored = model.ids()
        new = [(i, b) for i, b in given if i is None or i not in stored]
        if not model.exists:
            model.exists, model.owner, model.version, model.state = True, op[3], 0, {}
        if new:
            model.state = _new_state(model.state, op[2])
            model.write([*model.runs, *new])
            model.learn(result.run_ids[-len(new) :], len(model.runs) - len(new))
        assert result.version == model.version, where
        assert result.session_data == model.state, where

    async def pop(self, op: tuple[Any, ...]) -> None:
        model = self.model
        popped = await self.store.pop_runs(self.sid, op[1])
        cut = model.runs[-op[1] :] if model.runs else []
        assert popped == [b for _, b in cut], self.where
        if cut:
            model.write(model.runs[: len(model.runs) - len(cut)])

    async def truncate(self, op: tuple[Any, ...]) -> None:
        await self._cut(await self.store.truncate_runs(self.sid, keep_last=op[1]), op[1])

    async def clear(self, op: tuple[Any, ...]) -> None:
        await self._cut(await self.store.clear_runs(self.sid), 0)

    async def _cut(self, removed: int, keep: int) -> None:
        gone = max(0, len(self.model.runs) - keep)
        assert removed == gone, self.where
        if gone:
            self.model.write(self.model.runs[gone:])

    async def lease(self, op: tuple[Any, ...]) -> None:
        # Every lease of a session has a larger token than the one before, across releases
        # and whatever happened to the session in between.
        owner = self.model.owner if self.model.exists else None
        async with self.store.lease(self.sid, user_id=owner, ttl=30) as taken:
            assert not self.tokens or taken.token > self.tokens[-1], self.where
            self.tokens.append(taken.token)

    async def fenced_append(self, op: tuple[Any, ...]) -> None:
        _, stale, run_id = op
        if len(self.tokens) < (2 if stale else 1):
            return
        fence = self.tokens[-2] if stale else self.tokens[-1]
        owner = self.model.owner if self.model.exists else None
        run = self.body(run_id)
        if stale:
            with pytest.raises(SessionFencedError) as caught:
                await self.store.append_runs(self.sid, [run], user_id=owner, fence=fence)
            assert (caught.value.token, caught.value.latest) == (fence, self.tokens[-1])
            return
        await self.append(("append", [run_id], None, owner, False), [run], fence=fence)

    async def expire(self, op: tuple[Any, ...]) -> None:
        # A write whose expiry has passed: the session is gone at once, for every call; the
        # next write creates it anew.
        past = datetime.now(UTC) - timedelta(seconds=5)
        if op[1]:
            owner = self.model.owner if self.model.exists else None
            session = Session(session_id=self.sid, user_id=owner, runs=[self.body(None)])
            await self.store.upsert(session, expires_at=past)
        else:
            await self.store.append_runs(self.sid, [self.body(None)], expires_at=past)
        self.model = HistoryModel()

    async def intrude(self, op: tuple[Any, ...]) -> None:
        # A call naming a user who does not own the session: refused, or told the session is
        # absent; nothing written. An absent session is anyone's to lease.
        store, sid, who, exists = self.store, self.sid, "intruder", self.model.exists
        kind = op[1]
        refused: dict[str, Callable[[], Awaitable[object]]] = {
            "pop": lambda: store.pop_runs(sid, 1, user_id=who),
            "truncate": lambda: store.truncate_runs(sid, keep_last=0, user_id=who),
            "clear": lambda: store.clear_runs(sid, user_id=who),
            "lease": lambda: store.lease(sid, user_id=who).acquire(),
        }
        if kind in refused and exists:
            with pytest.raises(SessionOwnershipError):
                await refused[kind]()
        elif kind == "pop":
            assert await store.pop_runs(sid, 1, user_id=who) == [], self.where
        elif kind in ("truncate", "clear"):
            assert await store.truncate_runs(sid, keep_last=0, user_id=who) == 0, self.where
        elif kind == "lease":
            async with store.lease(sid, user_id=who) as taken:
                self.tokens.append(taken.token)
        elif kind == "get_run":
            run_id = self.model.runs[0][0] if self.model.runs else "r0"
            assert run_id is not None
            assert await store.get_run(sid, run_id, user_id=who) is None, self.where
        elif kind == "fork":
            assert await store.fork_session(sid, f"{sid}-fork", user_id=who) is None, self.where
            assert await store.read(f"{sid}-fork") is None, self.where
        else:
            assert await store.delete_session(sid, user_id=who) is False, self.where

    async def get_run(self, op: tuple[Any, ...]) -> None:
        found = next((b for i, b in self.model.runs if i == op[1]), None)
        assert await self.store.get_run(self.sid, op[1]) == found, self.where

    async def delete(self, op: tuple[Any, ...]) -> None:
        assert await self.store.delete_session(self.sid) is self.model.exists, self.where
        self.model = HistoryModel()

    async def append_if(self, op: tuple[Any, ...]) -> None:
        _, given_ids, stale, user = op
        given = [(i, self.body(i)) for i in given_ids]
        if self.model.refuses(user, exact=False):
            with pytest.raises(SessionOwnershipError):
                await self.store.append_runs(
                    self.sid, [b for _, b in given], user_id=user, if_version=1
                )
            return
        expected = self.model.version - 1 if stale and self.model.version else self.model.version
        if stale and not self.model.version:
            expected = 1  # the session is absent
        stored = self.model.ids()
        if self.model.exists and all(i is not None and i in stored for i in given_ids):
            # A retry of an applied append: it returns as the first call did, whatever the
            # version, and writes nothing.
            result = await self.store.append_runs(
                self.sid, [b for _, b in given], user_id=user, if_version=expected
            )
            assert result.version == self.model.version, self.where
            assert result.run_ids == given_ids, self.where
            by_id = dict(self.model.runs)
            assert result.runs == [by_id[i] for i in given_ids], self.where
            return
        if expected != self.model.version:
            with pytest.raises(SessionConflictError) as caught:
                await self.store.append_runs(
                    self.sid, [b for _, b in given], user_id=user, if_version=expected
                )
            assert (caught.value.expected, caught.value.actual) == (expected, self.model.version), (
                self.where
            )
            return
        result = await self.store.append_runs(
            self.sid, [b for _, b in given], user_id=user, if_version=expected
        )
        new = [(i, b) for i, b in given if i is None or i not in stored]
        if not self.model.exists:
            self.model.exists, self.model.owner = True, user
        if new:
            self.model.write([*self.model.runs, *new])
            self.model.learn(result.run_ids[-len(new) :], len(self.model.runs) - len(new))
        assert result.version == self.model.version, self.where

    async def upsert_whole(self, op: tuple[Any, ...]) -> None:
        # A session built by the caller (never read): its runs are the whole history.
        _, given_ids, version, user = op
        given = [(i, self.body(i)) for i in given_ids]
        written = [i for i in given_ids if i is not None]
        runs = [b for _, b in given]
        session = Session(
            session_id=self.sid, user_id=user, session_data={"whole": True}, runs=runs
        )
        expected = {None: None, "current": self.model.version, "other": self.model.version + 1}[
            version
        ]
        if len(written) != len(set(written)):
            with pytest.raises(InvalidInputError, match="two runs"):
                await self.store.upsert(session, if_version=expected)
            return
        if self.model.refuses(user, exact=True):
            with pytest.raises(SessionOwnershipError):
                await self.store.upsert(session, if_version=expected)
            return
        if expected is not None and expected != self.model.version:
            with pytest.raises(SessionConflictError):
                await self.store.upsert(session, if_version=expected)
            return
        stored = await self.store.upsert(session, if_version=expected)
        if not self.model.exists:
            self.model.exists, self.model.owner = True, user
        self.model.state = {"whole": True}
        self.model.write(given)
        self.model.learn(stored.run_ids, 0)
        assert stored.version == self.model.version, self.where

    async def upsert_tail(self, op: tuple[Any, ...]) -> None:
        _, last, edit, run_id, batch = op
        other = Session(session_id=f"{self.sid}-other", runs=[{"other": True}])

        async def write(tail: Session) -> Session:
            if not batch:
                return await self.store.upsert(tail)
            written = await self.store.upsert_many([other, tail])
            assert [s.session_id for s in written] == [other.session_id, self.sid], self.where
            assert await self.store.delete_session(other.session_id), self.where
            return written[1]

        tail = await self.store.read(self.sid, last_runs=last)
        if tail is None:
            assert not self.model.exists, self.where
            return
        offset = max(0, len(self.model.runs) - last) if last else len(self.model.runs)
        assert tail.runs_offset == offset, self.where
        assert tail.runs == [b for _, b in self.model.runs[offset:]], self.where
        ids: list[str | None] = list(tail.run_ids)
        runs = tail.runs
        if edit == "add" or (edit == "repeat_kept" and not self.model.runs[:offset]):
            runs.append(self.body(run_id))
            ids.append(run_id)
        elif edit == "repeat_kept":
            kept_id, kept = self.model.runs[0]
            runs.append(dict(kept))
            ids.append(kept.get("run_id"))  # else a new id
            assert kept_id is not None, self.where
        elif edit == "drop_first" and runs:
            del runs[0]
            # Fewer runs than ids read: the runs without an id of their own get new ones.
            ids = [b.get("run_id") for b in runs]
        elif edit == "change_last" and runs:
            runs[-1] = {**runs[-1], "changed": True}
        elif edit == "offset0":
            tail.runs_offset = offset = 0
        elif edit == "offset_past":  # past the end: the runs go at the end
            tail.runs_offset = offset + 3
            offset = min(offset + 3, len(self.model.runs))
        written = [i for i in ids if i is not None]
        if len(written) != len(set(written)):
            with pytest.raises(InvalidInputError, match="two runs"):
                await write(tail)
            assert await self.store.read(other.session_id) is None, self.where
            return
        kept_ids = {i for i, _ in self.model.runs[:offset] if i is not None}
        if any(i in kept_ids for i in written):
            with pytest.raises(InvalidInputError, match="before runs_offset"):
                await write(tail)
            assert await self.store.read(other.session_id) is None, self.where
            return
        stored = await write(tail)
        self.model.write([*self.model.runs[:offset], *zip(ids, runs, strict=True)])
        self.model.learn(stored.run_ids, offset)
        assert stored.version == self.model.version, self.where
        assert stored.runs_offset == offset, self.where

    async def fork(self, op: tuple[Any, ...]) -> None:
        at: int | None = op[1]
        new_sid = f"{self.sid}-fork"
        if at is not None and at >= len(self.model.runs):
            at = None
        at_run = None if at is None else self.model.runs[at][0]
        forked = await self.store.fork_session(self.sid, new_sid, at_run=at_run)
        if not self.model.exists:
            assert forked is None, self.where
            return
        assert forked is not None, self.where
        copied = self.model.runs if at is None else self.model.runs[: at + 1]
        assert (forked.version, forked.run_count) == (1, len(copied)), self.where
        read = await self.store.read(new_sid)
        assert read is not None, self.where
        assert read.runs == [b for _, b in copied], self.where
        assert read.run_ids == [i for i, _ in copied], self.where
        assert (read.session_data, read.user_id) == (self.model.state, self.model.owner), self.where
        assert await self.store.delete_session(new_sid), self.where

    async def fork_refused(self, op: tuple[Any, ...]) -> None:
        how: str = op[1]
        new_sid = f"{self.sid}-fork"
        if how == "onto_existing":
            await self.store.append_runs(new_sid, [{"there": True}])
            if self.model.exists:
                with pytest.raises(SessionConflictError):
                    await self.store.fork_session(self.sid, new_sid)
            else:
                assert await self.store.fork_session(self.sid, new_sid) is None, self.where
            there = await self.store.read(new_sid)
            assert there is not None, self.where
            assert (there.runs, there.version) == ([{"there": True}], 1), self.where
            assert await self.store.delete_session(new_sid), self.where
        else:
            if self.model.exists:
                with pytest.raises(InvalidInputError):
                    await self.store.fork_session(self.sid, new_sid, at_run="not-a-run")
            else:
                assert (
                    await self.store.fork_session(self.sid, new_sid, at_run="not-a-run") is None
                ), self.where
            assert await self.store.read(new_sid) is None, self.where

    async def check(self) -> None:
        """The session as read is the model's; the ids the store assigned are learned."""
        read = await self.store.read(self.sid)
        if not self.model.exists:
            assert read is None, self.where
            return
        assert read is not None, self.where
        assert read.runs == [b for _, b in self.model.runs], self.where
        assert len(set(read.run_ids)) == len(read.run_ids), self.where
        assert (read.version, read.run_count, read.runs_offset) == (
            self.model.version,
            len(self.model.runs),
            0,
        ), self.where
        assert (read.session_data, read.user_id) == (self.model.state, self.model.owner), self.where
        assert await self.store.read(self.sid, user_id=self.model.owner) is not None, self.where
        assert await self.store.read(self.sid, user_id="intruder") is None, self.where
        self.model.learn(read.run_ids, 0)
        assert isinstance(read, Session)


class HistoryModelConformance:
    """The run-level calls against `HistoryModel`; see the module docstring."""

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(owner=st.sampled_from([None, "u1"]), ttl=st.booleans(), program=_program)
    async def test_a_history_follows_the_model_through_any_program_of_run_calls(
        self,
        store: SessionStore,
        store_factory: Any,
        owner: str | None,
        ttl: bool,
        program: list[tuple[Any, ...]],
    ) -> None:
        # Half the programs run on a store whose sessions expire an hour after each write:
        # the same rules, through the statements that set and slide expiries.
        if ttl:
            async with store_factory(ttl=3600, sliding_ttl=True) as timed:
                await self._follow(timed, owner, program)
        else:
            await self._follow(store, owner, program)

    async def _follow(
        self, store: SessionStore, owner: str | None, program: list[tuple[Any, ...]]
    ) -> None:
        run = _Program(store)
        seed: tuple[Any, ...] = ("append", ["r0", None, None, "r1"], None, owner, False)
        for step, op in enumerate([seed, *program]):
            run.where = f"step {step}: {op!r}"
            await getattr(run, op[0])(op)
            await run.check()


_listing_writes = st.lists(
    st.one_of(
        st.tuples(
            st.just("upsert"),
            st.integers(0, 5),  # which session
            st.sampled_from([None, "u1", "u2"]),
            st.sampled_from(["agent", "team", "workflow"]),
            st.sampled_from([None, "e1", "e2"]),  # agent_id
            st.sampled_from([None, "e1", "e3"]),  # team_id
        ),
        st.tuples(st.just("append"), st.integers(0, 5)),
        st.tuples(st.just("delete"), st.integers(0, 5)),
    ),
    min_size=1,
    max_size=14,
)
_listing_query = st.tuples(
    st.sampled_from([None, "u1", "u2"]),  # user_id
    st.sampled_from([None, "agent", "team"]),  # session_type
    st.sampled_from([None, "e1", "e2", "e3"]),  # entity_id
    st.one_of(st.none(), st.integers(0, 5)),  # updated_after: that session's updated_at
    st.integers(1, 4),  # page size
    st.booleans(),  # include_runs
)


class ListingModelConformance:
    """Listings and counts against the sessions as read: which match each filter, in which
    order (`updated_at`, then `session_id`, descending), page by page."""

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(writes=_listing_writes, queries=st.lists(_listing_query, min_size=1, max_size=4))
    async def test_listings_and_counts_follow_the_sessions_as_read(
        self,
        store: SessionStore,
        writes: list[tuple[Any, ...]],
        queries: list[tuple[Any, ...]],
    ) -> None:
        # Each example has a user of its own prefix, so that earlier examples' sessions (one
        # table for the whole test) are not listed.
        tag = uuid.uuid4().hex[:8]
        sids = [f"l-{tag}-{i}" for i in range(6)]
        users = {u: f"{u}-{tag}" for u in ("u1", "u2")}
        for op in writes:
            sid = sids[op[1]]
            if op[0] == "upsert":
                _, _, user, kind, agent, team = op
                owner = None if user is None else users[user]
                stored = await store.read(sid)
                if stored is not None and stored.user_id != owner:
                    continue  # the owner never changes (tested elsewhere)
                await store.upsert(
                    Session(
                        session_id=sid,
                        user_id=owner,
                        session_type=kind,
                        agent_id=None if agent is None else f"{agent}-{tag}",
                        team_id=None if team is None else f"{team}-{tag}",
                        runs=[{"i": 0}],
                    )
                )
            elif op[0] == "append":
                await store.append_runs(sid, [{"i": 1}])
            else:
                await store.delete_session(sid)
        reads = [s for s in [await store.read(sid) for sid in sids] if s is not None]
        for user, kind, entity, after, size, with_runs in queries:
            user_id = None if user is None else users[user]
            entity_id = None if entity is None else f"{entity}-{tag}"
            since: datetime | None = None
            if after is not None:
                since = next((s.updated_at for s in reads if s.session_id == sids[after]), None)
            expected = sorted(
                (
                    s
                    for s in reads
                    if (user_id is None or s.user_id == user_id)
                    and (kind is None or s.session_type == kind)
                    and entity_id in (None, s.agent_id, s.team_id, s.workflow_id)
                    and (since is None or (s.updated_at is not None and s.updated_at > since))
                ),
                key=lambda s: (s.updated_at, s.session_id),
                reverse=True,
            )
            expected_ids = [s.session_id for s in expected]
            listed: list[Session] = []
            cursor = None
            filters: dict[str, Any] = {
                "user_id": user_id,
                "session_type": kind,
                "entity_id": entity_id,
                "updated_after": since,
            }
            for _ in range(len(reads) + 2):
                page = await store.list_sessions(
                    **filters, limit=size, cursor=cursor, include_runs=with_runs
                )
                assert len(page.items) <= size
                listed += page.items
                cursor = page.next_cursor
                if cursor is None:
                    break
            # This example's sessions are the newest in the table, so they come first: the
            # pages read above hold all of them even when earlier examples' match too.
            mine = [s for s in listed if s.session_id.startswith(f"l-{tag}-")]
            where = f"{(user, kind, entity, after, size)}"
            assert [s.session_id for s in mine] == expected_ids, where
            if user_id is not None or entity_id is not None:
                assert len(mine) == len(listed), where
                count = await store.count_sessions(**filters)
                assert count == len(expected_ids), where
            by_id = {s.session_id: s for s in reads}
            for s in mine:
                read = by_id[s.session_id]
                assert (s.updated_at, s.version, s.user_id) == (
                    read.updated_at,
                    read.version,
                    read.user_id,
                ), where
                assert s.run_count == read.run_count, where
                assert s.runs == (read.runs if with_runs else []), where
        for owner in users.values():  # each of this example's users: what activity() counts
            theirs = [s for s in reads if s.user_id == owner]
            counted = await store.activity(user_id=owner)
            runs = sum(s.run_count for s in theirs)
            assert (counted.sessions, counted.runs) == (len(theirs), runs), owner
            assert counted.active_last_hour == len(theirs), owner
            assert sum(t.runs for t in counted.turns) == runs, owner
            per_entity: dict[str | None, list[int]] = {}
            for s in theirs:
                totals = per_entity.setdefault(s.agent_id or s.team_id or s.workflow_id, [0, 0])
                totals[0] += 1
                totals[1] += s.run_count
            assert {e.entity_id: [e.sessions, e.runs] for e in counted.entities} == per_entity
