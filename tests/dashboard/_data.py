"""What the dashboard tests store, and the figures the pages must show for it."""

from __future__ import annotations

from typing import Any, Final

from async_agent_storage import Session

SCRIPT_RUN: Final = {
    "input": "<script>document.documentElement.setAttribute('data-injected', 'script')</script>",
    "output": (
        "<img src=x onerror=\"document.documentElement.setAttribute('data-injected', 'img')\">"
        "<b id=injected-bold>bold</b>"
    ),
}
HOSTILE_AGENT: Final = "<i id=injected-agent>agent</i>"
HOSTILE_USER: Final = "<u id=injected-user>mallory</u>"
CONVERSATION_RUNS: Final = 25


def arithmetic_run(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
            {"role": "assistant", "content": f"{i} + {i} = {2 * i}"},
        ]
    }


def sessions() -> list[Session]:
    """35 sessions, 59 runs: a long conversation, input/output runs, a run that is neither, a team,
    a workflow, a session full of markup, and 30 sessions of one agent for paging."""
    return [
        Session(
            session_id="conv-1",
            user_id="alice",
            agent_id="support",
            session_data={"session_state": {"city": "Paris", "step": 3}, "session_name": "Sums"},
            metadata={"channel": "web"},
            runs=[arithmetic_run(i) for i in range(CONVERSATION_RUNS)],
        ),
        Session(
            session_id="io-1",
            user_id="bob",
            agent_id="sales",
            runs=[
                {"input": "What does the pro plan cost?", "output": "10 EUR a month."},
                {"event": "tool", "name": "lookup", "args": {"sku": "pro"}},
            ],
        ),
        Session(
            session_id="team-1",
            session_type="team",
            user_id="bob",
            team_id="crew",
            runs=[{"input": "Plan the launch", "content": "Done: three steps."}],
        ),
        Session(session_id="flow-1", session_type="workflow", workflow_id="nightly"),
        Session(
            session_id="xss-1",
            user_id=HOSTILE_USER,
            agent_id=HOSTILE_AGENT,
            session_data={
                "session_state": {"note": "</pre><script>alert('state')</script>"},
                "session_name": "<em id=injected-name>name</em>",
            },
            runs=[SCRIPT_RUN],
        ),
        *(
            Session(
                session_id=f"bulk-{i:02d}",
                user_id="carol",
                agent_id="research",
                runs=[{"input": f"Topic {i}?", "output": f"Notes on topic {i}."}],
            )
            for i in range(30)
        ),
    ]


TOTAL_SESSIONS: Final = 35
TOTAL_RUNS: Final = 59
PER_AGENT: Final = {
    "research": (30, 30),
    "support": (1, 25),
    "sales": (1, 2),
    "crew": (1, 1),
    "nightly": (1, 0),
    HOSTILE_AGENT: (1, 1),
}
