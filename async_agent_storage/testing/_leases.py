"""Leases and fencing in the conformance suite: one turn at a time per session (`store.lease`),
and writes fenced with a lease's token (`fence=`).

Mixed into `SessionStoreConformance`; every driver runs it unchanged. Times are short (tenths of
a second) but leave room for a slow server: an expiry is waited for with a margin.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from ..errors import (
    InvalidInputError,
    SessionBusyError,
    SessionFencedError,
    SessionOwnershipError,
)
from ..models import Session
from ..protocol import SessionStore


def _sid() -> str:
    return f"l-{uuid.uuid4().hex[:12]}"


async def _state(store: SessionStore, session_id: str) -> tuple[int, list[object]] | None:
    read = await store.read(session_id)
    return None if read is None else (read.version, list(read.runs))


class LeaseConformance:
    """`store.lease` and `fence=` on one backend; see the module docstring."""

    # --- taking, waiting, expiring ----------------------------------------------------------------

    async def test_a_lease_is_exclusive_and_busy_says_who_holds_it_until_when(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        async with store.lease(sid, user_id="u", ttl=30) as lease:
            assert lease.session_id == sid
            assert lease.token == 1
            assert lease.expires_at is not None
            assert lease.expires_at.tzinfo is not None
            host, pid, suffix = lease.holder.rsplit(":", 2)
            assert host
            assert pid.isdigit()
            assert suffix
            assert not lease.lost
            with pytest.raises(SessionBusyError) as busy:
                async with store.lease(sid, user_id="u"):
                    pytest.fail("a second lease was granted")
            error = busy.value
            assert (error.session_id, error.holder, error.until) == (
                sid,
                lease.holder,
                lease.expires_at,
            )
            assert lease.holder in str(error)
            assert error.until > datetime.now(UTC)
        # released: the next one gets it at once, with the next token
        async with store.lease(sid, user_id="u") as again:
            assert again.token == 2

    async def test_wait_polls_until_the_holder_releases(self, store: SessionStore) -> None:
        sid = _sid()
        first = await store.lease(sid, ttl=30).acquire()
        waiter = asyncio.create_task(store.lease(sid, ttl=30, wait=20).acquire())
        await asyncio.sleep(0.3)
        assert not waiter.done()  # still waiting
        released = time.monotonic()
        await first.release()
        second = await waiter
        assert time.monotonic() - released < 5
        assert second.token == first.token + 1
        await second.release()

    async def test_a_lease_expires_after_its_ttl_and_is_taken_over(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        stale = await store.lease(sid, ttl=0.4).acquire()  # never released: its process "died"
        with pytest.raises(SessionBusyError):
            await store.lease(sid).acquire()
        await asyncio.sleep(0.6)
        async with store.lease(sid) as taken:
            assert taken.token == stale.token + 1

    async def test_wait_for_an_expiry(self, store: SessionStore) -> None:
        sid = _sid()
        stale = await store.lease(sid, ttl=0.4).acquire()
        started = time.monotonic()
        async with store.lease(sid, wait=20) as taken:
            assert time.monotonic() - started >= 0.2
            assert taken.token == stale.token + 1

    async def test_renew_pushes_the_expiry_on(self, store: SessionStore) -> None:
        sid = _sid()
        async with store.lease(sid, ttl=0.5) as lease:
            first = lease.expires_at
            assert first is not None
            renewed = await lease.renew(ttl=30)
            assert renewed == lease.expires_at
            assert renewed > first
            await asyncio.sleep(0.8)  # past the first ttl
            with pytest.raises(SessionBusyError):
                await store.lease(sid).acquire()
            assert await lease.renew() > first  # the lease's own ttl again
            assert not lease.lost

    async def test_background_renewal_keeps_the_lease(self, store: SessionStore) -> None:
        sid = _sid()
        async with store.lease(sid, ttl=0.6, renew_every=0.15) as lease:
            await asyncio.sleep(1.5)
            with pytest.raises(SessionBusyError):
                await store.lease(sid).acquire()
            assert not lease.lost
        async with store.lease(sid) as after:  # released at the end of the block
            assert after.token == lease.token + 1

    async def test_a_renewal_sent_before_the_release_never_outlives_it(
        self, store: SessionStore
    ) -> None:
        # A background renewal already sent when the lease is released can reach the database
        # after the release (another connection, a slow network). The release must wait for it:
        # applied after the release, it would hold the lease for another ttl. Here the store's
        # renew hook reaches the database 0.2 s late, and cancelling the caller does not stop it,
        # as with a request already on the wire.
        target: Any = store
        renew_hook = target._renew_lease
        sent = asyncio.Event()

        async def late(*args: Any) -> Any:
            async def deliver() -> Any:
                await asyncio.sleep(0.2)
                return await renew_hook(*args)

            sent.set()
            return await asyncio.shield(asyncio.ensure_future(deliver()))

        target._renew_lease = late
        try:
            sid = _sid()
            async with store.lease(sid, ttl=60, renew_every=0.01):
                await sent.wait()
            await asyncio.sleep(0.3)  # past the renewal's arrival
            taken = await store.lease(sid).acquire()  # free, not held for another 60 s
            await taken.release()
        finally:
            del target._renew_lease

    async def test_renew_after_a_takeover_says_the_lease_was_lost(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        stale = await store.lease(sid, ttl=0.3).acquire()
        await asyncio.sleep(0.5)
        async with store.lease(sid, ttl=30) as taker:
            with pytest.raises(SessionBusyError) as busy:
                await stale.renew()
            assert busy.value.holder == taker.holder
            assert stale.lost
            await stale.release()  # lost: touches nothing
            with pytest.raises(SessionBusyError):
                await store.lease(sid).acquire()

    async def test_renewing_an_expired_lease_nobody_took_keeps_it(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        lease = await store.lease(sid, ttl=0.3).acquire()
        await asyncio.sleep(0.5)
        await lease.renew(ttl=30)
        assert not lease.lost
        with pytest.raises(SessionBusyError):
            await store.lease(sid).acquire()
        await lease.release()

    async def test_release_keeps_the_token_and_tokens_only_grow(self, store: SessionStore) -> None:
        sid = _sid()
        tokens = []
        for _ in range(4):
            async with store.lease(sid) as lease:
                tokens.append(lease.token)
        expired = await store.lease(sid, ttl=0.2).acquire()
        tokens.append(expired.token)
        await asyncio.sleep(0.4)
        async with store.lease(sid) as lease:
            tokens.append(lease.token)
        assert tokens == [1, 2, 3, 4, 5, 6]
        # another session counts on its own
        async with store.lease(_sid()) as other:
            assert other.token == 1

    async def test_one_coroutine_at_a_time_in_one_process_too(self, store: SessionStore) -> None:
        sid = _sid()
        inside = 0
        most = 0
        tokens: list[int] = []

        async def turn(i: int) -> None:
            nonlocal inside, most
            async with store.lease(sid, wait=60) as lease:
                inside += 1
                most = max(most, inside)
                tokens.append(lease.token)
                await asyncio.sleep(0.01)
                await store.append_runs(sid, [{"i": i}], fence=lease.token)
                inside -= 1

        await asyncio.gather(*(turn(i) for i in range(12)))
        assert most == 1
        assert tokens == sorted(tokens) == list(range(1, 13))
        read = await store.read(sid)
        assert read is not None
        assert len(read.runs) == 12

    async def test_a_lease_is_acquired_once(self, store: SessionStore) -> None:
        lease = store.lease(_sid())
        async with lease:
            with pytest.raises(InvalidInputError):
                await lease.acquire()
        with pytest.raises(InvalidInputError):
            await lease.renew()
        await lease.release()  # idempotent

    async def test_bad_lease_arguments_are_refused(self, store: SessionStore) -> None:
        for options in (
            {"ttl": 0},
            {"ttl": float("nan")},
            {"ttl": True},
            {"wait": -1},
            {"ttl": 1, "renew_every": 1},
            {"renew_every": 0},
        ):
            with pytest.raises(InvalidInputError):
                store.lease(_sid(), **options)
        with pytest.raises(InvalidInputError):
            store.lease("")
        for bad in (-1, "1", 1.0, True, 2**63):
            with pytest.raises(InvalidInputError, match="fence"):
                await store.append_runs(_sid(), [{"i": 0}], fence=bad)  # type: ignore[arg-type]

    # --- ownership --------------------------------------------------------------------------------

    async def test_a_lease_on_another_users_session_is_refused(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [{"i": 0}], user_id="alice")
        with pytest.raises(SessionOwnershipError):
            await store.lease(sid, user_id="mallory").acquire()
        async with store.lease(sid, user_id="alice") as mine:
            # the owner's busy lease says nothing to another user but "not yours"
            with pytest.raises(SessionOwnershipError):
                await store.lease(sid, user_id="mallory").acquire()
            assert mine.token == 1  # the refused calls took no token
        async with store.lease(sid) as unchecked:  # user_id=None checks no owner, as appends
            assert unchecked.token == 2

    # --- fencing ----------------------------------------------------------------------------------

    async def test_a_stale_fence_is_refused_and_nothing_is_written(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        stale = await store.lease(sid, user_id="u", ttl=0.3).acquire()
        await store.append_runs(sid, [{"i": 0}], user_id="u", fence=stale.token)
        await asyncio.sleep(0.5)
        async with store.lease(sid, user_id="u") as current:
            before = await _state(store, sid)
            with pytest.raises(SessionFencedError) as refused:
                await store.append_runs(
                    sid, [{"i": "late"}], user_id="u", state_patch={"x": 1}, fence=stale.token
                )
            assert (refused.value.session_id, refused.value.token, refused.value.latest) == (
                sid,
                stale.token,
                current.token,
            )
            read = await store.read(sid)
            assert read is not None
            with pytest.raises(SessionFencedError):
                await store.upsert(read, fence=stale.token)
            with pytest.raises(SessionFencedError):
                await store.append_runs(sid, [{"i": 1, "run_id": "r1"}], user_id="u", fence=0)
            assert await _state(store, sid) == before
            assert (await store.read(sid)).session_data == {}  # type: ignore[union-attr]
            # the current holder writes
            await store.append_runs(sid, [{"i": 1}], user_id="u", fence=current.token)
            read = await store.read(sid)
            assert read is not None
            read.session_data = {"by": "current"}
            stored = await store.upsert(read, fence=current.token)
            assert stored.version == read.version + 1
            # a newer fence than the latest lease is no lease's: it passes (it cannot be stale)
            await store.append_runs(sid, [{"i": 2}], user_id="u", fence=current.token + 5)
        final = await store.read(sid)
        assert final is not None
        assert [run["i"] for run in final.runs] == [0, 1, 2]
        assert final.session_data == {"by": "current"}
        # leaving the block released the lease: the fence of the released lease still writes
        await store.append_runs(sid, [{"i": 3}], user_id="u", fence=current.token)

    async def test_writes_without_a_fence_ignore_leases(self, store: SessionStore) -> None:
        sid = _sid()
        async with store.lease(sid, user_id="u"):
            await store.append_runs(sid, [{"i": 0}], user_id="u")
            read = await store.read(sid)
            assert read is not None
            await store.upsert(read)
            await store.append_runs(sid, [{"i": 1}], user_id="u", if_version=2)
        read = await store.read(sid)
        assert read is not None
        assert (read.version, len(read.runs)) == (3, 2)

    async def test_a_lease_on_a_missing_session_then_a_fenced_append_creates_it(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        async with store.lease(sid, user_id="u") as first:
            assert await store.read(sid) is None  # leasing creates nothing
            assert first.token == 1
        async with store.lease(sid, user_id="u") as second:
            # the first holder's token, replayed, cannot create the session either
            with pytest.raises(SessionFencedError):
                await store.append_runs(sid, [{"i": "stale"}], user_id="u", fence=first.token)
            with pytest.raises(SessionFencedError):
                await store.upsert(Session(session_id=sid, user_id="u"), fence=first.token)
            assert await store.read(sid) is None
            created = await store.append_runs(sid, [{"i": 0}], user_id="u", fence=second.token)
            assert created.version == 1
            with pytest.raises(SessionFencedError):
                await store.append_runs(sid, [{"i": "stale"}], user_id="u", fence=first.token)
        read = await store.read(sid)
        assert read is not None
        assert [run["i"] for run in read.runs] == [0]

    async def test_an_upsert_creating_a_leased_session_is_fenced(self, store: SessionStore) -> None:
        sid = _sid()
        async with store.lease(sid, user_id="u") as lease:
            stored = await store.upsert(
                Session(session_id=sid, user_id="u", runs=[{"i": 0}]), fence=lease.token
            )
            assert stored.version == 1
        async with store.lease(sid, user_id="u") as later:
            with pytest.raises(SessionFencedError):
                await store.upsert(stored, fence=lease.token)
            await store.upsert(stored, fence=later.token)

    async def test_a_session_deleted_and_created_again_keeps_refusing_stale_fences(
        self, store: SessionStore
    ) -> None:
        sid = _sid()
        async with store.lease(sid) as old:
            await store.append_runs(sid, [{"i": 0}], fence=old.token)
        async with store.lease(sid) as new:
            assert await store.delete_session(sid)
            await store.append_runs(sid, [{"i": 1}])  # created again, without a fence
            with pytest.raises(SessionFencedError):
                await store.append_runs(sid, [{"i": "stale"}], fence=old.token)
            await store.append_runs(sid, [{"i": 2}], fence=new.token)
        read = await store.read(sid)
        assert read is not None
        assert [run["i"] for run in read.runs] == [1, 2]
