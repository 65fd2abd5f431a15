"""The turn API in the conformance suite: state patches, exactly-once appends, `if_version` on
appends, run-level calls, counting, forking, strict tenancy, and the defects found under attack.

Mixed into `SessionStoreConformance`; every driver runs it unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from typing import Any, cast

import pytest

from .._encoding import merge_patch
from ..errors import (
    InvalidInputError,
    SerializationError,
    SessionConflictError,
    SessionOwnershipError,
)
from ..models import Session
from ..protocol import SessionStore

StoreFactory = Any


def _sid() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return ("dict", sorted((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


async def _rewrite_tail(store: SessionStore, sid: str, i: int, rng: random.Random) -> None:
    """Read a tail of 0 to 4 runs, add one and upsert it; on a conflict (the session changed so
    that the tail would hold a run twice), again on a fresh read."""
    for _ in range(50):
        tail = await store.read(sid, user_id="u", last_runs=rng.randint(0, 4))
        assert tail is not None
        tail.runs.append({"by": "upsert", "i": i})
        try:
            await store.upsert(tail)
            return
        except SessionConflictError as exc:
            conflict = exc
        assert conflict.expected == tail.version < conflict.actual
    raise AssertionError(f"session {sid!r}: 50 conflicts in a row")


class TurnConformance:
    """The turn API on one backend; see the module docstring."""

    # --- state patches --------------------------------------------------------------------------

    async def test_state_patch_merges_into_the_stored_state(self, store: SessionStore) -> None:
        sid = _sid()
        first = {"session_state": {"city": "Paris", "cart": ["apple"], "n": 1}, "name": "x"}
        await store.append_runs(sid, [{"i": 0}], session_data=first)
        patch = {
            "session_state": {"city": None, "cart": ["pear"], "deep": {"a": {"b": 1}}},
            "name": None,
            "new": [1, {"k": None}],
        }
        patched = await store.append_runs(sid, [{"i": 1}], state_patch=patch)
        expected = merge_patch(first, patch)
        assert expected == {
            "session_state": {"cart": ["pear"], "n": 1, "deep": {"a": {"b": 1}}},
            "new": [1, {"k": None}],  # arrays are values: a null inside one is kept
        }
        assert patched.session_data == expected
        read = await store.read(sid)
        assert read is not None
        assert read.session_data == expected
        assert len(read.runs) == 2
        # A patch object over a value that is not an object replaces it; runs are optional.
        await store.append_runs(sid, [], state_patch={"new": {"x": 1}, "session_state": {"n": 2}})
        again = await store.read(sid)
        assert again is not None
        assert again.session_data["new"] == {"x": 1}
        assert again.session_data["session_state"]["n"] == 2
        assert again.version == 3

    async def test_state_patch_creates_a_missing_session(self, store: SessionStore) -> None:
        sid = _sid()
        created = await store.append_runs(
            sid, [{"i": 0}], user_id="u", state_patch={"a": 1, "b": None}
        )
        assert created.session_data == {"a": 1}
        read = await store.read(sid, user_id="u")
        assert read is not None
        assert read.session_data == {"a": 1}
        # A patch with no null creates the session with exactly the patch.
        exact = {"big": 2**70, "neg_zero": -0.0, "nul": "a\x00b", "nested": {"f": 1e16, "l": [1]}}
        sid = _sid()
        created = await store.append_runs(sid, [{"i": 0}], user_id="u", state_patch=exact)
        assert _typed(created.session_data) == _typed(exact)
        read = await store.read(sid, user_id="u")
        assert read is not None
        assert _typed(read.session_data) == _typed(exact)

    async def test_patched_values_round_trip_exactly(self, store: SessionStore) -> None:
        sid = _sid()
        tricky = {
            "nul": "a\x00b",
            "mark": "\uffffs",
            "big": 2**70,
            "neg_zero": -0.0,
            "float": 1e16,
            "tiny": 5e-324,
            "emoji": "\U0001f600",
            "key\x00with.dots$": {"$x": 1},
            "nested": {"big": -(2**80), "f": 1.5e300},
        }
        await store.append_runs(sid, [], session_data={"keep": {"big": 2**65}})
        patched = await store.append_runs(sid, [], state_patch=tricky)
        expected = merge_patch({"keep": {"big": 2**65}}, tricky)
        assert _typed(patched.session_data) == _typed(expected)
        read = await store.read(sid)
        assert read is not None
        assert _typed(read.session_data) == _typed(expected)
        # Deleting a key that holds NUL, and patching below it again.
        await store.append_runs(sid, [], state_patch={"key\x00with.dots$": None, "nul": "c"})
        read = await store.read(sid)
        assert read is not None
        assert "key\x00with.dots$" not in read.session_data
        assert read.session_data["nul"] == "c"

    async def test_bad_patches_are_refused_and_nothing_is_written(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": 0}], session_data={"a": 1})
        bad: list[Any] = [
            lambda: store.append_runs(sid, [{"i": 1}], state_patch={"x": float("nan")}),
            lambda: store.append_runs(sid, [{"i": 1}], state_patch=cast(Any, [1])),
            lambda: store.append_runs(sid, [{"i": 1}], state_patch=cast(Any, "x")),
            lambda: store.append_runs(sid, [{"i": 1}], state_patch={}, session_data={}),
        ]
        for call in bad:
            with pytest.raises((InvalidInputError, SerializationError)):
                await call()
        read = await store.read(sid)
        assert read is not None
        assert (read.version, len(read.runs), read.session_data) == (1, 1, {"a": 1})

    async def test_two_hundred_concurrent_turns_each_patching_its_own_key_keep_every_key(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [], user_id="u", session_data={"session_state": {}})

        async def turn(i: int) -> None:
            await store.append_runs(
                sid, [{"i": i}], user_id="u", state_patch={"session_state": {f"k{i}": i}}
            )

        await asyncio.gather(*(turn(i) for i in range(200)))
        read = await store.read(sid, user_id="u")
        assert read is not None
        assert len(read.runs) == 200
        assert sorted(r["i"] for r in read.runs) == list(range(200))
        assert read.session_data["session_state"] == {f"k{i}": i for i in range(200)}
        assert read.version == 201

    # --- if_version on appends ------------------------------------------------------------------

    async def test_append_with_if_version_writes_only_at_that_version(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        created = await store.append_runs(sid, [{"i": 0}], user_id="u", if_version=0)
        assert created.version == 1
        with pytest.raises(SessionConflictError) as info:
            await store.append_runs(sid, [{"i": 1}], user_id="u", if_version=0)
        assert (info.value.expected, info.value.actual) == (0, 1)
        with pytest.raises(SessionConflictError):
            await store.append_runs(sid, [{"i": 1}], user_id="u", if_version=5)
        second = await store.append_runs(
            sid, [{"i": 1}], user_id="u", if_version=1, state_patch={"turn": 2}
        )
        assert second.version == 2
        with pytest.raises(SessionConflictError) as missing:
            await store.append_runs(_sid(), [{"i": 0}], if_version=3)
        assert missing.value.actual == 0
        read = await store.read(sid)
        assert read is not None
        assert (read.version, [r["i"] for r in read.runs], read.session_data) == (
            2,
            [0, 1],
            {"turn": 2},
        )
        with pytest.raises(SessionOwnershipError):
            await store.append_runs(sid, [{"i": 2}], user_id="other", if_version=2)

    async def test_concurrent_conditional_appends_exactly_one_wins(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": 0}])

        async def attempt(i: int) -> bool:
            try:
                await store.append_runs(sid, [{"i": i}], if_version=1)
            except SessionConflictError:
                return False
            return True

        results = await asyncio.gather(*(attempt(i) for i in range(1, 11)))
        assert sum(results) == 1
        read = await store.read(sid)
        assert read is not None
        assert (read.version, len(read.runs)) == (2, 2)

    # --- exactly-once appends -------------------------------------------------------------------

    async def test_an_append_retried_with_the_same_run_ids_adds_nothing(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"run_id": "r0"}], user_id="u")
        runs = [{"run_id": "r1", "q": "hi"}, {"run_id": "r2", "a": "hello"}]
        first = await store.append_runs(sid, runs, user_id="u", state_patch={"turn": 1})
        retry = await store.append_runs(sid, runs, user_id="u", state_patch={"turn": 1})
        assert retry.runs == first.runs == runs
        assert retry.run_ids == first.run_ids == ["r1", "r2"]
        assert retry.runs_offset == first.runs_offset == 1
        assert retry.version == first.version == 2  # nothing was written
        # By `run_ids` too, for runs that carry no id of their own.
        items = [{"role": "user", "content": "x"}]
        by_ids = await store.append_runs(sid, items, user_id="u", run_ids=["item-1"])
        again = await store.append_runs(sid, items, user_id="u", run_ids=["item-1"])
        assert (again.version, again.runs_offset, again.runs) == (by_ids.version, 3, items)
        # A retry that brings a new run appends only that one.
        more = await store.append_runs(sid, [*runs, {"run_id": "r3"}], user_id="u")
        assert (more.run_ids, more.runs_offset) == (["r3"], 4)
        read = await store.read(sid)
        assert read is not None
        assert read.run_ids == ["r0", "r1", "r2", "item-1", "r3"]
        assert read.session_data == {"turn": 1}
        assert read.version == 4

    async def test_an_append_retried_with_if_version_returns_as_the_first_call_did(
        self, store: SessionStore
    ) -> None:
        # The first call was applied (its answer lost), so the version moved on: its retry with
        # the same if_version is still the same call, not a conflict. A call that brings a run
        # not stored yet is checked against the version as usual.
        sid = _sid()
        await store.append_runs(sid, [{"run_id": "r0"}], user_id="u")
        runs = [{"run_id": "r1"}, {"run_id": "r2"}]
        first = await store.append_runs(sid, runs, user_id="u", if_version=1)
        assert first.version == 2
        for _ in range(2):
            retry = await store.append_runs(sid, runs, user_id="u", if_version=1)
            assert (retry.version, retry.runs, retry.runs_offset) == (2, runs, 1)
        with pytest.raises(SessionConflictError):
            await store.append_runs(sid, [*runs, {"run_id": "r3"}], user_id="u", if_version=1)
        with pytest.raises(SessionOwnershipError):
            await store.append_runs(sid, runs, user_id="other", if_version=1)
        read = await store.read(sid)
        assert read is not None
        assert (read.run_ids, read.version) == (["r0", "r1", "r2"], 2)

    async def test_concurrent_upserts_of_tails_and_appends_keep_one_consistent_history(
        self, store: SessionStore
    ) -> None:
        # Appends, and upserts of tails of any length (last writer wins from its offset), all at
        # once on one session. A rewriter whose tail had a run moved before its offset by
        # another (which removed runs there) gets a conflict, and retries on a fresh read.
        for seed in range(3):
            sid = _sid()
            await store.append_runs(sid, [{"by": "seed", "i": i} for i in range(5)], user_id="u")
            rng = random.Random(seed)
            await asyncio.gather(
                *(
                    store.append_runs(sid, [{"by": "append", "i": i}], user_id="u")
                    if i % 2
                    else _rewrite_tail(store, sid, i, rng)
                    for i in range(40)
                )
            )
            full = await store.read(sid)
            assert full is not None
            assert (full.version, full.runs_offset, full.run_count) == (41, 0, len(full.runs))
            assert len(set(full.run_ids)) == len(full.run_ids)
            assert [r["i"] for r in full.runs if r["by"] == "seed"] == list(range(5))
            for n in (0, 3, len(full.runs)):
                tail = await store.read(sid, last_runs=n)
                assert tail is not None
                assert tail.runs == (full.runs[len(full.runs) - n :] if n else [])
                assert tail.run_ids == (full.run_ids[len(full.runs) - n :] if n else [])
            for run_id, run in zip(full.run_ids, full.runs, strict=True):
                assert await store.get_run(sid, run_id) == run

    async def test_concurrent_appends_pops_and_truncations_lose_and_repeat_nothing(
        self, store: SessionStore
    ) -> None:
        # Every run appended is, at the end, in the history, or returned by a pop, or counted by
        # a truncation, exactly once: nothing lost, nothing twice, nothing invented.
        sid = _sid()
        await store.append_runs(sid, [{"run_id": "seed"}])
        appended: list[str] = ["seed"]
        popped: list[dict[str, Any]] = []
        truncated: list[int] = []
        rng = random.Random(7)

        async def call(i: int) -> None:
            kind = rng.choice(["append", "append", "append", "pop", "truncate"])
            if kind == "append":
                ids = [f"a{i}-{k}" for k in range(rng.randint(1, 3))]
                await store.append_runs(sid, [{"run_id": r} for r in ids])
                appended.extend(ids)
            elif kind == "pop":
                popped.extend(await store.pop_runs(sid, rng.randint(1, 2)))
            else:
                truncated.append(await store.truncate_runs(sid, keep_last=rng.randint(2, 6)))

        await asyncio.gather(*(call(i) for i in range(60)))
        full = await store.read(sid)
        assert full is not None
        present = full.run_ids
        gone = [r["run_id"] for r in popped]
        assert len(set(present)) == len(present)
        assert not set(present) & set(gone)
        assert set(present) | set(gone) <= set(appended)
        assert len(present) + len(gone) + sum(truncated) == len(appended)
        assert [r["run_id"] for r in full.runs] == present

    async def test_forks_during_concurrent_appends_copy_a_prefix_of_the_history(
        self, store: SessionStore
    ) -> None:
        # A fork copies the history as one write saw it: with appends going on, each fork holds
        # a prefix of the source's final history (the runs of an append all or none), its
        # state the source's at that point.
        sid = _sid()
        await store.append_runs(sid, [{"run_id": "seed"}], session_data={"n": 0})
        rng = random.Random(11)
        forks = [f"{sid}-f{i}" for i in range(10)]

        async def append(i: int) -> None:
            ids = [f"a{i}-{k}" for k in range(rng.randint(1, 3))]
            await store.append_runs(sid, [{"run_id": r} for r in ids], state_patch={"n": i})

        calls = [append(i) for i in range(1, 31)] + [store.fork_session(sid, f) for f in forks]
        rng.shuffle(calls)
        await asyncio.gather(*calls)
        full = await store.read(sid)
        assert full is not None
        for fork in forks:
            copy = await store.read(fork)
            assert copy is not None
            assert copy.run_ids == full.run_ids[: len(copy.run_ids)]
            assert copy.runs == full.runs[: len(copy.runs)]
            groups: dict[str, int] = {}  # runs per append, in the source's history
            for run_id in full.run_ids[1:]:
                groups[run_id.split("-")[0]] = groups.get(run_id.split("-")[0], 0) + 1
            copied: dict[str, int] = {}
            for run_id in copy.run_ids[1:]:
                copied[run_id.split("-")[0]] = copied.get(run_id.split("-")[0], 0) + 1
            assert all(groups[a] == n for a, n in copied.items())  # an append all or none
            last = copy.run_ids[-1].split("-")[0]
            assert copy.session_data == {"n": 0 if last == "seed" else int(last[1:])}

    async def test_concurrent_retries_of_one_append_store_it_once(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": -1}])
        run = {"run_id": "once", "text": "only one of me"}
        results = await asyncio.gather(*(store.append_runs(sid, [run]) for _ in range(20)))
        assert {tuple(r.run_ids) for r in results} == {("once",)}
        read = await store.read(sid)
        assert read is not None
        assert read.run_ids.count("once") == 1
        assert len(read.runs) == 2

    async def test_a_deleted_sessions_run_ids_do_not_count_as_stored(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"run_id": "a"}, {"run_id": "b"}])
        assert await store.delete_session(sid)
        again = await store.append_runs(sid, [{"run_id": "a"}])
        assert (again.version, again.run_ids) == (1, ["a"])
        await store.pop_runs(sid)
        back = await store.append_runs(sid, [{"run_id": "a"}])
        assert back.run_ids == ["a"]
        read = await store.read(sid)
        assert read is not None
        assert read.run_ids == ["a"]

    # --- run-level calls ------------------------------------------------------------------------

    async def test_get_run_finds_a_run_by_its_id(self, store: SessionStore) -> None:
        sid = _sid()
        stored = await store.append_runs(
            sid, [{"q": 1}, {"run_id": "own", "q": 2}], user_id="u", run_ids=["given"]
        )
        assert await store.get_run(sid, "given") == {"q": 1}
        assert await store.get_run(sid, "own", user_id="u") == {"run_id": "own", "q": 2}
        assert await store.get_run(sid, "nope") is None
        assert await store.get_run(sid, "own", user_id="intruder") is None
        assert await store.get_run(_sid(), "own") is None
        assert stored.run_ids == ["given", "own"]
        await store.pop_runs(sid)
        assert await store.get_run(sid, "own") is None  # a popped run is gone

    async def test_pop_runs_removes_the_last_runs_atomically(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": i} for i in range(5)], user_id="u")
        assert await store.pop_runs(sid, user_id="u") == [{"i": 4}]
        assert await store.pop_runs(sid, 2) == [{"i": 2}, {"i": 3}]
        read = await store.read(sid)
        assert read is not None
        assert (read.runs, read.version) == ([{"i": 0}, {"i": 1}], 3)
        assert await store.pop_runs(sid, 10) == [{"i": 0}, {"i": 1}]
        assert await store.pop_runs(sid) == []
        assert await store.pop_runs(_sid()) == []
        empty = await store.read(sid)
        assert empty is not None
        assert (empty.runs, empty.version, empty.run_count) == ([], 4, 0)
        appended = await store.append_runs(sid, [{"i": 9}])
        assert appended.runs_offset == 0
        with pytest.raises(SessionOwnershipError):
            await store.pop_runs(sid, user_id="intruder")
        with pytest.raises(InvalidInputError):
            await store.pop_runs(sid, 0)

    async def test_concurrent_pops_and_appends_lose_and_repeat_nothing(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": i} for i in range(40)])

        async def pop() -> list[dict[str, Any]]:
            return await store.pop_runs(sid)

        async def append(i: int) -> None:
            await store.append_runs(sid, [{"i": 100 + i}])

        results = await asyncio.gather(*(pop() for _ in range(20)), *(append(i) for i in range(20)))
        popped = [run["i"] for result in results[:20] for run in cast(list[Any], result)]
        read = await store.read(sid)
        assert read is not None
        remaining = [r["i"] for r in read.runs]
        assert len(popped) == 20
        assert sorted(popped + remaining) == sorted([*range(40), *range(100, 120)])

    async def test_truncate_and_clear_keep_the_state_and_the_last_runs(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(
            sid, [{"i": i} for i in range(10)], user_id="u", session_data={"s": 1}
        )
        assert await store.truncate_runs(sid, keep_last=3, user_id="u") == 7
        read = await store.read(sid)
        assert read is not None
        assert ([r["i"] for r in read.runs], read.runs_offset, read.run_count) == ([7, 8, 9], 0, 3)
        assert read.session_data == {"s": 1}
        assert read.version == 2
        assert await store.truncate_runs(sid, keep_last=5) == 0  # nothing to remove: no write
        tail = await store.read(sid, last_runs=1)
        assert tail is not None
        assert (tail.runs_offset, tail.runs, tail.version) == (2, [{"i": 9}], 2)
        appended = await store.append_runs(sid, [{"i": 10}])
        assert appended.runs_offset == 3
        assert await store.clear_runs(sid) == 4
        cleared = await store.read(sid)
        assert cleared is not None
        assert (cleared.runs, cleared.session_data, cleared.version) == ([], {"s": 1}, 4)
        assert await store.clear_runs(sid) == 0
        assert await store.clear_runs(_sid()) == 0
        with pytest.raises(SessionOwnershipError):
            await store.clear_runs(sid, user_id="intruder")
        with pytest.raises(InvalidInputError):
            await store.truncate_runs(sid, keep_last=-1)

    # --- counting and forking -------------------------------------------------------------------

    async def test_count_sessions_counts_what_list_sessions_lists(
        self, store: SessionStore
    ) -> None:
        for i in range(7):
            await store.upsert(
                Session(
                    session_id=_sid(),
                    user_id="counted" if i < 5 else "other",
                    agent_id="a" if i % 2 else "b",
                    session_type="team" if i == 0 else "agent",
                )
            )
        assert await store.count_sessions(user_id="counted") == 5
        assert await store.count_sessions(user_id="counted", entity_id="a") == 2
        assert await store.count_sessions(user_id="counted", session_type="team") == 1
        assert await store.count_sessions(user_id="nobody") == 0
        total = await store.count_sessions()
        assert total == len(await store.get_all_session_ids())
        page = await store.list_sessions(user_id="counted", entity_id="b", limit=100)
        assert await store.count_sessions(user_id="counted", entity_id="b") == len(page.items)

    async def test_usage_counts_sessions_runs_and_bytes(self, store: SessionStore) -> None:
        before = await store.usage()
        await store.append_runs(_sid(), [{"i": i} for i in range(3)])
        await store.append_runs(_sid(), [{"i": 0}], user_id="u")
        await store.upsert(Session(session_id=_sid()))
        after = await store.usage()
        assert (after.sessions - before.sessions, after.runs - before.runs) == (3, 4)
        assert all(type(size) is int and size >= 0 for size in after.bytes.values())
        if after.bytes:  # the backend reports sizes: the sessions and runs are among them
            assert len(after.bytes) >= 2
            assert after.total_bytes == sum(after.bytes.values())

    async def test_a_fork_onto_another_users_session_is_a_conflict(
        self, store: SessionStore
    ) -> None:
        # The new id exists: a conflict, whoever owns it (an encrypting store forks by an
        # upsert, whose owner check must not turn this into an ownership error).
        sid, taken = _sid(), _sid()
        await store.append_runs(sid, [{"i": 0}], user_id="u")
        await store.append_runs(taken, [{"theirs": True}], user_id="other")
        with pytest.raises(SessionConflictError) as caught:
            await store.fork_session(sid, taken, user_id="u")
        assert (caught.value.expected, caught.value.actual) == (0, 1)
        theirs = await store.read(taken)
        assert theirs is not None
        assert (theirs.user_id, theirs.runs, theirs.version) == ("other", [{"theirs": True}], 1)

    async def test_fork_copies_the_session_up_to_a_run(self, store: SessionStore) -> None:
        sid, fork, whole = _sid(), _sid(), _sid()
        await store.append_runs(
            sid,
            [{"run_id": f"r{i}", "i": i} for i in range(6)],
            user_id="u",
            session_data={"state": {"n": 1}},
        )
        forked = await store.fork_session(sid, fork, at_run="r2", user_id="u")
        assert forked is not None
        assert (forked.session_id, forked.user_id, forked.run_count, forked.version) == (
            fork,
            "u",
            3,
            1,
        )
        assert forked.session_data == {"state": {"n": 1}}
        read = await store.read(fork)
        assert read is not None
        assert read.runs == [{"run_id": f"r{i}", "i": i} for i in range(3)]
        assert read.run_ids == ["r0", "r1", "r2"]
        # The fork lives on its own.
        await store.append_runs(fork, [{"run_id": "r3", "branch": True}], user_id="u")
        source = await store.read(sid)
        assert source is not None
        assert [r["i"] for r in source.runs] == list(range(6))
        all_of_it = await store.fork_session(sid, whole)
        assert all_of_it is not None
        assert all_of_it.run_count == 6
        with pytest.raises(SessionConflictError):
            await store.fork_session(sid, fork)
        with pytest.raises(InvalidInputError, match="r99"):
            await store.fork_session(sid, _sid(), at_run="r99")
        assert await store.fork_session(sid, _sid(), user_id="intruder") is None
        assert await store.fork_session(_sid(), _sid()) is None

    # --- strict tenancy -------------------------------------------------------------------------

    async def test_require_user_id_refuses_calls_without_one(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory(require_user_id=True) as strict:
            sid = _sid()
            await strict.append_runs(sid, [{"i": 0}], user_id="u")
            refused: list[Any] = [
                lambda: strict.read(sid),
                lambda: strict.append_runs(sid, [{"i": 1}]),
                lambda: strict.upsert(Session(session_id=sid)),
                lambda: strict.upsert_many([Session(session_id=sid)]),
                lambda: strict.delete_session(sid),
                lambda: strict.list_sessions(),
                lambda: strict.get_all_session_ids(),
                lambda: strict.get_recent_sessions(),
                lambda: strict.count_sessions(),
                lambda: strict.get_run(sid, "x"),
                lambda: strict.pop_runs(sid),
                lambda: strict.clear_runs(sid),
                lambda: strict.fork_session(sid, _sid()),
            ]
            for call in refused:
                with pytest.raises(InvalidInputError, match="require_user_id"):
                    await call()
            read = await strict.read(sid, user_id="u")
            assert read is not None
            assert (read.version, len(read.runs)) == (1, 1)
            assert await strict.count_sessions(user_id="u") == 1

    # --- defects found under attack -------------------------------------------------------------

    async def test_upsert_under_another_id_stores_the_callers_runs(
        self, store: SessionStore
    ) -> None:
        x, y = _sid(), _sid()
        await store.append_runs(x, [{"from": "x", "i": i} for i in range(3)])
        await store.append_runs(y, [{"from": "y", "i": i} for i in range(3)])
        read = await store.read(x)
        assert read is not None
        moved = read.model_copy(update={"session_id": y})  # y is at the same version
        stored = await store.upsert(moved)
        assert [r["from"] for r in stored.runs] == ["x"] * 3
        again = await store.read(y)
        assert again is not None
        assert [r["from"] for r in again.runs] == ["x"] * 3

    async def test_upsert_after_the_session_was_deleted_and_recreated_stores_the_callers_runs(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"by": "me", "i": i} for i in range(3)])
        mine = await store.read(sid)
        assert mine is not None
        assert await store.delete_session(sid)
        await store.append_runs(sid, [{"by": "other", "i": i} for i in range(3)])  # version 1
        await store.upsert(mine.model_copy(update={"session_data": {"mine": True}}))
        read = await store.read(sid)
        assert read is not None
        assert [r["by"] for r in read.runs] == ["me"] * 3
        assert read.session_data == {"mine": True}

    async def test_a_listed_session_with_runs_is_written_like_a_read_one(
        self, store: SessionStore
    ) -> None:
        # A listing with runs returns whole histories, as `read` does: an upsert of a listed
        # session writes the runs the caller changed, keeps the others, and moved under
        # another id at the same version writes the caller's runs there.
        user = f"u{_sid()}"
        x, y = _sid(), _sid()
        await store.append_runs(x, [{"from": "x", "i": i} for i in range(3)], user_id=user)
        await store.append_runs(y, [{"from": "y", "i": i} for i in range(3)], user_id=user)
        listed = {
            s.session_id: s
            for s in await store.get_recent_sessions(user_id=user, limit=2, include_runs=True)
        }
        assert [r["i"] for r in listed[x].runs] == [0, 1, 2]
        changed = listed[x].model_copy(deep=True)
        changed.runs[1]["i"] = 10
        await store.upsert(changed)
        read = await store.read(x)
        assert read is not None
        assert [(r["from"], r["i"]) for r in read.runs] == [("x", 0), ("x", 10), ("x", 2)]
        z = _sid()  # at version 1, as the listed copy of y is
        await store.append_runs(z, [{"from": "z", "i": i} for i in range(3)], user_id=user)
        stored = await store.upsert(listed[y].model_copy(update={"session_id": z}))
        assert [r["from"] for r in stored.runs] == ["y"] * 3
        again = await store.read(z)
        assert again is not None
        assert [(r["from"], r["i"]) for r in again.runs] == [("y", 0), ("y", 1), ("y", 2)]

    async def test_an_upsert_stores_the_run_ids_the_session_carries(
        self, store: SessionStore
    ) -> None:
        # A run without a `run_id` key of its own is stored under the id `run_ids` gives it: an
        # unchanged run given another id is stored under that id, as the returned session says,
        # whether the session was read or listed.
        user = f"u{_sid()}"
        sid = _sid()
        await store.append_runs(sid, [{"i": i} for i in range(3)], user_id=user)
        read = await store.read(sid, user_id=user)
        assert read is not None
        read.run_ids[1] = "renamed"
        stored = await store.upsert(read)
        assert stored.run_ids[1] == "renamed"
        again = await store.read(sid, user_id=user)
        assert again is not None
        assert again.run_ids == stored.run_ids
        assert [r["i"] for r in again.runs] == [0, 1, 2]
        assert (await store.get_run(sid, "renamed", user_id=user)) == {"i": 1}
        (listed,) = await store.get_recent_sessions(user_id=user, limit=1, include_runs=True)
        listed.run_ids[2] = "renamed too"
        await store.upsert(listed)
        last = await store.read(sid, user_id=user)
        assert last is not None
        assert last.run_ids[1:] == ["renamed", "renamed too"]

    async def test_an_upsert_after_another_store_rewrote_a_run_stores_the_callers_runs(
        self, store: SessionStore, store_factory: StoreFactory
    ) -> None:
        # Runs left as they were read may be skipped only while the session is still as read:
        # another store object (another process) rewrote one in between, and the last writer's
        # runs are the ones stored, all of them.
        user = f"u{_sid()}"
        sid = _sid()
        await store.append_runs(sid, [{"i": i} for i in range(3)], user_id=user)
        mine = await store.read(sid, user_id=user)
        assert mine is not None
        async with store_factory() as other:
            theirs = await other.read(sid, user_id=user)
            if theirs is None:
                pytest.skip("each store object has a database of its own (SQLite in memory)")
            theirs.runs[1]["i"] = -1
            await other.upsert(theirs)
        mine.runs.append({"i": 3})
        stored = await store.upsert(mine)
        assert [r["i"] for r in stored.runs] == [0, 1, 2, 3]
        again = await store.read(sid, user_id=user)
        assert again is not None
        assert [r["i"] for r in again.runs] == [0, 1, 2, 3]
        assert again.version == 3

    async def test_an_upsert_of_a_tail_moved_to_another_offset_stores_its_runs_there(
        self, store: SessionStore
    ) -> None:
        # `runs_offset` says where the runs go; a caller that moves a tail read with
        # `last_runs` (here to the start: the history becomes that tail) gets its runs stored
        # where it said, not the ones read at those positions.
        user = f"u{_sid()}"
        sid = _sid()
        await store.append_runs(sid, [{"i": i} for i in range(4)], user_id=user)
        tail = await store.read(sid, user_id=user, last_runs=2)
        assert tail is not None
        assert tail.runs_offset == 2
        tail.runs_offset = 0
        stored = await store.upsert(tail)
        assert [r["i"] for r in stored.runs] == [2, 3]
        again = await store.read(sid, user_id=user)
        assert again is not None
        assert [r["i"] for r in again.runs] == [2, 3]
        assert again.run_ids == stored.run_ids

    async def test_an_upsert_repeating_the_id_of_a_run_it_keeps_is_refused(
        self, store: SessionStore
    ) -> None:
        # Each run id appears once in a session: runs after `runs_offset` may not repeat the id
        # of one before it. The session is as the caller read it, so the caller's runs are
        # the mistake; nothing is written.
        sid = _sid()
        await store.append_runs(sid, [{"run_id": r} for r in "abcd"])
        tail = await store.read(sid, last_runs=2)
        assert tail is not None
        tail.runs = [{"run_id": "a"}, {"run_id": "e"}]
        with pytest.raises(InvalidInputError, match="before runs_offset") as caught:
            await store.upsert(tail)
        assert not isinstance(caught.value, SessionConflictError)
        other = Session(session_id=_sid(), runs=[{"i": 0}])
        with pytest.raises(InvalidInputError, match="before runs_offset"):
            await store.upsert_many([other, tail])
        assert await store.read(other.session_id) is None
        read = await store.read(sid)
        assert read is not None
        assert read.run_ids == ["a", "b", "c", "d"]
        assert read.version == 1

    async def test_an_upsert_whose_kept_runs_moved_since_its_read_is_a_conflict(
        self, store: SessionStore
    ) -> None:
        # Another writer removed a run before this copy's tail, so a run of the tail now sits
        # before the copy's `runs_offset`: writing the copy would hold that run twice. The
        # session changed since the copy was read, so it is a conflict (read again, retry),
        # with or without if_version; nothing is written.
        sid = _sid()
        await store.append_runs(sid, [{"run_id": f"r{i}"} for i in range(4)])
        mine = await store.read(sid, last_runs=1)
        assert mine is not None
        assert (mine.runs_offset, mine.run_ids, mine.version) == (3, ["r3"], 1)
        theirs = await store.read(sid, last_runs=2)
        assert theirs is not None
        del theirs.runs[0]  # r2 goes; r3 moves to position 2
        await store.upsert(theirs)
        mine.runs.append({"run_id": "r4"})
        with pytest.raises(SessionConflictError) as caught:
            await store.upsert(mine)
        assert (caught.value.session_id, caught.value.expected, caught.value.actual) == (sid, 1, 2)
        read = await store.read(sid)
        assert read is not None
        assert read.run_ids == ["r0", "r1", "r3"]
        assert read.version == 2
        again = await store.read(sid, last_runs=1)  # read again, retry: stored once
        assert again is not None
        again.runs.append({"run_id": "r4"})
        stored = await store.upsert(again)
        assert stored.run_ids == ["r3", "r4"]

    async def test_a_session_copied_from_another_store_is_written_whole(
        self, store: SessionStore, store_factory: StoreFactory
    ) -> None:
        # Another store object: on the same table, or on a database of its own (in memory).
        sid = _sid()
        async with store_factory() as other:
            await other.append_runs(sid, [{"v": 1, "i": i} for i in range(3)])
            copy = await other.read(sid)
            assert copy is not None
        if await store.read(sid) is not None:  # one table: make it another incarnation
            await store.delete_session(sid)
        await store.append_runs(sid, [{"v": 2, "i": i} for i in range(3)])  # version 1 too
        await store.upsert(copy)
        read = await store.read(sid)
        assert read is not None
        assert [r["v"] for r in read.runs] == [1, 1, 1]

    async def test_a_partial_history_survives_a_json_round_trip(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": i} for i in range(6)])
        tail = await store.read(sid, last_runs=2)
        assert tail is not None
        through_api = Session.model_validate_json(tail.model_dump_json())
        assert through_api.runs_offset == 4
        through_api.runs.append({"i": 6})
        await store.upsert(through_api)
        read = await store.read(sid)
        assert read is not None
        assert [r["i"] for r in read.runs] == list(range(7))

    async def test_unencodable_ids_versions_and_cursors_are_invalid_input(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": 0}], user_id="u")
        surrogate = "s\ud800"

        def cursor(*fields: Any) -> str:
            raw = json.dumps(list(fields)).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        page = await store.list_sessions(limit=1)
        good = page.next_cursor
        fingerprint = None
        if good is not None:
            fingerprint = json.loads(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))[3]
        bad: list[Any] = [
            lambda: store.read(surrogate),
            lambda: store.read(sid, user_id=surrogate),
            lambda: store.append_runs(surrogate, [{"i": 1}]),
            lambda: store.append_runs(sid, [{"run_id": surrogate}]),
            lambda: store.upsert(Session.model_construct(session_id=surrogate)),
            lambda: store.list_sessions(entity_id=surrogate),
            lambda: store.upsert(Session(session_id=sid, user_id="u"), if_version=2**63),
            lambda: store.append_runs(sid, [], user_id="u", if_version=2**64),
            lambda: store.list_sessions(cursor=cursor(1, 10**30, "s", fingerprint)),
            lambda: store.list_sessions(cursor=cursor(1, 2**62, "s", fingerprint)),
            lambda: store.list_sessions(cursor=cursor(1, -(2**62), "s", fingerprint)),
            lambda: store.list_sessions(cursor=cursor(1, 5, surrogate, fingerprint)),
            lambda: store.list_sessions(cursor=cursor(1, 5.5, "s", fingerprint)),
            lambda: store.list_sessions(cursor=cursor(1, 5, None, fingerprint)),
            lambda: store.list_sessions(cursor="!!not base64!!"),
        ]
        for call in bad:
            with pytest.raises(InvalidInputError):
                await call()
        read = await store.read(sid)
        assert read is not None
        assert read.version == 1
