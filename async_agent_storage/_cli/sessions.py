"""`aas sessions ls|show|rm`: look at and delete sessions."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from async_agent_storage import Session, SessionPage

from .common import (
    DEFAULT_TABLE,
    AgentOption,
    CliError,
    JsonOption,
    SinceOption,
    TableOption,
    TypeOption,
    UrlOption,
    UserOption,
    console,
    fail,
    guarded,
    opened_store,
    parse_since,
    print_json,
    print_note,
    run,
    session_json,
    stderr,
    text,
    when,
)

app = typer.Typer(
    name="sessions",
    help="List, show and delete the sessions in a store.",
    no_args_is_help=True,
)

SessionId = Annotated[
    str, typer.Argument(metavar="SESSION_ID", help="The session's id.", show_default=False)
]


def entity(session: Session) -> str:
    return session.agent_id or session.team_id or session.workflow_id or ""


def session_name(session: Session) -> str:
    name = session.session_data.get("session_name")
    return name if isinstance(name, str) else ""


@app.command("ls")
@guarded
def list_sessions(
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    user: UserOption = None,
    agent: AgentOption = None,
    session_type: TypeOption = None,
    since: SinceOption = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", metavar="N", min=1, max=10_000, help="Show at most this many."
        ),
    ] = 20,
    cursor: Annotated[
        str | None,
        typer.Option(
            "--cursor",
            metavar="CURSOR",
            help="Continue a listing where the previous one stopped (it prints the cursor).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List sessions, most recently updated first.

    Shows one page of --limit sessions; when more follow, prints the --cursor that continues
    the listing (with the same filters). Runs are not loaded, only counted. The agent column
    holds the agent, team or workflow id.
    """

    async def main() -> SessionPage:
        updated_after = parse_since(since)
        async with opened_store(url, table) as store:
            return await store.list_sessions(
                user_id=user,
                entity_id=agent,
                session_type=None if session_type is None else session_type.value,
                updated_after=updated_after,
                limit=limit,
                cursor=cursor,
            )

    page = run(main())
    if as_json:
        print_json(
            {
                "items": [session_json(s, runs=False) for s in page.items],
                "next_cursor": page.next_cursor,
            }
        )
        return
    if not page.items:
        print_note("no sessions")
        return
    listing = Table()
    listing.add_column("updated (UTC)", no_wrap=True)
    listing.add_column("session_id", overflow="fold")
    listing.add_column("type")
    listing.add_column("user", overflow="fold")
    listing.add_column("agent", overflow="fold")  # or team, or workflow
    listing.add_column("runs", justify="right")
    listing.add_column("name", overflow="fold")
    for s in page.items:
        listing.add_row(
            text(when(s.updated_at)),
            text(s.session_id),
            text(s.session_type),
            text(s.user_id),
            text(entity(s)),
            text(s.run_count),
            text(session_name(s)),
        )
    console.print(listing)
    if page.next_cursor is not None:
        print_note(f"more sessions follow: add --cursor {page.next_cursor}")


def _parse_runs(value: str) -> int | None:
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise CliError(f"--runs {value!r}: expected a number of runs (0 or more) or 'all'")
    return count


def _json_block(value: Any) -> Text:
    return Text(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _message_line(message: Any) -> Text:
    if not isinstance(message, dict):
        return _json_block(message)
    role = message.get("role")
    content = message.get("content")
    body = content if isinstance(content, str) else orjson.dumps(content).decode()
    if message.get("tool_calls"):
        body += f"  [tool calls: {orjson.dumps(message['tool_calls']).decode()}]"
    return Text.assemble((f"{role}: ", "bold"), body)


def _run_view(run_: dict[str, Any]) -> Group | Text:
    """A run as a person reads it: its messages, or its input and output, else its JSON."""
    messages = run_.get("messages")
    if isinstance(messages, list) and messages:
        return Group(*(_message_line(m) for m in messages))
    if "input" in run_ or "output" in run_:
        lines = []
        for key in ("input", "output"):
            if key in run_:
                value = run_[key]
                body = value if isinstance(value, str) else orjson.dumps(value).decode()
                lines.append(Text.assemble((f"{key}: ", "bold"), body))
        return Group(*lines)
    return _json_block(run_)


@app.command("show")
@guarded
def show(
    session_id: SessionId,
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            metavar="USER_ID",
            help="The owner's user_id: a session of another user is not shown.",
        ),
    ] = None,
    runs: Annotated[
        str,
        typer.Option(
            "--runs", metavar="N|all", help="How many of the latest runs to show, or all."
        ),
    ] = "10",
    as_json: JsonOption = False,
) -> None:
    """Show one session: its ids, state, metadata and latest runs.

    Exits with status 1 when there is no such session (or it belongs to another user than
    --user).
    """
    last_runs = _parse_runs(runs)

    async def main() -> Session | None:
        async with opened_store(url, table) as store:
            return await store.read(session_id, user_id=user, last_runs=last_runs)

    session = run(main())
    if session is None:
        fail_missing(session_id, user)
    if as_json:
        data = session_json(session, runs=True)
        data["runs_offset"] = session.runs_offset
        print_json(data)
        return
    facts = Table.grid(padding=(0, 2))
    for label, value in (
        ("session_id", session.session_id),
        ("type", session.session_type),
        ("user", session.user_id),
        ("agent", session.agent_id),
        ("team", session.team_id),
        ("workflow", session.workflow_id),
        ("created (UTC)", when(session.created_at)),
        ("updated (UTC)", when(session.updated_at)),
        ("version", session.version),
        ("runs", session.run_count),
    ):
        if value is not None:
            facts.add_row(label, text(value))
    console.print(facts)
    for label, block in (
        ("session_data", session.session_data),
        ("metadata", session.metadata),
        ("summary", session.summary),
    ):
        if block:
            console.print(Panel(_json_block(block), title=label, title_align="left"))
    for position, run_ in enumerate(session.runs, start=session.runs_offset + 1):
        title = f"run {position} of {session.run_count}"
        if isinstance(run_.get("run_id"), str):
            title += f"  {run_['run_id']}"
        console.print(Panel(_run_view(run_), title=Text(title), title_align="left"))
    if session.runs_offset:
        print_note(
            f"showing the last {len(session.runs)} of {session.run_count} runs "
            "(--runs all shows every run)"
        )


def fail_missing(session_id: str, user: str | None) -> NoReturn:
    owner = "" if user is None else f" owned by user {user!r}"
    fail(f"no session {session_id!r}{owner}")


@app.command("rm")
@guarded
def remove(
    session_id: SessionId,
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            metavar="USER_ID",
            help="The owner's user_id: a session of another user is not deleted.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete one session and all its runs.

    Asks first unless --yes is given. Exits with status 1 when there is no such session (or
    it belongs to another user than --user).
    """

    async def find() -> Session | None:
        async with opened_store(url, table) as store:
            return await store.read(session_id, user_id=user, last_runs=0)

    async def delete() -> bool:
        async with opened_store(url, table) as store:
            return await store.delete_session(session_id, user_id=user)

    if not yes:
        found = run(find())
        if found is None:
            fail_missing(session_id, user)
        owner = "" if found.user_id is None else f" of user {found.user_id!r}"
        question = f"Delete session {session_id!r}{owner} and its {found.run_count} run(s)?"
        try:
            confirmed = typer.confirm(question, default=False, err=True)
        except typer.Abort:  # no answer: stdin closed, or not a terminal
            stderr.print()
            fail("nothing deleted: no answer to the question (--yes deletes without asking)")
        if not confirmed:
            print_note("nothing deleted")
            raise typer.Exit(1)
    if not run(delete()):
        fail_missing(session_id, user)
    print_note(f"deleted session {session_id!r}")
