"""MongoDB documents as `Session`s, and encoded sessions in their stored BSON form (see `_bson`
for the values BSON cannot hold as they are)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import _codec as codec
from .._encoding import NO_EXPIRY, EncodedSession, Expiry, decode_runs
from .._time import from_us
from ..models import Session, trusted_session
from . import _bson
from . import _queries as q
from ._queries import RunDoc

__all__ = ["Prepared", "field", "prepare", "run_doc", "session_from_doc"]


@dataclass(slots=True)
class Prepared:
    """A session checked by the shared codec, in both forms: JSON values (what the caller gets
    back) and their stored BSON form."""

    session_id: str
    user_id: str | None
    identity: dict[str, Any]
    values: dict[str, Any]
    stored: dict[str, Any]
    esc: int
    runs: list[dict[str, Any]]
    run_docs: list[RunDoc]
    runs_offset: int
    fence: int | None = None  # the lease token the write carries
    expiry: Expiry = NO_EXPIRY  # when the session expires after the write
    version: int = 0  # the session's version as the caller's copy has it
    given_ids: tuple[str, ...] = ()  # the ids not made up by this write

    @property
    def fields(self) -> dict[str, Any]:
        return q.session_fields(self.identity, self.stored, self.esc)

    def session(self, *, created_at: int, updated_at: int, version: int, start: int) -> Session:
        return trusted_session(
            session_id=self.session_id,
            user_id=self.user_id,
            **self.identity,
            **self.values,
            runs=self.runs,
            runs_offset=start,
            created_at=from_us(created_at),
            updated_at=from_us(updated_at),
            version=version,
            run_ids=[r.run_id for r in self.run_docs],
        )


def prepare(enc: EncodedSession) -> Prepared:
    values: dict[str, Any] = {}
    stored: dict[str, Any] = {}
    esc = 0
    for name in q.JSON_FIELDS:
        data = getattr(enc, name)
        value = None if data is None else codec.loads(data)
        values[name] = value
        if value is None:
            stored[name] = None
            continue
        stored[name], escaped = _bson.encode(value)
        if escaped:
            esc |= q.ESC_BIT[name]
    runs = decode_runs([r.body for r in enc.runs])
    return Prepared(
        session_id=enc.session_id,
        user_id=enc.user_id,
        identity={
            "session_type": enc.session_type,
            "agent_id": enc.agent_id,
            "team_id": enc.team_id,
            "workflow_id": enc.workflow_id,
        },
        values=values,
        stored=stored,
        esc=esc,
        runs=runs,
        run_docs=[run_doc(r.run_id, value) for r, value in zip(enc.runs, runs, strict=True)],
        runs_offset=enc.runs_offset,
        fence=enc.fence,
        expiry=enc.expiry,
        version=enc.version,
        given_ids=tuple(enc.kept_runs_may_hold()),
    )


def run_doc(run_id: str, value: dict[str, Any]) -> RunDoc:
    stored, escaped = _bson.encode(value)
    return RunDoc(run_id, stored, escaped)


def field(doc: Mapping[str, Any], name: str, esc: int) -> Any:
    value = doc.get(name)
    if value is not None and esc & q.ESC_BIT[name]:
        return _bson.decode(value)
    return value


def session_from_doc(
    doc: Mapping[str, Any],
    runs: list[dict[str, Any]],
    runs_offset: int,
    run_ids: list[str],
    *,
    session_data: dict[str, Any] | None = None,
) -> Session:
    """A session document and its runs (with their ids) from `runs_offset`. An append that
    replaced the state passes it (the document is then read without it)."""
    esc = doc.get("esc") or 0
    return trusted_session(
        session_id=doc["_id"],
        session_type=doc["session_type"],
        user_id=doc.get("user_id"),
        agent_id=doc.get("agent_id"),
        team_id=doc.get("team_id"),
        workflow_id=doc.get("workflow_id"),
        session_data=(
            session_data if session_data is not None else field(doc, "session_data", esc) or {}
        ),
        agent_data=field(doc, "agent_data", esc),
        team_data=field(doc, "team_data", esc),
        workflow_data=field(doc, "workflow_data", esc),
        metadata=field(doc, "metadata", esc),
        summary=field(doc, "summary", esc),
        runs=runs,
        runs_offset=runs_offset,
        created_at=from_us(doc["created_at"]),
        updated_at=from_us(doc["updated_at"]),
        version=doc["version"],
        run_ids=run_ids,
    )
