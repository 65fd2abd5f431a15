"""What the raw-storage tests of each backend write with encryption on: a session whose every
payload (state, agent/team/workflow data, metadata, summary, runs, a state patch) holds a marker
string, so that a test reading the tables or collections behind the store's back can look for
it."""

from __future__ import annotations

from typing import Any

from async_agent_storage import KeyRing, Session, SessionStore

MARKER = "PLAINTEXT-MARKER-7f3a"
RING = KeyRing(current=("k-test", bytes(range(32))))


def _secret(field: str) -> dict[str, Any]:
    return {"text": f"{MARKER} {field}", "n": 2**70, "nested": {"k": MARKER}}


async def write_secrets(store: SessionStore, session_id: str) -> None:
    """Every kind of payload, through every kind of write, on an encrypting store."""
    await store.upsert(
        Session(
            session_id=session_id,
            user_id="owner-in-clear",
            agent_id="agent-in-clear",
            session_data=_secret("session_data"),
            agent_data=_secret("agent_data"),
            team_data=_secret("team_data"),
            workflow_data=_secret("workflow_data"),
            metadata=_secret("metadata"),
            summary=_secret("summary"),
            runs=[_secret("run 0"), _secret("run 1")],
        )
    )
    await store.append_runs(
        session_id, [_secret("run 2")], user_id="owner-in-clear", state_patch={"p": MARKER}
    )
    await store.upsert_many([Session(session_id=session_id + "-b", runs=[_secret("many")])])
    read = await store.read(session_id)
    assert read is not None
    assert read.session_data["p"] == MARKER  # the store reads it back in clear
    assert len(read.runs) == 3
