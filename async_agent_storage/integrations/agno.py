"""Agno 3.x sessions kept in any `SessionStore`: an Agno ``AsyncBaseDb`` for ``Agent(db=...)``.

```python
from agno.agent import Agent
from async_agent_storage import open_store
from async_agent_storage.integrations.agno import AgnoStoreDb

store = open_store("postgresql://ai:ai@localhost:5532/ai", auto_upgrade_schema=True)
async with store:
    agent = Agent(model=..., db=AgnoStoreDb(store), add_history_to_context=True)
    await agent.arun("What is the capital of France?", session_id="s1", user_id="u1")
```

The session domain (`get_session`, `upsert_session`, `get_sessions`, `rename_session`,
`delete_session(s)`, `upsert_run`, the schema version) lives in the store: Agno's
`AgentSession`, `TeamSession` and `WorkflowSession` map onto `Session` field for field, and each
of their runs is one stored run (``run.to_dict()``, keyed by its ``run_id``). A turn appends its
run; it never rewrites the history.

The store has no model for Agno's other domains (memories, metrics, knowledge, evals, traces,
learnings, approvals, ...): pass ``other_db=`` (any Agno ``AsyncBaseDb``, e.g. ``AsyncPostgresDb``)
and they go there; without it, the abstract ones raise `AgnoDomainNotStoredError`.
"""

from __future__ import annotations

import abc
import importlib.metadata
import inspect
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeAlias, cast

from agno.db.base import AsyncBaseDb, SessionType
from agno.session import AgentSession, TeamSession, WorkflowSession

from async_agent_storage import (
    ConfigurationError,
    InvalidInputError,
    Session,
    SessionConflictError,
    SessionStore,
)

__all__ = ["AgnoDomainNotStoredError", "AgnoStoreDb"]

AgnoSession: TypeAlias = AgentSession | TeamSession | WorkflowSession

# How often a write that lost a race with another writer of the same session is tried again.
_RETRIES = 8

# Agno 3.x writes each run with `upsert_run` after `upsert_session`; Agno 2.x only calls
# `upsert_session`, with the whole history in `session.runs`.
_AGNO_WRITES_RUNS = int(importlib.metadata.version("agno").split(".")[0]) >= 3

# How many of the stored runs `upsert_session` compares with the session's (Agno 2.x).
_TAIL = 8

_SORT_FIELDS = ("created_at", "updated_at", "session_id")


class AgnoDomainNotStoredError(ConfigurationError, NotImplementedError):
    """An Agno call outside the session domain, with no ``other_db`` to send it to.

    Also a `NotImplementedError`, which is what Agno expects from a db that lacks a feature.
    """


def _type_of(session: AgnoSession) -> str:
    if isinstance(session, AgentSession):
        return "agent"
    if isinstance(session, TeamSession):
        return "team"
    if isinstance(session, WorkflowSession):
        return "workflow"
    raise InvalidInputError(
        "expected an Agno AgentSession, TeamSession or WorkflowSession, "
        f"not {type(session).__name__}"
    )


def _run_dict(run: Any) -> dict[str, Any]:
    if isinstance(run, dict):
        return run
    data = run.to_dict()
    if not isinstance(data, dict):
        raise InvalidInputError(f"{type(run).__name__}.to_dict() did not return a dict")
    return data


def _epoch(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _session_name(session: Session) -> str | None:
    name = (session.session_data or {}).get("session_name")
    return name if isinstance(name, str) else None


def to_store_session(session: AgnoSession, *, include_runs: bool = True) -> Session:
    """The `Session` holding an Agno session (its runs as ``run.to_dict()``)."""
    session_type = _type_of(session)
    # Read the dataclass's fields (Agno 2.x's `to_dict` has no `include_runs` and would encode
    # every run just to drop them).
    summary = getattr(session, "summary", None)
    if summary is not None and not isinstance(summary, dict):
        summary = summary.to_dict()
    return Session(
        session_id=session.session_id,
        session_type=session_type,  # type: ignore[arg-type]
        user_id=getattr(session, "user_id", None),
        agent_id=getattr(session, "agent_id", None),
        team_id=getattr(session, "team_id", None),
        workflow_id=getattr(session, "workflow_id", None),
        session_data=getattr(session, "session_data", None) or {},
        agent_data=getattr(session, "agent_data", None),
        team_data=getattr(session, "team_data", None),
        workflow_data=getattr(session, "workflow_data", None),
        metadata=getattr(session, "metadata", None),
        summary=summary,
        runs=[_run_dict(run) for run in (session.runs or [])] if include_runs else [],
    )


def to_agno_dict(session: Session) -> dict[str, Any]:
    """An Agno session row as a dict (what Agno's dbs return with ``deserialize=False``)."""
    data: dict[str, Any] = {
        "session_id": session.session_id,
        "session_type": session.session_type,
        "user_id": session.user_id,
        "agent_id": session.agent_id,
        "team_id": session.team_id,
        "workflow_id": session.workflow_id,
        "session_data": session.session_data,
        "metadata": session.metadata,
        "summary": session.summary,
        "runs": session.runs,
        "created_at": _epoch(session.created_at),
        "updated_at": _epoch(session.updated_at),
    }
    for field in ("agent_data", "team_data", "workflow_data"):
        data[field] = getattr(session, field)
    return data


def to_agno_session(session: Session) -> AgnoSession:
    """The Agno `AgentSession`, `TeamSession` or `WorkflowSession` a `Session` holds."""
    data = to_agno_dict(session)
    factory: Any = {"agent": AgentSession, "team": TeamSession, "workflow": WorkflowSession}[
        session.session_type
    ]
    result = factory.from_dict(data)
    if result is None:
        raise InvalidInputError(f"session {session.session_id!r} is not a valid Agno session")
    return cast(AgnoSession, result)


def _type_value(session_type: Any) -> str | None:
    if session_type is None:
        return None
    value = getattr(session_type, "value", session_type)
    if value not in ("agent", "team", "workflow"):
        raise InvalidInputError(f"session_type must be agent, team or workflow, not {value!r}")
    return str(value)


class AgnoStoreDb(AsyncBaseDb):
    """An Agno ``AsyncBaseDb`` whose sessions and runs live in a `SessionStore`.

    `store` must be open while Agno uses this db (open it in your app's lifespan). Use Agno's async
    calls (``agent.arun``, ``team.arun``): Agno refuses sync runs on an async db. `other_db` takes
    the domains the store does not model (memories, metrics, knowledge, evals, traces, ...).
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        other_db: AsyncBaseDb | None = None,
        id: str | None = None,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ConfigurationError(f"store must be a SessionStore, not {type(store).__name__}")
        if other_db is not None and not isinstance(other_db, AsyncBaseDb):
            raise ConfigurationError(
                f"other_db must be an Agno AsyncBaseDb (e.g. AsyncSqliteDb, AsyncPostgresDb), "
                f"not {type(other_db).__name__}"
            )
        super().__init__(id=id)
        self.store = store
        self.other_db = other_db

    # --- schema -------------------------------------------------------------------------------

    async def table_exists(self, table_name: str) -> bool:
        """The session and runs tables are the store's; other tables are `other_db`'s."""
        if table_name in (self.session_table_name, self.runs_table_name):
            return True
        if self.other_db is not None:
            return bool(await self.other_db.table_exists(table_name))
        return False

    async def get_latest_schema_version(self, table_name: str) -> str:
        """The store's schema version (its migrations are its own)."""
        if table_name in (self.session_table_name, self.runs_table_name) or self.other_db is None:
            return str(await self.store.schema_version())
        return str(await self.other_db.get_latest_schema_version(table_name))

    async def upsert_schema_version(self, table_name: str, version: str) -> None:
        """Nothing to record for the store's tables: `upgrade_schema()` keeps its own history."""
        own = table_name in (self.session_table_name, self.runs_table_name)
        if not own and self.other_db is not None:
            await self.other_db.upsert_schema_version(table_name, version)

    async def _create_all_tables(self) -> None:
        """What AgentOS calls at start-up: creates `other_db`'s tables (the store's own schema is
        made by `open()`/`upgrade_schema()`)."""
        if self.other_db is not None:
            await self.other_db._create_all_tables()

    async def close(self) -> None:
        """Closes `other_db` when given; the store is closed by whoever opened it."""
        if self.other_db is not None:
            await self.other_db.close()

    # --- sessions -----------------------------------------------------------------------------

    async def get_session(
        self,
        session_id: str,
        session_type: SessionType | None = None,
        user_id: str | None = None,
        deserialize: bool | None = True,
        runs_limit: int | None = None,
    ) -> AgnoSession | dict[str, Any] | None:
        """The session (None when absent, of another type, or another user's). `runs_limit`
        loads only the last N runs, at a cost that does not grow with the history."""
        wanted = _type_value(session_type)
        stored = await self.store.read(session_id, user_id=user_id, last_runs=runs_limit)
        if stored is None or (wanted is not None and stored.session_type != wanted):
            return None
        return to_agno_session(stored) if deserialize else to_agno_dict(stored)

    async def upsert_session(
        self, session: AgnoSession, deserialize: bool | None = True
    ) -> AgnoSession | dict[str, Any] | None:
        """Write the session's row (ids, state, metadata, summary, component data).

        Its runs are written by `upsert_run`, one at a time, so a turn never rewrites the
        history; a session written for the first time is stored with the runs it holds.
        """
        row = to_store_session(session, include_runs=False)
        if not _AGNO_WRITES_RUNS and session.runs:
            await self._append_new_runs(row.session_id, row.user_id, session.runs)
        for _ in range(_RETRIES):
            stored = await self.store.read(row.session_id, user_id=row.user_id, last_runs=0)
            try:
                if stored is None:
                    created = row.model_copy(
                        update={"runs": [_run_dict(r) for r in (session.runs or [])]}
                    )
                    written = await self.store.upsert(created, if_version=0)
                else:
                    # `stored` holds no runs (last_runs=0): writing it back keeps the history.
                    changed = stored.model_copy(
                        update={
                            field: getattr(row, field)
                            for field in (
                                "agent_id",
                                "team_id",
                                "workflow_id",
                                "session_data",
                                "agent_data",
                                "team_data",
                                "workflow_data",
                                "metadata",
                                "summary",
                            )
                        }
                    )
                    written = await self.store.upsert(changed, if_version=stored.version)
            except SessionConflictError:
                continue
            result = to_agno_dict(written)
            result["runs"] = [_run_dict(r) for r in (session.runs or [])]
            if not deserialize:
                return result
            agno_session = to_agno_session(written)
            agno_session.runs = session.runs
            return agno_session
        raise SessionConflictError(
            f"upsert_session({row.session_id!r}): the session changed under {_RETRIES} attempts "
            "in a row; retry later",
            session_id=row.session_id,
            expected=-1,
            actual=-1,
        )

    async def _append_new_runs(self, session_id: str, user_id: str | None, runs: Any) -> None:
        """Append the runs of `runs` that follow the last one already stored (Agno 2.x hands
        the whole history to every `upsert_session`). Appends are exactly-once by run id."""
        tail = await self.store.read(session_id, user_id=user_id, last_runs=_TAIL)
        if tail is None:
            return  # created below, with its runs
        data = [_run_dict(r) for r in runs]
        known = {r.get("run_id") for r in tail.runs}
        last_known = max((i for i, r in enumerate(data) if r.get("run_id") in known), default=-1)
        if last_known < 0 and tail.runs:
            full = await self.store.read(session_id, user_id=user_id)
            known = {r.get("run_id") for r in (full.runs if full else [])}
            new = [r for r in data if r.get("run_id") not in known]
        else:
            new = data[last_known + 1 :]
        if new:
            await self.store.append_runs(session_id, new, user_id=user_id)

    async def upsert_sessions(
        self,
        sessions: list[AgnoSession],
        deserialize: bool | None = True,
        preserve_updated_at: bool = False,
    ) -> list[AgnoSession | dict[str, Any]]:
        """`upsert_session` for each (the store sets `updated_at`)."""
        results = []
        for session in sessions:
            written = await self.upsert_session(session, deserialize=deserialize)
            if written is not None:
                results.append(written)
        return results

    async def get_sessions(
        self,
        session_type: SessionType | None = None,
        user_id: str | None = None,
        component_id: str | None = None,
        session_name: str | None = None,
        start_timestamp: int | None = None,
        end_timestamp: int | None = None,
        limit: int | None = None,
        page: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        deserialize: bool | None = True,
        include_runs: bool = True,
    ) -> list[AgnoSession] | tuple[list[dict[str, Any]], int]:
        """Sessions matching the filters, with Agno's paging (``limit``, 1-based ``page``) and
        sorting (``created_at``, ``updated_at`` or ``session_id``; ``asc`` or ``desc``, default
        ``updated_at`` descending). With ``deserialize=False``: ``(rows, total count)``.

        Filters on user, type, component and the default order are the store's keyset listing;
        a name or creation-time filter or another order reads the matching sessions (without
        runs) and sorts them here.
        """
        if page is not None and limit is None:
            raise InvalidInputError("page needs limit (pages are limit sessions long)")
        if page is not None and page < 1:
            raise InvalidInputError(f"page starts at 1, not {page}")
        if limit is not None and limit < 1:
            raise InvalidInputError(f"limit must be >= 1, not {limit}")
        if sort_by is not None and sort_by not in _SORT_FIELDS:
            raise InvalidInputError(f"sort_by must be one of {_SORT_FIELDS}, not {sort_by!r}")
        if sort_order not in (None, "asc", "desc"):
            raise InvalidInputError(f"sort_order must be 'asc' or 'desc', not {sort_order!r}")
        wanted = _type_value(session_type)
        skip = (page - 1) * limit if page is not None and limit is not None else 0
        store_order = sort_by in (None, "updated_at") and sort_order in (None, "desc")
        filtered_here = session_name is not None or (
            start_timestamp is not None or end_timestamp is not None
        )

        if store_order and not filtered_here:
            items = await self._list(
                user_id, wanted, component_id, include_runs, skip=skip, take=limit
            )
            total = await self.store.count_sessions(
                user_id=user_id, session_type=wanted, entity_id=component_id
            )
        else:
            everything = await self._list(user_id, wanted, component_id, False, skip=0, take=None)
            everything = [
                s
                for s in everything
                if (session_name is None or session_name in (_session_name(s) or ""))
                and (start_timestamp is None or (_epoch(s.created_at) or 0) >= start_timestamp)
                and (end_timestamp is None or (_epoch(s.created_at) or 0) <= end_timestamp)
            ]
            key_field = sort_by or "updated_at"

            def key(s: Session) -> tuple[Any, str]:
                value = getattr(s, key_field)
                return (value, s.session_id)

            everything.sort(key=key, reverse=sort_order != "asc")
            total = len(everything)
            items = everything[skip : skip + limit if limit is not None else None]
            if include_runs and items:
                full = [await self.store.read(s.session_id, user_id=s.user_id) for s in items]
                items = [s for s in full if s is not None]
        if deserialize:
            return [to_agno_session(s) for s in items]
        return [to_agno_dict(s) for s in items], total

    async def _list(
        self,
        user_id: str | None,
        session_type: str | None,
        entity_id: str | None,
        include_runs: bool,
        *,
        skip: int,
        take: int | None,
    ) -> list[Session]:
        """Sessions from the store's keyset listing, most recently updated first."""
        found: list[Session] = []
        cursor: str | None = None
        while True:
            want = None if take is None else skip + take - len(found)
            page = await self.store.list_sessions(
                user_id=user_id,
                session_type=session_type,
                entity_id=entity_id,
                limit=min(max(want or 100, 1), 500),
                cursor=cursor,
                include_runs=include_runs,
            )
            found.extend(page.items)
            cursor = page.next_cursor
            if cursor is None or (take is not None and len(found) >= skip + take):
                break
        return found[skip : None if take is None else skip + take]

    async def rename_session(
        self,
        session_id: str,
        session_type: SessionType | None,
        session_name: str,
        user_id: str | None = None,
        deserialize: bool | None = True,
    ) -> AgnoSession | dict[str, Any] | None:
        """Set ``session_data["session_name"]``; None when the session is absent (or of
        another type, or another user's). Returns the session without its runs."""
        if not isinstance(session_name, str):
            raise InvalidInputError(f"session_name must be a string, not {session_name!r}")
        wanted = _type_value(session_type)
        for _ in range(_RETRIES):
            stored = await self.store.read(session_id, user_id=user_id, last_runs=0)
            if stored is None or (wanted is not None and stored.session_type != wanted):
                return None
            renamed = stored.model_copy(
                update={"session_data": {**stored.session_data, "session_name": session_name}}
            )
            try:
                written = await self.store.upsert(renamed, if_version=stored.version)
            except SessionConflictError:
                continue
            return to_agno_session(written) if deserialize else to_agno_dict(written)
        raise SessionConflictError(
            f"rename_session({session_id!r}): the session changed under {_RETRIES} attempts",
            session_id=session_id,
            expected=-1,
            actual=-1,
        )

    async def delete_session(self, session_id: str, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when absent or another user's."""
        return await self.store.delete_session(session_id, user_id=user_id)

    async def delete_sessions(self, session_ids: list[str], user_id: str | None = None) -> None:
        """Delete each session (another user's are left alone)."""
        for session_id in session_ids:
            await self.store.delete_session(session_id, user_id=user_id)

    # --- runs ---------------------------------------------------------------------------------

    async def upsert_run(
        self,
        run: Any,
        session_id: str,
        user_id: str | None = None,
        run_index: int | None = None,
    ) -> None:
        """Append the run to its session, or replace the stored run with the same ``run_id``
        (a status change: paused, continued, cancelled). Appending is one atomic call, safe to
        retry; a replacement rewrites the session under a version check."""
        data = _run_dict(run)
        run_id = data.get("run_id")
        store = self.store
        if isinstance(run_id, str) and run_id:
            existing = await store.get_run(session_id, run_id, user_id=user_id)
            if existing is not None:
                if existing != data:
                    await self._replace_run(session_id, run_id, data, user_id)
                return
        await store.append_runs(session_id, [data], user_id=user_id)

    async def _replace_run(
        self, session_id: str, run_id: str, data: dict[str, Any], user_id: str | None
    ) -> None:
        for _ in range(_RETRIES):
            stored = await self.store.read(session_id, user_id=user_id)
            if stored is None:
                await self.store.append_runs(session_id, [data], user_id=user_id)
                return
            runs = [data if r.get("run_id") == run_id else r for r in stored.runs]
            if runs == stored.runs:
                runs.append(data)
            try:
                await self.store.upsert(
                    stored.model_copy(update={"runs": runs}), if_version=stored.version
                )
            except SessionConflictError:
                continue
            return
        raise SessionConflictError(
            f"upsert_run({run_id!r}): session {session_id!r} changed under {_RETRIES} attempts",
            session_id=session_id,
            expected=-1,
            actual=-1,
        )

    async def get_runs(
        self,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        team_id: str | None = None,
        workflow_id: str | None = None,
        status: Any = None,
        limit: int | None = None,
        page: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        deserialize: bool | None = True,
    ) -> Any:
        """The runs of one session (`session_id` is required: runs are stored per session),
        oldest first, filtered by component and status, paged like `get_sessions`."""
        if session_id is None:
            raise InvalidInputError("get_runs needs session_id: the store keeps runs per session")
        if page is not None and limit is None:
            raise InvalidInputError("page needs limit")
        stored = await self.store.read(session_id, user_id=user_id)
        runs = stored.runs if stored is not None else []
        wanted_status = getattr(status, "value", status)
        runs = [
            r
            for r in runs
            if (agent_id is None or r.get("agent_id") == agent_id)
            and (team_id is None or r.get("team_id") == team_id)
            and (workflow_id is None or r.get("workflow_id") == workflow_id)
            and (wanted_status is None or r.get("status") == wanted_status)
        ]
        if sort_order == "desc":
            runs.reverse()
        total = len(runs)
        if limit is not None:
            start = ((page or 1) - 1) * limit
            runs = runs[start : start + limit]
        if not deserialize:
            return runs, total
        return [_run_object(r) for r in runs]


def _run_object(data: dict[str, Any]) -> Any:
    from agno.run.agent import RunOutput
    from agno.run.team import TeamRunOutput
    from agno.run.workflow import WorkflowRunOutput

    if "workflow_id" in data and "agent_id" not in data and "team_id" not in data:
        return WorkflowRunOutput.from_dict(data)
    if "team_id" in data and "agent_id" not in data:
        return TeamRunOutput.from_dict(data)
    return RunOutput.from_dict(data)


# The calls the store answers itself; every other public call of Agno's AsyncBaseDb goes to
# `other_db`.
_OWN = {
    name
    for name, value in vars(AgnoStoreDb).items()
    if not name.startswith("_") and callable(value)
} | {"to_dict", "from_dict", "get_run", "delete_run", "delete_runs", "cancel_pending_run"}


def _delegating(name: str, member: Callable[..., Any], abstract: bool) -> Callable[..., Any]:
    def target(self: AgnoStoreDb) -> Callable[..., Any] | None:
        if self.other_db is not None:
            return cast(Callable[..., Any], getattr(self.other_db, name))
        if abstract:
            raise AgnoDomainNotStoredError(
                f"AgnoStoreDb.{name}: the session store keeps Agno's sessions and runs only; "
                f"pass other_db=<an Agno AsyncBaseDb> to AgnoStoreDb to keep the rest "
                "(memories, metrics, knowledge, evals, traces, ...)"
            )
        return None

    if inspect.iscoroutinefunction(member):

        async def call_async(self: AgnoStoreDb, *args: Any, **kwargs: Any) -> Any:
            method = target(self)
            if method is None:
                return await member(self, *args, **kwargs)
            return await method(*args, **kwargs)

        call: Callable[..., Any] = call_async
    else:

        def call_sync(self: AgnoStoreDb, *args: Any, **kwargs: Any) -> Any:
            method = target(self)
            if method is None:
                return member(self, *args, **kwargs)
            return method(*args, **kwargs)

        call = call_sync
    call.__name__ = name
    call.__qualname__ = f"AgnoStoreDb.{name}"
    call.__doc__ = f"Agno's ``{name}``, sent to `other_db`."
    return call


def _install_delegates() -> None:
    abstract: frozenset[str] = getattr(AsyncBaseDb, "__abstractmethods__", frozenset())
    for name, member in vars(AsyncBaseDb).items():
        if name.startswith("_") or name in _OWN or not inspect.isfunction(member):
            continue
        setattr(AgnoStoreDb, name, _delegating(name, member, name in abstract))
    abc.update_abstractmethods(AgnoStoreDb)


_install_delegates()
