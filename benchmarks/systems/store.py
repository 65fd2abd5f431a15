"""The store under test, on any backend, through the public protocol only (`open_store`).

Four systems share one store's data: "store append" does the turn as `read(last_runs=N)` +
`append_runs(..., state_patch=...)`, "store upsert" as `read(last_runs=N)` + `upsert(session)`,
"store leased" as "store append" under the session's lease (`store.lease`, the append fenced
with its token): the cost of one turn at a time per session, against "store append" in the same
run; and "store sealed" as "store append" on a store with `encryption=` (every session of the
restored data encrypted first, with `rotate_keys`): the cost of encrypted payloads, where the
state patch is merged by the store (a read more per turn). On PostgreSQL, "store append" may
also reach the same data by another `Route`: reading from a replica (``--replica-url``), or
through PgBouncer (``--pgbouncer``); see docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass, field
from typing import Any

from async_agent_storage import KeyRing, Session, SessionStore, open_store
from async_agent_storage.errors import ConfigurationError

from ..workload import Picker, SeedSession, WorkloadSpec, next_state, sessions
from .base import (
    BULK,
    COLD_START,
    HISTORY,
    LIST,
    LIST_RUNS,
    SEED_CHUNK,
    TURN,
    Dataset,
    NotAvailable,
    SeedInfo,
    System,
    run_count,
)
from .places import Place

_DRIVER_MODULE = {
    "sqlite": "async_agent_storage.sqlite",
    "postgres": "async_agent_storage.postgres",
    "mongo": "async_agent_storage.mongo",
}


def to_session(seed: SeedSession) -> Session:
    return Session(**seed.session_fields())


async def append_turn(
    store: Any, picker: Picker, spec: WorkloadSpec, *, patch: bool = True
) -> None:
    """The benchmark's append turn: read the session's last runs, append the turn's new run with
    the keys of the state it changed as a merge patch applied in the database (concurrent turns
    on one session keep each other's updates); with `patch=False`, replacing the whole state
    (a store from before `state_patch`, in `benchmarks.ab_turn`)."""
    ref = picker.session()
    session = await store.read(ref.session_id, user_id=ref.user_id, last_runs=spec.last_runs)
    if session is None:
        raise LookupError(f"session {ref.session_id} not found")
    run = picker.new_run(ref)
    state = next_state(session.session_data, picker.rng)
    if patch:
        changed = {"session_state": state["session_state"]}
        await store.append_runs(ref.session_id, [run], user_id=ref.user_id, state_patch=changed)
    else:
        await store.append_runs(ref.session_id, [run], user_id=ref.user_id, session_data=state)


class StoreData:
    """The data of one store on one backend, shared by the store's two turn variants."""

    def __init__(
        self,
        backend: str,
        place: Place,
        url: str,
        table: str,
        options: dict[str, Any],
        *,
        bulk_place: Place,
        bulk_url: str,
        bulk_table: str,
        cold: Any,
    ) -> None:
        self.backend = backend
        self.place = place
        self.url = url
        self.table = table
        self.options = options
        self.bulk_place = bulk_place
        self.bulk_url = bulk_url
        self.bulk_table = bulk_table
        self.cold = cold  # (index, fresh) -> (url, table, Place to drop afterwards)
        self.seeded: dict[str, SeedInfo] = {}

    def open(self, url: str | None = None, table: str | None = None, **extra: Any) -> SessionStore:
        return open_store(
            url or self.url,
            table_name=table or self.table,
            auto_upgrade_schema=True,
            **{**self.options, **extra},
        )

    async def seed(self, dataset: Dataset) -> SeedInfo:
        if dataset.name in self.seeded:
            return self.seeded[dataset.name]
        await self.place.reset()
        t0 = time.perf_counter()
        total_sessions = total_runs = 0
        async with self.open() as store:
            chunk: list[Session] = []
            for seed in sessions(dataset.spec):
                chunk.append(to_session(seed))
                total_runs += len(seed.runs)
                if len(chunk) >= _chunk(dataset.spec):
                    await store.upsert_many(chunk)
                    total_sessions += len(chunk)
                    chunk = []
            if chunk:
                await store.upsert_many(chunk)
                total_sessions += len(chunk)
        seconds = time.perf_counter() - t0
        info = SeedInfo(total_sessions, total_runs, seconds, await self.place.size())
        await self.place.snapshot(dataset.name)
        self.seeded[dataset.name] = info
        return info


def _chunk(spec: WorkloadSpec) -> int:
    # Keep one batch to a few MB whatever the history length.
    return max(1, min(SEED_CHUNK, 2000 // max(1, spec.max_runs)))


# The benchmark's key (a fixed one: nothing it encrypts is secret).
SEALED_RING = KeyRing(current=("bench", bytes(range(32))))


@dataclass(frozen=True)
class Route:
    """Another way to the store's data: `url` instead of the data's own (a pooler in front of
    the same database), and store options (``replica_urls``, ``pooler``)."""

    label: str
    url: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class StoreSystem(System):
    kind = "store"

    def __init__(self, data: StoreData, variant: str, route: Route | None = None) -> None:
        name = f"store {variant}" if route is None else f"store {variant} {route.label}"
        super().__init__(name, data.backend)
        self.data = data
        self.variant = variant
        self.route = route
        # The bulk-load and cold-start scenarios are about the store, not a turn variant; a
        # route is about turns and listings.
        if route is not None:
            self.scenarios = frozenset({TURN, LIST, LIST_RUNS})
        elif variant == "append":
            self.scenarios = frozenset({TURN, LIST, LIST_RUNS, HISTORY, BULK, COLD_START})
        elif variant in ("leased", "sealed"):
            self.scenarios = frozenset({TURN})
        else:
            self.scenarios = frozenset({TURN, HISTORY})
        self.store: SessionStore | None = None

    def _open(self) -> SessionStore:
        if self.variant == "sealed":
            return self.data.open(encryption=SEALED_RING)
        if self.route is None:
            return self.data.open()
        return self.data.open(self.route.url, **self.route.options)

    async def check(self) -> None:
        module = _DRIVER_MODULE[self.backend]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise NotAvailable(f"{module} cannot be imported ({exc})") from exc
        try:
            store = self._open()
        except TypeError:  # a driver without pool_min_size: keep the pool's maximum only
            self.data.options.pop("pool_min_size", None)
            store = self._open()
        except ConfigurationError as exc:
            raise NotAvailable(str(exc)) from exc
        if self.backend != "sqlite":  # is the server there?
            try:
                await asyncio.wait_for(store.open(), 30)
            except Exception as exc:
                where = self.data.url if self.route is None else self.route.url or self.data.url
                raise NotAvailable(f"cannot open the store at {where}: {exc}") from exc
            finally:
                await store.close()

    def info(self) -> dict[str, Any]:
        options = (
            self.data.options if self.route is None else {**self.data.options, **self.route.options}
        )
        return {"options": options, "table": self.data.table}

    async def seed(self, dataset: Dataset) -> SeedInfo:
        return await self.data.seed(dataset)

    async def start(self, dataset: Dataset) -> None:
        await self.data.place.restore(dataset.name)
        self.store = self._open()
        await self.store.open()
        if self.variant == "sealed":  # the restored data in clear: encrypt it all first
            await self.store.rotate_keys(batch=500)

    async def stop(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()

    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        store = self.store
        assert store is not None
        if self.variant == "leased":
            await self._leased_turn(store, picker, spec)
            return
        if self.variant != "upsert":
            await append_turn(store, picker, spec)
            return
        ref = picker.session()
        session = await store.read(ref.session_id, user_id=ref.user_id, last_runs=spec.last_runs)
        if session is None:
            raise LookupError(f"session {ref.session_id} not found")
        run = picker.new_run(ref)
        session.runs.append(run)
        session.session_data = next_state(session.session_data, picker.rng)
        await store.upsert(session)

    async def _leased_turn(self, store: SessionStore, picker: Picker, spec: WorkloadSpec) -> None:
        """The append turn under the session's lease (callers that pick a session mid-turn wait
        for it): lease, read, append fenced with the lease's token, release."""
        ref = picker.session()
        async with store.lease(ref.session_id, user_id=ref.user_id, ttl=30, wait=60) as lease:
            session = await store.read(
                ref.session_id, user_id=ref.user_id, last_runs=spec.last_runs
            )
            if session is None:
                raise LookupError(f"session {ref.session_id} not found")
            run = picker.new_run(ref)
            patch = {"session_state": next_state(session.session_data, picker.rng)["session_state"]}
            await store.append_runs(
                ref.session_id, [run], user_id=ref.user_id, state_patch=patch, fence=lease.token
            )

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        store = self.store
        assert store is not None
        found = await store.get_recent_sessions(user_id=picker.user(), limit=spec.list_limit)
        if not found:
            raise LookupError("no session listed")

    async def list_with_runs(self, picker: Picker, spec: WorkloadSpec) -> None:
        store = self.store
        assert store is not None
        found = await store.get_recent_sessions(
            user_id=picker.user(), limit=spec.list_limit, include_runs=True
        )
        if not found:
            raise LookupError("no session listed")

    async def bulk_load(self, seeds: list[SeedSession], batch: int) -> float:
        await self.data.bulk_place.reset()
        try:
            async with self.data.open(self.data.bulk_url, self.data.bulk_table) as store:
                t0 = time.perf_counter()
                for i in range(0, len(seeds), batch):
                    # A load, as the raw driver's: the stored sessions are not asked back.
                    await store.upsert_many(
                        [to_session(s) for s in seeds[i : i + batch]], returning=False
                    )
                return time.perf_counter() - t0
        finally:
            await self.data.bulk_place.reset()

    async def cold_start(self, index: int, fresh: bool) -> float:
        url, table, place = self.data.cold(index)
        if fresh:
            await place.reset()
        store = self.data.open(url, table)
        t0 = time.perf_counter()
        await store.open()
        seconds = time.perf_counter() - t0
        await store.close()
        if not fresh:
            await place.drop()
        return seconds

    async def cleanup(self) -> None:
        await self.data.place.drop()
        await self.data.bulk_place.drop()


__all__ = ["Route", "StoreData", "StoreSystem", "append_turn", "run_count", "to_session"]
