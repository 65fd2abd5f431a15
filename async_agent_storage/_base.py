"""What every driver shares above its own I/O: `async with`, the warning for a store never
closed, and the listing calls.

A driver subclasses `StoreBase` and provides `open()`, `close()`, a `_state`, and two listing
hooks: `_list_page` (the sessions of one checked `ListQuery`, and the keyset key of the last one
when a next page exists) and `_list_ids`. Listing arguments are checked, cursors made and
defaults chosen here, once.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from types import TracebackType
from typing import Self

from . import _common as common
from .models import Session, SessionPage

__all__ = ["StoreBase", "page_key"]

PageKey = tuple[int, str]  # (updated_at in microseconds, session_id) of a page's last session


def page_key(sessions: list[Session], more: bool) -> PageKey | None:
    """The key of a page's last session when more follow: for drivers that fetch one extra row."""
    if not more:
        return None
    last = sessions[-1]
    assert last.updated_at is not None
    return common.to_us(last.updated_at), last.session_id


class StoreBase:
    """The parts of a store that do not depend on its database."""

    _state: common.StoreState = common.StoreState.NEW

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is common.StoreState.OPEN:
            warnings.warn(
                f"{self!r} was never closed; use `async with store:` or `await store.close()`",
                ResourceWarning,
                stacklevel=1,
            )

    # --- listing: `list_sessions`, `get_all_session_ids`, `get_all_sessions`,
    # `get_recent_sessions` on the driver's two hooks

    async def _list_page(self, query: common.ListQuery) -> tuple[list[Session], PageKey | None]:
        """The sessions matching `query` (at most `query.limit`), newest first, and the key of the
        last one when more follow (None otherwise)."""
        raise NotImplementedError

    async def _list_ids(self, query: common.ListQuery) -> list[str]:
        """The ids of every session matching `query`, newest first."""
        raise NotImplementedError

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
        """One page of sessions, newest first (`updated_at`, then `session_id`, descending).
        Pass `next_cursor` back with the same filters for the next page; pages do not shift when
        sessions are written between calls. Runs are loaded only with `include_runs`."""
        query = common.list_query(
            user_id=user_id,
            session_type=session_type,
            entity_id=entity_id,
            updated_after=updated_after,
            limit=limit,
            cursor=cursor,
            include_runs=include_runs,
        )
        sessions, last = await self._list_page(query)
        next_cursor = None if last is None else query.cursor_after(*last)
        return SessionPage(items=sessions, next_cursor=next_cursor)

    async def get_all_session_ids(
        self, *, user_id: str | None = None, entity_id: str | None = None
    ) -> list[str]:
        """Ids of the matching sessions, most recently updated first."""
        return await self._list_ids(common.list_query(user_id=user_id, entity_id=entity_id))

    async def get_all_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        include_runs: bool = False,
    ) -> list[Session]:
        """The matching sessions, most recently updated first; runs only with `include_runs`."""
        query = common.list_query(user_id=user_id, entity_id=entity_id, include_runs=include_runs)
        sessions, _ = await self._list_page(query)
        return sessions

    async def get_recent_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        limit: int = 2,
        include_runs: bool = False,
    ) -> list[Session]:
        """The `limit` most recently updated matching sessions."""
        query = common.list_query(
            user_id=user_id, entity_id=entity_id, limit=limit, include_runs=include_runs
        )
        sessions, _ = await self._list_page(query)
        return sessions
