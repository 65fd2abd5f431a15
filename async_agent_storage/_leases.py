"""Leases: one turn at a time per session, for every process sharing the database.

`store.lease(session_id, ...)` returns a `Lease`, an async context manager written once here on
top of three driver hooks (see `StoreBase`):

=====================  ===========================================================================
hook                   what the driver does, atomically
=====================  ===========================================================================
`_take_lease`          check the owner (rule IF_GIVEN); take the lease row when it is free,
                       expired, or absent (token + 1, or 1); write that token on the session as
                       its `lease_token`; return a `Grant`, or `Busy` (the holder and its expiry)
`_renew_lease`         push the expiry of the lease (holder, token) on; `Busy` when it was taken
                       over (its token moved on)
`_release_lease`       end the lease (holder, token) now, keeping its token
=====================  ===========================================================================

A lease is stored data (a row or a document: holder, token, expiry), never a lock bound to a
connection, so it survives pool churn and works through transaction poolers. Its expiry is judged
by the database's clock where it has one. Nothing sweeps expired leases: a stale row is simply
taken over. Tokens only grow, so a write that carries one (`fence=`) is refused with
`SessionFencedError` once a newer lease was taken (`_rules.decide`; each driver checks it in the
same statement as its write).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from ._checks import check_duration
from ._observe import logger_for
from .errors import InvalidInputError, SessionBusyError, StorageError

if TYPE_CHECKING:
    from ._store import StoreBase

__all__ = ["Busy", "Grant", "Lease", "new_holder"]

# Waiting for a busy lease: polls, from 2 ms doubling to 50 ms, with jitter (waiters spread out,
# and one of them finds the lease soon after it is released).
_FIRST_POLL: Final = 0.002
_MAX_POLL: Final = 0.05


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease taken or renewed: its token and its expiry (aware)."""

    token: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Busy:
    """Who holds a lease, until when (aware). `holder` is empty when no lease row exists."""

    holder: str
    until: datetime


def new_holder() -> str:
    """A holder name: ``host:pid:random``, distinct for every lease, in one process too."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Lease:
    """An exclusive lease on one session, for all processes sharing the database.

    ```python
    async with store.lease(session_id, user_id=user, ttl=30, wait=10, renew_every=10) as lease:
        session = await store.read(session_id, user_id=user, last_runs=20)
        ...  # run the agent
        await store.append_runs(session_id, [run], user_id=user, fence=lease.token)
    ```

    - `session_id`, `user_id`: the session, and the caller's user (a lease on another user's
      session is `SessionOwnershipError`; a session that does not exist yet may be leased).
    - `holder`: ``host:pid:random``, this lease's name in the database and in
      `SessionBusyError`.
    - `token`: grows with every lease of the session; pass it as `fence=` to the turn's writes.
    - `expires_at`: when the lease ends unless renewed (aware; the database's clock).
    - `lost`: a renewal found the lease taken over (it expired first); the turn's fenced writes
      are refused.
    """

    def __init__(
        self,
        store: StoreBase,
        session_id: str,
        user_id: str | None,
        *,
        ttl: float,
        wait: float,
        renew_every: float | None,
    ) -> None:
        self._store = store
        self.session_id = session_id
        self.user_id = user_id
        self.ttl = ttl
        self.wait = wait
        self.renew_every = renew_every
        self.holder = new_holder()
        self.token = 0
        self.expires_at: datetime | None = None
        self.lost = False
        self._state = "new"  # new -> held -> released
        self._renewer: asyncio.Task[None] | None = None
        self._renewal: asyncio.Future[datetime] | None = None  # the background renewal in flight

    def __repr__(self) -> str:
        return (
            f"Lease(session_id={self.session_id!r}, holder={self.holder!r}, token={self.token}, "
            f"state={self._state}{', lost' if self.lost else ''})"
        )

    @property
    def held(self) -> bool:
        """Acquired, not released, and not found lost."""
        return self._state == "held" and not self.lost

    # --- acquire --------------------------------------------------------------------------------

    async def acquire(self) -> Self:
        """Take the lease, polling for up to `wait` seconds while another holder has it, else
        raise `SessionBusyError` naming the holder and its expiry. `async with` calls this."""
        if self._state != "new":
            raise InvalidInputError(
                f"this lease of session {self.session_id!r} was already acquired; call "
                "store.lease(...) again for a new one"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        attempt = 0
        while True:
            outcome = await self._take()
            if isinstance(outcome, Grant):
                self.token, self.expires_at = outcome.token, outcome.expires_at
                self._state = "held"
                if self.renew_every is not None:
                    self._renewer = asyncio.create_task(self._renew_in_background())
                return self
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._busy(outcome, waited=self.wait > 0)
            delay = min(_FIRST_POLL * (1 << min(attempt, 10)), _MAX_POLL)
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.5), remaining))
            attempt += 1

    async def _take(self) -> Grant | Busy:
        """One attempt. A caller cancelled while the database takes the lease does not leave it
        held until its ttl: the attempt runs to its end and a lease it took is released."""
        store = self._store
        task = asyncio.ensure_future(
            store._call(
                "lease",
                store._take_lease,
                self.session_id,
                self.user_id,
                self.holder,
                self.ttl,
            )
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_after_cancel)
            raise

    def _release_after_cancel(self, task: asyncio.Future[Grant | Busy]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        grant = task.result()
        if isinstance(grant, Grant):
            store = self._store
            release = store._call(
                "release_lease", store._release_lease, self.session_id, self.holder, grant.token
            )
            _background(release)

    def _busy(self, busy: Busy, *, waited: bool) -> SessionBusyError:
        after = f" (waited {self.wait:g}s)" if waited else ""
        return SessionBusyError(
            f"{self._store.label}: session {self.session_id!r} is busy: {busy.holder!r} holds its "
            f"lease until {busy.until.isoformat()}{after}",
            session_id=self.session_id,
            holder=busy.holder,
            until=busy.until,
        )

    # --- renew ----------------------------------------------------------------------------------

    async def renew(self, ttl: float | None = None) -> datetime:
        """Push the expiry on to now + `ttl` (default: the lease's ttl) and return it. When the
        lease was taken over meanwhile (it had expired), `lost` becomes True and this raises
        `SessionBusyError` naming the new holder."""
        seconds = self.ttl if ttl is None else check_duration("ttl", ttl)
        if self._state != "held":
            raise InvalidInputError(
                f"the lease of session {self.session_id!r} is {self._state}, not held: nothing "
                "to renew"
            )
        if self.lost:
            raise InvalidInputError(f"the lease of session {self.session_id!r} was lost")
        store = self._store
        outcome = await store._call(
            "renew_lease",
            store._renew_lease,
            self.session_id,
            self.holder,
            self.token,
            seconds,
        )
        if isinstance(outcome, Busy):
            self.lost = True
            raise self._busy(outcome, waited=False)
        self.expires_at = outcome.expires_at
        return outcome.expires_at

    async def _renew_in_background(self) -> None:
        assert self.renew_every is not None
        log = logger_for(self._store.backend)
        while True:
            await asyncio.sleep(self.renew_every)
            # Shielded: `release` cancels this task, but a renewal already sent must run to its
            # end before the release is sent (see `release`).
            renewal = self._renewal = asyncio.ensure_future(self.renew())
            try:
                await asyncio.shield(renewal)
            except SessionBusyError:
                log.warning("%s: a lease was lost: it was taken over", self._store.label)
                return
            except StorageError as exc:  # an outage: try again at the next beat
                log.warning("%s: renewing a lease failed: %s", self._store.label, exc)

    # --- release --------------------------------------------------------------------------------

    async def release(self) -> None:
        """End the lease now (its token stays: the next lease gets token + 1). Idempotent; a
        lease found lost is not touched. Leaving the `async with` block calls this."""
        if self._state != "held":
            self._state = "released"
            return
        self._state = "released"
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            # A renewal in flight finishes first: sent on another connection, the database could
            # apply it after the release and hold the lease for another ttl.
            renewal, self._renewal = self._renewal, None
            renewer.cancel()
            waits = [renewer] if renewal is None else [renewer, renewal]
            await asyncio.gather(*waits, return_exceptions=True)
        if self.lost:
            return
        store = self._store
        await asyncio.shield(
            store._call(
                "release_lease", store._release_lease, self.session_id, self.holder, self.token
            )
        )

    async def __aenter__(self) -> Self:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.release()
        except StorageError as error:
            if exc is None:
                raise
            # The block's own error matters more; the lease expires by itself.
            logger_for(self._store.backend).warning(
                "%s: releasing a lease failed (it expires at its ttl): %s",
                self._store.label,
                error,
            )


_BACKGROUND: set[asyncio.Future[object]] = set()


def _background(work: Awaitable[object]) -> None:
    future: asyncio.Future[object] = asyncio.ensure_future(work)
    _BACKGROUND.add(future)

    def done(f: asyncio.Future[object]) -> None:
        _BACKGROUND.discard(f)
        if not f.cancelled():
            with contextlib.suppress(Exception):
                f.exception()

    future.add_done_callback(done)


def aware(value: datetime) -> datetime:
    """A datetime from a driver, as an aware UTC one (naive values are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
