"""`activity()` in the conformance suite: totals and counts per entity, active sessions by
`updated_at`, runs per entity per time bucket by the time each run was written, the argument
checks and strict tenancy.

Mixed into `SessionStoreConformance`; every driver runs it unchanged. Each test starts from an
empty table, so every figure is exact. The store sets every time itself: the windows are moved
with `now=` instead of waiting.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..errors import InvalidInputError
from ..models import Activity, ActivityBucket, Session
from ..protocol import SessionStore

StoreFactory = Any

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _sid() -> str:
    return f"a-{uuid.uuid4().hex[:12]}"


def _run(i: int) -> dict[str, Any]:
    return {"input": f"question {i}", "output": f"answer {i}"}


def _floor(when: datetime, size: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return when - (when - epoch) % size


def _per_entity(activity: Activity) -> dict[str | None, tuple[int, int]]:
    return {e.entity_id: (e.sessions, e.runs) for e in activity.entities}


def _turns(activity: Activity) -> dict[str | None, int]:
    totals: dict[str | None, int] = {}
    for turn in activity.turns:
        totals[turn.entity_id] = totals.get(turn.entity_id, 0) + turn.runs
    return totals


async def _seed(store: SessionStore) -> tuple[datetime, datetime]:
    """Five sessions over three entities and one without any; returns the first and last write's
    time (as the store recorded them)."""
    first = await store.upsert(
        Session(session_id=_sid(), user_id="u1", agent_id="support", runs=[_run(0), _run(1)])
    )
    await store.append_runs(first.session_id, [_run(2)], user_id="u1")
    await store.upsert(Session(session_id=_sid(), user_id="u2", agent_id="support"))
    # An agent inside a team counts under its agent.
    await store.upsert(
        Session(
            session_id=_sid(),
            user_id="u1",
            session_type="team",
            agent_id="support",
            team_id="crew",
            runs=[_run(0)],
        )
    )
    await store.upsert(
        Session(
            session_id=_sid(), user_id="u2", session_type="team", team_id="crew", runs=[_run(0)]
        )
    )
    await store.upsert_many(
        [
            Session(
                session_id=_sid(),
                user_id="u1",
                session_type="workflow",
                workflow_id="nightly",
                runs=[_run(0), _run(1)],
            ),
            Session(session_id=_sid(), user_id="u2", runs=[_run(0)]),
        ]
    )
    last = await store.append_runs(_sid(), [_run(0), _run(1), _run(2)], user_id="u3")
    assert first.updated_at is not None
    assert last.updated_at is not None
    return first.updated_at, last.updated_at


class ActivityConformance:
    """`activity()` on one backend; see the module docstring."""

    async def test_activity_of_an_empty_store_is_all_zeros(self, store: SessionStore) -> None:
        activity = await store.activity()
        assert (activity.sessions, activity.runs) == (0, 0)
        assert (activity.active_last_hour, activity.active_last_day) == (0, 0)
        assert activity.active_last_week == 0
        assert activity.entities == []
        assert activity.turns == []
        assert activity.bucket == "hour"
        assert len(activity.buckets) == 48  # the last two days, the current hour included
        assert activity.buckets == sorted(activity.buckets)
        assert activity.buckets[0] == activity.since
        assert activity.buckets[-1] <= activity.now < activity.buckets[-1] + HOUR
        daily = await store.activity(bucket="day")
        assert len(daily.buckets) == 30
        assert daily.since == _floor(daily.since, DAY)

    async def test_activity_counts_sessions_and_runs_per_entity(self, store: SessionStore) -> None:
        await _seed(store)
        activity = await store.activity()
        assert (activity.sessions, activity.runs) == (7, 11)
        assert _per_entity(activity) == {
            "support": (3, 4),
            "crew": (1, 1),
            "nightly": (1, 2),
            None: (2, 4),
        }
        # Most sessions first; sessions without an entity last among equals.
        assert activity.entities[0].entity_id == "support"
        assert activity.entities[-1].sessions == 1
        mine = await store.activity(user_id="u1")
        assert (mine.sessions, mine.runs) == (3, 6)
        assert _per_entity(mine) == {"support": (2, 4), "nightly": (1, 2)}
        assert (await store.activity(user_id="nobody")).sessions == 0

    async def test_active_sessions_are_counted_by_updated_at_before_now(
        self, store: SessionStore
    ) -> None:
        first, last = await _seed(store)
        now = await store.activity()
        assert (now.active_last_hour, now.active_last_day, now.active_last_week) == (7, 7, 7)
        later = await store.activity(now=last + 2 * HOUR)
        assert (later.active_last_hour, later.active_last_day, later.active_last_week) == (0, 7, 7)
        days = await store.activity(now=last + 2 * DAY)
        assert (days.active_last_hour, days.active_last_day, days.active_last_week) == (0, 0, 7)
        weeks = await store.activity(now=last + 8 * DAY)
        assert (weeks.active_last_week, weeks.sessions) == (0, 7)  # totals are the store's
        # Sessions written after `now` are not active at `now`.
        before = await store.activity(now=first - timedelta(seconds=1))
        assert before.active_last_week == 0
        assert (await store.activity(user_id="u2")).active_last_hour == 3

    async def test_turns_are_runs_per_entity_in_the_bucket_of_their_write(
        self, store: SessionStore
    ) -> None:
        first, last = await _seed(store)
        buckets: tuple[tuple[ActivityBucket, timedelta], ...] = (("hour", HOUR), ("day", DAY))
        for bucket, size in buckets:
            activity = await store.activity(bucket=bucket, now=last + 3 * size)
            assert activity.bucket == bucket
            assert _turns(activity) == {"support": 4, "crew": 1, "nightly": 2, None: 4}
            window = {_floor(first, size), _floor(last, size)}
            assert {t.start for t in activity.turns} <= window | {min(window) + size}
            assert all(t.start in activity.buckets for t in activity.turns)
            assert len(activity.buckets) == (
                1 + (activity.now - activity.since) // size
            )  # every bucket, those without runs included
        mine = await store.activity(user_id="u1")
        assert _turns(mine) == {"support": 4, "nightly": 2}

    async def test_turns_count_only_runs_written_between_since_and_now(
        self, store: SessionStore
    ) -> None:
        first, last = await _seed(store)
        assert (await store.activity(now=first - timedelta(seconds=1))).turns == []
        after = await store.activity(since=last + 2 * HOUR, now=last + 5 * HOUR)
        assert after.turns == []
        assert after.since == _floor(last + 2 * HOUR, HOUR)  # rounded down to its bucket
        # Runs written more than two days ago are outside the default window.
        assert (await store.activity(now=last + 3 * DAY)).turns == []
        assert _turns(await store.activity(since=first, now=last + 3 * DAY)) == {
            "support": 4,
            "crew": 1,
            "nightly": 2,
            None: 4,
        }

    async def test_turns_follow_the_runs_each_call_keeps(self, store: SessionStore) -> None:
        sid = _sid()
        await store.append_runs(sid, [_run(i) for i in range(6)], user_id="u")
        session = await store.read(sid)
        assert session is not None
        await store.upsert(session.model_copy(update={"agent_id": "bot"}))  # runs rewritten as-is
        assert _turns(await store.activity()) == {"bot": 6}
        assert len(await store.pop_runs(sid, 2, user_id="u")) == 2
        assert _turns(await store.activity()) == {"bot": 4}
        assert await store.truncate_runs(sid, keep_last=3, user_id="u") == 1
        assert _turns(await store.activity()) == {"bot": 3}
        fork = await store.fork_session(sid, _sid(), user_id="u")
        assert fork is not None
        activity = await store.activity()
        assert _turns(activity) == {"bot": 6}
        assert (activity.sessions, activity.runs) == (2, 6)
        replaced = session.model_copy(update={"agent_id": "bot", "runs": [_run(9)], "run_ids": []})
        await store.upsert(replaced)  # the whole history replaced by one new run
        assert _turns(await store.activity()) == {"bot": 4}
        await store.clear_runs(sid)
        await store.delete_session(fork.session_id)
        activity = await store.activity()
        assert (activity.sessions, activity.runs, activity.turns) == (1, 0, [])

    @pytest.mark.parametrize(
        "arguments",
        [
            {"bucket": "week"},
            {"bucket": None},
            {"bucket": ["hour"]},
            {"now": datetime(2026, 1, 1)},  # naive
            {"now": "2026-01-01T00:00:00Z"},
            {"since": datetime(2026, 1, 2, tzinfo=UTC), "now": datetime(2026, 1, 1, tzinfo=UTC)},
            {"since": datetime(2020, 1, 1, tzinfo=UTC)},  # more than 1,000 hours
            {"user_id": ""},
        ],
    )
    async def test_activity_refuses_bad_arguments(
        self, store: SessionStore, arguments: dict[str, Any]
    ) -> None:
        with pytest.raises(InvalidInputError):
            await store.activity(**arguments)

    async def test_activity_needs_a_user_id_when_the_store_requires_one(
        self, store_factory: StoreFactory
    ) -> None:
        async with store_factory(require_user_id=True) as store:
            await store.append_runs(_sid(), [_run(0)], user_id="u")
            with pytest.raises(InvalidInputError, match="require_user_id"):
                await store.activity()
            assert (await store.activity(user_id="u")).runs == 1
