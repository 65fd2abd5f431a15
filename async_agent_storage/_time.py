"""Time as every backend stores it: microseconds since the Unix epoch, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Final

from .errors import InvalidInputError

__all__ = ["EPOCH", "MAX_US", "MIN_US", "from_us", "now_us", "to_us"]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The range of an aware `datetime` (years 1 to 9999), in microseconds from the epoch.
MIN_US: Final = -62_135_596_800_000_000
MAX_US: Final = 253_402_300_799_999_999


def now_us() -> int:
    """Microseconds since the Unix epoch, UTC: the resolution every backend stores."""
    return time.time_ns() // 1000


def from_us(us: int) -> datetime:
    """Exact (no float rounding) conversion of epoch microseconds to an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def to_us(value: object, what: str = "datetime") -> int:
    """An aware datetime as epoch microseconds; anything else is an `InvalidInputError`."""
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(
            f"{what} is a naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
        )
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
