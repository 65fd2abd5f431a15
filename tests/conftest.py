"""Shared test set-up: asyncio through anyio's pytest plugin, and a summary of what did not run."""

from __future__ import annotations

import pytest

# Backends whose tests could not run, with the reason: printed as one line each at the end, so a
# missing server is never a silent skip.
NOT_RUN: dict[str, str] = {}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for backend, reason in sorted(NOT_RUN.items()):
        terminalreporter.write_line(f"NOT RUN: {backend} tests: {reason}", yellow=True, bold=True)
