"""The Agno environments (one per Agno version, built by `make agno-envs`, or here on first use
with the same recipe) and the tables each Agno version writes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import NOT_RUN

ROOT = Path(__file__).resolve().parents[3]
WRITER = Path(__file__).with_name("write_sessions.py")
MAJORS = (1, 2, 3)


def agno_python(major: int) -> Path:
    """The Python of the Agno `major`.x environment; NOT RUN (with the reason) when it cannot be
    installed."""
    env = ROOT / f".venv-agno{major}"
    stamp = env / ".installed"
    if not stamp.exists():
        try:
            subprocess.run(
                ["make", "--no-print-directory", f".venv-agno{major}/.installed"],
                cwd=ROOT,
                capture_output=True,
                timeout=900,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"`make .venv-agno{major}/.installed` failed: {exc}"
        else:
            log = env / "install.log"
            last = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            reason = f"Agno {major}.x could not be installed: {' '.join(last) or 'no log'}"
        if not stamp.exists():
            NOT_RUN[f"import from agno {major}.x"] = reason
            pytest.skip(reason)
    return env / "bin" / "python"


@dataclass
class AgnoTables:
    """What one Agno version wrote: where (`url` for `aas import agno --from`), which tables,
    and which sessions."""

    major: int
    version: str
    backend: str
    url: str
    tables: dict[str, str]
    sessions: dict[str, list[str]]


def write(
    major: int, backend: str, target: str, prefix: str, schema: str | None, *extra: str
) -> dict[str, Any]:
    args = [str(agno_python(major)), str(WRITER), backend, target, prefix, *extra]
    if schema is not None:
        args += ["--schema", schema]
    env = {**os.environ, "AGNO_TELEMETRY": "false", "AGNO_MONITOR": "false"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, f"Agno {major}.x could not write its sessions:\n{done.stderr}"
    written: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return written


async def drop_schema(url: str, schema: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture(params=MAJORS, ids=[f"agno{m}" for m in MAJORS])
def agno_major(request: pytest.FixtureRequest) -> int:
    major: int = request.param
    agno_python(major)
    return major


@pytest.fixture
def agno_sqlite(agno_major: int, tmp_path: Path) -> AgnoTables:
    path = tmp_path / "agno.db"
    written = write(agno_major, "sqlite", str(path), "agno_s", None)
    return AgnoTables(
        agno_major, written["agno"], "sqlite", str(path), written["tables"], written["sessions"]
    )


@pytest.fixture
def agno_postgres(agno_major: int, pg_url: str) -> Iterator[AgnoTables]:
    schema = f"agno_{uuid.uuid4().hex[:10]}"
    agno_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        written = write(agno_major, "postgres", agno_url, "agno_s", schema)
        tables = {kind: f"{schema}.{name}" for kind, name in written["tables"].items()}
        yield AgnoTables(
            agno_major, written["agno"], "postgres", agno_url, tables, written["sessions"]
        )
    finally:
        asyncio.run(drop_schema(pg_url, schema))
