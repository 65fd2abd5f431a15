"""What a store reports: logs, OpenTelemetry spans and metrics, health and stats. Real databases
(SQLite files, the PostgreSQL server) and the OpenTelemetry SDK's in-memory exporters; and no
payload, id or password ever appears in what is reported."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from async_agent_storage import (
    InvalidInputError,
    SessionOwnershipError,
    SqliteStore,
    StoreClosedError,
)

pytestmark = pytest.mark.anyio

SECRETS = ("SECRET-PAYLOAD-7731", "SECRET-SESSION-4410", "SECRET-USER-9925", "SECRET-RUN-0042")


@pytest.fixture(scope="module")
def telemetry() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """The SDK's in-memory exporters, installed once for the process (OpenTelemetry's providers
    can be set only once)."""
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader


async def secret_turns(store: Any) -> None:
    """Calls whose arguments carry the secrets, a failed one among them."""
    sid, user, run_id = SECRETS[1], SECRETS[2], SECRETS[3]
    await store.append_runs(
        sid, [{"run_id": run_id, "text": SECRETS[0]}], user_id=user, state_patch={"k": SECRETS[0]}
    )
    await store.read(sid, user_id=user)
    await store.list_sessions(user_id=user)
    with pytest.raises(SessionOwnershipError):
        await store.append_runs(sid, [{"text": SECRETS[0]}], user_id="someone else")
    with pytest.raises(InvalidInputError):
        await store.read("")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


async def test_migrations_applied_at_open_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="async_agent_storage")
    async with SqliteStore(db_file=tmp_path / "s.db") as store:
        latest = len(store.migrations)
    applied = [
        r.getMessage()
        for r in caplog.records
        if r.name == "async_agent_storage.sqlite" and "applied migration" in r.getMessage()
    ]
    assert len(applied) == latest
    assert "applied migration 1 (create sessions and runs tables)" in applied[0]
    caplog.clear()
    async with SqliteStore(db_file=tmp_path / "s.db"):  # nothing to apply: nothing logged
        pass
    assert not [r for r in caplog.records if "applied migration" in r.getMessage()]


async def test_slow_calls_are_logged_at_warning_without_payloads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, the drivers' own DEBUG logs included
    async with SqliteStore(db_file=tmp_path / "s.db", slow_call_threshold=0) as store:
        await secret_turns(store)
    slow = [
        r for r in caplog.records if r.levelno == logging.WARNING and "slow_call_threshold" in r.msg
    ]
    operations = {r.args[1] for r in slow if isinstance(r.args, tuple)}
    assert {"append_runs", "read", "list_sessions"} <= operations
    assert any("failed (SessionOwnershipError)" in r.getMessage() for r in slow)
    assert all(r.name == "async_agent_storage.sqlite" for r in slow)
    for record in caplog.records:
        assert_no_secret(record.getMessage())


async def test_no_warning_below_the_threshold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="async_agent_storage")
    async with SqliteStore(db_file=tmp_path / "s.db", slow_call_threshold=60) as store:
        await store.append_runs("s", [{"i": 0}])
    assert not caplog.records


async def test_every_call_is_a_span_with_the_database_conventions(
    tmp_path: Path, telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader]
) -> None:
    exporter, reader = telemetry
    exporter.clear()
    async with SqliteStore("observed", tmp_path / "s.db") as store:
        await secret_turns(store)
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    assert names[:3] == ["append_runs observed", "read observed", "list_sessions observed"]
    first = spans[0]
    assert first.kind == trace.SpanKind.CLIENT
    assert first.attributes is not None
    assert first.attributes["db.system"] == "sqlite"
    assert first.attributes["db.operation.name"] == "append_runs"
    assert first.attributes["db.collection.name"] == "observed"
    failed = [s for s in spans if s.attributes and s.attributes.get("error.type")]
    assert [s.attributes["error.type"] for s in failed if s.attributes] == [
        "SessionOwnershipError"
    ]  # a call refused before reaching the store (read("")) is no call of the database
    for span in spans:
        assert_no_secret(repr(dict(span.attributes or {})) + span.name)
    data = reader.get_metrics_data()
    assert data is not None
    points = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "db.client.operation.duration"
        for point in metric.data.data_points
    ]
    recorded = {
        (p.attributes or {}).get("db.operation.name")
        for p in points
        if (p.attributes or {}).get("db.collection.name") == "observed"
    }
    assert {"append_runs", "read", "list_sessions"} <= recorded
    assert any((p.attributes or {}).get("error.type") == "SessionOwnershipError" for p in points)
    for point in points:
        assert_no_secret(repr(dict(point.attributes or {})))


async def test_ping_and_stats(tmp_path: Path) -> None:
    store = SqliteStore(db_file=tmp_path / "s.db")
    with pytest.raises(StoreClosedError):
        await store.ping()
    assert store.stats()["state"] == "new"
    async with store:
        await store.ping()
        await store.append_runs("s", [{"i": 0}])
        await store.read("s")
        stats = store.stats()
        assert stats["backend"] == "sqlite"
        assert stats["state"] == "open"
        assert stats["calls"] == {"ping": 1, "append_runs": 1, "read": 1}
        assert stats["errors"] == {}
        assert stats["writes"] >= 1
        assert stats["reads"] >= 2
        assert stats["reader_connections"] == store.reader_connections
    with pytest.raises(StoreClosedError):
        await store.ping()
    assert store.stats()["state"] == "closed"
