"""An agent behind an HTTP API, sessions in any store: run it with several worker processes.

    AAS_URL=sqlite:///tmp/agent_server.db uvicorn examples.agent_server:app --workers 4

- ``POST /sessions/{session_id}/messages`` ``{"user_id": "u1", "message": "...", "state": {...}}``:
  takes the session's lease (one turn at a time per session, across every worker and replica),
  reads the session's last runs, answers (a deterministic stand-in for a model; ``think_ms``
  makes it take that long), and appends the turn with its state update as one atomic write
  fenced with the lease's token: ``state`` is merged into the session state in the database. A
  ``run_id`` in the body makes a retry of the same turn a no-op.
  A request for a session whose turn is still running waits for it (``AAS_BUSY=wait``, the
  default, up to ``AAS_BUSY_WAIT`` seconds, 60) or is answered 409 at once (``AAS_BUSY=reject``)
  with who holds the session until when.
- ``GET /users/{user_id}/sessions?limit=20&cursor=...``: the user's sessions, most recent first,
  in keyset pages.
- ``DELETE /sessions/{session_id}?user_id=u1``.

Errors map to statuses: bad input 400, another user's session 403, not found 404, a version
conflict, a busy session or a lost lease 409, the database unavailable 503. `AAS_URL` is any
store URL (``sqlite:///...``, ``postgresql://...``, ``mongodb://...``), `AAS_TABLE` the table
(default ``agent_sessions``).
Every worker opens the store with ``auto_upgrade_schema=True``: workers starting together on a
fresh database apply each migration exactly once.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from async_agent_storage import (
    ConfigurationError,
    InvalidInputError,
    SerializationError,
    Session,
    SessionBusyError,
    SessionConflictError,
    SessionFencedError,
    SessionOwnershipError,
    SessionStore,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
    open_store,
)

HISTORY_RUNS = 20
BUSY = os.environ.get("AAS_BUSY", "wait")  # wait | reject: a request on a session mid-turn
BUSY_WAIT = float(os.environ.get("AAS_BUSY_WAIT", "60"))  # seconds a request waits for its turn
LEASE_TTL = 30.0  # a worker that dies mid-turn holds its session this long at most
if BUSY not in ("wait", "reject"):
    raise SystemExit(f"AAS_BUSY must be 'wait' or 'reject', not {BUSY!r}")
FOLLOW_UP = "What was my last question?"
KNOWLEDGE = {"What is the capital of France?": "Paris"}


def answer(message: str, history: list[dict[str, Any]]) -> str:
    """A stand-in for the model: it only knows what the stored history tells it."""
    if message == FOLLOW_UP:
        asked = [run["input"] for run in history if "input" in run]
        return f'Your last question was: "{asked[-1]}"' if asked else "You have not asked yet."
    return KNOWLEDGE.get(message, "I don't know.")


class Message(BaseModel):
    user_id: str = Field(min_length=1, max_length=255)
    message: str = Field(min_length=1, max_length=100_000)
    state: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = Field(default=None, min_length=1, max_length=255)
    think_ms: int = Field(default=0, ge=0, le=10_000)  # the stand-in model's thinking time


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    url = os.environ.get("AAS_URL", "sqlite:///tmp/agent_server.db")
    table = os.environ.get("AAS_TABLE", "agent_sessions")
    async with open_store(url, table_name=table, auto_upgrade_schema=True) as store:
        app.state.store = store
        yield


app = FastAPI(title="agent server", lifespan=lifespan)

# The store's errors, most specific first, and the status each one means.
STATUS: list[tuple[type[StorageError], int]] = [
    (SessionOwnershipError, 403),
    (SessionConflictError, 409),
    (SessionBusyError, 409),  # another request's turn runs on this session (AAS_BUSY=reject)
    (SessionFencedError, 409),  # this turn outlived its lease and another one began
    (InvalidInputError, 400),
    (SerializationError, 400),
    (ConfigurationError, 400),
    (StorageUnavailableError, 503),
    (StoreClosedError, 503),
]


@app.exception_handler(StorageError)
async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
    status = next((code for kind, code in STATUS if isinstance(exc, kind)), 500)
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": str(exc)}
    if isinstance(exc, SessionBusyError):
        body |= {"holder": exc.holder, "until": exc.until.isoformat()}
    return JSONResponse(body, status_code=status)


def store_of(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.store
    return store


@app.post("/sessions/{session_id}/messages")
async def post_message(session_id: str, body: Message, request: Request) -> dict[str, Any]:
    store = store_of(request)
    # One turn at a time per session: the next request reads this turn's run.
    async with store.lease(
        session_id,
        user_id=body.user_id,
        ttl=LEASE_TTL,
        wait=BUSY_WAIT if BUSY == "wait" else 0,
        renew_every=LEASE_TTL / 3,
    ) as lease:
        session = await store.read(session_id, user_id=body.user_id, last_runs=HISTORY_RUNS)
        history = session.runs if session is not None else []
        await asyncio.sleep(body.think_ms / 1000)  # the model at work
        reply = answer(body.message, history)
        run = {"run_id": body.run_id or uuid.uuid4().hex, "input": body.message, "output": reply}
        written: Session = await store.append_runs(
            session_id,
            [run],
            user_id=body.user_id,
            state_patch={"session_state": body.state} if body.state else None,
            fence=lease.token,  # refused if this turn outlived its lease and another began
        )
    return {
        "session_id": session_id,
        "reply": reply,
        "version": written.version,
        "turn": lease.token,
        "history": len(history),
    }


@app.get("/users/{user_id}/sessions")
async def list_sessions(
    user_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=500),
    cursor: str | None = None,
) -> dict[str, Any]:
    page = await store_of(request).list_sessions(user_id=user_id, limit=limit, cursor=cursor)
    return {
        "items": [
            {
                "session_id": s.session_id,
                "updated_at": s.updated_at.isoformat() if s.updated_at else None,
                "version": s.version,
            }
            for s in page.items
        ],
        "next_cursor": page.next_cursor,
    }


@app.get("/sessions/{session_id}")
async def get_session(session_id: str, user_id: str, request: Request) -> dict[str, Any]:
    session = await store_of(request).read(session_id, user_id=user_id)
    if session is None:
        raise HTTPException(404, f"no session {session_id!r} for user {user_id!r}")
    return session.model_dump(mode="json")


@app.delete("/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, user_id: str, request: Request) -> Response:
    if not await store_of(request).delete_session(session_id, user_id=user_id):
        raise HTTPException(404, f"no session {session_id!r} for user {user_id!r}")
    return Response(status_code=204)
