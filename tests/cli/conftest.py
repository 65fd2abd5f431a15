"""The command line's tests: real stores (SQLite files, the PostgreSQL test server), filled through
the public API, and the CLI run in-process (typer's CliRunner) or as the installed `aas`."""

from __future__ import annotations

import asyncio
import os
import pty
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from async_agent_storage import Session, open_store
from async_agent_storage.cli import app
from tests.conftest import NOT_RUN
from tests.mongo._server import MongoecoServer, mongoeco_python
from tests.postgres._server import ENV_URL, LOCAL_URL, Cluster, answers, find_binaries

TABLE = "agent_sessions"


def invoke(args: Sequence[str], *, input: str | None = None, **env: str) -> Result:
    """The CLI in-process; AAS_URL and AAS_TABLE come only from `env`."""
    clean = {"AAS_URL": None, "AAS_TABLE": None, "COLUMNS": "200", **env}
    return CliRunner().invoke(app, list(args), input=input, env=clean, catch_exceptions=False)


def aas_script() -> Path:
    """The `aas` script the package installs next to this Python."""
    script = Path(sys.executable).parent / "aas"
    if not script.exists():
        found = shutil.which("aas")
        assert found, f"the `aas` script is not installed next to {sys.executable}"
        script = Path(found)
    return script


def run_aas(
    args: Sequence[str], *, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """The installed `aas` as a separate process."""
    environ = {k: v for k, v in os.environ.items() if k not in ("AAS_URL", "AAS_TABLE")}
    environ.update(env)
    return subprocess.run(
        [str(aas_script()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        check=False,
    )


def on_a_terminal(args: Sequence[str]) -> tuple[str, bytes]:
    """The installed `aas` with its stderr on a pseudo-terminal (as a person runs it) and its
    stdout piped: (what the terminal showed, stdout)."""
    main, child = pty.openpty()
    try:
        process = subprocess.run(
            [str(aas_script()), *args],
            stdout=subprocess.PIPE,
            stderr=child,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
            timeout=120,
            check=True,
        )
        os.close(child)
        child = -1
        seen = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    return seen.decode(errors="replace"), process.stdout


def sample_sessions() -> list[Session]:
    """Five sessions: two users, three agents, a team and a workflow; text runs, message runs and
    a run the chat format cannot use; user text that looks like rich markup."""
    return [
        Session(
            session_id="alice-1",
            user_id="alice",
            agent_id="support",
            session_data={"session_state": {"city": "Paris", "tier": 1}, "session_name": "[b]x"},
            runs=[
                {"input": "hello [mongo]", "output": "hi, how can I help?"},
                {"input": "weather?", "output": "sunny"},
            ],
        ),
        Session(
            session_id="alice-2",
            user_id="alice",
            agent_id="sales",
            session_data={"session_state": {"city": "Lyon", "tier": 2, "vip": True}},
            runs=[
                {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": "price?", "created_at": 1},
                        {"role": "assistant", "content": "10 €", "metrics": {"tokens": 3}},
                    ]
                },
                {"event": "tool-only run"},
            ],
        ),
        Session(
            session_id="bob-1",
            user_id="bob",
            agent_id="support",
            session_data={"session_state": {"city": "Paris", "tier": 1}},
            runs=[{"input": "refund", "output": "done"}],
        ),
        Session(
            session_id="team-1",
            session_type="team",
            user_id="bob",
            team_id="crew",
            runs=[{"input": "plan", "output": "ok"}],
        ),
        Session(session_id="flow-1", session_type="workflow", workflow_id="nightly"),
    ]


async def fill(url: str, table: str, sessions: Sequence[Session]) -> None:
    """Write the sessions one by one, in order (the last one is the most recent)."""
    async with open_store(url, table_name=table, auto_upgrade_schema=True) as store:
        for session in sessions:
            await store.upsert(session)


async def drop(url: str, table: str) -> None:
    async with open_store(url, table_name=table, auto_upgrade_schema=True) as store:
        await store.drop()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The PostgreSQL test server: AAS_TEST_POSTGRES_URL, the local one, or a throwaway one."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    if answers(LOCAL_URL):
        yield LOCAL_URL
        return
    bindir = find_binaries()
    if bindir is None:
        NOT_RUN["cli on postgres"] = f"no server at {LOCAL_URL} and no binaries to start one"
        pytest.skip(NOT_RUN["cli on postgres"])
    cluster = Cluster(bindir)
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """A MongoDB server (AAS_TEST_MONGO_URL, else mongoeco's, started here) and a database of
    these tests in the URL, as a user's URL names it."""
    url = os.environ.get("AAS_TEST_MONGO_URL")
    server = None
    if not url:
        python, why_not = mongoeco_python()
        if python is None:
            NOT_RUN["cli on mongo"] = why_not
            pytest.skip(why_not)
        server = MongoecoServer(python)
        server.start()
        url = server.url
    scheme, _, rest = url.partition("://")
    hosts, slash, tail = rest.partition("/")
    options = tail.partition("?")[2] if slash else ""
    try:
        yield f"{scheme}://{hosts}/aas_cli_test" + (f"?{options}" if options else "")
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mongo", marks=pytest.mark.mongo),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, table) of a store holding `sample_sessions()`, on each backend."""
    if request.param == "sqlite":
        url, table = f"sqlite:///{tmp_path / 'store.db'}", TABLE
        asyncio.run(fill(url, table, sample_sessions()))
        yield url, table
        return
    url = request.getfixturevalue("pg_url" if request.param == "postgres" else "mongo_url")
    table = f"cli_{uuid.uuid4().hex[:12]}"
    asyncio.run(fill(url, table, sample_sessions()))
    try:
        yield url, table
    finally:
        asyncio.run(drop(url, table))


def hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat()
