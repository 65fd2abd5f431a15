"""`SessionStore`: the one protocol every backend satisfies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self, overload, runtime_checkable

from ._leases import Lease
from .models import (
    Activity,
    ActivityBucket,
    Erasure,
    MigrationReport,
    Session,
    SessionPage,
    StoreUsage,
)

__all__ = ["SessionStore"]


@runtime_checkable
class SessionStore(Protocol):
    """Async session storage. `SqliteStore`, `PostgresStore` and `MongoStore` satisfy it.

    Open it once per process (`async with store:` or `await store.open()`), share it between
    requests, close it at shutdown. Every method is safe to call concurrently and to cancel.
    """

    async def open(self) -> None:
        """Connect and check (create, or upgrade when allowed) the schema."""
        ...

    async def close(self) -> None:
        """Close connections; waits for writes in progress. Idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(
        self, session_id: str, *, user_id: str | None = None, last_runs: int | None = None
    ) -> Session | None:
        """The session, or None when it does not exist or belongs to another user than `user_id`.
        `last_runs=N` loads only the last N runs (the cost does not grow with the history)."""
        ...

    async def upsert(
        self,
        session: Session,
        *,
        if_version: int | None = None,
        fence: int | None = None,
        expires_at: datetime | None = None,
    ) -> Session:
        """Write the whole session and return what was stored (with its new version).
        With `if_version`, write only if the stored version is that (0: must not exist); with
        `fence=lease.token`, only if no newer lease of the session was taken since; with
        `expires_at`, the session expires then."""
        ...

    @overload
    async def upsert_many(
        self, sessions: Sequence[Session], *, returning: Literal[True] = True
    ) -> list[Session]: ...

    @overload
    async def upsert_many(
        self, sessions: Sequence[Session], *, returning: Literal[False]
    ) -> None: ...

    async def upsert_many(
        self, sessions: Sequence[Session], *, returning: bool = True
    ) -> list[Session] | None:
        """Write many sessions in one atomic batch (last writer wins), all with one `updated_at`;
        return them as stored, or None with `returning=False` (a bulk load that does not use
        them skips rebuilding them)."""
        ...

    async def append_runs(
        self,
        session_id: str,
        runs: Sequence[Mapping[str, Any]],
        *,
        user_id: str | None = None,
        session_data: dict[str, Any] | None = None,
        state_patch: dict[str, Any] | None = None,
        if_version: int | None = None,
        run_ids: Sequence[str] | None = None,
        fence: int | None = None,
        expires_at: datetime | None = None,
    ) -> Session:
        """Atomically append runs and update the state (`session_data` replaces it, `state_patch`
        merges into it in the database), creating the session when missing. Run ids already
        stored are not appended again. With `fence=lease.token`, refused (`SessionFencedError`)
        when a newer lease of the session was taken since; with `expires_at`, the session
        expires then. Returns the session with only these runs."""
        ...

    def lease(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        ttl: float = 30.0,
        wait: float = 0.0,
        renew_every: float | None = None,
    ) -> Lease:
        """An exclusive lease on the session for every process sharing the database (an async
        context manager): one turn at a time. Waits up to `wait` seconds, else
        `SessionBusyError`; expires after `ttl` unless renewed; released when the block ends."""
        ...

    async def get_run(
        self, session_id: str, run_id: str, *, user_id: str | None = None
    ) -> dict[str, Any] | None:
        """One run by id, as written; None when absent."""
        ...

    async def pop_runs(
        self, session_id: str, n: int = 1, *, user_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Remove and return the last `n` runs, atomically."""
        ...

    async def truncate_runs(
        self, session_id: str, *, keep_last: int, user_id: str | None = None
    ) -> int:
        """Remove all runs but the last `keep_last`; returns how many were removed."""
        ...

    async def clear_runs(self, session_id: str, *, user_id: str | None = None) -> int:
        """Remove every run, keeping the state; returns how many were removed."""
        ...

    async def fork_session(
        self,
        session_id: str,
        new_session_id: str,
        *,
        at_run: str | None = None,
        user_id: str | None = None,
    ) -> Session | None:
        """A copy of the session with its history up to `at_run`, made in the database."""
        ...

    async def usage(self) -> StoreUsage:
        """Sessions, runs and bytes per table, counted by the database."""
        ...

    async def count_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: str | None = None,
        entity_id: str | None = None,
        updated_after: datetime | None = None,
    ) -> int:
        """How many sessions match the filters of `list_sessions`."""
        ...

    async def get_all_session_ids(
        self, *, user_id: str | None = None, entity_id: str | None = None
    ) -> list[str]:
        """Ids of the matching sessions, most recently updated first."""
        ...

    async def get_all_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        include_runs: bool = False,
    ) -> list[Session]:
        """The matching sessions, most recently updated first, without runs unless asked."""
        ...

    async def get_recent_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        limit: int = 2,
        include_runs: bool = False,
    ) -> list[Session]:
        """The `limit` most recently updated matching sessions."""
        ...

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: str | None = None,
        entity_id: str | None = None,
        updated_after: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        include_runs: bool = False,
    ) -> SessionPage:
        """One keyset page, ordered by `updated_at` then `session_id` (both descending)."""
        ...

    async def activity(
        self,
        *,
        now: datetime | None = None,
        bucket: ActivityBucket = "hour",
        since: datetime | None = None,
        user_id: str | None = None,
    ) -> Activity:
        """Counts for a dashboard, made in the database: sessions and runs in total and per
        agent/team/workflow, sessions active in the last hour/day/week, runs per entity per
        hour or day from `since` to `now`."""
        ...

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when absent or owned by another user."""
        ...

    async def purge_expired(self, *, batch: int = 500) -> int:
        """Delete the expired sessions and their runs, `batch` at a time; returns how many."""
        ...

    async def delete_user(self, user_id: str, *, batch: int = 500) -> Erasure:
        """Delete every session and run of a user, `batch` sessions at a time; safe to re-run."""
        ...

    async def rotate_keys(self, *, batch: int = 100) -> int:
        """Encrypt again under the current key what older keys (or no key) wrote; how many
        sessions were rewritten."""
        ...

    async def upgrade_schema(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations (or report them with ``dry_run=True``)."""
        ...

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        ...

    async def drop(self) -> None:
        """Delete the store's tables and all their data. The store stays open; `upgrade_schema()`
        creates the tables again."""
        ...
