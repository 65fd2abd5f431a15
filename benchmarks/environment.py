"""What the results file records about the machine, the software and the servers."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "async-agent-storage",
    "aiosqlite",
    "asyncpg",
    "pymongo",
    "orjson",
    "pydantic",
)
PEER_PACKAGES = (
    "agno",
    "sqlalchemy",
    "psycopg",
    "psycopg-pool",
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-postgres",
    "aiosqlite",
    "asyncpg",
)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def _store_package() -> str | None:
    """Where async_agent_storage was imported from (a branch's checkout may be on PYTHONPATH)."""
    try:
        import async_agent_storage

        return str(Path(async_agent_storage.__file__).parent)
    except ImportError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


async def _postgres(url: str) -> dict[str, Any]:
    try:
        import asyncpg

        conn = await asyncpg.connect(url, timeout=5)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        info: dict[str, Any] = {"version": await conn.fetchval("SELECT version()")}
        for setting in (
            "max_connections",
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "wal_level",
        ):
            info[setting] = await conn.fetchval(f"SHOW {setting}")
        return info
    finally:
        await conn.close()


async def _mongo(url: str) -> dict[str, Any]:
    try:
        from pymongo import AsyncMongoClient

        client: Any = AsyncMongoClient(url, serverSelectionTimeoutMS=3000)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        build = await client.admin.command("buildInfo")
        return {"version": build.get("version"), "git": build.get("gitVersion")}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await client.close()


def _peers(python: str) -> dict[str, Any] | None:
    if not Path(python).exists():
        return None
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {'python': sys.version.split()[0]}\n"
        f"for n in {PEER_PACKAGES!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        data: dict[str, Any] = json.loads(done.stdout)
        return data
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def collect(
    backends: list[tuple[str, str | None]], peers_python: str | None
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_at_start": load(),
        "sqlite": sqlite3.sqlite_version,
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": _git_commit(),
        "store_package": _store_package(),
        "servers": {},
    }
    for backend, url in backends:
        if url is None:
            continue
        if backend == "postgres":
            env["servers"]["postgres"] = await _postgres(url)
        elif backend == "mongo":
            env["servers"]["mongo"] = await _mongo(url)
    if peers_python:
        env["peers"] = await asyncio.to_thread(_peers, peers_python)
    return env
