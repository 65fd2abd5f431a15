"""The dashboard served by the real command (`aas dashboard` in a process of its own, on a free
loopback port, with a token) over a SQLite and a PostgreSQL store filled through the public API,
and a real headless Chromium (Debian's package, driven by Playwright; never a downloaded
browser). Without Chromium or Playwright the browser tests are reported NOT RUN with the
reason."""

from __future__ import annotations

import asyncio
import os
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from async_agent_storage import open_store
from tests.conftest import NOT_RUN
from tests.postgres._server import ENV_URL, LOCAL_URL, Cluster, answers, find_binaries

from . import _data

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["Records", "Served"]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "tmp" / "dashboard-screenshots"
CHROMIUM_ENV = "AAS_TEST_CHROMIUM"
CHROMIUM = "/usr/bin/chromium"
# Written by `make chromium` when it could not install the browser.
NOT_INSTALLED = ROOT / "tmp" / "chromium.NOT_INSTALLED"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-proxy-server",
]
TOKEN = "test-token-" + uuid.uuid4().hex


@dataclass
class Served:
    """A dashboard being served: its address, the token it wants, what its store holds."""

    backend: str
    base: str
    token: str
    order: list[str] = field(default_factory=list)  # every session id, newest first
    process: subprocess.Popen[str] | None = None

    def shot(self, page: Page, name: str) -> Path:
        """Keep a full-page screenshot of `page` as a test artifact."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.backend}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def _chromium() -> str:
    path = os.environ.get(CHROMIUM_ENV) or CHROMIUM
    if Path(path).is_file() and os.access(path, os.X_OK):
        return path
    reason = f"no Chromium at {path}"
    if NOT_INSTALLED.exists():
        reason += f" (make chromium: {NOT_INSTALLED.read_text().strip()})"
    else:
        reason += " (make chromium installs Debian's package)"
    NOT_RUN["dashboard browser"] = reason
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per module. (Never longer: Playwright's sync API keeps an event loop
    running in this thread while it is open, which the asyncio tests of other modules cannot
    share.)"""
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        NOT_RUN["dashboard browser"] = (
            f"Playwright is not installed ({exc}): pip install -e '.[dev]'"
        )
        pytest.skip(NOT_RUN["dashboard browser"])
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


def _in_thread(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` in a thread of its own, for calls that run an event loop: the sync
    Playwright API keeps one running in this thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call, *args).result()


def _run(work: Coroutine[Any, Any, T]) -> T:
    result: T = _in_thread(asyncio.run, work)
    return result


async def _fill(url: str, table: str) -> list[str]:
    async with open_store(url, table_name=table, auto_upgrade_schema=True) as store:
        sessions = _data.sessions()
        for session in sessions[:5]:
            await store.upsert(session)
        await store.upsert_many(sessions[5:])
        return await store.get_all_session_ids()


async def _drop(url: str, table: str) -> None:
    async with open_store(url, table_name=table) as store:
        await store.drop()


def _start(url: str, table: str, token: str) -> tuple[subprocess.Popen[str], str]:
    """`aas dashboard` on any free port of 127.0.0.1 (the default address); returns the process
    and the address it printed."""
    command = [
        sys.executable, "-m", "async_agent_storage.cli", "dashboard",
        "--url", url, "--table", table, "--port", "0",
    ]  # fmt: skip
    env = {**os.environ, "AAS_DASHBOARD_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            found = re.search(r"(http://\S+?)/\?token=", line)
            if found:
                assert found.group(1).startswith("http://127.0.0.1:")  # the default address
                return process, found.group(1)
        if process.poll() is not None:
            break
    process.kill()
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"aas dashboard did not start: {err}")


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        _, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    assert process.returncode == 0, err  # a stop signal closes the store and exits cleanly
    return err


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The PostgreSQL test server: AAS_TEST_POSTGRES_URL, the local one, or a throwaway one."""
    url = os.environ.get(ENV_URL)
    if url:
        yield url
        return
    if _in_thread(answers, LOCAL_URL):
        yield LOCAL_URL
        return
    bindir = find_binaries()
    if bindir is None:
        NOT_RUN["dashboard on postgres"] = f"no server at {LOCAL_URL} and no binaries to start one"
        pytest.skip(NOT_RUN["dashboard on postgres"])
    cluster = Cluster(bindir)
    _in_thread(cluster.start)
    try:
        yield cluster.url
    finally:
        _in_thread(cluster.stop)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The dashboard of a store holding `_data.sessions()`, on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'store.db'}"
        table = "agent_sessions"
    else:
        url = request.getfixturevalue("pg_url")
        table = f"dash_{uuid.uuid4().hex[:12]}"
    order = _run(_fill(url, table))
    process, base = _start(url, table, TOKEN)
    try:
        yield Served(request.param, base, TOKEN, order, process)
    finally:
        err = _stop(process)
        if request.param == "postgres":
            _run(_drop(url, table))
        assert "Traceback" not in err, err


@dataclass
class Records:
    """What the browser did: every URL it requested, every dialog a page opened."""

    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def records() -> Records:
    return Records()


@pytest.fixture
def page(browser: Browser, served: Served, records: Records) -> Iterator[Page]:
    """A fresh browser context (no cookie yet) whose requests and dialogs go to `records`: the
    pages must fetch nothing but the dashboard's own address and never open a dialog."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    tab = context.new_page()
    tab.on("request", lambda request: records.requests.append(request.url))

    def dialog(opened: Any) -> None:
        records.dialogs.append(opened.message)
        opened.dismiss()

    tab.on("dialog", dialog)
    try:
        yield tab
        assert records.dialogs == []
        assert [u for u in records.requests if not u.startswith(served.base + "/")] == []
    finally:
        context.close()


@pytest.fixture
def signed_in(page: Page, served: Served) -> Page:
    """A page that opened the token link once (the dashboard then keeps a cookie)."""
    response = page.goto(f"{served.base}/?token={served.token}")
    assert response is not None
    assert response.status == 200
    return page
