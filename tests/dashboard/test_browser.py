"""The dashboard in a real headless Chromium, on SQLite and PostgreSQL: what each page shows
(counts, a known session's messages, paging, filters), the token check, and stored markup shown
as text, never run. Each page is kept as a screenshot under tmp/dashboard-screenshots/."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from async_agent_storage._dashboard.app import COOKIE

from . import _data
from .conftest import Records, Served

if TYPE_CHECKING:
    from playwright.sync_api import Page


def cards(page: Page) -> dict[str, int]:
    return {
        card: int(page.locator(f"#{card} .value").inner_text().replace(",", ""))
        for card in ("total-sessions", "total-runs", "active-hour", "active-day", "active-week")
    }


def follow(page: Page, selector: str, key: str | None = None) -> None:
    """Click `selector` (or press `key` in it) and wait for the page it leads to: reading the
    page before it has loaded would read the previous one."""
    with page.expect_navigation():
        if key is None:
            page.click(selector)
        else:
            page.press(selector, key)


def listed(page: Page) -> list[str]:
    return page.locator("#sessions a.sid").all_inner_texts()


# --- the token -------------------------------------------------------------------------------


def test_without_the_token_every_page_is_401(page: Page, served: Served) -> None:
    for path in ("/", "/sessions", "/sessions/conv-1", "/static/style.css", "/?token=wrong"):
        response = page.goto(served.base + path)
        assert response is not None
        assert response.status == 401, path
    assert "Unauthorized" in page.locator("h1").inner_text()
    assert "Sums" not in page.content()
    wrong = page.request.get(served.base + "/", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    right = page.request.get(served.base + "/", headers={"Authorization": f"Bearer {served.token}"})
    assert right.status == 200
    served.shot(page, "unauthorized")


def test_the_token_link_sets_a_cookie_and_leaves_the_address(page: Page, served: Served) -> None:
    response = page.goto(f"{served.base}/sessions?token={served.token}&user=alice")
    assert response is not None
    assert response.status == 200
    assert page.url == f"{served.base}/sessions?user=alice"  # the token is not kept in it
    (cookie,) = [c for c in page.context.cookies() if c.get("name") == COOKIE]
    assert cookie.get("httpOnly")
    assert cookie.get("sameSite") == "Strict"
    assert listed(page) == ["conv-1"]
    again = page.goto(served.base + "/sessions/conv-1")
    assert again is not None
    assert again.status == 200


def test_nothing_can_be_written(signed_in: Page, served: Served) -> None:
    for method in ("post", "put", "patch", "delete"):
        for path in ("/", "/sessions", "/sessions/conv-1"):
            response = getattr(signed_in.request, method)(served.base + path)
            assert response.status == 405, (method, path)
    assert signed_in.request.get(served.base + "/sessions/conv-1").status == 200


# --- the pages -------------------------------------------------------------------------------


def test_the_overview_shows_the_counts_and_the_chart(signed_in: Page, served: Served) -> None:
    page = signed_in
    assert cards(page) == {
        "total-sessions": _data.TOTAL_SESSIONS,
        "total-runs": _data.TOTAL_RUNS,
        "active-hour": _data.TOTAL_SESSIONS,
        "active-day": _data.TOTAL_SESSIONS,
        "active-week": _data.TOTAL_SESSIONS,
    }
    rows = page.locator("#agents tbody tr")
    shown = {}
    for i in range(rows.count()):
        entity, sessions, runs = rows.nth(i).locator("td").all_inner_texts()
        shown[entity] = (int(sessions), int(runs))
    assert shown == _data.PER_AGENT
    assert rows.first.locator("td").first.inner_text() == "research"  # most sessions first
    # The chart: one bar segment per agent with runs and hour, drawn in the page itself.
    chart = page.locator("svg#turns-chart")
    assert chart.locator("title").first.text_content() == (
        f"Runs per hour and agent, {_data.TOTAL_RUNS} in all"
    )
    per_agent: dict[str, int] = {}
    for title in chart.locator("rect.bar title").all_text_contents():
        found = re.fullmatch(r"(.+): (\d+) runs?, \d{4}-\d\d-\d\d \d\d:00 UTC", title)
        assert found, title
        per_agent[found[1]] = per_agent.get(found[1], 0) + int(found[2])
    assert per_agent == {agent: runs for agent, (_, runs) in _data.PER_AGENT.items() if runs}
    box = chart.bounding_box()
    assert box is not None
    assert box["width"] > 600  # laid out and visible
    served.shot(page, "overview")
    follow(page, "text=Last 30 days")
    assert page.url.endswith("/?bucket=day")
    assert chart.locator("title").first.text_content() == (
        f"Runs per day and agent, {_data.TOTAL_RUNS} in all"
    )
    days = chart.locator("text").all_text_contents()
    assert len(days) >= 4
    assert all(re.fullmatch(r"[A-Z][a-z]{2} \d\d|[\d,]+", label) for label in days), days


def test_the_sessions_list_pages_through_every_session(signed_in: Page, served: Served) -> None:
    page = signed_in
    page.goto(served.base + "/sessions?limit=10")
    assert page.locator("#match-count").inner_text().startswith(f"{_data.TOTAL_SESSIONS} sessions")
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen += listed(page)
        if pages == 1:
            served.shot(page, "sessions")
        following = page.locator("#next-page")
        if following.count() == 0:
            break
        follow(page, "#next-page")
        assert page.locator("#first-page").count() == 1
    assert pages == 4
    assert seen == served.order  # newest first, each once, keyset pages that do not overlap
    follow(page, "#first-page")
    assert listed(page) == served.order[:10]


def test_the_sessions_list_filters(signed_in: Page, served: Served) -> None:
    page = signed_in
    page.goto(served.base + "/sessions")
    page.fill("input[name=user]", "bob")
    follow(page, "button:has-text('Filter')")
    assert sorted(listed(page)) == ["io-1", "team-1"]
    assert page.locator("#match-count").inner_text().startswith("2 sessions match")
    page.fill("input[name=user]", "")
    page.select_option("select[name=type]", "team")
    follow(page, "button:has-text('Filter')")
    assert listed(page) == ["team-1"]
    page.goto(served.base + "/sessions?agent=research&limit=50")
    assert len(listed(page)) == 30
    assert set(page.locator("#sessions tbody tr td:nth-child(5)").all_inner_texts()) == {"research"}
    page.goto(served.base + "/sessions?since=1h&limit=50")
    assert len(listed(page)) == _data.TOTAL_SESSIONS
    page.goto(served.base + "/sessions?since=2099-01-01")
    assert listed(page) == []
    assert page.locator("#match-count").inner_text().startswith("0 sessions match")
    bad = page.goto(served.base + "/sessions?since=yesterday")
    assert bad is not None
    assert bad.status == 400
    assert "since 'yesterday'" in page.locator(".message").inner_text()


def test_a_session_is_found_by_its_id(signed_in: Page, served: Served) -> None:
    page = signed_in
    page.fill("input[name=id]", "io-1")
    follow(page, "input[name=id]", "Enter")
    assert page.url == served.base + "/sessions/io-1"
    page.fill("input[name=id]", "no-such-session")
    follow(page, "input[name=id]", "Enter")
    assert "no-such-session" in page.locator("#not-found").inner_text()
    missing = page.goto(served.base + "/sessions/no-such-session")
    assert missing is not None
    assert missing.status == 404


def test_a_session_shows_its_state_and_its_conversation(signed_in: Page, served: Served) -> None:
    page = signed_in
    page.goto(served.base + "/sessions/conv-1")
    assert page.locator("#session-id").inner_text() == "conv-1"
    assert page.locator("#run-count").inner_text() == str(_data.CONVERSATION_RUNS)
    state = page.locator("#state").inner_text()
    assert '"city": "Paris"' in state
    assert '"session_name": "Sums"' in state
    assert '"channel": "web"' in (page.locator("#field-metadata").text_content() or "")
    # The last 20 runs, oldest of them first (newest last), as user and assistant messages.
    runs = page.locator("article.run")
    assert runs.count() == 20
    texts = page.locator(".msg .text").all_inner_texts()
    assert texts[:2] == ["Question 5: what is 5 + 5?", "5 + 5 = 10"]  # runs 5 to 24
    assert texts[-2:] == ["Question 24: what is 24 + 24?", "24 + 24 = 48"]
    roles = page.locator(".msg").evaluate_all("(ms) => ms.map(m => m.dataset.role)")
    assert roles == ["user", "assistant"] * 20
    assert "5 older runs not shown" in page.locator("#older").inner_text()
    served.shot(page, "session")
    follow(page, "#load-older")
    assert runs.count() == _data.CONVERSATION_RUNS
    assert page.locator("#older").count() == 0
    assert page.locator(".msg .text").first.inner_text() == "Question 0: what is 0 + 0?"
    # Runs of other shapes: input/output, input/content, and raw JSON for anything else.
    page.goto(served.base + "/sessions/io-1")
    assert page.locator(".msg .text").all_inner_texts() == [
        "What does the pro plan cost?",
        "10 EUR a month.",
    ]
    raw = page.locator("pre.raw-run").inner_text()
    assert '"sku": "pro"' in raw
    page.goto(served.base + "/sessions/team-1")
    assert page.locator(".msg .text").all_inner_texts() == ["Plan the launch", "Done: three steps."]
    page.goto(served.base + "/sessions/flow-1")
    assert page.locator("#no-runs").inner_text() == "No runs."


def test_stored_markup_is_shown_as_text_and_never_run(
    signed_in: Page, served: Served, records: Records
) -> None:
    page = signed_in

    def untouched() -> None:
        assert page.evaluate("document.documentElement.getAttribute('data-injected')") is None
        for element in ("injected-bold", "injected-agent", "injected-user", "injected-name"):
            assert page.locator(f"#{element}").count() == 0
        assert page.locator("main script, main img").count() == 0

    page.goto(served.base + "/sessions/xss-1")
    user, assistant = page.locator(".msg .text").all_inner_texts()
    assert user == _data.SCRIPT_RUN["input"]
    assert assistant == _data.SCRIPT_RUN["output"]
    assert "</pre><script>alert('state')</script>" in page.locator("#state").inner_text()
    assert _data.HOSTILE_USER in page.locator("#meta").inner_text()
    untouched()
    served.shot(page, "markup")
    page.goto(served.base + "/sessions?" + urlencode({"user": _data.HOSTILE_USER}))
    assert listed(page) == ["xss-1"]
    assert _data.HOSTILE_AGENT in page.locator("#sessions").inner_text()
    untouched()
    page.goto(served.base + "/")
    assert _data.HOSTILE_AGENT in page.locator("#agents").inner_text()
    untouched()
    assert records.dialogs == []
