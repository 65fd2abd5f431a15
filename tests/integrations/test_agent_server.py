"""examples/agent_server.py over real HTTP: uvicorn with 4 worker processes on a loopback port,
racing the migrations on a fresh database, then 200 concurrent turns on one session (taking
their turns under the session's lease), and a second request on a busy session answered 409
(``AAS_BUSY=reject``) or made to wait (the default)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integrations.conftest import Target, drop_tables

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """uvicorn serving the example with `WORKERS` processes; stopped (SIGINT, then SIGKILL)."""

    def __init__(self, url: str, table: str, log: Path, **env_extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "AAS_URL": url, "AAS_TABLE": table, **env_extra}
        self.log_file = log.open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.agent_server:app",
                "--app-dir",
                str(ROOT),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(WORKERS),
                "--log-level",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_file,
        )

    def wait_started(self, timeout: float = 60) -> None:
        """Until every worker has finished its lifespan start-up (the store opened)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if text.count("Application startup complete.") >= WORKERS:
                return
            if self.process.poll() is not None or "Traceback" in text:
                break
            time.sleep(0.1)
        pytest.fail(f"uvicorn workers did not all start:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()


def _serve(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, **env: str
) -> Iterator[Server]:
    table = f"aas_srv_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        target = Target(f"sqlite:///{tmp_path}/fresh.db", table)
    else:
        target = Target(request.getfixturevalue("pg_url"), table)
    started = Server(target.url, target.table, tmp_path / "uvicorn.log", **env)
    try:
        started.wait_started()
        yield started
    finally:
        started.stop()
        if backend == "postgres":
            asyncio.run(drop_tables(target.url, table))
    log = (tmp_path / "uvicorn.log").read_text()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from _serve(request, request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def rejecting_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from _serve(request, request.param, tmp_path, AAS_BUSY="reject")


@pytest.mark.slow
def test_four_workers_race_migrations_then_200_turns_lose_nothing(server: Server) -> None:
    text = server.log.read_text()
    assert text.count("Application startup complete.") == WORKERS

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits) as client:
            first = await client.post(
                "/sessions/chat/messages",
                json={"user_id": "u1", "message": "What is the capital of France?"},
            )
            assert first.status_code == 200, first.text
            assert first.json()["reply"] == "Paris"
            follow = await client.post(
                "/sessions/chat/messages",
                json={"user_id": "u1", "message": "What was my last question?"},
            )
            assert (
                follow.json()["reply"] == 'Your last question was: "What is the capital of France?"'
            )

            responses = await asyncio.gather(
                *(
                    client.post(
                        "/sessions/race/messages",
                        json={"user_id": "u1", "message": f"m{i}", "state": {f"k{i}": i}},
                    )
                    for i in range(200)
                )
            )
            assert [r.status_code for r in responses] == [200] * 200, [
                r.text for r in responses if r.status_code != 200
            ][:3]
            # one turn at a time: each under its own lease, each seeing the turns before it
            assert sorted(r.json()["turn"] for r in responses) == list(range(1, 201))
            assert sorted(r.json()["version"] for r in responses) == list(range(1, 201))
            race = await client.get("/sessions/race", params={"user_id": "u1"})
            assert race.status_code == 200
            session = race.json()
            assert sorted(run["input"] for run in session["runs"]) == sorted(
                f"m{i}" for i in range(200)
            )
            assert session["session_data"]["session_state"] == {f"k{i}": i for i in range(200)}

            # a retried turn (same run_id) is appended once
            for _ in range(2):
                again = await client.post(
                    "/sessions/retry/messages",
                    json={"user_id": "u1", "message": "hi", "run_id": "turn-1"},
                )
                assert again.status_code == 200
            retried = (await client.get("/sessions/retry", params={"user_id": "u1"})).json()
            assert len(retried["runs"]) == 1

    asyncio.run(scenario())


@pytest.mark.slow
def test_listing_deleting_and_errors_map_to_statuses(server: Server) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
            for i in range(5):
                r = await client.post(
                    f"/sessions/s{i}/messages", json={"user_id": "lister", "message": "hello"}
                )
                assert r.status_code == 200, r.text
            seen: list[str] = []
            cursor = None
            while True:
                params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
                page = (await client.get("/users/lister/sessions", params=params)).json()
                seen.extend(item["session_id"] for item in page["items"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert seen == [f"s{i}" for i in reversed(range(5))]

            theirs = await client.post(
                "/sessions/s0/messages", json={"user_id": "mallory", "message": "hi"}
            )
            assert theirs.status_code == 403
            bad_cursor = await client.get("/users/lister/sessions", params={"cursor": "forged"})
            assert bad_cursor.status_code == 400
            nan = await client.post(
                "/sessions/s0/messages",
                content=b'{"user_id": "lister", "message": "x", "state": {"v": NaN}}',
                headers={"content-type": "application/json"},
            )
            assert nan.status_code in (400, 422)
            long_id = await client.post(
                f"/sessions/{'x' * 300}/messages", json={"user_id": "lister", "message": "x"}
            )
            assert long_id.status_code == 400
            assert (
                await client.delete("/sessions/s0", params={"user_id": "mallory"})
            ).status_code == 404
            assert (
                await client.delete("/sessions/s0", params={"user_id": "lister"})
            ).status_code == 204
            assert (
                await client.delete("/sessions/s0", params={"user_id": "lister"})
            ).status_code == 404
            gone = await client.get("/sessions/s0", params={"user_id": "lister"})
            assert gone.status_code == 404

    asyncio.run(scenario())


async def _overlapping_turns(server: Server) -> tuple[httpx.Response, httpx.Response]:
    """A turn that thinks for 1.5 s, and a second request on its session 0.3 s after it."""
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
        first = asyncio.create_task(
            client.post(
                "/sessions/busy/messages",
                json={"user_id": "u1", "message": "What is the capital of France?",
                      "think_ms": 1500},
            )
        )  # fmt: skip
        await asyncio.sleep(0.3)
        second = await client.post(
            "/sessions/busy/messages",
            json={"user_id": "u1", "message": "What was my last question?"},
        )
        return await first, second


@pytest.mark.slow
def test_a_second_request_on_a_busy_session_waits_for_its_turn(server: Server) -> None:
    started = time.monotonic()
    first, second = asyncio.run(_overlapping_turns(server))
    assert time.monotonic() - started >= 1.4
    assert (first.status_code, second.status_code) == (200, 200), second.text
    # the second turn ran after the first and read it
    assert (first.json()["turn"], second.json()["turn"]) == (1, 2)
    assert second.json()["history"] == 1
    assert second.json()["reply"] == 'Your last question was: "What is the capital of France?"'


@pytest.mark.slow
def test_a_second_request_on_a_busy_session_is_answered_409(rejecting_server: Server) -> None:
    first, second = asyncio.run(_overlapping_turns(rejecting_server))
    assert first.status_code == 200
    assert second.status_code == 409, second.text
    body = second.json()
    assert body["error"] == "SessionBusyError"
    assert body["holder"]
    assert body["until"]
    assert body["holder"] in body["detail"]

    async def after() -> httpx.Response:
        async with httpx.AsyncClient(base_url=rejecting_server.base, timeout=60) as client:
            return await client.post(
                "/sessions/busy/messages", json={"user_id": "u1", "message": "again"}
            )

    again = asyncio.run(after())  # the first turn is over: the session is free
    assert again.status_code == 200
    assert again.json()["history"] == 1
