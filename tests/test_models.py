"""The model: validation of what users build, and the fast constructor stores use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from async_agent_storage import MigrationReport, MigrationStep, Session
from async_agent_storage.models import trusted_session as build_session


def test_fast_constructor_builds_what_model_construct_builds() -> None:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "session_id": "s",
        "session_type": "team",
        "user_id": "u",
        "agent_id": "a",
        "team_id": None,
        "workflow_id": None,
        "session_data": {"session_state": {"x": 1}},
        "agent_data": {"m": 1},
        "team_data": None,
        "workflow_data": None,
        "metadata": {"k": "v"},
        "runs": [{"run_id": "r"}],
        "summary": None,
        "created_at": now,
        "updated_at": now,
        "version": 3,
    }
    fast = build_session(**fields, runs_offset=7)
    slow = Session.model_construct(**fields)
    slow._runs_offset = 7
    assert fast == slow
    assert repr(fast) == repr(slow)
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.runs_offset == 7
    assert fast.run_count == 8
    copy = fast.model_copy(update={"version": 4})
    assert copy.version == 4
    assert copy.runs_offset == 7
    fast.metadata = {"changed": True}  # still an ordinary, mutable model
    assert fast.metadata == {"changed": True}


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": ""},
        {"session_id": "x" * 256},
        {"session_id": "a\x00b"},
        {"session_id": "s", "user_id": ""},
        {"session_id": "s", "session_type": "robot"},
        {"session_id": "s", "version": -1},
        {"session_id": "s", "runs": ["not a dict"]},
        {"session_id": "s", "unknown_field": 1},
    ],
)
def test_invalid_sessions_are_refused_when_built(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Session(**fields)  # type: ignore[arg-type]


def test_a_new_session_holds_its_whole_history() -> None:
    session = Session(session_id="s", runs=[{"a": 1}])
    assert (session.runs_offset, session.run_count, session.version) == (0, 1, 0)
    assert session.created_at is None


def test_migration_report_text() -> None:
    step = MigrationStep(version=2, name="add index", checksum="c")
    plan = MigrationReport(store="db", dry_run=True, from_version=1, to_version=2, pending=[step])
    assert str(plan) == "db: would apply 1 migration(s) 2 (add index): version 1 -> 2"
    done = MigrationReport(store="db", dry_run=False, from_version=2, to_version=2)
    assert done.up_to_date
    assert str(done) == "db: schema at version 2, nothing to do"
