"""Who may write a session, and at which version: one decision for every driver.

A driver writes with one conditional statement (the owner, when asked the version, and for a
fenced write the lease token are part of its condition). When that statement changes nothing,
the driver reads what is stored (the owner, the version and the latest lease token, or nothing)
and asks `decide` why:

============  ============  ====================  ===================  ============================
stored        owner         fence                 if_version           verdict
============  ============  ====================  ===================  ============================
absent        -             -                     None or 0            CREATE
absent        -             -                     v >= 1               SessionConflictError (v, 0)
present       another user  any                   any                  SessionOwnershipError
present       the caller's  f < stored token      any                  SessionFencedError (f, t)
present       the caller's  None or f >= token    None                 RETRY
present       the caller's  None or f >= token    == stored version    RETRY
present       the caller's  None or f >= token    != stored version    SessionConflictError (v, n)
============  ============  ====================  ===================  ============================

One more row for an append with a `state_patch`: a session whose state is stored encrypted (not
a JSON object, see `_crypto`) cannot be patched by the database, so the drivers' patching
statements leave it alone and `decide(..., patch=True)` raises `EncryptionKeyError` naming its
key (once owner, fence and version passed): a store without the key ring never replaces an
encrypted state with the patch. A store with it merges patches itself and sends whole states.

Ownership comes first (a caller learns nothing of another user's session), then the fence (a
holder that lost its lease must stop, whatever the version), then the version. An absent session
has no token on its row: a driver whose write would create it checks the leases table itself and
raises `fenced` (see `docs/architecture.md`, "Leases and fencing").

"The caller's owner" depends on the call (`OwnerRule`): an upsert writes the session's own
`user_id`, which must be the stored one (None included: the owner never changes); an append
with `user_id=None` checks no owner.

One more rule for an upsert: runs after `runs_offset` may not repeat the id of a run the
write keeps before it (each run id appears once in a session). A driver that finds such a run
asks `repeated_run_id` which error it is: `SessionConflictError` when the session changed since
the copy was read (another writer moved that run before the copy's offset; read again and
retry), `InvalidInputError` when it did not (the caller's runs are the mistake). Nothing is
written either way.

CREATE means the session may be created (a driver whose statement already tried to create it
tries again); RETRY means the stored row now lets the write through, so it changed between the
two statements: the driver tries again, at most `RETRY.attempts` times in all.
"""

from __future__ import annotations

import asyncio
import enum
import random
from dataclasses import dataclass
from typing import Final

from ._crypto import key_id_of
from .errors import (
    EncryptionKeyError,
    InvalidInputError,
    SessionConflictError,
    SessionFencedError,
    SessionOwnershipError,
    StorageUnavailableError,
)

__all__ = [
    "RETRY",
    "OwnerRule",
    "RetryPolicy",
    "Stored",
    "Verdict",
    "conflict",
    "decide",
    "fenced",
    "not_owner",
    "repeated_run_id",
    "sealed_key",
    "sealed_state",
]


class Verdict(enum.Enum):
    CREATE = "create"
    RETRY = "retry"


class OwnerRule(enum.Enum):
    """How a call's `user_id` is compared with the stored owner."""

    EXACT = "exact"  # upsert: the session's user_id is its owner, None included
    IF_GIVEN = "if_given"  # append, delete, read: None checks nothing


@dataclass(frozen=True, slots=True)
class Stored:
    """What is stored of a session: its owner, its version, the token of its latest lease
    (0: never leased), and when its state is stored encrypted, the id of its key (`sealed_key`)."""

    owner: str | None
    version: int
    lease_token: int = 0
    sealed: str | None = None


def sealed_key(state: str | None) -> str | None:
    """The key id of a stored state that is not a JSON object, from the start of its stored
    text (a JSON string ``"aas1:<key id>:..."``, see `_crypto`); None for an object (None)."""
    if state is None:
        return None
    return key_id_of(state.lstrip(' "')) or "(unknown)"


def owns(stored_owner: str | None, user_id: str | None, rule: OwnerRule) -> bool:
    if rule is OwnerRule.IF_GIVEN and user_id is None:
        return True
    return stored_owner == user_id


def decide(
    label: str,
    session_id: str,
    stored: Stored | None,
    *,
    user_id: str | None,
    if_version: int | None,
    rule: OwnerRule,
    fence: int | None = None,
    patch: bool = False,
) -> Verdict:
    """Why a conditional write changed nothing: raise the error it deserves, or say what to do.
    See the module's table (`patch`: the write merges a state_patch)."""
    if stored is not None and not owns(stored.owner, user_id, rule):
        raise not_owner(label, session_id, user_id)
    if stored is not None and fence is not None and stored.lease_token > fence:
        raise fenced(label, session_id, fence, stored.lease_token)
    actual = 0 if stored is None else stored.version
    if if_version is not None and actual != if_version:
        raise conflict(label, session_id, if_version, actual)
    if patch and stored is not None and stored.sealed is not None:
        raise sealed_state(label, session_id, stored.sealed)
    return Verdict.CREATE if stored is None else Verdict.RETRY


def not_owner(label: str, session_id: str, user_id: str | None) -> SessionOwnershipError:
    return SessionOwnershipError(
        f"{label}: session {session_id!r} belongs to another user; it cannot be written as "
        f"user_id={user_id!r}",
        session_id=session_id,
    )


def conflict(label: str, session_id: str, expected: int, actual: int) -> SessionConflictError:
    return SessionConflictError(
        f"{label}: session {session_id!r} is at version {actual}, not {expected}; "
        "read it again, re-apply the change and retry",
        session_id=session_id,
        expected=expected,
        actual=actual,
    )


def repeated_run_id(
    label: str, session_id: str, run_id: str, offset: int, copy_version: int, stored: int
) -> SessionConflictError | InvalidInputError:
    """The error of an upsert whose run `run_id` is already held by a run before its
    `runs_offset` (`offset`): a conflict when the stored version is not the copy's."""
    if copy_version != stored:
        return SessionConflictError(
            f"{label}: session {session_id!r} changed since this copy was read (version "
            f"{copy_version}, now {stored}): run {run_id!r} of this write is now held by a run "
            f"before runs_offset ({offset}); read it again, re-apply the change and retry; "
            "nothing was written",
            session_id=session_id,
            expected=copy_version,
            actual=stored,
        )
    return InvalidInputError(
        f"{label}: session {session_id!r}: run id {run_id!r} of this write is already held by a "
        f"run before runs_offset ({offset}); each run id appears once in a session; nothing was "
        "written"
    )


def fenced(label: str, session_id: str, token: int, latest: int) -> SessionFencedError:
    return SessionFencedError(
        f"{label}: session {session_id!r} has a newer lease (token {latest}) than this write's "
        f"fence (token {token}): its lease was lost (expired and taken over); nothing was written",
        session_id=session_id,
        token=token,
        latest=latest,
    )


def sealed_state(label: str, session_id: str, key_id: str) -> EncryptionKeyError:
    return EncryptionKeyError(
        f"{label}: session {session_id!r} holds its state encrypted with key {key_id!r}; the "
        "database cannot merge a state_patch into it: patch it from a store opened with "
        "encryption=KeyRing(...), or pass session_data; nothing was written",
        key_id=key_id,
        session_id=session_id,
    )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often a write is tried again when the session changes between its statements, and
    how long to wait in between (exponential, with jitter)."""

    attempts: int
    first_delay: float
    max_delay: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        return min(self.first_delay * (1 << attempt), self.max_delay) * random.uniform(0.5, 1.5)

    async def pause(self, attempt: int) -> None:
        await asyncio.sleep(self.delay(attempt))

    def exhausted(
        self, label: str, session_id: str, attempts: int | None = None
    ) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"{label}: session {session_id!r} kept changing under other writers during the call "
            f"({attempts or self.attempts} attempts); retry"
        )


RETRY: Final = RetryPolicy(attempts=8, first_delay=0.002, max_delay=0.1)
"""The one retry budget of a call that races with other writers: a write whose session changed
between its statements, a read whose runs were rewritten while it read them. Drivers whose
writes hold a row lock retry at once; the others wait `delay` between attempts."""
