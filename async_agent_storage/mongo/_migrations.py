"""MongoDB schema migrations, and how the runner applies them here.

`MIGRATIONS` is append only: a released migration never changes (its checksum is recorded), a new
schema change is a new entry at the end. Each step is a MongoDB command document as JSON
(``create``, ``createIndexes``); ``{table}`` is the store's collection name. Every step is
idempotent (an existing collection or an identical index is left as it is), which is what makes a
migration safe to run again after a crash between its steps: MongoDB has no transaction around
index builds.

The migration lock is a lease document in the history collection (`_Lease`), taken for each step
(`MigrationTarget.transaction`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import orjson
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from .._migrations import AppliedMigration, Migration
from .._time import from_us, now_us
from ..errors import MigrationError
from . import _queries as q
from ._queries import Collections

__all__ = ["MIGRATIONS", "MigrationTarget"]

_log = logging.getLogger("async_agent_storage.mongo")
_LEASE_TTL_MS: Final = 30_000
_LEASE_RENEW_SECONDS: Final = 10.0
_NAMESPACE_EXISTS: Final = 48


def _step(command: dict[str, object]) -> str:
    return orjson.dumps(command).decode()


def _index(name: str, key: dict[str, int], **options: object) -> dict[str, object]:
    return {"name": name, "key": key, **options}


def _recent_by(field: str) -> dict[str, object]:
    return _index(
        f"{field.removesuffix('_id')}_recent",
        {field: 1, "updated_at": -1, "_id": -1},
        partialFilterExpression={field: {"$type": "string"}},
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="create sessions and runs collections",
        steps=(
            _step({"create": "{table}"}),
            _step({"create": "{table}_runs"}),
            # A user's sessions, most recent first: the hot listing.
            _step(
                {
                    "createIndexes": "{table}",
                    "indexes": [
                        _index("user_recent", {"user_id": 1, "updated_at": -1, "_id": -1}),
                    ],
                }
            ),
            # Runs are read by (session, incarnation, seq) ranges; the key makes each seq unique.
            _step(
                {
                    "createIndexes": "{table}_runs",
                    "indexes": [
                        _index("session_seq", {"session_id": 1, "gen": 1, "seq": 1}, unique=True),
                    ],
                }
            ),
        ),
    ),
    Migration(
        version=2,
        name="index recency and entity ids",
        steps=(
            _step(
                {
                    "createIndexes": "{table}",
                    "indexes": [
                        _index("recent", {"updated_at": -1, "_id": -1}),
                        _recent_by("agent_id"),
                        _recent_by("team_id"),
                        _recent_by("workflow_id"),
                    ],
                }
            ),
        ),
    ),
    Migration(
        version=3,
        name="index runs by id",
        steps=(
            # get_run, fork_session's at_run and the exactly-once check of append_runs find runs
            # by id within one incarnation of a history.
            _step(
                {
                    "createIndexes": "{table}_runs",
                    "indexes": [_index("session_run_id", {"session_id": 1, "gen": 1, "run_id": 1})],
                }
            ),
        ),
    ),
    Migration(
        version=4,
        name="session leases",
        steps=(
            # One document per session ever leased (store.lease), keyed by the session id: its
            # holder, its token and its expiry (see `_leases`).
            _step({"create": "{table}_leases"}),
        ),
    ),
    Migration(
        version=5,
        name="session expiry",
        steps=(
            # Sessions expire at ``expires_at`` (a BSON date; absent or null: never): every read
            # and write filters on it at once, and purge_expired deletes expired sessions with
            # their runs, finding them on this index. As a TTL index it is also a safety net for
            # stores nobody purges: the server deletes such a document a day after it expired
            # (its runs are then left to purge_expired, see `_retention`). A user's sessions
            # (delete_user) are found on ``user_recent``.
            _step(
                {
                    "createIndexes": "{table}",
                    "indexes": [
                        _index("expires", {"expires_at": 1}, expireAfterSeconds=86_400),
                    ],
                }
            ),
        ),
    ),
)


class _Lease:
    """The migration lock: a document in the history collection that one process owns until it
    deletes it or its lease (30 s, renewed every 10 s while held) expires, so a process that
    crashes holding it blocks the others for 30 s at most."""

    def __init__(self, collection: Any, label: str, timeout: float) -> None:
        self._collection = collection
        self._label = label
        self._timeout = timeout
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        deadline = time.monotonic() + self._timeout
        delay = 0.01
        while True:
            try:
                doc = await self._collection.find_one_and_update(
                    {"_id": q.LEASE_ID},
                    q.take_lease(self.owner, _LEASE_TTL_MS),
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                doc = None  # another process created the lease document at the same moment
            if doc is not None and doc.get("owner") == self.owner:
                self._renewer = asyncio.create_task(self._renew())
                return
            if time.monotonic() >= deadline:
                holder = doc or {}
                raise MigrationError(
                    f"{self._label}: could not take the migration lock within "
                    f"{self._timeout:g}s: {holder.get('owner')!r} holds it until "
                    f"{holder.get('expires')} (server time). A process that died holding it "
                    f"loses it {_LEASE_TTL_MS // 1000}s after its last renewal"
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(_LEASE_RENEW_SECONDS)
            try:
                await self._collection.update_one(
                    {"_id": q.LEASE_ID, "owner": self.owner}, q.renew_lease(_LEASE_TTL_MS)
                )
            except PyMongoError as exc:
                _log.warning("%s: renewing the migration lease failed: %s", self._label, exc)

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        try:
            await self._collection.delete_one({"_id": q.LEASE_ID, "owner": self.owner})
        except PyMongoError as exc:
            _log.warning(
                "%s: releasing the migration lease failed (it expires by itself): %s",
                self._label,
                exc,
            )


class _Transaction:
    """One migration under the lease. MongoDB cannot run index builds in a transaction: the steps
    are idempotent instead, and the history document is written after them, so a crash half-way
    leaves a migration that is simply applied again."""

    def __init__(self, target: MigrationTarget) -> None:
        self._target = target

    async def applied(self) -> list[AppliedMigration]:
        return await self._target.applied()

    async def apply(self, migration: Migration) -> datetime:
        target, parts = self._target, self._target.parts
        _log.info("%s: applying migration %d (%s)", target.label, migration.version, migration.name)
        for step in migration.steps:
            command = orjson.loads(step.replace("{table}", target.collection_name))
            try:
                await parts.database.command(command)
            except OperationFailure as exc:
                if not ("create" in command and exc.code == _NAMESPACE_EXISTS):
                    raise
        now = now_us()
        record = {
            "_id": migration.version,
            "version": migration.version,
            "name": migration.name,
            "checksum": migration.checksum,
            "applied_at": now,
        }
        try:
            await parts.history.insert_one(record)
        except DuplicateKeyError:
            # Applied by a process whose lease expired under it: the same steps, if the
            # checksum agrees.
            existing = await parts.history.find_one({"_id": migration.version})
            if existing is None or existing.get("checksum") != migration.checksum:
                raise MigrationError(
                    f"{target.label}: migration {migration.version} was recorded twice with "
                    "different checksums"
                ) from None
            return from_us(int(existing["applied_at"]))
        return from_us(now)


class MigrationTarget:
    def __init__(
        self, parts: Collections, label: str, collection_name: str, lock_timeout: float
    ) -> None:
        self.parts = parts
        self.label = label
        self.collection_name = collection_name
        self._lock_timeout = lock_timeout

    async def applied(self) -> list[AppliedMigration]:
        cursor = self.parts.history.find({"version": {"$exists": True}}).sort("version", 1)
        docs = await cursor.to_list(None)
        try:
            return [
                AppliedMigration(
                    int(d["version"]), str(d["name"]), str(d["checksum"]), from_us(d["applied_at"])
                )
                for d in docs
            ]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise MigrationError(
                f"{self.label}: the migration history holds a document this code did not write "
                f"({type(exc).__name__}: {exc}); the collection {self.collection_name}_migrations "
                "was changed outside async-agent-storage"
            ) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Transaction]:
        lease = _Lease(self.parts.history, self.label, self._lock_timeout)
        await lease.acquire()
        try:
            yield _Transaction(self)
        finally:
            await asyncio.shield(lease.release())
