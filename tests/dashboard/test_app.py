"""The dashboard without a browser: runs read as conversations, the chart's layout, the token
check and the safety headers (over HTTP in this process), and the command's refusals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from async_agent_storage import Activity, SqliteStore, TurnCount
from async_agent_storage._dashboard import create_app
from async_agent_storage._dashboard.app import COOKIE
from async_agent_storage._dashboard.chart import layout
from async_agent_storage._dashboard.conversation import messages_of

TOKEN = "a-token-long-enough"


# --- runs as conversations -------------------------------------------------------------------


def shown(run: dict[str, Any]) -> list[tuple[str, str | None, str | None]] | None:
    messages = messages_of(run)
    return None if messages is None else [(m.role, m.text, m.data) for m in messages]


def test_message_runs_show_each_message() -> None:
    run = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "model", "content": "done"},
        ]
    }
    assert shown(run) == [
        ("system", "be brief", None),
        ("user", "a\nb", None),
        ("assistant", None, '[\n  {\n    "id": "c1"\n  }\n]'),
        ("assistant", "done", None),
    ]


def test_input_output_runs_are_a_question_and_an_answer() -> None:
    assert shown({"input": "q", "output": "a", "metrics": {}}) == [
        ("user", "q", None),
        ("assistant", "a", None),
    ]
    assert shown({"input": {"input_content": "q"}, "content": {"x": 1}}) == [
        ("user", "q", None),
        ("assistant", None, '{\n  "x": 1\n}'),
    ]
    assert shown({"author": "bot", "content": {"role": "model", "parts": [{"text": "hi"}]}}) == [
        ("assistant", "hi", None)
    ]


@pytest.mark.parametrize(
    "run",
    [
        {"event": "tool"},
        {"input": "only a question"},
        {"messages": []},
        {"messages": [{"content": "no role"}]},
        {"messages": "not a list"},
    ],
)
def test_other_runs_are_shown_as_json(run: dict[str, Any]) -> None:
    assert messages_of(run) is None


# --- the chart -------------------------------------------------------------------------------


def activity(turns: list[tuple[str | None, int, int]], buckets: int = 4) -> Activity:
    start = datetime(2026, 11, 28, tzinfo=UTC)
    starts = [start + timedelta(hours=i) for i in range(buckets)]
    return Activity(
        now=starts[-1],
        since=start,
        bucket="hour",
        sessions=1,
        runs=1,
        active_last_hour=0,
        active_last_day=0,
        active_last_week=0,
        buckets=starts,
        turns=[TurnCount(entity_id=e, start=starts[i], runs=n) for e, i, n in turns],
    )


def test_the_chart_stacks_the_busiest_agents_and_groups_the_rest() -> None:
    turns = [(f"agent-{k}", 0, 12 - k) for k in range(10)] + [(None, 1, 3), ("agent-0", 3, 5)]
    chart = layout(activity(turns))
    assert [s.label for s in chart.series] == [f"agent-{k}" for k in range(7)] + ["others"]
    assert chart.series[-1].runs == 5 + 4 + 3 + 3  # agents 7, 8, 9 and the sessions without one
    assert chart.total == sum(n for _, _, n in turns)
    tallest = max(sum(b.height for b in chart.bars if b.x == x) for x in {b.x for b in chart.bars})
    assert tallest <= chart.plot_height
    assert [t.label for t in chart.y_ticks] == ["0", "20", "40", "60", "80"]  # 75 runs, rounded up
    assert all(chart.top <= b.y <= chart.top + chart.plot_height for b in chart.bars)


def test_an_empty_chart_has_no_bars() -> None:
    chart = layout(activity([]))
    assert chart.bars == []
    assert chart.total == 0
    assert [t.label for t in chart.y_ticks] == ["0", "1", "2", "3", "4"]


# --- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    async with SqliteStore() as opened:
        await opened.append_runs("s1", [{"input": "q", "output": "a"}], user_id="u")
        yield opened


def client(app: Any, **options: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://dashboard", **options)


@pytest.mark.anyio
async def test_every_page_is_get_only_and_sends_the_safety_headers(store: SqliteStore) -> None:
    async with client(create_app(store)) as http:
        for path in ("/", "/?bucket=day", "/sessions", "/sessions/s1", "/static/style.css"):
            response = await http.get(path)
            assert response.status_code == 200, path
            policy = response.headers["content-security-policy"]
            assert "default-src 'none'" in policy
            assert "script-src" not in policy  # none allowed
            assert response.headers["x-content-type-options"] == "nosniff"
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                assert (await http.request(method, path)).status_code == 405, (method, path)
        assert (await http.get("/?bucket=week")).status_code == 400
        assert (await http.get("/sessions?limit=0")).status_code == 400
        assert (await http.get("/sessions?type=robot")).status_code == 400
        assert (await http.get("/sessions?cursor=forged")).status_code == 400
        assert (await http.get("/sessions/s1?runs=-1")).status_code == 400


@pytest.mark.anyio
async def test_the_token_is_needed_in_a_header_a_cookie_or_a_link(store: SqliteStore) -> None:
    app = create_app(store, token=TOKEN)
    async with client(app) as http:
        assert (await http.get("/")).status_code == 401
        assert (
            await http.get("/", headers={"Authorization": "Bearer " + TOKEN[:-1]})
        ).status_code == 401
        assert (
            await http.get("/", headers={"Authorization": "Bearer " + TOKEN})
        ).status_code == 200
        assert (await http.get("/", headers={"Cookie": f"{COOKIE}=wrong"})).status_code == 401
        link = await http.get(f"/sessions?user=u&token={TOKEN}&agent=x")
        assert link.status_code == 303
        assert link.headers["location"] == "/sessions?user=u&agent=x"
        cookie = link.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={TOKEN};")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert (
            await http.get("/sessions/s1", headers={"Cookie": f"{COOKIE}={TOKEN}"})
        ).status_code == 200
        assert (await http.get(f"/?token={TOKEN}x")).status_code == 401
    with pytest.raises(ValueError, match="empty"):
        create_app(store, token="")


# --- the command -----------------------------------------------------------------------------


def aas(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_agent_storage.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_command_creates_nothing_and_refuses_short_tokens(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    result = aas("dashboard", "--url", f"sqlite:///{missing}", "--port", "0")
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert not missing.exists()
    result = aas("dashboard", "--url", f"sqlite:///{missing}", "--token", "short")
    assert result.returncode == 1
    assert "at least 8 characters" in result.stderr
    result = aas("dashboard", "--url", "sqlite:///x.db", "--token", TOKEN, "--new-token")
    assert result.returncode == 1
    assert "not both" in result.stderr


def test_listening_beyond_this_machine_without_a_token_is_warned_about(tmp_path: Path) -> None:
    result = aas("dashboard", "--url", f"sqlite:///{tmp_path / 'none.db'}", "--host", "0.0.0.0")
    assert "without a token" in result.stderr
    assert result.returncode == 1  # and then the missing database


def test_the_help_names_the_safety_defaults() -> None:
    result = aas("dashboard", "--help")
    assert result.returncode == 0
    assert "127.0.0.1" in result.stdout
    assert "--new-token" in result.stdout
