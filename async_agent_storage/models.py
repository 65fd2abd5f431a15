"""The data model: `Session` (Agno 2.x's session row), `SessionPage`, `MigrationReport`, and
`Activity` (what `activity()` counts)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInputError

__all__ = [
    "MAX_IDENTIFIER_LENGTH",
    "Activity",
    "ActivityBucket",
    "EntityActivity",
    "Erasure",
    "MigrationReport",
    "MigrationStep",
    "Session",
    "SessionPage",
    "SessionType",
    "SessionValidationError",
    "StoreUsage",
    "TurnCount",
    "trusted_session",
]

MAX_IDENTIFIER_LENGTH = 255
SessionType = Literal["agent", "team", "workflow"]
ActivityBucket = Literal["hour", "day"]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("identifiers cannot contain NUL (\\x00)")
    return value


Identifier = Annotated[
    str, Field(min_length=1, max_length=MAX_IDENTIFIER_LENGTH), AfterValidator(_no_nul)
]


class SessionValidationError(InvalidInputError):
    """A `Session` was built with invalid values. `errors()` lists them as pydantic does; the
    pydantic `ValidationError` is the `__cause__`."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(str(error))
        self._error = error

    def errors(self) -> list[Any]:
        return list(self._error.errors())


class Session(BaseModel):
    """One agent, team or workflow session: its history (`runs`), its state and its metadata.

    Build one with the ids you know (`Session(session_id=..., user_id=...)`); the store sets
    `created_at`, `updated_at` and `version` when it writes it. State lives in `session_data`
    (Agno keeps it under ``session_data["session_state"]``).

    A session read with `read(..., last_runs=N)` or listed without runs holds only the tail of
    its history: `runs_offset` is the position of ``runs[0]`` in the whole history. Writing such
    a session back with `upsert` replaces only that tail and keeps the older runs. `runs_offset`
    is a field like the others, so it survives `model_dump()` and JSON round trips (through a web
    API, say) and a later `upsert` never truncates the history by accident.

    Runs come back exactly as they were written. Each has an id, kept beside it in `run_ids`: the
    run's own ``run_id`` key when it has one, else the id the store assigned when it wrote it.

    Invalid values raise `SessionValidationError`, which is both pydantic's kind of error report
    (`.errors()`) and an `InvalidInputError` (so also a `ValueError`).
    """

    model_config = ConfigDict(extra="forbid")

    if not TYPE_CHECKING:  # type checkers keep pydantic's signature, with every field typed

        def __init__(self, /, **data: Any) -> None:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise SessionValidationError(exc) from exc

    session_id: Identifier
    session_type: SessionType = "agent"
    user_id: Identifier | None = None
    agent_id: Identifier | None = None
    team_id: Identifier | None = None
    workflow_id: Identifier | None = None
    session_data: dict[str, Any] = Field(default_factory=dict)
    agent_data: dict[str, Any] | None = None
    team_data: dict[str, Any] | None = None
    workflow_data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = Field(default_factory=list)
    summary: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = Field(default=0, ge=0)
    runs_offset: int = Field(default=0, ge=0)
    """Position of ``runs[0]`` in the session's whole history (0 when `runs` is all of it)."""
    run_ids: list[Identifier] = Field(default_factory=list)
    """The ids of `runs`, in order, as stored (empty on a session not written yet). `upsert`
    keeps them for the runs without a ``run_id`` key while they can line up with `runs`: runs
    added at the end get new ids; when runs were removed (fewer runs than ids), every run without
    a ``run_id`` key gets a new id."""

    @property
    def run_count(self) -> int:
        """Number of runs in the whole history, including those not loaded."""
        return self.runs_offset + len(self.runs)


_SESSION_FIELDS = frozenset(Session.model_fields)


def trusted_session(
    *,
    session_id: str,
    session_type: str,
    user_id: str | None,
    agent_id: str | None,
    team_id: str | None,
    workflow_id: str | None,
    session_data: dict[str, Any],
    agent_data: dict[str, Any] | None,
    team_data: dict[str, Any] | None,
    workflow_data: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    summary: dict[str, Any] | None,
    runs: list[dict[str, Any]],
    runs_offset: int,
    created_at: datetime,
    updated_at: datetime,
    version: int,
    run_ids: list[str],
) -> Session:
    """A `Session` from trusted, decoded stored values, without validation: the drivers' hot path.

    It does what `Session.model_construct` does (4x faster, for this one model): fill the
    instance's documented pydantic slots directly. `tests/test_models.py` checks it against
    `model_construct`, so a pydantic upgrade that changes them fails loudly.
    """
    session = Session.__new__(Session)
    object.__setattr__(
        session,
        "__dict__",
        {
            "session_id": session_id,
            "session_type": session_type,
            "user_id": user_id,
            "agent_id": agent_id,
            "team_id": team_id,
            "workflow_id": workflow_id,
            "session_data": session_data,
            "agent_data": agent_data,
            "team_data": team_data,
            "workflow_data": workflow_data,
            "metadata": metadata,
            "runs": runs,
            "summary": summary,
            "created_at": created_at,
            "updated_at": updated_at,
            "version": version,
            "runs_offset": runs_offset,
            "run_ids": run_ids,
        },
    )
    object.__setattr__(session, "__pydantic_fields_set__", set(_SESSION_FIELDS))
    object.__setattr__(session, "__pydantic_extra__", None)
    object.__setattr__(session, "__pydantic_private__", None)
    return session


class StoreUsage(BaseModel):
    """What a store holds (`store.usage()`): sessions, runs, and the bytes each of its tables or
    collections takes with its indexes (empty when the database cannot tell). The counts are of
    what is stored: expired sessions count until `purge_expired` removes them."""

    sessions: int
    runs: int
    bytes: dict[str, int] = Field(default_factory=dict)

    @property
    def total_bytes(self) -> int | None:
        return sum(self.bytes.values()) if self.bytes else None


class SessionPage(BaseModel):
    """One page of `list_sessions`; pass `next_cursor` back for the next page (None: the end)."""

    items: list[Session]
    next_cursor: str | None = None


class MigrationStep(BaseModel):
    """One migration: applied (with `applied_at`) or pending."""

    version: int
    name: str
    checksum: str
    applied_at: datetime | None = None


class MigrationReport(BaseModel):
    """What `upgrade_schema()` did, or with ``dry_run=True`` what it would do."""

    store: str
    dry_run: bool
    from_version: int
    to_version: int
    applied: list[MigrationStep] = Field(default_factory=list)
    pending: list[MigrationStep] = Field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        """True when there was nothing to do."""
        return not self.applied and not self.pending

    def __str__(self) -> str:
        if self.up_to_date:
            return f"{self.store}: schema at version {self.to_version}, nothing to do"
        steps = self.pending if self.dry_run else self.applied
        names = ", ".join(f"{s.version} ({s.name})" for s in steps)
        verb = "would apply" if self.dry_run else "applied"
        return (
            f"{self.store}: {verb} {len(steps)} migration(s) {names}: "
            f"version {self.from_version} -> {self.to_version}"
        )


class Erasure(BaseModel):
    """What `delete_user` removed: the user's sessions and their runs (0 and 0 when nothing of
    the user was left, e.g. on a re-run)."""

    user_id: str
    sessions: int
    runs: int


class EntityActivity(BaseModel):
    """The sessions of one agent, team or workflow (`entity_id`: the session's `agent_id`, else
    its `team_id`, else its `workflow_id`; None for sessions with none of them)."""

    entity_id: str | None
    sessions: int
    runs: int


class TurnCount(BaseModel):
    """Runs written by one entity's sessions in one time bucket (`start` .. `start` + bucket)."""

    entity_id: str | None
    start: datetime
    runs: int


class Activity(BaseModel):
    """What `activity()` counted, in the database.

    `sessions` and `runs` are the store's totals when it answered (of one user with `user_id`),
    `entities` the same per agent, team or workflow, most sessions first. `active_last_*` count
    the sessions whose `updated_at` falls in the hour, day or week up to `now`. `turns` counts
    the runs written in each bucket from `since` to `now`, per entity (buckets with no runs are
    left out; `buckets` lists every bucket's start, oldest first). A run's time is when the write
    that stored it ran (a forked session's runs keep their source's); runs stored before
    the store recorded that (schema upgrades from older versions) have none and are only in
    the totals.
    """

    now: datetime
    since: datetime
    bucket: ActivityBucket
    sessions: int
    runs: int
    active_last_hour: int
    active_last_day: int
    active_last_week: int
    entities: list[EntityActivity] = Field(default_factory=list)
    buckets: list[datetime] = Field(default_factory=list)
    turns: list[TurnCount] = Field(default_factory=list)
