"""Listing: the checked filters of a listing call and its keyset cursors.

Order is `updated_at` DESC, then `session_id` DESC, on every backend. A cursor carries the key
of the last session of a page and a fingerprint of the filters it was made for; every field of
a cursor that comes back is checked (types, ranges) before it reaches a query, so a forged one
is an `InvalidInputError`, never a database error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, replace
from typing import Final

import orjson

from ._checks import check_limit, check_optional_id, check_session_type
from ._time import MAX_US, MIN_US, to_us
from .errors import InvalidInputError
from .models import MAX_IDENTIFIER_LENGTH, Session

__all__ = ["ListQuery", "PageKey", "list_query", "page_key"]

PageKey = tuple[int, str]  # (updated_at in microseconds, session_id) of a page's last session
_CURSOR_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The checked filters of a listing call. Order: `updated_at` DESC, then `session_id` DESC."""

    user_id: str | None
    session_type: str | None
    entity_id: str | None
    updated_after_us: int | None
    limit: int | None  # None: no limit (the get_all_* calls)
    after: PageKey | None
    include_runs: bool

    def fingerprint(self) -> str:
        key = orjson.dumps([self.user_id, self.session_type, self.entity_id, self.updated_after_us])
        return hashlib.blake2b(key, digest_size=6).hexdigest()

    def cursor_after(self, updated_us: int, session_id: str) -> str:
        raw = orjson.dumps([_CURSOR_VERSION, updated_us, session_id, self.fingerprint()])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def page_key(sessions: list[Session], more: bool) -> PageKey | None:
    """The key of a page's last session when more follow: for drivers that fetch one extra row."""
    if not more:
        return None
    last = sessions[-1]
    assert last.updated_at is not None
    return to_us(last.updated_at), last.session_id


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
    if type(include_runs) is not bool:
        raise InvalidInputError(f"include_runs must be a bool, got {include_runs!r}")
    query = ListQuery(
        user_id=check_optional_id(user_id, "user_id"),
        session_type=None if session_type is None else check_session_type(session_type),
        entity_id=check_optional_id(entity_id, "entity_id"),
        updated_after_us=None if updated_after is None else to_us(updated_after, "updated_after"),
        limit=None if limit is None else check_limit(limit),
        after=None,
        include_runs=include_runs,
    )
    if cursor is None:
        return query
    return replace(query, after=_decode_cursor(cursor, query.fingerprint()))


def _forged() -> InvalidInputError:
    return InvalidInputError("cursor is not a next_cursor returned by list_sessions")


def _decode_cursor(cursor: object, fingerprint: str) -> PageKey:
    if not isinstance(cursor, str) or not cursor or len(cursor) > 2048 or not cursor.isascii():
        raise InvalidInputError("cursor must be the next_cursor string of a previous page")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, updated_us, session_id, stamp = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise _forged() from exc
    if (
        version != _CURSOR_VERSION
        or type(updated_us) is not int
        or not MIN_US <= updated_us <= MAX_US
        or type(session_id) is not str
        or not 0 < len(session_id) <= MAX_IDENTIFIER_LENGTH
        or type(stamp) is not str
    ):
        raise _forged()
    try:
        check_optional_id(session_id, "cursor")
    except InvalidInputError as exc:
        raise _forged() from exc
    if stamp != fingerprint:
        raise InvalidInputError(
            "cursor belongs to a listing with other filters; pass the same user_id, "
            "session_type, entity_id and updated_after as for the first page"
        )
    return updated_us, session_id
