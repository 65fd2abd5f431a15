"""Retention and privacy in the conformance suite: expiry (`ttl`, `sliding_ttl`, `expires_at=`),
`purge_expired`, `delete_user`, encrypted payloads (`encryption=KeyRing(...)`) and
`rotate_keys`.

Mixed into `SessionStoreConformance`; every driver runs it unchanged. Tests that need two store
objects over one table (a store with other keys reading what another wrote) skip, saying so,
where each store object has a database of its own (SQLite in memory).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from .._crypto import KeyRing
from ..errors import EncryptionKeyError, InvalidInputError, SessionConflictError
from ..models import Session
from ..protocol import SessionStore
from .strategies import json_objects, json_values

KEY_1 = ("k1", bytes(range(32)))
KEY_2 = ("k2", bytes(range(100, 132)))


def _sid() -> str:
    return f"r-{uuid.uuid4().hex[:12]}"


def _ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        return ("dict", sorted((k, _typed(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


async def _shared(store: SessionStore, other: SessionStore, session_id: str) -> None:
    """Skip when `other` does not see what `store` wrote (each has its own database)."""
    if await other.count_sessions() == 0 and await store.read(session_id) is not None:
        pytest.skip("each store object has a database of its own (SQLite in memory)")


def _needs_a_plain_store(store: SessionStore) -> None:
    if getattr(store, "encryption", None) is not None:
        pytest.skip("needs a store without encryption; this class runs the suite with a key ring")


class RetentionConformance:
    """Expiry, erasure, encryption and key rotation on one backend; see the module docstring."""

    @pytest.fixture
    async def sealed(self, store_factory: Any) -> AsyncIterator[SessionStore]:
        async with store_factory(encryption=KeyRing(current=KEY_1)) as store:
            yield store

    # --- expiry ---------------------------------------------------------------------------------

    async def test_an_expired_session_is_gone_for_every_call_at_once(
        self, store: SessionStore
    ) -> None:
        gone, kept = _sid(), _sid()
        await store.append_runs(gone, [{"i": 0, "run_id": "g0"}], user_id="u", expires_at=_ago(1))
        await store.append_runs(kept, [{"i": 0, "run_id": "k0"}], user_id="u")
        await store.upsert(
            Session(session_id=_sid(), user_id="u", agent_id="a", runs=[{"i": 1}]),
            expires_at=_ago(0.001),
        )
        assert await store.read(gone) is None
        assert await store.read(gone, user_id="u", last_runs=1) is None
        assert await store.get_run(gone, "g0") is None
        assert await store.get_all_session_ids(user_id="u") == [kept]
        assert [s.session_id for s in await store.get_all_sessions(include_runs=True)] == [kept]
        assert [s.session_id for s in await store.get_recent_sessions(limit=5)] == [kept]
        page = await store.list_sessions(user_id="u", limit=1)
        assert [s.session_id for s in page.items] == [kept]
        assert page.next_cursor is None
        assert await store.count_sessions() == await store.count_sessions(user_id="u") == 1
        activity = await store.activity()
        assert (activity.sessions, activity.runs, activity.active_last_hour) == (1, 1, 1)
        assert sum(t.runs for t in activity.turns) == 1
        assert await store.pop_runs(gone, user_id="u") == []
        assert await store.truncate_runs(gone, keep_last=0) == 0
        assert await store.fork_session(gone, _sid()) is None
        expired = _sid()
        await store.append_runs(expired, [{"i": 0}], expires_at=_ago(1))
        stored = (await store.usage()).sessions  # expired rows count until deleted
        assert await store.delete_session(expired) is False  # it was gone already ...
        assert (await store.usage()).sessions == stored - 1  # ... its rows go all the same
        async with store.lease(gone, user_id="someone else") as lease:  # absent: anyone's
            assert lease.token >= 1
        # A write finds it gone: it creates a new session, with none of the old history.
        again = await store.append_runs(gone, [{"i": 5}], user_id="v")
        assert (again.version, again.runs_offset, again.user_id) == (1, 0, "v")
        read = await store.read(gone)
        assert read is not None
        assert read.runs == [{"i": 5}]
        assert await store.get_run(gone, "g0") is None

    async def test_ttl_expires_sessions_and_sliding_ttl_pushes_expiry_on_each_write(
        self, store_factory: Any
    ) -> None:
        fixed, sliding, pinned = _sid(), _sid(), _sid()
        async with (
            store_factory(ttl=1.0) as plain,
            store_factory(ttl=1.0, sliding_ttl=True) as slide,
        ):
            await plain.append_runs(fixed, [{"i": 0}])
            await slide.append_runs(sliding, [{"i": 0}])
            far = datetime.now(UTC) + timedelta(hours=1)
            await plain.upsert(Session(session_id=pinned), expires_at=far)
            # A batch of new sessions, and one holding a session that exists: all take the ttl.
            batch = [_sid() for _ in range(3)]
            await plain.upsert_many([Session(session_id=sid) for sid in batch[:2]])
            await plain.upsert_many([Session(session_id=sid) for sid in batch[1:]])
            await asyncio.sleep(0.6)
            await plain.append_runs(fixed, [{"i": 1}])  # does not push the expiry on
            await slide.append_runs(sliding, [{"i": 1}])  # pushes it to now + 1 s
            await asyncio.sleep(0.6)
            assert await plain.read(fixed) is None
            assert await slide.read(sliding) is not None
            assert await plain.read(pinned) is not None  # expires_at wins over the ttl
            assert [await plain.read(sid) for sid in batch] == [None, None, None]
            await asyncio.sleep(0.6)
            assert await slide.read(sliding) is None

    async def test_purge_expired_deletes_in_batches_and_counts(self, store: SessionStore) -> None:
        expired = [_sid() for _ in range(7)]
        for sid in expired:
            await store.append_runs(sid, [{"i": 0}, {"i": 1}], user_id="u", expires_at=_ago(1))
        live = _sid()
        await store.append_runs(live, [{"i": 0}], user_id="u")
        with pytest.raises(InvalidInputError):
            await store.purge_expired(batch=0)
        calls = store.stats()["calls"].get("purge_expired", 0)  # type: ignore[attr-defined]
        assert await store.purge_expired(batch=3) == 7
        assert store.stats()["calls"]["purge_expired"] - calls == 3  # type: ignore[attr-defined]
        assert await store.purge_expired(batch=3) == 0
        assert await store.get_all_session_ids() == [live]
        for sid in expired:  # its id is free, with none of its runs
            fresh = await store.append_runs(sid, [{"i": 9}], user_id="v")
            assert fresh.version == 1
        read = await store.read(expired[0])
        assert read is not None
        assert read.runs == [{"i": 9}]

    # --- erasure --------------------------------------------------------------------------------

    async def test_delete_user_erases_everything_of_the_user_in_batches(
        self, store: SessionStore
    ) -> None:
        mine = [_sid() for _ in range(5)]
        for i, sid in enumerate(mine):
            await store.append_runs(sid, [{"i": 0, "run_id": f"{sid}-0"}, {"i": 1}], user_id="u")
            if i == 0:
                await store.upsert(
                    Session(session_id=sid, user_id="u", runs=[{"x": 1, "run_id": f"{sid}-0"}]),
                    expires_at=_ago(1),
                )
        theirs = _sid()
        await store.append_runs(theirs, [{"i": 0}], user_id="v")
        erased = await store.delete_user("u", batch=2)
        assert (erased.user_id, erased.sessions, erased.runs) == ("u", 5, 9)
        for sid in mine:
            assert await store.read(sid) is None
            assert await store.get_run(sid, f"{sid}-0") is None
            async with store.lease(sid, user_id="w"):  # no owner left to refuse it
                pass
        assert await store.count_sessions(user_id="u") == 0
        assert (await store.list_sessions(user_id="u")).items == []
        assert (await store.activity(user_id="u")).sessions == 0
        assert await store.get_all_session_ids() == [theirs]
        again = await store.delete_user("u", batch=2)  # a re-run finds nothing left
        assert (again.sessions, again.runs) == (0, 0)
        with pytest.raises(InvalidInputError):
            await store.delete_user("")

    # --- encryption -----------------------------------------------------------------------------

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(state=json_objects(), metadata=json_objects(), run=json_objects(), extra=json_values())
    async def test_any_json_value_round_trips_through_encryption(
        self,
        sealed: SessionStore,
        state: dict[str, Any],
        metadata: dict[str, Any],
        run: dict[str, Any],
        extra: Any,
    ) -> None:
        sid = _sid()
        session = Session(
            session_id=sid,
            session_data={"state": state, "extra": extra, "edge": [-0.0, 2**70, "a\x00😀"]},
            agent_data={"x": extra},
            metadata=metadata,
            summary={"s": state},
            runs=[{**run, "run_id": "r-1"}],
        )
        stored = await sealed.upsert(session)
        appended = await sealed.append_runs(sid, [{**run, "run_id": "r-2"}])
        read = await sealed.read(sid)
        assert read is not None
        for name in ("session_data", "agent_data", "metadata", "summary"):
            assert _typed(getattr(read, name)) == _typed(getattr(session, name)), name
        assert _typed(read.runs) == _typed([*session.runs, {**run, "run_id": "r-2"}])
        assert _typed(stored.session_data) == _typed(session.session_data)
        assert _typed(appended.runs) == _typed([{**run, "run_id": "r-2"}])
        assert _typed(await sealed.get_run(sid, "r-1")) == _typed(session.runs[0])
        listed = await sealed.list_sessions(include_runs=True, limit=1)
        assert _typed(listed.items[0].runs) == _typed(read.runs)
        assert _typed(await sealed.pop_runs(sid)) == _typed([{**run, "run_id": "r-2"}])

    async def test_state_patches_on_encrypted_state_merge_and_none_is_lost(
        self, sealed: SessionStore
    ) -> None:
        sid = _sid()
        await sealed.append_runs(sid, [], session_data={"keep": 1, "drop": 2}, user_id="u")
        await asyncio.gather(
            *(
                sealed.append_runs(sid, [{"i": i}], state_patch={f"k{i}": i}, user_id="u")
                for i in range(6)
            )
        )
        patched = await sealed.append_runs(sid, [], state_patch={"drop": None, "n": {"a": 1}})
        assert patched.session_data == {"keep": 1, "n": {"a": 1}, **{f"k{i}": i for i in range(6)}}
        read = await sealed.read(sid)
        assert read is not None
        assert read.session_data == patched.session_data
        assert sorted(r["i"] for r in read.runs) == list(range(6))
        with pytest.raises(SessionConflictError):
            await sealed.append_runs(sid, [], state_patch={"x": 1}, if_version=1)
        fresh = await sealed.append_runs(_sid(), [{"i": 0}], state_patch={"a": {"b": None}})
        assert (fresh.version, fresh.session_data) == (1, {"a": {}})
        with pytest.raises(InvalidInputError):
            await sealed.append_runs(sid, [], state_patch={"x": 1}, session_data={"y": 1})

    async def test_an_encrypted_session_forks_into_a_readable_copy(
        self, sealed: SessionStore
    ) -> None:
        sid, copy = _sid(), _sid()
        await sealed.append_runs(sid, [{"i": i, "run_id": f"r{i}"} for i in range(4)], user_id="u")
        forked = await sealed.fork_session(sid, copy, at_run="r1", user_id="u")
        assert forked is not None
        assert (forked.run_count, forked.user_id) == (2, "u")
        read = await sealed.read(copy)
        assert read is not None
        assert read.runs == [{"i": 0, "run_id": "r0"}, {"i": 1, "run_id": "r1"}]
        with pytest.raises(SessionConflictError):
            await sealed.fork_session(sid, copy)
        with pytest.raises(InvalidInputError):
            await sealed.fork_session(sid, _sid(), at_run="nope")
        assert await sealed.fork_session(sid, _sid(), user_id="other") is None

    async def test_a_wrong_or_missing_key_is_a_typed_error_naming_the_key_id(
        self, store_factory: Any, sealed: SessionStore
    ) -> None:
        sid = _sid()
        await sealed.append_runs(sid, [{"secret": 1, "run_id": "r0"}], session_data={"s": 1})
        wrong = KeyRing(current=("k1", bytes(32)))
        other = KeyRing(current=("k9", bytes(32)))
        async with store_factory() as plain, store_factory(encryption=wrong) as bad:
            await _shared(sealed, plain, sid)
            async with store_factory(encryption=other) as unknown:
                for store in (plain, bad, unknown):
                    for call in (
                        store.read(sid),
                        store.get_run(sid, "r0"),
                        store.list_sessions(),
                        store.get_all_sessions(include_runs=True),
                    ):
                        with pytest.raises(EncryptionKeyError) as error:
                            await call
                        assert error.value.key_id == "k1"
                        assert "'k1'" in str(error.value)
            assert await plain.count_sessions() == 1  # what is in clear still works

    async def test_a_store_without_the_key_never_patches_an_encrypted_state(
        self, store: SessionStore, sealed: SessionStore
    ) -> None:
        """The database cannot merge into ciphertext: a patch sent by a store without the key
        ring is refused, on every path of an append, and the encrypted state stays as it was."""
        _needs_a_plain_store(store)
        sid = _sid()
        state = {"secret": 1, "keep": [1, 2]}
        await sealed.append_runs(sid, [{"i": 0}], session_data=state, user_id="u")
        await _shared(sealed, store, sid)
        lease = await store.lease(sid, user_id="u").acquire()
        try:
            for extra in (
                {},
                {"user_id": "u"},
                {"run_ids": ["r1"]},
                {"if_version": 1},
                {"fence": lease.token},
            ):
                with pytest.raises(EncryptionKeyError) as error:
                    await store.append_runs(sid, [{"i": 1}], state_patch={"secret": None}, **extra)
                assert (error.value.key_id, error.value.session_id) == ("k1", sid)
                assert "nothing was written" in str(error.value)
        finally:
            await lease.release()
        read = await sealed.read(sid)
        assert read is not None
        assert (read.session_data, read.runs, read.version) == (state, [{"i": 0}], 1)
        # The store with the key ring patches it; a whole state from any store replaces it.
        patched = await sealed.append_runs(sid, [], state_patch={"secret": None, "new": 2})
        assert patched.session_data == {"keep": [1, 2], "new": 2}
        await store.append_runs(sid, [], session_data={"plain": True})
        assert (await sealed.read(sid)).session_data == {"plain": True}  # type: ignore[union-attr]

    async def test_rows_in_clear_stay_readable_and_rotation_re_encrypts_them(
        self, store_factory: Any, store: SessionStore
    ) -> None:
        _needs_a_plain_store(store)
        old = [_sid() for _ in range(3)]
        for sid in old:
            await store.append_runs(sid, [{"clear": sid}], session_data={"s": sid}, user_id="u")
        async with store_factory(encryption=KeyRing(current=KEY_1)) as first:
            await _shared(store, first, old[0])
            read = await first.read(old[0])
            assert read is not None
            assert (read.session_data, read.runs) == ({"s": old[0]}, [{"clear": old[0]}])
            new = _sid()
            await first.append_runs(new, [{"i": 0}], session_data={"n": 1}, user_id="u")
            await first.append_runs(old[0], [{"i": 1}])  # a sealed run beside one in clear
            mixed = await first.read(old[0])
            assert mixed is not None
            assert mixed.runs == [{"clear": old[0]}, {"i": 1}]
        ring = KeyRing(current=KEY_2, old=dict([KEY_1]))
        async with store_factory(encryption=ring) as second:
            before = {s.session_id: s for s in await second.get_all_sessions(include_runs=True)}
            assert await second.rotate_keys(batch=2) == 4
            assert await second.rotate_keys(batch=2) == 0  # resumable: nothing left to do
            after = {s.session_id: s for s in await second.get_all_sessions(include_runs=True)}
            assert after == before  # same values, versions and times
        async with store_factory(encryption=KeyRing(current=KEY_2)) as only_new:
            assert len(await only_new.get_all_sessions(include_runs=True)) == 4
        with pytest.raises(EncryptionKeyError) as error:
            await store.read(old[1])
        assert error.value.key_id == "k2"
        with pytest.raises(InvalidInputError):
            await store.rotate_keys()

    async def test_key_ring_checks_its_keys(self) -> None:
        with pytest.raises(ValueError, match="32 random bytes"):
            KeyRing(current=("k", b"short"))
        with pytest.raises(ValueError, match="key id"):
            KeyRing(current=("a:b", os.urandom(32)))
        with pytest.raises(ValueError, match="two different keys"):
            KeyRing(current=("k", os.urandom(32)), old={"k": os.urandom(32)})
        described = repr(KeyRing(current=KEY_2))
        assert "k2" in described
        assert str(KEY_2[1]) not in described
