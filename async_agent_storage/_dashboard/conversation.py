"""Runs as a conversation: the user and assistant messages a run holds, when it has a shape that
says so, else None (the page shows the run's JSON).

The shapes are the ones `aas export --format chat` reads:

- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (Agno, OpenAI-style SDKs): each message
  as it is; content given as a list of parts shows their text;
- ``{"input": ..., "output": ...}`` (or ``content`` instead of ``output``): a user and an
  assistant message; Agno's ``{"input": {"input_content": ...}}`` shows the text;
- ``{"content": {"role": ..., "parts": [{"text": ...}]}, "author": ...}`` (Google ADK events).

Nothing here produces markup: the templates escape every value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Message", "RunView", "pretty_json", "run_view"]


@dataclass(frozen=True, slots=True)
class Message:
    """One message: `text` when it is text, else `data` (its JSON, formatted)."""

    role: str
    text: str | None = None
    data: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RunView:
    position: int
    run_id: str
    messages: list[Message] | None  # None: not a conversation, show `raw`
    raw: str


def pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _role(value: object) -> str:
    role = str(value) if isinstance(value, str) and value else "message"
    return "assistant" if role == "model" else role


def _text_of(content: object) -> str | None:
    """Text content, or the text parts of a list of parts; None when it is not text."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and content and not isinstance(content, str | bytes):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                return None
        return "\n".join(texts)
    if isinstance(content, Mapping):
        for key in ("input_content", "text", "content"):
            if isinstance(content.get(key), str):
                return str(content[key])
    return None


def _message(
    role: object, content: object, *, name: object = None, extra: object = None
) -> Message:
    text = _text_of(content)
    data = None
    if text is None and content is not None:
        data = pretty_json(content)
    if extra:
        data = pretty_json(extra) if data is None else data + "\n" + pretty_json(extra)
    return Message(
        role=_role(role),
        text=text,
        data=data,
        name=name if isinstance(name, str) and name else None,
    )


def messages_of(run: Mapping[str, Any]) -> list[Message] | None:
    messages = run.get("messages")
    if isinstance(messages, list) and messages:
        if not all(isinstance(m, Mapping) and "role" in m for m in messages):
            return None
        return [
            _message(m["role"], m.get("content"), name=m.get("name"), extra=m.get("tool_calls"))
            for m in messages
        ]
    if "input" in run and ("output" in run or "content" in run):
        answer = run["output"] if "output" in run else run["content"]
        return [_message("user", run["input"]), _message("assistant", answer)]
    content = run.get("content")
    if isinstance(content, Mapping) and isinstance(content.get("parts"), list):
        role = content.get("role") or run.get("author")
        return [_message(role, content["parts"], name=run.get("author"))]
    return None


def run_view(position: int, run_id: str, run: Mapping[str, Any]) -> RunView:
    return RunView(
        position=position, run_id=run_id, messages=messages_of(run), raw=pretty_json(run)
    )
