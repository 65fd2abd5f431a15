"""Continue one agent session across processes: run this twice.

    python examples/continue_session.py      # User: What is the capital of France?  Agent: Paris
    python examples/continue_session.py      # User: What was my last question?
                                              # Agent: Your last question was: "What is the ..."

A model call remembers nothing; each run of this script is a new process, like each request to an
agent API. The session (its runs) is what carries the conversation from one to the next.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from async_agent_storage import Session, SqliteStore

SESSION_ID = "fixed_id_for_demo"
USER_ID = "u1"
FIRST_QUESTION = "What is the capital of France?"
FOLLOW_UP = "What was my last question?"
KNOWLEDGE = {FIRST_QUESTION: "Paris"}


def answer(question: str, history: list[dict[str, Any]]) -> str:
    """A stand-in for the model: it only knows what the stored history tells it."""
    if question == FOLLOW_UP:
        if not history:
            return "You have not asked me anything yet."
        return f'Your last question was: "{history[-1]["input"]}"'
    return KNOWLEDGE.get(question, "I don't know.")


async def main(db_file: str, question: str | None) -> None:
    store = SqliteStore(table_name="agent_sessions", db_file=db_file, auto_upgrade_schema=True)
    async with store:
        # Load the session with only its last run: the cost does not grow with the history.
        s = await store.read(SESSION_ID, user_id=USER_ID, last_runs=1) or Session(
            session_id=SESSION_ID, user_id=USER_ID
        )
        if question is None:
            question = FOLLOW_UP if s.runs else FIRST_QUESTION
        reply = answer(question, s.runs)
        print(f"User: {question}")
        print(f"Agent: {reply}")
        s = await store.append_runs(
            s.session_id, [{"input": question, "output": reply}], user_id=USER_ID
        )
        ids = await store.get_all_session_ids(user_id=USER_ID)  # most recently updated first
        print(f"(session {s.session_id!r} holds {s.run_count} runs; {USER_ID}'s sessions: {ids})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("question", nargs="?", help="what to ask (default: the demo's question)")
    parser.add_argument("--db-file", default="tmp/data.db", help="SQLite file (tmp/data.db)")
    args = parser.parse_args()
    asyncio.run(main(args.db_file, args.question))
