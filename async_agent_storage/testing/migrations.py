"""The migration conformance kit: what the migration runner promises, held on every backend.

A driver's test module subclasses `MigrationConformance` and provides four fixtures:

- `store_factory`: a callable taking store options and returning a new, unopened store; every
  store one factory makes in a test shares one empty table (collection) that the fixture removes
  after the test;
- `store_url`: ``(url, table_name, options)`` such that ``open_store(url, table_name=table_name,
  **options)`` opens that same table from another process;
- `migration_steps`: ``(harmless, failing)``: two migration steps in the backend's own language,
  the first one creating ``{table}_extra``, the second one refused by the database;
- `released_checksums`: ``{version: checksum}`` of the driver's released migrations, which are
  recorded in users' databases and must never change.

Set `FAILED_STEP_ROLLS_BACK = False` for a backend whose schema changes cannot be rolled back
(MongoDB: the failing step is still not recorded, and the migration is applied again later).

Seeding "a database at version N" uses the store's own migration list cut at N, so the kit needs
nothing but the public store and its migration target. Backend-specific checks (the data a
migration must carry over, a foreign table of the same name, the lock's own mechanics) stay in
the driver's tests.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .._migrations import AppliedMigration, Migration
from .._store import StoreBase
from ..errors import MigrationError, StoreClosedError
from ._processes import outcomes

__all__ = ["MigrationConformance", "StoreURL"]

StoreURL = tuple[str, str, dict[str, Any]]
Factory = Callable[..., StoreBase]


async def history(store: StoreBase) -> list[AppliedMigration]:
    """The history the database records for `store` (opened for the occasion if need be)."""
    async with store._migration_target() as target:
        return await target.applied()


async def seed_at(store: StoreBase, version: int) -> None:
    """Bring `store`'s empty table to schema `version`, as the release that stopped there did."""
    latest = store.migrations
    store.migrations = latest[:version]
    try:
        await store.upgrade_schema()
    finally:
        store.migrations = latest


async def record(store: StoreBase, migration: Migration) -> None:
    """Apply `migration` through the store's migration target, as other code would have."""
    async with store._migration_target() as target, target.transaction() as tx:
        await tx.apply(migration)


def _recorded(applied: list[AppliedMigration]) -> list[tuple[int, str, str]]:
    return [(a.version, a.name, a.checksum) for a in applied]


def _expected(migrations: Any) -> list[tuple[int, str, str]]:
    return [(m.version, m.name, m.checksum) for m in migrations]


def _run_openers(spec: StoreURL, tmp_path: Path, processes: int, appends: int) -> list[Any]:
    """Start `processes` processes that open the store at the same moment, append, report."""
    url, table, options = spec
    start = tmp_path / f"start-{uuid.uuid4().hex[:8]}"
    arguments = json.dumps({"url": url, "table": table, "options": options, "start": str(start)})
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "async_agent_storage.testing._opener",
                arguments,
                str(worker),
                str(appends),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker in range(processes)
    ]
    start.touch()
    finished = outcomes(procs, timeout=180)
    failures = [err for code, _, err in finished if code != 0]
    first = failures[0] if failures else ""
    assert not failures, f"{len(failures)} of {processes} processes failed; the first:\n{first}"
    return [json.loads(out) for _, out, _ in finished]


class MigrationConformance:
    """Every promise of the migration runner. Subclass it and provide the four fixtures."""

    pytestmark = pytest.mark.anyio
    FAILED_STEP_ROLLS_BACK: ClassVar[bool] = True

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    # --- creating and upgrading -----------------------------------------------------------------

    async def test_a_fresh_database_is_created_at_the_latest_version(
        self, store_factory: Factory
    ) -> None:
        async with store_factory() as store:
            latest = len(store.migrations)
            assert await store.schema_version() == latest
            assert _recorded(await history(store)) == _expected(store.migrations)
            await store.append_runs("s", [{"input": "hi"}])

    async def test_open_refuses_an_older_schema_without_auto_upgrade(
        self, store_factory: Factory
    ) -> None:
        store = store_factory()
        latest = len(store.migrations)
        for version in range(1, latest):
            seeded = store_factory()
            await seed_at(seeded, version)
            before = _recorded(await history(seeded))
            with pytest.raises(MigrationError) as info:
                await store_factory().open()
            message = str(info.value)
            assert f"version {version}" in message
            assert f"needs {latest}" in message
            assert "upgrade_schema()" in message
            assert "auto_upgrade_schema=True" in message
            assert _recorded(await history(seeded)) == before  # nothing changed
            async with store_factory(auto_upgrade_schema=True) as upgraded:
                assert await upgraded.schema_version() == latest
                await upgraded.drop()

    async def test_auto_upgrade_from_every_older_version(self, store_factory: Factory) -> None:
        latest = len(store_factory().migrations)
        for version in range(1, latest):
            await seed_at(store_factory(), version)
            async with store_factory(auto_upgrade_schema=True) as store:
                assert await store.schema_version() == latest
                assert _recorded(await history(store)) == _expected(store.migrations)
                await store.append_runs("s", [{"at": version}], user_id="u")
                read = await store.read("s", user_id="u")
                assert read is not None
                assert read.runs[-1]["at"] == version
                await store.drop()

    async def test_upgrade_schema_works_before_open_and_dry_run_changes_nothing(
        self, store_factory: Factory
    ) -> None:
        store = store_factory()
        latest = len(store.migrations)
        await seed_at(store, 1)
        assert await store.schema_version() == 1
        plan = await store.upgrade_schema(dry_run=True)
        assert plan.dry_run
        assert [s.version for s in plan.pending] == list(range(2, latest + 1))
        assert (plan.from_version, plan.to_version) == (1, latest)
        assert ("would apply" in str(plan)) == (latest > 1)
        assert len(await history(store)) == 1
        report = await store.upgrade_schema()
        assert [s.version for s in report.applied] == list(range(2, latest + 1))
        assert all(s.applied_at is not None for s in report.applied)
        again = await store.upgrade_schema()
        assert again.up_to_date
        assert "nothing to do" in str(again)
        async with store:
            await store.append_runs("s", [{"input": "hi"}])
        with pytest.raises(StoreClosedError):
            await store.upgrade_schema()
        with pytest.raises(StoreClosedError):
            await store.schema_version()

    # --- refusals -------------------------------------------------------------------------------

    async def test_a_schema_newer_than_the_code_is_refused(self, store_factory: Factory) -> None:
        async with store_factory() as store:
            latest = len(store.migrations)
            await record(store, Migration(latest + 1, "from the future", ()))
        for auto in (False, True):
            with pytest.raises(MigrationError, match="newer than this code"):
                await store_factory(auto_upgrade_schema=auto).open()
        with pytest.raises(MigrationError, match="newer than this code"):
            await store_factory().upgrade_schema()

    async def test_a_changed_checksum_is_refused(
        self, store_factory: Factory, migration_steps: tuple[str, str]
    ) -> None:
        async with store_factory():
            pass
        edited = store_factory(auto_upgrade_schema=True)
        first = edited.migrations[0]
        changed = Migration(first.version, first.name, (*first.steps, migration_steps[0]))
        edited.migrations = [changed, *edited.migrations[1:]]
        with pytest.raises(MigrationError, match="must never change") as info:
            await edited.open()
        assert "checksum" in str(info.value)

    async def test_a_gap_in_the_history_is_refused(self, store_factory: Factory) -> None:
        async with store_factory() as store:
            latest = len(store.migrations)
            await record(store, Migration(latest + 2, "after a gap", ()))
        newer = store_factory()
        newer.migrations = [
            *newer.migrations,
            Migration(latest + 1, "skipped", ()),
            Migration(latest + 2, "after a gap", ()),
        ]
        with pytest.raises(MigrationError, match="gaps"):
            await newer.open()

    async def test_a_failing_step_is_not_recorded_and_the_store_keeps_working(
        self, store_factory: Factory, migration_steps: tuple[str, str]
    ) -> None:
        harmless, failing = migration_steps
        async with store_factory() as store:
            latest = len(store.migrations)
            await store.append_runs("s", [{"input": "kept"}])
            broken = Migration(latest + 1, "half good", (harmless, failing))
            store.migrations = [*store.migrations, broken]
            with pytest.raises(MigrationError) as info:
                await store.upgrade_schema()
            assert f"migration {latest + 1} (half good) failed" in str(info.value)
            if self.FAILED_STEP_ROLLS_BACK:
                assert "rolled back" in str(info.value)
            assert await store.schema_version() == latest
            assert len(await history(store)) == latest
            appended = await store.append_runs("s", [{"input": "still works"}])
            assert appended.run_count == 2

    # --- dropping -------------------------------------------------------------------------------

    async def test_use_after_drop_is_refused_until_upgrade_schema(
        self, store_factory: Factory
    ) -> None:
        async with store_factory() as store:
            await store.append_runs("s", [{"input": "hi"}], user_id="u")
            await store.drop()
            assert await store.schema_version() == 0
            with pytest.raises(MigrationError, match="dropped"):
                await store.read("s")
            with pytest.raises(MigrationError, match="dropped"):
                await store.append_runs("s", [{"input": "again"}])
            report = await store.upgrade_schema()
            assert report.from_version == 0
            assert report.to_version == len(store.migrations)
            assert await store.read("s") is None
            await store.append_runs("s", [{"input": "new"}])
        # Another store on the same (dropped, then re-created) table sees the new schema.
        async with store_factory() as other:
            assert await other.get_all_session_ids() == ["s"]

    # --- concurrency ----------------------------------------------------------------------------

    async def test_stores_in_one_process_upgrading_at_once_take_turns(
        self, store_factory: Factory
    ) -> None:
        await seed_at(store_factory(), 1)
        stores = [store_factory(auto_upgrade_schema=True) for _ in range(4)]
        try:
            await asyncio.gather(*(s.open() for s in stores))
            assert _recorded(await history(stores[0])) == _expected(stores[0].migrations)
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    @pytest.mark.slow
    async def test_eight_processes_opening_a_fresh_database_at_once(
        self, store_factory: Factory, store_url: StoreURL, tmp_path: Path
    ) -> None:
        reports = await asyncio.to_thread(_run_openers, store_url, tmp_path, 8, 5)
        store = store_factory()
        latest = len(store.migrations)
        assert sorted(r["worker"] for r in reports) == list(range(8))
        assert all(r["version"] == latest for r in reports)
        async with store:
            assert _recorded(await history(store)) == _expected(store.migrations)
            shared = await store.read("shared")
            assert shared is not None
            assert len(shared.runs) == 40  # 8 processes x 5 appends, none lost
            assert shared.version == 40
            assert len(await store.get_all_session_ids(user_id="u")) == 9

    @pytest.mark.slow
    async def test_eight_processes_upgrading_from_version_1_at_once(
        self, store_factory: Factory, store_url: StoreURL, tmp_path: Path
    ) -> None:
        await seed_at(store_factory(), 1)
        reports = await asyncio.to_thread(_run_openers, store_url, tmp_path, 8, 1)
        store = store_factory()
        assert all(r["version"] == len(store.migrations) for r in reports)
        async with store:
            assert _recorded(await history(store)) == _expected(store.migrations)
            assert len(await store.get_all_session_ids(user_id="u")) == 9

    # --- the list itself ------------------------------------------------------------------------

    async def test_the_migration_list_is_append_only(
        self, store_factory: Factory, released_checksums: Mapping[int, str]
    ) -> None:
        # The checksums of released migrations are recorded in users' databases: changing one
        # makes every existing database refuse to open. Add a new migration instead.
        migrations = store_factory().migrations
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
        assert len(migrations) >= len(released_checksums)
        assert {m.version: m.checksum for m in migrations[: len(released_checksums)]} == dict(
            released_checksums
        )
