"""`aas export`: stream sessions out as JSON lines, or as chat examples for fine-tuning."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from contextlib import ExitStack, aclosing
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, Final

import orjson
import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from async_agent_storage import Session, SessionPage, SessionStore

from .common import (
    DEFAULT_TABLE,
    AgentOption,
    CliError,
    SinceOption,
    TableOption,
    TypeOption,
    UrlOption,
    UserOption,
    opened_store,
    parse_since,
    print_note,
    run,
    stderr,
    stderr_is_terminal,
)

# --- the chat format --------------------------------------------------------------------------

CHAT_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
# The message fields the chat fine-tuning format knows; the others (ids, metrics, timestamps,
# Agno's from_history...) are left out.
MESSAGE_FIELDS: Final = ("role", "content", "name", "tool_calls", "tool_call_id")

SKIP_NO_SHAPE: Final = "neither a messages list nor text input and output/content"
SKIP_BAD_MESSAGE: Final = "a message without a known role or with non-text content"
SKIP_NO_ANSWER: Final = "no assistant message"


def chat_example(run_: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """One run as ``{"messages": [...]}``, or None and the reason it cannot be one."""
    messages = run_.get("messages")
    if isinstance(messages, list) and messages:
        kept: list[dict[str, Any]] = []
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
                return None, SKIP_BAD_MESSAGE
            content = message.get("content")
            calls = message.get("tool_calls")
            if not (isinstance(content, str | list) or (content is None and calls)):
                return None, SKIP_BAD_MESSAGE
            kept.append({k: message[k] for k in MESSAGE_FIELDS if message.get(k) is not None})
        if not any(m["role"] == "assistant" for m in kept):
            return None, SKIP_NO_ANSWER
        return {"messages": kept}, None
    question = run_.get("input")
    answer = run_.get("output", run_.get("content"))
    if isinstance(question, str) and isinstance(answer, str):
        return {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }, None
    return None, SKIP_NO_SHAPE


# --- --where-state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateFilter:
    """``KEY=VALUE``: ``session_data["session_state"]`` holds VALUE at KEY (dots: nested keys)."""

    path: tuple[str, ...]
    value: Any

    @classmethod
    def parse(cls, text: str) -> StateFilter:
        key, sep, raw = text.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise CliError(f"--where-state {text!r}: expected KEY=VALUE, e.g. city=Paris")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        return cls(tuple(key.split(".")), value)

    def matches(self, session: Session) -> bool:
        node: Any = session.session_data.get("session_state")
        for part in self.path:
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return _same(node, self.value)


def _same(a: Any, b: Any) -> bool:
    # JSON's true is not 1: compare booleans only with booleans.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


# --- streaming --------------------------------------------------------------------------------


@dataclass
class Filters:
    user_id: str | None = None
    entity_id: str | None = None
    session_type: str | None = None
    updated_after: datetime | None = None
    state: list[StateFilter] = field(default_factory=list)


async def stream_sessions(
    store: SessionStore, filters: Filters, *, page_size: int
) -> AsyncGenerator[Session, None]:
    """Every matching session with its runs, page by page (keyset pages: stable under writes).
    The next page is read while the current one is written out; at most two are held."""

    async def page(cursor: str | None) -> SessionPage:
        return await store.list_sessions(
            user_id=filters.user_id,
            entity_id=filters.entity_id,
            session_type=filters.session_type,
            updated_after=filters.updated_after,
            limit=page_size,
            cursor=cursor,
            include_runs=True,
        )

    current = await page(None)
    following: asyncio.Future[SessionPage] | None = None
    try:
        while True:
            following = None
            if current.next_cursor is not None:
                following = asyncio.ensure_future(page(current.next_cursor))
            for session in current.items:
                if all(f.matches(session) for f in filters.state):
                    yield session
            if following is None:
                return
            current = await following
    finally:  # the consumer stopped early: the read ahead is not needed
        if following is not None and not following.done():
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)


class ExportFormat(StrEnum):
    jsonl = "jsonl"
    chat = "chat"


@dataclass
class Tally:
    sessions: int = 0
    lines: int = 0
    runs_skipped: Counter[str] = field(default_factory=Counter)


def _show_progress(out: IO[bytes], choice: bool | None) -> bool:
    """Auto: on a terminal, when the output goes to a file (not to a pipe or the screen)."""
    if choice is not None:
        return choice
    try:
        regular = stat.S_ISREG(os.fstat(out.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        regular = False
    return regular and stderr_is_terminal()


async def export_to(
    out: IO[bytes],
    url: str | None,
    table: str,
    filters: Filters,
    fmt: ExportFormat,
    *,
    limit: int | None,
    page_size: int,
    advance: Callable[[int], None],
    total: Callable[[int], None] = lambda count: None,
) -> Tally:
    tally = Tally()
    dumps = orjson.dumps
    async with (
        opened_store(url, table) as store,
        aclosing(stream_sessions(store, filters, page_size=page_size)) as sessions,
    ):
        if not filters.state:  # the database counts what the store filters (not --where-state)
            count = await store.count_sessions(
                user_id=filters.user_id,
                session_type=filters.session_type,
                entity_id=filters.entity_id,
                updated_after=filters.updated_after,
            )
            total(count if limit is None else min(count, limit))
        async for session in sessions:
            if fmt is ExportFormat.jsonl:
                out.write(dumps(session.model_dump()))
                out.write(b"\n")
                tally.lines += 1
            else:
                for run_ in session.runs:
                    example, reason = chat_example(run_)
                    if example is None:
                        assert reason is not None
                        tally.runs_skipped[reason] += 1
                        continue
                    out.write(dumps(example))
                    out.write(b"\n")
                    tally.lines += 1
            tally.sessions += 1
            advance(1)
            if limit is not None and tally.sessions >= limit:
                break
    return tally


HELP: Final = """Write sessions out, one JSON object per line, streaming (flat memory).

--format jsonl (the default): one session per line with every field and all its runs; each line
reads back with Session.model_validate_json.

--format chat: one {"messages": [...]} line per run, the chat fine-tuning format, for few-shot
and evaluation sets. A run that holds a "messages" list (role and content, as Agno and the
OpenAI-style SDKs store them) is used as it is, keeping only role, content, name, tool_calls
and tool_call_id. A run shaped {"input": "...", "output": "..."} (text; "content" in place of
"output" too, as in Agno's workflow runs) becomes a user and an assistant message. Other runs
are skipped (so is a run whose messages have an unknown role, non-text content, or no assistant
message) and counted on stderr.

Sessions come newest first. The filters combine; --where-state compares the session state
(session_data["session_state"]) in this program, after the store's filters.
"""


def export(
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    fmt: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="jsonl: sessions; chat: examples.")
    ] = ExportFormat.jsonl,
    user: UserOption = None,
    agent: AgentOption = None,
    session_type: TypeOption = None,
    since: SinceOption = None,
    where_state: Annotated[
        list[str] | None,
        typer.Option(
            "--where-state",
            metavar="KEY=VALUE",
            help=(
                "Only sessions whose state holds VALUE at KEY (repeat for more; a.b for nested "
                'keys). VALUE is read as JSON when it parses (3, true, null, "3"), else as text.'
            ),
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write to this file (replaced only when the export succeeds); default stdout.",
            dir_okay=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", "-n", metavar="N", min=1, help="Export at most this many sessions."
        ),
    ] = None,
    page_size: Annotated[
        int,
        typer.Option(
            "--page-size",
            metavar="N",
            min=1,
            max=10_000,
            help="Sessions read per query (memory vs round trips).",
        ),
    ] = 100,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Show progress on stderr. Default: only on a terminal, when writing to a file.",
            show_default=False,
        ),
    ] = None,
) -> None:
    filters_ = Filters(
        user_id=user,
        entity_id=agent,
        session_type=None if session_type is None else session_type.value,
    )

    with ExitStack() as stack:
        filters_.updated_after = parse_since(since)
        filters_.state = [StateFilter.parse(item) for item in where_state or []]
        out: IO[bytes]
        partial: Path | None = None
        if output is None or str(output) == "-":
            out = sys.stdout.buffer
        else:
            partial = output.with_name(f".{output.name}.part")
            try:
                out = stack.enter_context(partial.open("wb"))
            except OSError as exc:
                raise CliError(f"cannot write {str(output)!r}: {exc.strerror}") from None
            stack.callback(partial.unlink, missing_ok=True)
        bar = Progress(
            SpinnerColumn(),
            TextColumn("exporting"),
            BarColumn(),
            TextColumn("{task.completed} sessions"),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
            disable=not _show_progress(out, progress),
        )
        task = bar.add_task("export", total=limit)
        with bar:
            tally = run(
                export_to(
                    out,
                    url,
                    table,
                    filters_,
                    fmt,
                    limit=limit,
                    page_size=page_size if limit is None else min(page_size, limit),
                    advance=lambda n: bar.advance(task, n),
                    total=lambda n: bar.update(task, total=n),
                )
            )
        out.flush()
        if partial is not None and output is not None:
            out.close()
            partial.replace(output)
    where = "stdout" if partial is None else str(output)
    if fmt is ExportFormat.jsonl:
        print_note(f"exported {tally.sessions} session(s) to {where}")
        return
    skipped = sum(tally.runs_skipped.values())
    print_note(f"wrote {tally.lines} chat example(s) from {tally.sessions} session(s) to {where}")
    if skipped:
        reasons = "; ".join(f"{n} with {why}" for why, n in tally.runs_skipped.most_common())
        print_note(f"skipped {skipped} run(s): {reasons}")
