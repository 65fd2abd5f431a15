"""The listing calls of `SessionStore`, the same for every driver, on two hooks each one provides.

A driver subclasses `Listing` and implements `_list_page` (the sessions of one checked
`ListQuery`, and the keyset key of the last one when a next page exists) and `_list_ids`. The
arguments are checked, the cursor made and the defaults chosen here, once.
"""

from __future__ import annotations

from datetime import datetime

from . import _common as common
from .models import Session, SessionPage

__all__ = ["Listing", "page_key"]

PageKey = tuple[int, str]  # (updated_at in microseconds, session_id) of a page's last session


def page_key(sessions: list[Session], more: bool) -> PageKey | None:
    """The key of a page's last session when more follow: for drivers that fetch one extra row."""
    if not more:
        return None
    last = sessions[-1]
    assert last.updated_at is not None
    return common.to_us(last.updated_at), last.session_id


class Listing:
    """`list_sessions`, `get_all_session_ids`, `get_all_sessions` and `get_recent_sessions`."""

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
