"""One ADK turn in a process of its own:
``python -m tests.integrations.adk._turn --url URL --table T --session S --user U QUESTION``
prints the agent's answer.

The model is a local stand-in (no network) that answers only from the contents ADK sends it, so
a follow-up question is answered right only when the stored events were replayed into it. The
agent's `after_model_callback` counts the turns in ``user:`` and session state.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.models import LlmCapabilities
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.genai import types

from async_agent_storage import open_store
from async_agent_storage.integrations.adk import StoreSessionService

APP = "recall_app"
FIRST_QUESTION = "What is the capital of France?"
FOLLOW_UP = "What was my last question?"


def reply(contents: list[types.Content]) -> str:
    asked = [
        part.text
        for content in contents
        if content.role == "user"
        for part in content.parts or []
        if part.text
    ]
    if asked and asked[-1] == FOLLOW_UP:
        if len(asked) < 2:
            return "You have not asked me anything yet."
        return f'Your last question was: "{asked[-2]}"'
    return "Paris" if asked and asked[-1] == FIRST_QUESTION else "I don't know."


class RecallLlm(BaseLlm):
    """Answers the capital of France and recalls the previous question from its contents."""

    model: str = "recall"

    @property
    def capabilities(self) -> LlmCapabilities:
        return LlmCapabilities(output_schema_and_tools=False)

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        text = reply(list(llm_request.contents))
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))


def count_turns(callback_context: Any, llm_response: LlmResponse) -> None:
    state = callback_context.state
    state["turns"] = int(state.get("turns", 0)) + 1
    state["user:turns"] = int(state.get("user:turns", 0)) + 1
    state["temp:scratch"] = "never stored"


def make_runner(service: StoreSessionService) -> Runner:
    agent = LlmAgent(
        name="recall", model=RecallLlm(), instruction="Answer.", after_model_callback=count_turns
    )
    return Runner(agent=agent, app_name=APP, session_service=service)


async def ask(runner: Runner, user_id: str, session_id: str, question: str) -> str:
    answer = ""
    async for event in runner.run_async(
        user_id=user_id,
        session_id=session_id,
        new_message=types.Content(role="user", parts=[types.Part(text=question)]),
    ):
        if event.content and event.content.parts and event.author != "user":
            answer = "".join(part.text or "" for part in event.content.parts)
    return answer


async def turn(url: str, table: str, session_id: str, user_id: str, question: str) -> str:
    store = open_store(url, table_name=table, auto_upgrade_schema=True)
    async with store:
        service = StoreSessionService(store)
        existing = await service.get_session(app_name=APP, user_id=user_id, session_id=session_id)
        if existing is None:
            await service.create_session(
                app_name=APP, user_id=user_id, session_id=session_id, state={"app:model": "recall"}
            )
        return await ask(make_runner(service), user_id, session_id, question)


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
