"""Faults: the server goes away in the middle of calls, then comes back. Every call made meanwhile
raises `StorageUnavailableError` (never a PyMongo error, never None), no write is left half-done,
and the store works again by itself once the server is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.uri_parser import parse_uri

from async_agent_storage import Session, StorageError, StorageUnavailableError
from async_agent_storage.mongo import MongoStore
from async_agent_storage.mongo._writes import _STALE_US
from tests.conftest import NOT_RUN

from ._server import MongoecoServer, collect_leaked_sockets, free_port
from .conftest import DB_NAME, MongoTarget
from .test_store import settled

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.mongo,
    # Closing a client while its monitor connects to a server that is down leaks a socket in
    # PyMongo (see collect_leaked_sockets): these tests do that on purpose.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


class Proxy:
    """A TCP proxy to the server that can hold traffic, cut every connection and refuse new ones
    (the server is gone, as far as the client can tell), then accept them again."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def hold(self) -> None:
        """Stop forwarding: calls in flight now wait in the middle, as on a server that hangs."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


def run(i: int) -> dict[str, Any]:
    return {"input": f"question {i}", "output": f"answer {i}"}


def through(url: str, port: int) -> str:
    """`url` with its host replaced by the proxy's."""
    parsed = parse_uri(url)
    host, upstream_port = parsed["nodelist"][0]
    rest = url.split(f"{host}:{upstream_port}", 1)
    if len(rest) != 2:
        rest = url.split(host, 1)
    proxied = f"{rest[0]}127.0.0.1:{port}{rest[1]}"
    if "directconnection" not in proxied.lower():
        proxied += "&" if "?" in proxied else "/?" if proxied.count("/") == 2 else "?"
        proxied += "directConnection=true"
    return proxied


async def during_outage(store: MongoStore) -> None:
    """Every kind of call fails with StorageUnavailableError while the server is away."""
    results = await asyncio.gather(
        store.read("a"),
        store.read("a", last_runs=1),
        store.append_runs("a", [run(99)]),
        store.upsert(Session(session_id="b")),
        store.upsert_many([Session(session_id="c")]),
        store.list_sessions(),
        store.get_all_session_ids(),
        store.delete_session("zz"),
        store.schema_version(),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, StorageUnavailableError), result
        assert "cannot be reached" in str(result)


def check_whole(sessions: list[Session | None]) -> None:
    for session in sessions:
        if session is not None:  # every append that happened is there whole
            assert len(session.runs) == session.version


@pytest.fixture
async def proxy(mongo: MongoTarget) -> AsyncIterator[Proxy]:
    host, port = parse_uri(mongo.url)["nodelist"][0]
    proxy = Proxy((host, port))
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_connections_cut_mid_call_then_restored(
    mongo: MongoTarget, proxy: Proxy, collection_name: str
) -> None:
    url = through(mongo.url, proxy.port)
    async with MongoStore(collection_name, url, DB_NAME, server_selection_timeout=1.5) as store:
        await store.append_runs("a", [run(0)])
        proxy.hold()
        calls: list[asyncio.Task[Any]] = [
            asyncio.create_task(store.append_runs(f"s{i % 4}", [run(i)])) for i in range(12)
        ]
        calls += [asyncio.create_task(store.read("a")), asyncio.create_task(store.list_sessions())]
        await asyncio.sleep(0.2)  # all of them are now waiting on the held connections
        assert not any(c.done() for c in calls)
        await proxy.stop()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, StorageUnavailableError) for r in results), results
        await during_outage(store)
        await proxy.start()
        # Back: the very next calls work, with no reopening.
        appended = await store.append_runs("a", [run(1)])
        assert appended.runs_offset == 1
        read = await store.read("a")
        assert read is not None
        assert [r["input"] for r in read.runs] == ["question 0", "question 1"]
        check_whole([await store.read(f"s{i}") for i in range(4)])
    collect_leaked_sockets()


async def test_a_server_that_hangs_times_out_when_asked_to(
    mongo: MongoTarget, proxy: Proxy, collection_name: str
) -> None:
    url = through(mongo.url, proxy.port)
    store = MongoStore(collection_name, url, DB_NAME, operation_timeout=1.0)
    async with store:
        await store.append_runs("a", [run(0)])
        proxy.hold()
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(
            store.read("a"), store.append_runs("a", [run(1)]), return_exceptions=True
        )
        assert asyncio.get_running_loop().time() - started < 5
        for result in results:
            assert isinstance(result, StorageUnavailableError), result
            assert "did not answer in the time allowed" in str(result)
        proxy.release()
        read = await store.read("a")
        assert read is not None
        assert len(read.runs) == read.version  # the timed-out append happened whole, or not
    collect_leaked_sockets()


async def test_server_killed_mid_call_then_restarted(
    mongo: MongoTarget, tmp_path: Path, collection_name: str
) -> None:
    if mongo.python is None:
        NOT_RUN["mongo server restart"] = "needs mongoeco (Python >= 3.13) to run its own server"
        pytest.skip(NOT_RUN["mongo server restart"])
    server = MongoecoServer(mongo.python, sqlite=tmp_path / "server.sqlite")
    await asyncio.to_thread(server.start)
    try:
        store = MongoStore(collection_name, server.url, DB_NAME, server_selection_timeout=1.5)
        async with store:
            await store.append_runs("a", [run(0)], session_data={"kept": True})
            calls = [
                asyncio.create_task(store.append_runs(f"s{i % 4}", [run(i)])) for i in range(40)
            ]
            await asyncio.sleep(0.05)
            await asyncio.to_thread(server.kill)  # SIGKILL, as a crash
            results = await asyncio.gather(*calls, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert errors, "the server was killed after every call had finished"
            assert all(isinstance(e, StorageUnavailableError) for e in errors), errors
            assert all(isinstance(r, Session | StorageUnavailableError) for r in results)
            await during_outage(store)
            await asyncio.to_thread(server.start)
            read = await store.read("a")  # recovered by itself; the data survived the restart
            assert read is not None
            assert (read.session_data, len(read.runs)) == ({"kept": True}, 1)
            check_whole([await store.read(f"s{i}") for i in range(4)])
            assert (await store.append_runs("a", [run(1)])).version == 2
    finally:
        with contextlib.suppress(StorageError):
            await asyncio.to_thread(server.stop)
    collect_leaked_sockets()


async def test_a_settle_that_fails_leaves_the_runs_readable_and_the_next_write_finishes_it(
    mongo: MongoTarget,
    proxy: Proxy,
    collection_name: str,
    admin: MongoClient[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server hangs right after an append's answer, before its settle (in the background)
    has its own: the settle times out, says so at WARNING, and nothing is lost."""
    sessions: Any = admin[DB_NAME][collection_name]
    runs: Any = admin[DB_NAME][collection_name + "_runs"]
    url = through(mongo.url, proxy.port)
    async with MongoStore(collection_name, url, DB_NAME, operation_timeout=1.0) as store:
        await store.append_runs("a", [run(0)])
        await settled(store)
        caplog.set_level(logging.WARNING, logger="async_agent_storage.mongo")
        appended = await store.append_runs("a", [run(1)])
        proxy.hold()
        await settled(store)
        (record,) = [r for r in caplog.records if r.name == "async_agent_storage.mongo"]
        assert record.levelno == logging.WARNING
        assert "left to its next write" in record.getMessage()
        proxy.release()
        assert len(sessions.find_one({"_id": "a"})["pending"]) == 1  # not moved
        read = await store.read("a")
        assert read is not None
        assert read.runs == [run(0), *appended.runs]
        # The next write finishes it, once it is old enough to be taken as left behind.
        sessions.update_one({"_id": "a"}, {"$inc": {"pending.0.t": -_STALE_US - 1}})
        await store.append_runs("a", [run(2)])
        await settled(store)
    assert sessions.find_one({"_id": "a"})["pending"] == []
    rows = runs.find({"session_id": "a"}).sort("seq")
    assert [(row["seq"], row["run"]) for row in rows] == [(i, run(i)) for i in range(3)]
    collect_leaked_sockets()
