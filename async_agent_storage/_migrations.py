"""The backend-neutral migration runner.

Each driver keeps an append-only list of `Migration`s (the position in the list is the version) and
a `MigrationTarget` that knows how to lock, read the history and apply one step. The runner:

- reads the history without a lock (the common case, an up-to-date database, costs one query);
- refuses a database whose schema is newer than the code, has a gap, or whose applied checksum
  differs from the code's, with `MigrationError`;
- applies each pending step in its own transaction under the backend's lock, re-reading the
  history under that lock first, so N processes starting at once apply each step exactly once and
  all succeed; a step that fails is a `MigrationError` (its transaction rolled back);
- is idempotent (a second run does nothing and says so) and can report a plan with ``dry_run=True``.

A target raises its driver's own exceptions; the store translates them at its boundary
(`StoreBase`), so reading the history on a server that is down is a `StorageUnavailableError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import orjson

from .errors import MigrationError
from .models import MigrationReport, MigrationStep

__all__ = [
    "AppliedMigration",
    "Migration",
    "MigrationTarget",
    "MigrationTransaction",
    "ensure_schema",
    "upgrade",
]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change. `steps` are backend statements (SQL templates, or JSON for MongoDB)
    with ``{table}``-style placeholders; the checksum covers the templates, not the table name."""

    version: int
    name: str
    steps: tuple[str, ...]

    @property
    def checksum(self) -> str:
        return hashlib.sha256(orjson.dumps([self.version, self.name, self.steps])).hexdigest()

    def describe(self, applied_at: datetime | None = None) -> MigrationStep:
        return MigrationStep(
            version=self.version, name=self.name, checksum=self.checksum, applied_at=applied_at
        )


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """A row of the history table."""

    version: int
    name: str
    checksum: str
    applied_at: datetime | None = None


class MigrationTransaction(Protocol):
    """One step's transaction, holding the migration lock."""

    async def applied(self) -> list[AppliedMigration]:
        """The history, re-read under the lock."""
        ...

    async def apply(self, migration: Migration) -> datetime:
        """Run the migration's steps and record it in the history; return the time recorded."""
        ...


class MigrationTarget(Protocol):
    """What a driver provides to the runner."""

    @property
    def label(self) -> str:
        """Names the store in messages, e.g. ``sqlite 'tmp/data.db' table 'agent_sessions'``."""
        ...

    async def applied(self) -> list[AppliedMigration]:
        """The history without taking the lock; empty when the history table does not exist."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[MigrationTransaction]:
        """Take the lock and open a transaction; commit on normal exit, roll back on error."""
        ...


def _check_list(migrations: Sequence[Migration]) -> None:
    for position, migration in enumerate(migrations, start=1):
        if migration.version != position:
            raise MigrationError(
                f"migration list is not contiguous: position {position} holds version "
                f"{migration.version} ({migration.name})"
            )


def _verify(label: str, applied: list[AppliedMigration], migrations: Sequence[Migration]) -> int:
    """Check the history against the code; return the current version."""
    latest = len(migrations)
    versions = sorted(a.version for a in applied)
    if versions and versions[-1] > latest:
        raise MigrationError(
            f"{label}: the database schema is at version {versions[-1]}, newer than this code "
            f"knows ({latest}); upgrade async-agent-storage here rather than downgrade the schema"
        )
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(
            f"{label}: the migration history has gaps (applied versions {versions}); "
            "the schema was changed outside async-agent-storage"
        )
    for row in applied:
        expected = migrations[row.version - 1]
        if row.checksum != expected.checksum:
            raise MigrationError(
                f"{label}: migration {row.version} was applied as {row.name!r} with checksum "
                f"{row.checksum[:12]}, but this code's {expected.name!r} has "
                f"{expected.checksum[:12]}; a released migration must never change"
            )
    return len(versions)


async def upgrade(
    target: MigrationTarget, migrations: Sequence[Migration], *, dry_run: bool = False
) -> MigrationReport:
    """Bring the schema to the latest version (or report the plan with ``dry_run=True``)."""
    _check_list(migrations)
    current = _verify(target.label, await target.applied(), migrations)
    pending = list(migrations[current:])
    report = MigrationReport(
        store=target.label, dry_run=dry_run, from_version=current, to_version=current
    )
    if dry_run:
        report.pending = [m.describe() for m in pending]
        report.to_version = len(migrations)
        return report
    for migration in pending:
        async with target.transaction() as tx:
            now = _verify(target.label, await tx.applied(), migrations)
            if now >= migration.version:
                continue  # another process applied it while we waited for the lock
            try:
                applied_at = await tx.apply(migration)
            except MigrationError:
                raise
            except Exception as exc:  # the driver's own error, or one of the tree
                raise MigrationError(
                    f"{target.label}: migration {migration.version} ({migration.name}) failed and "
                    f"was rolled back: {type(exc).__name__}: {exc}"
                ) from exc
        report.applied.append(migration.describe(applied_at))
    report.to_version = len(migrations)
    return report


async def ensure_schema(
    target: MigrationTarget, migrations: Sequence[Migration], *, auto_upgrade: bool
) -> MigrationReport | None:
    """What `open()` does: create a missing schema at the latest version, upgrade an older one
    when `auto_upgrade` is set (else raise), refuse a newer one. Returns a report if it changed
    anything."""
    _check_list(migrations)
    current = _verify(target.label, await target.applied(), migrations)
    if current == len(migrations):
        return None
    if current > 0 and not auto_upgrade:
        raise MigrationError(
            f"{target.label}: the schema is at version {current} and this code needs "
            f"{len(migrations)}. Upgrade it with `await store.upgrade_schema()` (or the CLI: "
            "`async-agent-storage migrate URL`), or open the store with auto_upgrade_schema=True"
        )
    return await upgrade(target, migrations)
