"""A system under test is a small adapter: seed a dataset once, start a cell from that seed, run
the scenarios' operations, stop. The suite drives every system through this interface only."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ..workload import Picker, SeedSession, WorkloadSpec

POOL_SIZE: Final = 20  # every pooled system, store, raw driver and peers alike
SEED_CHUNK: Final = 200  # sessions per bulk write while seeding

TURN: Final = "turn"
LIST: Final = "list"
LIST_RUNS: Final = "list_runs"
HISTORY: Final = "history"
COLD_START: Final = "cold_start"
BULK: Final = "bulk_load"
SCENARIOS: Final = (TURN, LIST, LIST_RUNS, HISTORY, COLD_START, BULK)
LOAD_SCENARIOS: Final = (TURN, LIST, LIST_RUNS)  # run at every concurrency


@dataclass(frozen=True)
class Dataset:
    """A named workload: the main one, or one of the history-length ones."""

    name: str
    spec: WorkloadSpec


@dataclass
class SeedInfo:
    sessions: int
    runs: int
    seconds: float
    bytes_stored: int | None

    @property
    def bytes_per_session(self) -> float | None:
        return None if self.bytes_stored is None else self.bytes_stored / max(1, self.sessions)


class NotAvailable(Exception):
    """The system cannot run here (driver not installed, server not reachable)."""


class System(abc.ABC):
    """One system under test on one backend."""

    kind: ClassVar[str] = "raw"  # "store", "raw" or "peer"
    scenarios: frozenset[str] = frozenset({TURN, LIST, LIST_RUNS, HISTORY, BULK})

    def __init__(self, name: str, backend: str) -> None:
        self.name = name
        self.backend = backend

    async def check(self) -> None:  # noqa: B027 - most systems need no check
        """Raise `NotAvailable` with the reason when the system cannot run."""

    def info(self) -> dict[str, Any]:
        """What the results file records about the system (driver versions, pool settings)."""
        return {}

    @abc.abstractmethod
    async def seed(self, dataset: Dataset) -> SeedInfo:
        """Load the dataset and keep a snapshot of it; called once per dataset."""

    @abc.abstractmethod
    async def start(self, dataset: Dataset) -> None:
        """Restore the dataset's snapshot and connect: every cell starts from the same data."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Disconnect after a cell."""

    @abc.abstractmethod
    async def turn(self, picker: Picker, spec: WorkloadSpec) -> None:
        """One agent turn: load the session with its last runs, append a run, save the state."""

    async def list_recent(self, picker: Picker, spec: WorkloadSpec) -> None:
        """A user's most recent sessions, without run payloads where the system can do that."""
        raise NotImplementedError

    async def list_with_runs(self, picker: Picker, spec: WorkloadSpec) -> None:
        """A user's most recent sessions with all their runs (what an export or a dashboard's
        conversation list loads). A system that always loads whole rows does what it does for
        `list_recent`."""
        await self.list_recent(picker, spec)

    async def bulk_load(self, sessions: list[SeedSession], batch: int) -> float:
        """Write these new sessions into an empty table, `batch` at a time, through the system's
        bulk path; returns the seconds the writes took."""
        raise NotImplementedError

    async def cold_start(self, index: int, fresh: bool) -> float:
        """Seconds for `open()` (auto upgrade on) of a fresh or an up-to-date database."""
        raise NotImplementedError

    async def cleanup(self) -> None:  # noqa: B027 - not every system leaves anything
        """Remove what the system created (tables, files, snapshots)."""


def run_count(sessions: list[SeedSession]) -> int:
    return sum(len(s.runs) for s in sessions)
