"""Payloads on their way in and out: a `Session` checked and encoded to JSON bytes before any I/O,
and stored values decoded back into a `Session`.

Every driver writes what `encode_session` / `encode_append` produce, so a value is refused (or
accepted) the same way on every backend and nothing is written when it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple, cast

from pydantic import BaseModel

from . import _codec as codec
from ._checks import (
    check_fence,
    check_id,
    check_if_version,
    check_optional_id,
    check_session_type,
)
from .errors import InvalidInputError, SerializationError
from .models import Session, trusted_session

__all__ = [
    "NO_EXPIRY",
    "EncodedAppend",
    "EncodedRun",
    "EncodedSession",
    "Expiry",
    "RunList",
    "RunSource",
    "decode_runs",
    "encode_append",
    "encode_session",
    "encode_session_data",
    "encode_sessions",
    "merge_patch",
    "session_from_encoded",
]

JSON_FIELDS = ("agent_data", "team_data", "workflow_data", "metadata", "summary")


@dataclass(frozen=True, slots=True)
class Expiry:
    """When a write leaves its session expiring (epoch microseconds; None: never, or kept).

    `at_us` is the caller's ``expires_at=`` (set by this write); `ttl_us` the store's default
    time-to-live; `slide` says every write pushes the expiry to now + ttl. A driver asks
    `on_create` for a session the write creates and `on_update` for one it changes (None there:
    keep the stored expiry)."""

    at_us: int | None = None
    ttl_us: int | None = None
    slide: bool = False

    def on_create(self, now: int) -> int | None:
        if self.at_us is not None:
            return self.at_us
        return None if self.ttl_us is None else now + self.ttl_us

    def on_update(self, now: int) -> int | None:
        if self.at_us is not None:
            return self.at_us
        return now + self.ttl_us if self.slide and self.ttl_us is not None else None


NO_EXPIRY: Final = Expiry()


@dataclass(slots=True)
class EncodedRun:
    """One run ready to store: its id and its JSON, exactly as given. `given` says the id came
    from the caller (the run's own ``run_id`` key, or `run_ids`), so a retry carries it again;
    `unchanged` that the run is the one read at this position, byte for byte (a store may then
    skip writing it, see `RunSource`)."""

    run_id: str
    body: bytes
    given: bool = True
    unchanged: bool = False


@dataclass(frozen=True, slots=True)
class RunSource:
    """Where a `RunList` was read from: the store (a token of the store object), the session, the
    incarnation of its row (a new one when a session is deleted and created again), the version
    and the position of its first run in the whole history (`offset`). Runs read there and
    written back unchanged, to the same incarnation at the next version and at the same
    positions, are still stored as they are: the only case where a store may skip writing
    them."""

    store: str
    session_id: str
    incarnation: str
    version: int
    offset: int


class RunList(list[dict[str, Any]]):
    """The runs of a session read from a store that keeps JSON text exactly, with that text and
    the run ids (`stored`, `ids`: one entry per run as read) and where it was read (`source`). It
    lets `upsert` find the runs that did not change, text and id, without encoding them, and
    skip rewriting them. Otherwise an ordinary list. The text is kept as the driver read it
    (bytes, or str, which only an upsert of the list encodes)."""

    __slots__ = ("ids", "source", "stored")

    def __init__(
        self,
        runs: list[dict[str, Any]],
        stored: tuple[bytes, ...] | tuple[str, ...],
        ids: tuple[str, ...],
        source: RunSource | None,
    ) -> None:
        super().__init__(runs)
        self.stored = stored
        self.ids = ids
        self.source = source


@dataclass(slots=True)
class EncodedSession:
    """A session checked and encoded: ids as str, JSON fields as UTF-8 bytes."""

    session_id: str
    session_type: str
    user_id: str | None
    agent_id: str | None
    team_id: str | None
    workflow_id: str | None
    session_data: bytes
    agent_data: bytes | None
    team_data: bytes | None
    workflow_data: bytes | None
    metadata: bytes | None
    summary: bytes | None
    runs: list[EncodedRun]
    runs_offset: int
    size: int
    source: RunSource | None = None  # where `runs` were read, when they came from a RunList
    version: int = 0  # the session's version as the caller's copy has it (0: never stored)
    fence: int | None = None  # the lease token the write carries (`upsert(fence=...)`)
    expiry: Expiry = NO_EXPIRY  # when the session expires after this write

    def read_here(self, store: str) -> RunSource | None:
        """Where `runs` were read, when this store read them of this session and the write puts
        them back at the positions they were read at: the part of the rule for skipping runs
        marked `unchanged` that every store shares (each then checks its row's identity)."""
        source = self.source
        if (
            source is None
            or source.store != store
            or source.session_id != self.session_id
            or source.offset != self.runs_offset
        ):
            return None
        return source

    def may_skip_unchanged(self, store: str, incarnation: str | None, previous: int) -> bool:
        """Whether the runs marked `unchanged` are stored as they are: the session was read from
        this store, this incarnation of its row, at the version the write replaced."""
        source = self.read_here(store)
        return (
            source is not None
            and incarnation is not None
            and source.incarnation == incarnation
            and source.version == previous
        )

    def kept_runs_may_hold(self, *, skipping: bool = False) -> list[str]:
        """The ids of this write that a run kept before `runs_offset` may already hold (the
        `repeated_run_id` rule): the caller's and those read with the runs, of the runs written
        (`skipping`: the runs marked unchanged are not); an id the store made up for this write
        is new."""
        return [r.run_id for r in self.runs if r.given and not (skipping and r.unchanged)]

    def optional_json(self) -> tuple[bytes | None, ...]:
        """agent_data, team_data, workflow_data, metadata and summary, in that order."""
        return (self.agent_data, self.team_data, self.workflow_data, self.metadata, self.summary)


class EncodedAppend(NamedTuple):
    """The checked and encoded arguments of one `append_runs`."""

    session_id: str
    user_id: str | None
    session_data: bytes | None  # replaces the stored one
    state_patch: bytes | None  # an RFC 7396 merge patch of the stored one
    if_version: int | None
    runs: list[EncodedRun]
    fence: int | None = None  # the lease token the write carries (refused if older than the latest)
    expiry: Expiry = NO_EXPIRY  # when the session expires after this write

    @property
    def given_ids(self) -> list[str]:
        """The ids the caller gave: the only ones a retry can repeat."""
        return [r.run_id for r in self.runs if r.given]


# --- encoding ------------------------------------------------------------------------------------


def _prepare_run(run: object, where: str, run_id: object) -> tuple[str, bool, Any]:
    """(id, given, body): the run's own ``run_id`` key, else `run_id` (from `run_ids`), else a
    new id; the body is the run as given."""
    if type(run) is not dict:  # a dict needs neither check (they are slow: abstract classes)
        if isinstance(run, BaseModel):
            run = run.model_dump(mode="json")
        if not isinstance(run, Mapping):
            raise InvalidInputError(f"{where} must be a dict, got {type(run).__name__}")
    own = run.get("run_id")
    if own is not None:
        return check_id(own, f"{where}.run_id"), True, run
    if run_id is not None:
        return check_id(run_id, f"run_ids of {where}"), True, run
    return new_run_id(), False, run


def new_run_id() -> str:
    """An id for a run that brought none: 128 random bits as 32 hex digits (the form of
    `uuid.uuid4().hex`, at a quarter of its cost: a bulk load makes one per run)."""
    return os.urandom(16).hex()


def _utf8(text: bytes | str) -> bytes:
    return text if type(text) is bytes else cast(str, text).encode()


def check_size(size: int, *, session_id: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise SerializationError(
            f"session {session_id!r}: this write is {codec.format_size(size)} ({size} bytes) of "
            f"JSON, over the {codec.format_size(max_bytes)} cap; keep large blobs out of the "
            "session or raise max_session_bytes"
        )


def _check_run_ids(run_ids: object, count: int) -> Sequence[object]:
    if run_ids is None:
        return ()
    if isinstance(run_ids, str | bytes) or not isinstance(run_ids, Sequence):
        raise InvalidInputError(f"run_ids must be a list of str, got {type(run_ids).__name__}")
    if len(run_ids) > count:
        raise InvalidInputError(f"run_ids has {len(run_ids)} ids for {count} runs")
    return run_ids


def encode_runs(
    runs: object,
    *,
    session_id: str,
    max_bytes: int,
    base_size: int = 0,
    run_ids: object = None,
) -> list[EncodedRun]:
    """Check and encode runs, each with its id (see `_prepare_run`); the caller's dicts are not
    changed, and two runs with one id are refused. Runs of a `RunList` that still encode to the
    text they were read as, under the id they were read with, reuse it and are marked
    `unchanged`."""
    if isinstance(runs, str | bytes | Mapping) or not isinstance(runs, Sequence):
        raise InvalidInputError(f"runs must be a list of dicts, got {type(runs).__name__}")
    ids = _check_run_ids(run_ids, len(runs))
    stored, read_ids = (runs.stored, runs.ids) if isinstance(runs, RunList) else ((), ())
    encoded: list[EncodedRun] = []
    size = base_size
    for index, run in enumerate(runs):
        fallback = ids[index] if index < len(ids) else None
        if (
            index < len(stored)
            and index < len(read_ids)
            and type(run) is dict
            and type(run_id := run.get("run_id", fallback)) is str
            and run_id == read_ids[index]
            and codec.same_json(run, data := _utf8(stored[index]))
        ):
            encoded.append(EncodedRun(check_id(run_id, f"runs[{index}].run_id"), data, True, True))
        else:
            where = f"runs[{index}]"
            run_id, given, body = _prepare_run(run, where, fallback)
            data = codec.dumps(body, path=where)
            encoded.append(EncodedRun(run_id, data, given))
        size += len(data)
    if len({r.run_id for r in encoded}) != len(encoded):
        seen: set[str] = set()
        for run in encoded:
            if run.run_id in seen:
                raise InvalidInputError(
                    f"session {session_id!r}: run id {run.run_id!r} is given to two runs of one "
                    "write"
                )
            seen.add(run.run_id)
    check_size(size, session_id=session_id, max_bytes=max_bytes)
    return encoded


def encode_session_data(value: object, where: str = "session_data") -> bytes:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a dict, got {type(value).__name__}")
    return codec.dumps(value, path=where)


def _dumps_optional(value: object, where: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a dict or None, got {type(value).__name__}")
    return codec.dumps(value, path=where)


def encode_append(
    session_id: object,
    runs: object,
    *,
    user_id: object,
    session_data: object,
    state_patch: object,
    if_version: object,
    run_ids: object,
    max_bytes: int,
    fence: object = None,
    expiry: Expiry = NO_EXPIRY,
) -> EncodedAppend:
    """Check and encode `append_runs`' arguments, before anything is written."""
    sid = check_id(session_id, "session_id")
    uid = check_optional_id(user_id, "user_id")
    if session_data is not None and state_patch is not None:
        raise InvalidInputError(
            "pass session_data (replaces the state) or state_patch (merges into it), not both"
        )
    data = None if session_data is None else encode_session_data(session_data)
    patch = None if state_patch is None else encode_session_data(state_patch, "state_patch")
    expected = check_if_version(if_version)
    token = check_fence(fence)
    extra = len(data or patch or b"")
    encoded = encode_runs(
        runs, session_id=sid, max_bytes=max_bytes, base_size=extra, run_ids=run_ids
    )
    return EncodedAppend(sid, uid, data, patch, expected, encoded, token, expiry)


def encode_session(session: object, *, max_bytes: int) -> EncodedSession:
    """Check every field of a `Session` (it may have changed since it was built) and encode it."""
    if not isinstance(session, Session):
        raise InvalidInputError(f"expected a Session, got {type(session).__name__}")
    session_id = check_id(session.session_id, "session_id")
    session_data = encode_session_data(session.session_data)
    fields = [_dumps_optional(getattr(session, name), name) for name in JSON_FIELDS]
    size = len(session_data) + sum(len(f) for f in fields if f is not None)
    runs = encode_runs(
        session.runs,
        session_id=session_id,
        max_bytes=max_bytes,
        base_size=size,
        # The ids read with the runs, while they can still line up with them: runs added at the
        # end get new ids; a shorter list than its ids (runs removed) keeps none of them.
        run_ids=session.run_ids if len(session.run_ids) <= len(session.runs) else None,
    )
    size += sum(len(r.body) for r in runs)
    return EncodedSession(
        session_id=session_id,
        session_type=check_session_type(session.session_type),
        user_id=check_optional_id(session.user_id, "user_id"),
        agent_id=check_optional_id(session.agent_id, "agent_id"),
        team_id=check_optional_id(session.team_id, "team_id"),
        workflow_id=check_optional_id(session.workflow_id, "workflow_id"),
        session_data=session_data,
        agent_data=fields[0],
        team_data=fields[1],
        workflow_data=fields[2],
        metadata=fields[3],
        summary=fields[4],
        runs=runs,
        runs_offset=session.runs_offset,
        size=size,
        source=session.runs.source if isinstance(session.runs, RunList) else None,
        version=session.version,
    )


def encode_sessions(sessions: object, *, max_bytes: int) -> list[EncodedSession]:
    """Check and encode the sessions of an `upsert_many`: a sequence of `Session`, each id once."""
    if isinstance(sessions, str | bytes) or not isinstance(sessions, Sequence):
        raise InvalidInputError("upsert_many takes a list of Session")
    encoded = [encode_session(s, max_bytes=max_bytes) for s in sessions]
    seen: set[str] = set()
    for enc in encoded:
        if enc.session_id in seen:
            raise InvalidInputError(
                f"upsert_many got session {enc.session_id!r} twice; pass each session once"
            )
        seen.add(enc.session_id)
    return encoded


# --- decoding ------------------------------------------------------------------------------------


def decode_runs(
    bodies: Sequence[str | bytes],
    *,
    marked: bool = False,
    ids: Sequence[str] = (),
    source: RunSource | None = None,
) -> list[dict[str, Any]]:
    """Decode stored run bodies with one parser call. With `marked` (the bodies are exactly what
    the codec wrote, see `_codec.loads`) the result is a `RunList` that keeps them, their `ids`
    and where they were read (`source`)."""
    if not bodies:
        return RunList([], (), (), source) if marked else []
    if isinstance(bodies[0], str):
        text = "[" + ",".join(cast(Sequence[str], bodies)) + "]"
        exact = marked and any(b[:1] == " " for b in bodies)
        return codec.loads(text, marked=marked and not exact)  # type: ignore[no-any-return]
    raw = cast(Sequence[bytes], bodies)
    exact = marked and any(b[:1] == b" " for b in raw)
    runs: list[dict[str, Any]] = codec.loads(
        b"[" + b",".join(raw) + b"]", marked=marked and not exact
    )
    return RunList(runs, tuple(raw), tuple(ids), source) if marked else runs


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: `patch` applied to `target` (neither is changed). An object patch merges key by
    key, a null deletes the key, anything else replaces the target. The stores apply the same
    rule inside the database; this is the reference."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _loads_optional(data: bytes | None) -> Any:
    return None if data is None else codec.loads(data, marked=True)


def session_from_encoded(
    enc: EncodedSession,
    *,
    created_at: datetime,
    updated_at: datetime,
    version: int,
    runs_offset: int,
    source: RunSource | None = None,
) -> Session:
    """The stored session as a read would return it, rebuilt from what was just written."""
    return trusted_session(
        session_id=enc.session_id,
        session_type=enc.session_type,
        user_id=enc.user_id,
        agent_id=enc.agent_id,
        team_id=enc.team_id,
        workflow_id=enc.workflow_id,
        session_data=codec.loads(enc.session_data, marked=True),
        agent_data=_loads_optional(enc.agent_data),
        team_data=_loads_optional(enc.team_data),
        workflow_data=_loads_optional(enc.workflow_data),
        metadata=_loads_optional(enc.metadata),
        summary=_loads_optional(enc.summary),
        runs=decode_runs(
            [r.body for r in enc.runs],
            marked=True,
            ids=[r.run_id for r in enc.runs],
            source=source,
        ),
        runs_offset=runs_offset,
        created_at=created_at,
        updated_at=updated_at,
        version=version,
        run_ids=[r.run_id for r in enc.runs],
    )
