"""Retention and privacy calls of `StoreBase`, written once above the drivers: purging expired
sessions and erasing a user in bounded batches, rotating keys, and the two calls an encrypting
store makes in its own process because the database cannot work on ciphertext (merging a
`state_patch` into encrypted state, forking an encrypted session).

Each batch is one driver hook call (`_purge_expired`, `_delete_user`, `_reseal`), so a crash
between batches loses nothing: the next call carries on from what is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._crypto import reseal_plan
from ._encoding import merge_patch
from ._paging import list_query
from ._rules import RETRY, conflict
from .errors import InvalidInputError, SessionConflictError, SessionOwnershipError
from .models import Session

if TYPE_CHECKING:
    from ._store import StoreBase

__all__ = [
    "append_patched",
    "check_batch",
    "delete_user",
    "fork_copied",
    "purge_expired",
    "rotate_keys",
]

MAX_BATCH = 10_000


def check_batch(batch: object) -> int:
    """A batch size of a maintenance call: 1 to 10,000."""
    if type(batch) is not int or not 1 <= batch <= MAX_BATCH:
        raise InvalidInputError(f"batch must be an int from 1 to {MAX_BATCH}, got {batch!r}")
    return batch


async def purge_expired(store: StoreBase, batch: int) -> int:
    """Delete expired sessions, `batch` at a time, until none is left; how many."""
    total = 0
    while True:
        sessions, _runs = await store._call("purge_expired", store._purge_expired, batch)
        total += sessions
        if sessions < batch:
            return total


async def delete_user(store: StoreBase, user_id: str, batch: int) -> tuple[int, int]:
    """Delete every session of `user_id` and its runs, `batch` sessions at a time."""
    sessions = runs = 0
    while True:
        done, removed = await store._call("delete_user", store._delete_user, user_id, batch)
        sessions += done
        runs += removed
        if done < batch:
            return sessions, runs


async def rotate_keys(store: StoreBase, batch: int) -> int:
    """Store every value that is not under the current key (older keys, or in clear) again
    under it, `batch` sessions per page, newest first. A session written meanwhile was written
    under the current key already; one whose version moved between the read and the write is
    read again once. Returns how many sessions were re-encrypted."""
    ring = store.encryption
    if ring is None:
        raise InvalidInputError(f"{store.label}: rotate_keys needs a store opened with encryption=")
    query = list_query(limit=batch, include_runs=True)
    count = 0
    while True:
        sessions, last = await store._call("rotate_keys", store._list_page, query)
        for session in sessions:
            for _ in range(2):
                plan = reseal_plan(session, ring)
                if plan is None or await store._call("rotate_keys", store._reseal, plan):
                    count += plan is not None
                    break
                again = await store._call(
                    "rotate_keys", store._read, session.session_id, None, None
                )
                if again is None:
                    break
                session = again
        if last is None:
            return count
        query = replace(query, after=last)


async def append_patched(
    store: StoreBase,
    session_id: str,
    runs: Sequence[Mapping[str, Any]],
    state_patch: dict[str, Any],
    arguments: dict[str, Any],
) -> Session:
    """`append_runs(state_patch=...)` on an encrypting store: the database cannot merge into
    ciphertext, so the store reads the state, merges the patch (RFC 7396, `merge_patch`) and
    appends with the merged state at the version it read, again when another write came in
    between. The result is what a database-side merge gives, at the cost of a read per turn.
    With the caller's `if_version`, a conflict is the caller's to handle.

    The patches of one session through one store object take turns (without, concurrent turns
    of one session would conflict with each other and exhaust the retries); only writes from
    elsewhere make a patch read again."""
    if not isinstance(state_patch, dict):
        raise InvalidInputError(f"state_patch must be a dict, got {type(state_patch).__name__}")
    given = arguments.pop("if_version")
    user_id = arguments["user_id"]
    lock = store._patching.get(session_id)
    if lock is None:
        lock = store._patching[session_id] = asyncio.Lock()
    async with lock:
        for attempt in range(RETRY.attempts):
            current = await store.read(session_id, user_id=user_id, last_runs=0)
            version = 0 if current is None else current.version
            state = {} if current is None else current.session_data
            try:
                return await store.append_runs(
                    session_id,
                    runs,
                    session_data=merge_patch(state, state_patch),
                    if_version=version if given is None else given,
                    **arguments,
                )
            except SessionConflictError:
                if given is not None:
                    raise
                await RETRY.pause(attempt)
        raise RETRY.exhausted(store.label, session_id)


async def fork_copied(
    store: StoreBase,
    session_id: str,
    new_session_id: str,
    at_run: str | None,
    user_id: str | None,
) -> Session | None:
    """`fork_session` on an encrypting store: each ciphertext is bound to its session id, so the
    copy is read, decrypted and written under the new id (one `upsert` that must create it)
    instead of copied inside the database. The copy's runs get this write's time; its expiry is
    the store's default for a new session."""
    source = await store.read(session_id, user_id=user_id)
    if source is None:
        return None
    end = len(source.runs)
    if at_run is not None:
        if at_run not in source.run_ids:
            raise InvalidInputError(
                f"{store.label}: run {at_run!r} is not in session {session_id!r}; nothing was "
                "written"
            )
        end = source.run_ids.index(at_run) + 1
    copy = source.model_copy(
        update={
            "session_id": new_session_id,
            "runs": source.runs[:end],
            "run_ids": source.run_ids[:end],
            "runs_offset": 0,
            "version": 0,
        }
    )
    try:
        stored = await store.upsert(copy, if_version=0)
    except SessionOwnershipError:  # the new id is another user's session: it exists
        existing = await store.read(new_session_id, last_runs=0)
        actual = 0 if existing is None else existing.version
        raise conflict(store.label, new_session_id, 0, actual) from None
    stored.runs = []
    stored.run_ids = []
    stored.runs_offset = end
    return stored
