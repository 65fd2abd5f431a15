"""Google ADK sessions kept in any `SessionStore`: a ``BaseSessionService`` for ADK's ``Runner``.

```python
from google.adk.runners import Runner
from async_agent_storage import open_store
from async_agent_storage.integrations.adk import StoreSessionService

store = open_store("sqlite:///data.db", auto_upgrade_schema=True)
async with store:
    runner = Runner(agent=agent, app_name="my_app", session_service=StoreSessionService(store))
```

An ADK session is one stored session (id ``"<app_name>/<session id>"``, owned by its user, its
``agent_id`` the app name); each event is one run (the event's JSON, keyed by its id), so
`append_event` is one atomic append whatever the length of the history. Session-scoped state
is written with the event, under a version check: an `append_event` on a session object that
another writer has moved past raises ADK's `StaleSessionError`, as ADK's own services do.
``app:`` state lives in one stored session per app and ``user:`` state in one per app and user,
updated with atomic JSON merge patches so concurrent sessions never lose each other's keys;
``temp:`` state is never stored.
"""

from __future__ import annotations

import uuid
from typing import Any

from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.events.event import Event
from google.adk.sessions.base_session_service import (
    BaseSessionService,
    GetSessionConfig,
    ListSessionsResponse,
)
from google.adk.sessions.session import Session as AdkSession
from google.adk.sessions.state import State

from async_agent_storage import (
    InvalidInputError,
    Session,
    SessionConflictError,
    SessionOwnershipError,
    SessionStore,
)

__all__ = ["StoreSessionService"]

# How often a write of shared (app: or user:) state that lost a race is tried again.
_RETRIES = 16


def _stale_error() -> Exception:
    from google.adk.errors._stale_session_error import StaleSessionError

    error: Exception = StaleSessionError(
        "The session has been modified in storage since it was loaded. "
        "Please reload the session before appending more events."
    )
    return error


def _split_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(app, user, session) deltas, prefixes removed from the first two; temp: keys dropped."""
    app: dict[str, Any] = {}
    user: dict[str, Any] = {}
    session: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(State.APP_PREFIX):
            app[key.removeprefix(State.APP_PREFIX)] = value
        elif key.startswith(State.USER_PREFIX):
            user[key.removeprefix(State.USER_PREFIX)] = value
        elif not key.startswith(State.TEMP_PREFIX):
            session[key] = value
    return app, user, session


def _merged(app: dict[str, Any], user: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    state = dict(session)
    state.update({State.APP_PREFIX + k: v for k, v in app.items()})
    state.update({State.USER_PREFIX + k: v for k, v in user.items()})
    return state


def _event_run(event: Event) -> dict[str, Any]:
    run: dict[str, Any] = event.model_dump(mode="json", exclude_none=True)
    run["run_id"] = event.id
    return run


def _run_event(run: dict[str, Any]) -> Event:
    data = dict(run)
    data.pop("run_id", None)
    return Event.model_validate(data)


def _state_of(session: Session | None) -> dict[str, Any]:
    state = (session.session_data if session is not None else {}).get("state")
    return dict(state) if isinstance(state, dict) else {}


class StoreSessionService(BaseSessionService):
    """An ADK ``BaseSessionService`` on a `SessionStore` (SQLite, PostgreSQL, MongoDB).

    `store` must be open while ADK uses the service. A session id is unique per app: another
    user cannot create a session with an id that is taken (`AlreadyExistsError`), nor read,
    append to or delete it.
    """

    def __init__(self, store: SessionStore) -> None:
        if not isinstance(store, SessionStore):
            raise InvalidInputError(f"store must be a SessionStore, not {type(store).__name__}")
        self.store = store

    # --- ids ------------------------------------------------------------------------------------

    @staticmethod
    def _check(app_name: str, user_id: str | None = None) -> None:
        if not isinstance(app_name, str) or not app_name or "/" in app_name:
            raise InvalidInputError(
                f"app_name must be a non-empty string without '/': {app_name!r}"
            )
        if user_id is not None and (not isinstance(user_id, str) or not user_id):
            raise InvalidInputError(f"user_id must be a non-empty string, not {user_id!r}")

    @staticmethod
    def _session_key(app_name: str, session_id: str) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInputError(f"session_id must be a non-empty string, not {session_id!r}")
        return f"{app_name}/{session_id}"

    @staticmethod
    def _app_key(app_name: str) -> str:
        return f"{app_name}//app"

    @staticmethod
    def _user_key(app_name: str, user_id: str) -> str:
        return f"{app_name}//user/{user_id}"

    # --- shared state ---------------------------------------------------------------------------

    async def _shared_state(self, key: str, user_id: str | None) -> dict[str, Any]:
        return _state_of(await self.store.read(key, user_id=user_id, last_runs=0))

    async def _patch_shared(self, key: str, user_id: str | None, delta: dict[str, Any]) -> None:
        """Apply `delta` to a shared state: one atomic merge patch when every value replaces
        a scalar; a version-checked rewrite when a value is an object or None (a JSON merge
        patch would merge the object, or delete the key, where ADK replaces the value)."""
        if not delta:
            return
        if all(not isinstance(v, dict) and v is not None for v in delta.values()):
            await self.store.append_runs(key, [], user_id=user_id, state_patch={"state": delta})
            return
        for _ in range(_RETRIES):
            stored = await self.store.read(key, user_id=user_id, last_runs=0)
            state = {**_state_of(stored), **delta}
            try:
                await self.store.append_runs(
                    key,
                    [],
                    user_id=user_id,
                    session_data={"state": state},
                    if_version=stored.version if stored is not None else 0,
                )
            except SessionConflictError:
                continue
            return
        raise SessionConflictError(
            f"shared state {key!r} changed under {_RETRIES} attempts in a row; retry",
            session_id=key,
            expected=-1,
            actual=-1,
        )

    def _to_adk(
        self,
        app_name: str,
        stored: Session,
        app_state: dict[str, Any],
        user_state: dict[str, Any],
        events: list[Event],
    ) -> AdkSession:
        session = AdkSession(
            id=stored.session_id.removeprefix(f"{app_name}/"),
            app_name=app_name,
            user_id=stored.user_id or "",
            state=_merged(app_state, user_state, _state_of(stored)),
            events=events,
            last_update_time=stored.updated_at.timestamp() if stored.updated_at else 0.0,
        )
        session._storage_update_marker = str(stored.version)
        return session

    # --- BaseSessionService -----------------------------------------------------------------------

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> AdkSession:
        """A new session (`AlreadyExistsError` when the id is taken in this app)."""
        self._check(app_name, user_id)
        session_id = session_id if session_id is not None else uuid.uuid4().hex
        app_delta, user_delta, session_state = _split_state(state or {})
        try:
            stored = await self.store.upsert(
                Session(
                    session_id=self._session_key(app_name, session_id),
                    user_id=user_id,
                    agent_id=app_name,
                    session_data={"state": session_state},
                ),
                if_version=0,
            )
        except (SessionConflictError, SessionOwnershipError):
            # taken in this app, by this user or by another one
            raise AlreadyExistsError(f"Session with id {session_id} already exists.") from None
        await self._patch_shared(self._app_key(app_name), None, app_delta)
        await self._patch_shared(self._user_key(app_name, user_id), user_id, user_delta)
        app_state = await self._shared_state(self._app_key(app_name), None)
        user_state = await self._shared_state(self._user_key(app_name, user_id), user_id)
        return self._to_adk(app_name, stored, app_state, user_state, [])

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> AdkSession | None:
        """The session with its events (the last `num_recent_events`, those at or after
        `after_timestamp`), its state merged with the app's and the user's."""
        self._check(app_name, user_id)
        last = config.num_recent_events if config is not None else None
        after = config.after_timestamp if config is not None else None
        stored = await self.store.read(
            self._session_key(app_name, session_id), user_id=user_id, last_runs=last
        )
        if stored is None or stored.agent_id != app_name:
            return None
        events = [_run_event(run) for run in stored.runs]
        if after:
            events = [e for e in events if e.timestamp >= after]
        app_state = await self._shared_state(self._app_key(app_name), None)
        user_state = await self._shared_state(self._user_key(app_name, user_id), user_id)
        return self._to_adk(app_name, stored, app_state, user_state, events)

    async def list_sessions(
        self, *, app_name: str, user_id: str | None = None
    ) -> ListSessionsResponse:
        """The app's sessions (of `user_id`, or of everyone), least recently updated first,
        without events, their state merged with the app's and their user's."""
        self._check(app_name, user_id)
        found: list[Session] = []
        cursor: str | None = None
        while True:
            page = await self.store.list_sessions(
                user_id=user_id, entity_id=app_name, limit=500, cursor=cursor
            )
            found.extend(s for s in page.items if s.agent_id == app_name)
            cursor = page.next_cursor
            if cursor is None:
                break
        found.reverse()
        app_state = await self._shared_state(self._app_key(app_name), None)
        user_states: dict[str, dict[str, Any]] = {}
        sessions = []
        for stored in found:
            owner = stored.user_id or ""
            if owner not in user_states:
                user_states[owner] = await self._shared_state(
                    self._user_key(app_name, owner), owner or None
                )
            sessions.append(self._to_adk(app_name, stored, app_state, user_states[owner], []))
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Delete the session and its events (nothing when absent or another user's)."""
        self._check(app_name, user_id)
        await self.store.delete_session(self._session_key(app_name, session_id), user_id=user_id)

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's ``user:`` state in this app, without the prefix."""
        self._check(app_name, user_id)
        return await self._shared_state(self._user_key(app_name, user_id), user_id)

    async def append_event(self, session: AdkSession, event: Event) -> Event:
        """Store the event and its state delta, then apply them to `session`.

        `StaleSessionError` when the stored session moved on since `session` was read (another
        process appended to it); reload it and retry.
        """
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        self._check(session.app_name, session.user_id)
        key = self._session_key(session.app_name, session.id)
        delta = event.actions.state_delta if event.actions and event.actions.state_delta else {}
        app_delta, user_delta, session_delta = _split_state(delta)

        marker = session._storage_update_marker
        if marker is not None:
            version = int(marker)
        else:
            # A session object this service did not make: it is current if the stored history
            # ends where its events end.
            stored = await self.store.read(key, user_id=session.user_id, last_runs=1)
            if stored is None:
                from google.adk.errors.session_not_found_error import SessionNotFoundError

                raise SessionNotFoundError(f"Session {session.id} not found.")
            last_id = stored.runs[-1].get("run_id") if stored.runs else None
            if last_id != (session.events[-1].id if session.events else None):
                raise _stale_error()
            version = stored.version

        session_state = {
            k: v
            for k, v in session.state.items()
            if not k.startswith((State.APP_PREFIX, State.USER_PREFIX, State.TEMP_PREFIX))
        }
        session_state.update(session_delta)
        try:
            written = await self.store.append_runs(
                key,
                [_event_run(event)],
                user_id=session.user_id,
                session_data={"state": session_state},
                if_version=version,
            )
        except SessionConflictError:
            raise _stale_error() from None
        await self._patch_shared(self._app_key(session.app_name), None, app_delta)
        await self._patch_shared(
            self._user_key(session.app_name, session.user_id), session.user_id, user_delta
        )
        session._storage_update_marker = str(written.version)
        if written.updated_at is not None:
            session.last_update_time = written.updated_at.timestamp()
        return self._commit_event_to_session(session, event)
