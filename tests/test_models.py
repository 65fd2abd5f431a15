"""The model: validation of what users build, and the fast constructor stores use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from async_agent_storage import MigrationReport, MigrationStep, Session, SessionValidationError
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
        "runs_offset": 7,
        "run_ids": ["r"],
    }
    fast = build_session(**fields)
    slow = Session.model_construct(**fields)
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
    with pytest.raises(SessionValidationError):
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


def test_an_invalid_session_is_invalid_input_and_pydantic_says_why() -> None:
    from async_agent_storage import InvalidInputError

    with pytest.raises(InvalidInputError) as info:
        Session(session_id="", version=-1)
    assert isinstance(info.value, SessionValidationError)
    assert isinstance(info.value, ValueError)
    fields = {error["loc"][0] for error in info.value.errors()}
    assert fields == {"session_id", "version"}


def test_runs_offset_and_run_ids_are_fields_that_survive_json() -> None:
    session = Session(session_id="s", runs=[{"a": 1}], runs_offset=4, run_ids=["r4"])
    again = Session.model_validate_json(session.model_dump_json())
    assert (again.runs_offset, again.run_ids, again.run_count) == (4, ["r4"], 5)
