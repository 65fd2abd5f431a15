"""What a store reports about its calls: logs, OpenTelemetry spans and metrics, call counts.

Every data call passes through `StoreBase._call`, which asks its `Observer` to `start` and `end`
it. What is reported never holds a payload, an id, a password or a URL with credentials: the
operation, the backend, the table, the duration and the error class.

- Logs: one logger per driver (``async_agent_storage.sqlite``, ``.postgres``, ``.mongo``);
  WARNING for a call slower than the store's `slow_call_threshold`.
- Spans and metrics: when the OpenTelemetry API is installed (the ``otel`` extra), each call is a
  span following the database client conventions (``db.system``, ``db.operation.name``,
  ``db.collection.name``), and ``db.client.operation.duration`` records its duration, with
  ``error.type`` when it failed. Without an SDK configured they cost almost nothing; without the
  API installed, nothing.
- Counts: calls and errors per operation, kept in memory for `store.stats()`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["Observer", "logger_for"]

_INSTRUMENTATION: Final = "async_agent_storage"
# OpenTelemetry's name for each backend (db.system / db.system.name).
_LOGGERS: Final = {"sqlite": "sqlite", "postgresql": "postgres", "mongodb": "mongo"}

_otel_metrics: Any
_otel_trace: Any
try:  # the optional `otel` extra
    import opentelemetry.metrics as _otel_metrics
    import opentelemetry.trace as _otel_trace
except ImportError:  # pragma: no cover - depends on the installed extras
    _otel_metrics = _otel_trace = None


def logger_for(backend: str) -> logging.Logger:
    """The logger of a driver: ``async_agent_storage.<sqlite|postgres|mongo>``."""
    return logging.getLogger(f"async_agent_storage.{_LOGGERS.get(backend, backend)}")


@dataclass(slots=True)
class _Call:
    operation: str
    started: float
    span: Any


class Observer:
    """The reporting of one store's calls (see the module docstring)."""

    def __init__(
        self,
        *,
        backend: str,
        table: str,
        describe: Callable[[], str],
        slow_call_threshold: float | None,
    ) -> None:
        self.log = logger_for(backend)
        self._describe = describe
        self.slow_call_threshold = slow_call_threshold
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self._attributes = {
            "db.system": backend,
            "db.system.name": backend,
            "db.collection.name": table,
        }
        self._tracer: Any = None
        self._next_check = 0.0
        self._duration: Any = None
        if _otel_metrics is not None:
            meter = _otel_metrics.get_meter(_INSTRUMENTATION)
            self._duration = meter.create_histogram(
                "db.client.operation.duration",
                unit="s",
                description="Duration of the store's calls",
            )

    def _tracing(self, now: float) -> Any:
        """The tracer once an SDK (a real tracer provider) is configured; None before. The API's
        proxy tracer would make a no-op span per call, which costs more than the call's own
        bookkeeping, so no span is made until then; whether one was configured meanwhile is
        looked up once a second (the lookup reads the environment)."""
        if _otel_trace is None or now < self._next_check:
            return None
        self._next_check = now + 1.0
        provider = _otel_trace.get_tracer_provider()
        if isinstance(provider, _otel_trace.ProxyTracerProvider | _otel_trace.NoOpTracerProvider):
            return None
        self._tracer = provider.get_tracer(_INSTRUMENTATION)
        return self._tracer

    def start(self, operation: str) -> _Call:
        self.calls[operation] += 1
        started = time.perf_counter()
        span = None
        tracer = self._tracer or self._tracing(started)
        if tracer is not None:
            span = tracer.start_span(
                f"{operation} {self._attributes['db.collection.name']}",
                kind=_otel_trace.SpanKind.CLIENT,
                attributes={**self._attributes, "db.operation.name": operation},
            )
        return _Call(operation, started, span)

    def end(self, call: _Call, error: BaseException | None = None) -> None:
        elapsed = time.perf_counter() - call.started
        kind = None if error is None else type(error).__name__
        if error is not None:
            self.errors[call.operation] += 1
        if call.span is not None:
            if kind is not None:
                call.span.set_attribute("error.type", kind)
                call.span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, kind))
            call.span.end()
        if self._duration is not None:
            attributes = {**self._attributes, "db.operation.name": call.operation}
            if kind is not None:
                attributes["error.type"] = kind
            self._duration.record(elapsed, attributes)
        threshold = self.slow_call_threshold
        if threshold is not None and elapsed >= threshold:
            self.log.warning(
                "%s: %s took %.3f s (slow_call_threshold=%g s)%s",
                self._describe(),
                call.operation,
                elapsed,
                threshold,
                "" if kind is None else f" and failed ({kind})",
            )
