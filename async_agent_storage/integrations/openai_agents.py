"""OpenAI Agents SDK sessions kept in any `SessionStore`.

```python
from agents import Agent, Runner
from async_agent_storage import open_store
from async_agent_storage.integrations.openai_agents import StoreSession

store = open_store("sqlite:///data.db", auto_upgrade_schema=True)
async with store:
    session = StoreSession("conversation_123", store, user_id="u1")
    result = await Runner.run(agent, "What is the capital of France?", session=session)
```

Each conversation item is one run of the stored session, stored and returned exactly as the SDK
gave it. `get_items(limit=N)` reads the last N runs only (the cost does not grow with the
history), `add_items` is one atomic append, `pop_item` one atomic removal: two processes serving
one conversation never lose or duplicate an item.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from agents.memory import SessionSettings

from async_agent_storage import InvalidInputError, SessionStore

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

__all__ = ["StoreSession"]


class StoreSession:
    """An ``agents.memory.Session`` backed by a `SessionStore` (SQLite, PostgreSQL, MongoDB).

    Pass it to ``Runner.run(..., session=...)``. The store must be open; one store serves any
    number of `StoreSession` objects, so make one per request. `user_id`, when given, owns the
    session: another user's `StoreSession` with the same id sees nothing and cannot write to it.
    `session_settings.limit` is the default `limit` of `get_items`.
    """

    session_id: str
    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        store: SessionStore,
        *,
        user_id: str | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError(f"session_id must be a non-empty string, not {session_id!r}")
        self.session_id = session_id
        self.user_id = user_id
        self.store = store
        if isinstance(session_settings, dict):
            session_settings = SessionSettings(**session_settings)
        self.session_settings = session_settings

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The conversation, oldest first; with `limit`, only its last `limit` items."""
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidInputError(f"limit must be None or an int >= 0, not {limit!r}")
        if limit == 0:
            return []
        session = await self.store.read(self.session_id, user_id=self.user_id, last_runs=limit)
        if session is None:
            return []
        return cast("list[TResponseInputItem]", session.runs)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append `items` to the conversation, all or none (creates the session when missing)."""
        if not items:
            return
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidInputError(
                    f"item {index} is a {type(item).__name__}; conversation items are dicts"
                )
        await self.store.append_runs(self.session_id, items, user_id=self.user_id)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the most recent item (None when the conversation is empty)."""
        popped = await self.store.pop_runs(self.session_id, 1, user_id=self.user_id)
        if not popped:
            return None
        return cast("TResponseInputItem", popped[-1])

    async def clear_session(self) -> None:
        """Remove every item; the session itself (its state and metadata) stays."""
        await self.store.clear_runs(self.session_id, user_id=self.user_id)

    def __repr__(self) -> str:
        return f"StoreSession({self.session_id!r}, user_id={self.user_id!r})"
