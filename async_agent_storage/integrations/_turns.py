"""The turn API (`append_runs` with `state_patch`/`if_version`, run-level calls) that every
`SessionStore` gains with issue 9, described as a protocol so the adapters type-check against it
before `SessionStore` itself declares it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from async_agent_storage import Session, SessionStore

__all__ = ["TurnStore"]


class TurnStore(SessionStore, Protocol):
    """A `SessionStore` with the run-level calls the adapters use."""

    async def append_runs(
        self,
        session_id: str,
        runs: Sequence[Mapping[str, Any]],
        *,
        user_id: str | None = None,
        session_data: dict[str, Any] | None = None,
        state_patch: dict[str, Any] | None = None,
        if_version: int | None = None,
    ) -> Session: ...

    async def get_run(
        self, session_id: str, run_id: str, *, user_id: str | None = None
    ) -> dict[str, Any] | None: ...

    async def pop_runs(
        self, session_id: str, n: int = 1, *, user_id: str | None = None
    ) -> list[dict[str, Any]]: ...

    async def truncate_runs(
        self, session_id: str, *, keep_last: int, user_id: str | None = None
    ) -> int: ...

    async def clear_runs(self, session_id: str, *, user_id: str | None = None) -> int: ...

    async def count_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: str | None = None,
        entity_id: str | None = None,
        updated_after: datetime | None = None,
    ) -> int: ...

    async def fork_session(
        self,
        session_id: str,
        new_session_id: str,
        *,
        at_run: str | None = None,
        user_id: str | None = None,
    ) -> Session: ...


def turns(store: SessionStore) -> TurnStore:
    """`store` seen with the turn API (every store on main has it once issue 9 lands)."""
    return store  # type: ignore[return-value]
