"""What every driver shares: argument checks, payload encoding, time, keyset cursors.

Drivers call these before touching the database, so bad input is refused the same way on every
backend and nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple, cast, get_args

import orjson
from pydantic import BaseModel

from . import codec
from .errors import ConfigurationError, InvalidInputError, SerializationError
from .models import MAX_IDENTIFIER_LENGTH, Session, SessionType

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
SESSION_TYPES: Final = frozenset(get_args(SessionType))
DEFAULT_TABLE_NAME: Final = "agent_sessions"
MAX_LIST_LIMIT: Final = 10_000
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_LENGTH: Final = 48  # leaves room for suffixes (_runs, _migrations) under PostgreSQL's 63


class StoreState(enum.Enum):
    """A store's lifecycle: NEW -> OPEN -> CLOSED; a closed store is not reopened."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


# --- time -----------------------------------------------------------------------------------------


def now_us() -> int:
    """Microseconds since the Unix epoch, UTC: the resolution every backend stores."""
    return time.time_ns() // 1000


def from_us(us: int) -> datetime:
    """Exact (no float rounding) conversion of epoch microseconds to an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def to_us(value: datetime, what: str = "datetime") -> int:
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(
            f"{what} is a naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
        )
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# --- names and arguments ---------------------------------------------------------------------


def check_name(name: object, what: str = "table_name") -> str:
    """Validate a table, collection or schema name: letters, digits and _, not starting with a
    digit, at most 48 characters. Anything else is a `ConfigurationError`, never SQL."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"{what}={name!r} is not a valid name: use letters, digits and underscores, "
            f"not starting with a digit, at most {MAX_NAME_LENGTH} characters"
        )
    return name


def check_id(value: object, what: str) -> str:
    """A session, user or entity id: a non-empty str of at most 255 characters without NUL."""
    if type(value) is not str:
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_IDENTIFIER_LENGTH or "\x00" in value:
        raise InvalidInputError(
            f"{what}={value[:40]!r} must be 1-{MAX_IDENTIFIER_LENGTH} characters without NUL"
        )
    return value


def check_optional_id(value: object, what: str) -> str | None:
    return None if value is None else check_id(value, what)


def check_last_runs(last_runs: object) -> int | None:
    if last_runs is None:
        return None
    if type(last_runs) is not int or last_runs < 0:
        raise InvalidInputError(f"last_runs must be None or an int >= 0, got {last_runs!r}")
    return last_runs


def check_if_version(if_version: object) -> int | None:
    if if_version is None:
        return None
    if type(if_version) is not int or if_version < 0:
        raise InvalidInputError(f"if_version must be None or an int >= 0, got {if_version!r}")
    return if_version


def check_limit(limit: object, what: str = "limit") -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(f"{what} must be an int from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
    return limit


def check_session_type(value: object) -> str:
    if value not in SESSION_TYPES:
        raise InvalidInputError(
            f"session_type must be one of {sorted(SESSION_TYPES)}, got {value!r}"
        )
    return str(value)


def check_max_bytes(value: object) -> int:
    if type(value) is not int or value < 1024:
        raise ConfigurationError(f"max_session_bytes must be an int >= 1024, got {value!r}")
    return value


# --- payloads -------------------------------------------------------------------------------------


@dataclass(slots=True)
class EncodedRun:
    """One run ready to store: its id and its JSON; `unchanged` when it is the run that was read
    at this position, byte for byte (a store may then skip writing it)."""

    run_id: str
    body: bytes
    unchanged: bool = False


class RunList(list[dict[str, Any]]):
    """The runs of a session read from a store that keeps JSON text exactly, with that text
    (`stored`, one entry per run as read). It lets `upsert` find the runs that did not change
    without encoding them, and skip rewriting them. Otherwise an ordinary list."""

    __slots__ = ("stored",)

    def __init__(self, runs: list[dict[str, Any]], stored: tuple[bytes, ...]) -> None:
        super().__init__(runs)
        self.stored = stored


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
    base_version: int = 0  # the version the session had when it was read


def _prepare_run(run: object, where: str) -> tuple[str, Any]:
    if isinstance(run, BaseModel):
        run = run.model_dump(mode="json")
    if not isinstance(run, Mapping):
        raise InvalidInputError(f"{where} must be a dict, got {type(run).__name__}")
    run_id = run.get("run_id")
    if run_id is None:
        run_id = uuid.uuid4().hex
        run = {"run_id": run_id, **run}
    else:
        check_id(run_id, f"{where}.run_id")
    return run_id, run


def encode_runs(
    runs: object, *, session_id: str, max_bytes: int, base_size: int = 0
) -> list[EncodedRun]:
    """Check and encode runs. A run without a `run_id` gets one; the caller's dict is unchanged.
    Runs of a `RunList` that still encode to the text they were read as reuse it."""
    if isinstance(runs, str | bytes | Mapping) or not isinstance(runs, Sequence):
        raise InvalidInputError(f"runs must be a list of dicts, got {type(runs).__name__}")
    stored = runs.stored if isinstance(runs, RunList) else ()
    encoded: list[EncodedRun] = []
    size = base_size
    for index, run in enumerate(runs):
        if (
            index < len(stored)
            and type(run) is dict
            and type(run.get("run_id")) is str
            and codec.same_json(run, stored[index])
        ):
            data = stored[index]
            encoded.append(EncodedRun(run["run_id"], data, unchanged=True))
        else:
            where = f"runs[{index}]"
            run_id, body = _prepare_run(run, where)
            data = codec.dumps(body, path=where)
            encoded.append(EncodedRun(run_id, data))
        size += len(data)
    check_size(size, session_id=session_id, max_bytes=max_bytes)
    return encoded


class EncodedAppend(NamedTuple):
    """The checked and encoded arguments of one `append_runs`."""

    session_id: str
    user_id: str | None
    session_data: bytes | None
    runs: list[EncodedRun]


def encode_append(
    session_id: object, runs: object, user_id: object, session_data: object, *, max_bytes: int
) -> EncodedAppend:
    """Check and encode `append_runs`' arguments, before anything is written."""
    sid = check_id(session_id, "session_id")
    uid = check_optional_id(user_id, "user_id")
    data = None if session_data is None else encode_session_data(session_data)
    encoded = encode_runs(
        runs, session_id=sid, max_bytes=max_bytes, base_size=0 if data is None else len(data)
    )
    return EncodedAppend(sid, uid, data, encoded)


def check_size(size: int, *, session_id: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise SerializationError(
            f"session {session_id!r}: this write is {codec.format_size(size)} ({size} bytes) of "
            f"JSON, over the {codec.format_size(max_bytes)} cap; keep large blobs out of the "
            "session or raise max_session_bytes"
        )


def _dumps_optional(value: object, where: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a dict or None, got {type(value).__name__}")
    return codec.dumps(value, path=where)


def encode_session_data(value: object, where: str = "session_data") -> bytes:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{where} must be a dict, got {type(value).__name__}")
    return codec.dumps(value, path=where)


def encode_session(session: object, *, max_bytes: int) -> EncodedSession:
    """Check every field of a `Session` (it may have changed since it was built) and encode it."""
    if not isinstance(session, Session):
        raise InvalidInputError(f"expected a Session, got {type(session).__name__}")
    session_id = check_id(session.session_id, "session_id")
    session_data = encode_session_data(session.session_data)
    fields = [
        _dumps_optional(getattr(session, name), name)
        for name in ("agent_data", "team_data", "workflow_data", "metadata", "summary")
    ]
    size = len(session_data) + sum(len(f) for f in fields if f is not None)
    runs = encode_runs(session.runs, session_id=session_id, max_bytes=max_bytes, base_size=size)
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
        base_version=session.version,
    )


_SESSION_FIELDS: Final = tuple(Session.model_fields)


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


def build_session(
    *,
    session_id: str,
    session_type: str,
    user_id: str | None,
    agent_id: str | None,
    team_id: str | None,
    workflow_id: str | None,
    session_data: dict[str, Any],
    agent_data: dict[str, Any] | None,
    team_data: dict[str, Any] | None,
    workflow_data: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    summary: dict[str, Any] | None,
    runs: list[dict[str, Any]],
    runs_offset: int,
    created_at: datetime,
    updated_at: datetime,
    version: int,
) -> Session:
    """A `Session` from trusted, decoded stored values, without validation: this is the hot path.

    It does what `Session.model_construct` does (4x faster, for one known model): fill the
    instance's documented pydantic slots directly. `tests/test_models.py` checks it against
    `model_construct` so a pydantic upgrade that changes them fails loudly.
    """
    session = Session.__new__(Session)
    object.__setattr__(
        session,
        "__dict__",
        {
            "session_id": session_id,
            "session_type": session_type,
            "user_id": user_id,
            "agent_id": agent_id,
            "team_id": team_id,
            "workflow_id": workflow_id,
            "session_data": session_data,
            "agent_data": agent_data,
            "team_data": team_data,
            "workflow_data": workflow_data,
            "metadata": metadata,
            "runs": runs,
            "summary": summary,
            "created_at": created_at,
            "updated_at": updated_at,
            "version": version,
        },
    )
    object.__setattr__(session, "__pydantic_fields_set__", set(_SESSION_FIELDS))
    object.__setattr__(session, "__pydantic_extra__", None)
    object.__setattr__(session, "__pydantic_private__", {"_runs_offset": runs_offset})
    return session


def decode_runs(bodies: Sequence[str | bytes], *, marked: bool = False) -> list[dict[str, Any]]:
    """Decode stored run bodies with one parser call. With `marked` (the bodies are exactly what
    the codec wrote, see `codec.loads`) the result is a `RunList` that keeps them."""
    if not bodies:
        return []
    if isinstance(bodies[0], str):
        text = "[" + ",".join(cast(Sequence[str], bodies)) + "]"
        exact = marked and any(b[:1] == " " for b in bodies)
        return codec.loads(text, marked=marked and not exact)  # type: ignore[no-any-return]
    raw = cast(Sequence[bytes], bodies)
    exact = marked and any(b[:1] == b" " for b in raw)
    runs: list[dict[str, Any]] = codec.loads(
        b"[" + b",".join(raw) + b"]", marked=marked and not exact
    )
    return RunList(runs, tuple(raw)) if marked else runs


def _loads_optional(data: bytes | None) -> Any:
    return None if data is None else codec.loads(data, marked=True)


def session_from_encoded(
    enc: EncodedSession,
    *,
    created_at: datetime,
    updated_at: datetime,
    version: int,
    runs_offset: int,
) -> Session:
    """The stored session as a read would return it, rebuilt from what was just written."""
    return build_session(
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
        runs=decode_runs([r.body for r in enc.runs], marked=True),
        runs_offset=runs_offset,
        created_at=created_at,
        updated_at=updated_at,
        version=version,
    )


# --- listing and keyset cursors --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The checked filters of a listing call. Order: `updated_at` DESC, then `session_id` DESC."""

    user_id: str | None
    session_type: str | None
    entity_id: str | None
    updated_after_us: int | None
    limit: int | None
    after: tuple[int, str] | None
    include_runs: bool

    def fingerprint(self) -> str:
        key = orjson.dumps([self.user_id, self.session_type, self.entity_id, self.updated_after_us])
        return hashlib.blake2b(key, digest_size=6).hexdigest()

    def cursor_after(self, updated_us: int, session_id: str) -> str:
        raw = orjson.dumps([1, updated_us, session_id, self.fingerprint()])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def list_query(
    *,
    user_id: object = None,
    session_type: object = None,
    entity_id: object = None,
    updated_after: object = None,
    limit: object = None,
    cursor: object = None,
    include_runs: object = False,
) -> ListQuery:
    """Check listing arguments; `limit=None` means no limit (the get_all_* calls)."""
    query = ListQuery(
        user_id=check_optional_id(user_id, "user_id"),
        session_type=None if session_type is None else check_session_type(session_type),
        entity_id=check_optional_id(entity_id, "entity_id"),
        updated_after_us=None if updated_after is None else to_us(updated_after, "updated_after"),  # type: ignore[arg-type]
        limit=None if limit is None else check_limit(limit),
        after=None,
        include_runs=bool(include_runs),
    )
    if cursor is None:
        return query
    after = _decode_cursor(cursor, query.fingerprint())
    return ListQuery(
        query.user_id,
        query.session_type,
        query.entity_id,
        query.updated_after_us,
        query.limit,
        after,
        query.include_runs,
    )


def _decode_cursor(cursor: object, fingerprint: str) -> tuple[int, str]:
    if not isinstance(cursor, str) or not cursor:
        raise InvalidInputError("cursor must be the next_cursor string of a previous page")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, updated_us, session_id, stamp = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInputError("cursor is not a next_cursor returned by list_sessions") from exc
    if version != 1 or type(updated_us) is not int or type(session_id) is not str:
        raise InvalidInputError("cursor is not a next_cursor returned by list_sessions")
    if stamp != fingerprint:
        raise InvalidInputError(
            "cursor belongs to a listing with other filters; pass the same user_id, "
            "session_type, entity_id and updated_after as for the first page"
        )
    return updated_us, session_id
