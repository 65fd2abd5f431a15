"""What every command shares: the store options, opening a store, errors, output."""

from __future__ import annotations

import asyncio
import functools
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

import orjson
import typer
from rich.console import Console
from rich.text import Text

from async_agent_storage import Session, SessionStore, StorageError, open_store

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_TABLE: Final = "agent_sessions"
URL_ENV: Final = "AAS_URL"
TABLE_ENV: Final = "AAS_TABLE"

# Tables go to stdout, messages and progress to stderr. `highlight=False`: no colouring of
# numbers or paths guessed from the text; user text is always passed as `Text`, never as markup.
console = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 1."""


class SessionKind(StrEnum):
    """The `--type` choices."""

    agent = "agent"
    team = "team"
    workflow = "workflow"


# --- options shared by the commands ----------------------------------------------------------

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        "-u",
        metavar="URL",
        envvar=URL_ENV,
        show_envvar=True,
        help=(
            "Where the store is: sqlite:///relative.db, sqlite:////absolute.db, "
            "postgresql://user:password@host/db or mongodb://host/db."
        ),
    ),
]
TableOption = Annotated[
    str,
    typer.Option(
        "--table",
        "-t",
        metavar="NAME",
        envvar=TABLE_ENV,
        show_envvar=True,
        help="The store's table (MongoDB: collection) name.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON instead of a table (for scripts and jq).")
]
UserOption = Annotated[
    str | None, typer.Option("--user", metavar="USER_ID", help="Only the sessions of this user_id.")
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent",
        metavar="ID",
        help="Only the sessions of this agent, team or workflow id (any of the three).",
    ),
]
TypeOption = Annotated[
    SessionKind | None, typer.Option("--type", help="Only sessions of this type.")
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="TIME",
        help=(
            "Only sessions updated after this time: an ISO date or time (2026-11-01, "
            "2026-11-01T12:00:00+01:00; UTC when no offset is given) or an age such as 30m, "
            "12h, 7d, 2w."
        ),
    ),
]


# --- errors -----------------------------------------------------------------------------------

# Passwords of the URLs given on this command line: never printed, even inside a driver's
# error message.
_secrets: set[str] = set()


def redact(url: str) -> str:
    """`url` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    return url.replace(f":{password}@", ":***@", 1)


def _scrub(message: str) -> str:
    for secret in _secrets:
        message = message.replace(secret, "***")
    return " ".join(message.split())  # one line


def print_error(message: str) -> None:
    stderr.print(Text.assemble(("error: ", "bold red"), _scrub(message)))


def print_note(message: str) -> None:
    """A line for people on stderr (counts, hints), never mixed into the output."""
    stderr.print(Text(_scrub(message)))


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(1)


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Storage and usage errors become one line on stderr and exit status 1."""
    try:
        yield
    except (StorageError, CliError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        print_error("interrupted")
        raise typer.Exit(130) from None


def guarded(command: Callable[P, None]) -> Callable[P, None]:
    """A command whose errors are reported by `errors_as_exit` (typer reads the signature
    through ``__wrapped__``)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        with errors_as_exit():
            command(*args, **kwargs)

    return wrapper


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine with `errors_as_exit`."""
    with errors_as_exit():
        return asyncio.run(main)


# --- the store --------------------------------------------------------------------------------


def store_url(url: str | None) -> str:
    """The URL given with --url or AAS_URL, checked to be there."""
    if not url:
        raise CliError(f"no store URL: pass --url (e.g. --url sqlite:///data.db) or set {URL_ENV}")
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        _secrets.add(password)
    return url


def sqlite_file(url: str) -> str | None:
    """The file a sqlite:/// URL names; None for other URLs and in-memory databases."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or rest in ("", "/", "/:memory:") or not rest.startswith("/"):
        return None
    return unquote(rest[1:].partition("?")[0])


def require_database(url: str) -> None:
    """Refuse a SQLite URL whose file does not exist, before anything could create it."""
    path = sqlite_file(url)
    if path is None:
        return
    if not Path(path).exists():
        raise CliError(f"no SQLite database at {path!r}: the file does not exist")
    if not Path(path).is_file():
        raise CliError(f"{path!r} is not a SQLite database file")


def store_for(url: str | None, table: str) -> tuple[str, SessionStore]:
    """A store for the URL, not opened, after the checks that keep a command from creating a
    database."""
    url = store_url(url)
    require_database(url)
    return url, open_store(url, table_name=table)


@asynccontextmanager
async def opened_store(url: str | None, table: str) -> AsyncIterator[SessionStore]:
    """The store, open, for commands that read or delete sessions. Refuses a database that holds
    no store rather than creating the tables."""
    url, store = store_for(url, table)
    if await store.schema_version() == 0:
        raise CliError(
            f"no store with table {table!r} at {redact(url)} (check --table; `aas migrate` "
            "creates the tables)"
        )
    async with store:
        yield store


# --- values -----------------------------------------------------------------------------------

_AGE = re.compile(r"(\d+)\s*(s|m|h|d|w)", re.IGNORECASE)
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str | None, *, now: datetime | None = None) -> datetime | None:
    """``--since``: an ISO date/time (UTC unless it has an offset) or an age like ``2d``."""
    if text is None:
        return None
    text = text.strip()
    age = _AGE.fullmatch(text)
    if age:
        delta = timedelta(**{_UNITS[age.group(2).lower()]: int(age.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--since {text!r}: expected an ISO date or time (2026-11-01, "
            "2026-11-01T12:00:00+01:00) or an age such as 30m, 12h, 7d, 2w"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def session_json(session: Session, *, runs: bool) -> dict[str, Any]:
    """A session as a JSON object: every field, and `run_count` (the whole history's length)."""
    data = session.model_dump()
    if not runs:
        del data["runs"]
    data["run_count"] = session.run_count
    return data


def print_json(value: Any) -> None:
    """Pretty JSON on stdout (datetimes as RFC 3339)."""
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def text(value: object) -> Text:
    """A table cell: user text shown as it is, never read as markup."""
    return Text("" if value is None else str(value))


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def stderr_is_terminal() -> bool:
    return is_terminal(sys.stderr)
