"""One OpenAI Agents turn in a process of its own:
``python -m tests.integrations.openai_agents._turn --url URL --table T --session S --user U Q``
prints the agent's answer.

The model is a local stand-in (no network) that answers only from the input the SDK gives it, so
a follow-up question is answered right only when the session fed the earlier turns back in.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, RunConfig, Runner
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from async_agent_storage import open_store
from async_agent_storage.integrations.openai_agents import StoreSession

FIRST_QUESTION = "What is the capital of France?"
FOLLOW_UP = "What was my last question?"


def user_texts(items: str | list[TResponseInputItem]) -> list[str]:
    """The user's messages in the model input, oldest first."""
    if isinstance(items, str):
        return [items]
    texts = []
    for item in items:
        entry: Any = item
        if entry.get("role") == "user":
            content = entry["content"]
            texts.append(content if isinstance(content, str) else content[0]["text"])
    return texts


class RecallModel(Model):
    """Answers the capital of France, and recalls the previous question from its input."""

    def __init__(self) -> None:
        self.inputs: list[str | list[TResponseInputItem]] = []

    def reply(self, items: str | list[TResponseInputItem]) -> str:
        asked = user_texts(items)
        if asked[-1] == FOLLOW_UP:
            if len(asked) < 2:
                return "You have not asked me anything yet."
            return f'Your last question was: "{asked[-2]}"'
        return "Paris" if asked[-1] == FIRST_QUESTION else "I don't know."

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        self.inputs.append(input)
        message = ResponseOutputMessage(
            id=f"msg_{len(self.inputs)}",
            type="message",
            role="assistant",
            status="completed",
            content=[
                ResponseOutputText(type="output_text", text=self.reply(input), annotations=[])
            ],
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("the tests do not stream")


async def turn(url: str, table: str, session_id: str, user_id: str, question: str) -> str:
    agent = Agent(name="Assistant", instructions="Answer briefly.", model=RecallModel())
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        session = StoreSession(session_id, store, user_id=user_id)
        result = await Runner.run(
            agent, question, session=session, run_config=RunConfig(tracing_disabled=True)
        )
    return str(result.final_output)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("question")
    args = parser.parse_args()
    print(asyncio.run(turn(args.url, args.table, args.session, args.user, args.question)))


if __name__ == "__main__":
    main()
