"""One Agno agent turn in a process of its own:
``python -m tests.integrations.agno._turn --url URL --table T --session S --user U QUESTION``
prints the agent's answer.

The model is a local stub (no network) that answers only from the messages Agno gives it, so a
follow-up question is answered right only when the stored history was put back in its context.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from agno.agent import Agent
from agno.models.base import Model
from agno.models.message import Message
from agno.models.response import ModelResponse

from async_agent_storage import open_store
from async_agent_storage.integrations.agno import AgnoStoreDb

FIRST_QUESTION = "What is the capital of France?"
FOLLOW_UP = "What was my last question?"


def reply(messages: list[Message]) -> str:
    asked = [str(m.content) for m in messages if m.role == "user"]
    if asked and asked[-1] == FOLLOW_UP:
        if len(asked) < 2:
            return "You have not asked me anything yet."
        return f'Your last question was: "{asked[-2]}"'
    return "Paris" if asked and asked[-1] == FIRST_QUESTION else "I don't know."


@dataclass
class StubModel(Model):
    """A model that needs no network: it answers from the messages it is given."""

    id: str = "stub"
    name: str = "Stub"
    provider: str = "local"

    def invoke(self, messages: list[Message], *args: Any, **kwargs: Any) -> ModelResponse:
        return ModelResponse(role="assistant", content=reply(messages))

    async def ainvoke(self, messages: list[Message], *args: Any, **kwargs: Any) -> ModelResponse:
        return ModelResponse(role="assistant", content=reply(messages))

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        raise NotImplementedError("the tests do not stream")

    def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        raise NotImplementedError("the tests do not stream")

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return ModelResponse()

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return ModelResponse()


def make_agent(db: Any) -> Agent:
    return Agent(
        model=StubModel(),
        db=db,
        add_history_to_context=True,
        num_history_runs=3,
        telemetry=False,
    )


async def turn(url: str, table: str, session_id: str, user_id: str, question: str) -> str:
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        agent = make_agent(AgnoStoreDb(store))
        result = await agent.arun(question, session_id=session_id, user_id=user_id)
    return str(result.content)


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
