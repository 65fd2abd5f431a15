"""Argument and option checks, the same on every backend.

The store calls these before touching the database, so bad input is refused the same way
everywhere and nothing is written: arguments raise `InvalidInputError`, store options
`ConfigurationError`.
"""

from __future__ import annotations

import math
import re
from typing import Final, get_args

from .errors import ConfigurationError, InvalidInputError
from .models import MAX_IDENTIFIER_LENGTH, SessionType

__all__ = [
    "DEFAULT_TABLE_NAME",
    "MAX_LIST_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_VERSION",
    "SESSION_TYPES",
    "check_count",
    "check_duration",
    "check_fence",
    "check_id",
    "check_if_version",
    "check_int_option",
    "check_last_runs",
    "check_limit",
    "check_max_bytes",
    "check_name",
    "check_optional_id",
    "check_optional_seconds",
    "check_seconds",
    "check_session_type",
]

SESSION_TYPES: Final = frozenset(get_args(SessionType))
DEFAULT_TABLE_NAME: Final = "agent_sessions"
MAX_LIST_LIMIT: Final = 10_000
MAX_NAME_LENGTH: Final = 48  # leaves room for suffixes (_runs, _migrations) under PostgreSQL's 63
MAX_VERSION: Final = 2**63 - 1  # versions are signed 64-bit integers in every backend
_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- store options ---------------------------------------------------------------------------


def check_name(name: object, what: str = "table_name") -> str:
    """Validate a table, collection or schema name: letters, digits and _, not starting with a
    digit, at most 48 characters, not reserved by SQLite (``sqlite_``). Anything else is a
    `ConfigurationError`, never SQL."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"{what}={name!r} is not a valid name: use letters, digits and underscores, "
            f"not starting with a digit, at most {MAX_NAME_LENGTH} characters"
        )
    if name.lower().startswith("sqlite_"):
        raise ConfigurationError(f"{what}={name!r}: names starting with 'sqlite_' are reserved")
    return name


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A duration option: a finite int or float > 0 (>= 0 with `allow_zero`). Booleans, NaN and
    infinities are refused."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return float(value)


def check_optional_seconds(name: str, value: object, *, allow_zero: bool = False) -> float | None:
    """`check_seconds`, or None for "no limit"."""
    return None if value is None else check_seconds(name, value, allow_zero=allow_zero)


def check_int_option(name: str, value: object, *, low: int, high: int | None = None) -> int:
    """An integer option within ``low .. high``; booleans are refused."""
    if type(value) is not int or value < low or (high is not None and value > high):
        upto = f" to {high}" if high is not None else " or more"
        raise ConfigurationError(f"{name} must be an int from {low}{upto}, got {value!r}")
    return value


def check_max_bytes(value: object) -> int:
    return check_int_option("max_session_bytes", value, low=1024)


# --- call arguments ----------------------------------------------------------------------------


def check_id(value: object, what: str) -> str:
    """A session, user or entity id: a non-empty str of at most 255 characters, without NUL or
    lone surrogates (which no backend can store as text)."""
    if type(value) is not str:
        raise InvalidInputError(f"{what} must be a str, got {type(value).__name__}")
    if not 0 < len(value) <= MAX_IDENTIFIER_LENGTH or "\x00" in value:
        raise InvalidInputError(
            f"{what}={value[:40]!r} must be 1-{MAX_IDENTIFIER_LENGTH} characters without NUL"
        )
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidInputError(
                f"{what}={value[:40]!r} holds a lone surrogate: it is not valid Unicode text"
            ) from None
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
    if type(if_version) is not int or not 0 <= if_version <= MAX_VERSION:
        raise InvalidInputError(
            f"if_version must be None or an int from 0 to 2**63-1, got {if_version!r}"
        )
    return if_version


def check_count(value: object, what: str, *, low: int) -> int:
    """A number of runs: an int from `low` to 2**31-1."""
    if type(value) is not int or not low <= value <= 2**31 - 1:
        raise InvalidInputError(f"{what} must be an int >= {low}, got {value!r}")
    return value


def check_limit(limit: object, what: str = "limit") -> int:
    if type(limit) is not int or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInputError(f"{what} must be an int from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
    return limit


def check_session_type(value: object) -> str:
    if not isinstance(value, str) or value not in SESSION_TYPES:
        raise InvalidInputError(
            f"session_type must be one of {sorted(SESSION_TYPES)}, got {value!r}"
        )
    return str(value)


def check_fence(fence: object) -> int | None:
    """A lease token a write carries (`Lease.token`): None, or an int from 0 to 2**63-1."""
    if fence is None:
        return None
    if type(fence) is not int or not 0 <= fence <= MAX_VERSION:
        raise InvalidInputError(f"fence must be None or a lease token (an int >= 0), got {fence!r}")
    return fence


def check_duration(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A duration argument of a call (a lease's ttl, wait...): a finite number of seconds > 0
    (>= 0 with `allow_zero`), at most a day. Booleans, NaN and infinities are refused."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
        or value > 86_400
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(
            f"{name} must be a number of seconds {bound} (at most a day), got {value!r}"
        )
    return float(value)
