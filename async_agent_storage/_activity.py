"""`activity()`: its checked arguments (`ActivityQuery`), what a driver's `_activity` hook counts
(`ActivityCounts`), and the `Activity` model built from them.

Every figure is counted by the database (``GROUP BY``, or an aggregation pipeline); the hook
returns one row per group, never a session. Times are epoch microseconds, UTC. Buckets are
aligned on the epoch (hours and days of UTC) and numbered from `since_us`, so a driver only
divides: ``(run time - since_us) // bucket_us``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._checks import check_optional_id
from ._time import from_us, now_us, to_us
from .errors import InvalidInputError
from .models import Activity, ActivityBucket, EntityActivity, TurnCount

__all__ = [
    "BUCKET_US",
    "MAX_BUCKETS",
    "ActivityCounts",
    "ActivityQuery",
    "activity_from_counts",
    "activity_query",
]

HOUR_US: Final = 3_600_000_000
DAY_US: Final = 24 * HOUR_US
WEEK_US: Final = 7 * DAY_US
BUCKET_US: Final[dict[str, int]] = {"hour": HOUR_US, "day": DAY_US}
# The buckets `since=None` covers, the current one included: two days of hours, a month of days.
DEFAULT_BUCKETS: Final[dict[str, int]] = {"hour": 48, "day": 30}
MAX_BUCKETS: Final = 1000


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """The checked arguments of `activity()`: `since_us` is the start of its bucket, and runs are
    counted from it to `now_us` (both included)."""

    now_us: int
    since_us: int
    bucket: ActivityBucket
    bucket_us: int
    user_id: str | None

    @property
    def active_after_us(self) -> tuple[int, int, int]:
        """The `updated_at` a session must exceed to be active in the last hour, day, week."""
        return self.now_us - HOUR_US, self.now_us - DAY_US, self.now_us - WEEK_US


@dataclass(frozen=True, slots=True)
class ActivityCounts:
    """What a driver's `_activity` hook counted.

    - `entities`: ``(entity_id, sessions, runs)`` per entity (``coalesce(agent_id, team_id,
      workflow_id)``), runs being the sum of the sessions' run counts;
    - `active`: the sessions updated after each of `ActivityQuery.active_after_us` and not after
      `now_us`;
    - `turns`: ``(entity_id, bucket index, runs)`` for the runs written from `since_us` to
      `now_us`, the index being ``(time - since_us) // bucket_us``.
    """

    entities: list[tuple[str | None, int, int]]
    active: tuple[int, int, int]
    turns: list[tuple[str | None, int, int]]


def activity_query(
    *, now: object, bucket: object, since: object, user_id: str | None
) -> ActivityQuery:
    if not isinstance(bucket, str) or bucket not in BUCKET_US:
        raise InvalidInputError(f"bucket must be 'hour' or 'day', got {bucket!r}")
    size = BUCKET_US[bucket]
    now_value = now_us() if now is None else to_us(now, "now")
    if since is None:
        since_value = now_value - (DEFAULT_BUCKETS[bucket] - 1) * size
    else:
        since_value = to_us(since, "since")
        if since_value > now_value:
            raise InvalidInputError("since must not be later than now")
    since_value -= since_value % size  # the start of its bucket
    if (now_value - since_value) // size + 1 > MAX_BUCKETS:
        raise InvalidInputError(
            f"since is too far back: at most {MAX_BUCKETS} buckets of one {bucket} are counted"
        )
    return ActivityQuery(
        now_us=now_value,
        since_us=since_value,
        bucket="hour" if bucket == "hour" else "day",
        bucket_us=size,
        user_id=check_optional_id(user_id, "user_id"),
    )


def _entity_order(entity: str | None) -> tuple[bool, str]:
    return entity is None, entity or ""


def activity_from_counts(query: ActivityQuery, counts: ActivityCounts) -> Activity:
    entities = sorted(
        (EntityActivity(entity_id=e, sessions=s, runs=r) for e, s, r in counts.entities),
        key=lambda x: (-x.sessions, *_entity_order(x.entity_id)),
    )
    size = query.bucket_us
    starts = [from_us(us) for us in range(query.since_us, query.now_us + 1, size)]
    turns = sorted(
        (
            TurnCount(entity_id=e, start=from_us(query.since_us + index * size), runs=n)
            for e, index, n in counts.turns
            if n
        ),
        key=lambda t: (t.start, *_entity_order(t.entity_id)),
    )
    hour, day, week = counts.active
    return Activity(
        now=from_us(query.now_us),
        since=from_us(query.since_us),
        bucket=query.bucket,
        sessions=sum(s for _, s, _ in counts.entities),
        runs=sum(r for _, _, r in counts.entities),
        active_last_hour=hour,
        active_last_day=day,
        active_last_week=week,
        entities=entities,
        buckets=starts,
        turns=turns,
    )
