"""The `aas` command: its commands and global options, assembled."""

from __future__ import annotations

from typing import Annotated, Final

import typer

from async_agent_storage import __version__

from . import agno, dashboard, export, schema, sessions
from .common import console, guarded, text

HELP: Final = """Look after the sessions that AI agents keep in an async-agent-storage store.

A store holds agent sessions (chat history as runs, session state, metadata) in SQLite,
PostgreSQL or MongoDB. Every command needs the store's URL: --url, or the AAS_URL environment
variable, e.g.

\b
    export AAS_URL=sqlite:///data/sessions.db
    aas status
    aas sessions ls --user alice
    aas export --format chat -o examples.jsonl

--table names the store's table when it is not agent_sessions. Errors are one line on stderr
and a non-zero exit status; --json gives output for scripts wherever a table is printed.
"""

app = typer.Typer(
    name="aas",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        console.print(text(f"async-agent-storage {__version__}"))
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """The global options."""


app.command("status", short_help="Show the schema version and pending migrations.")(
    guarded(schema.status)
)
app.command("migrate", short_help="Create or upgrade the store's tables.")(guarded(schema.migrate))
app.add_typer(sessions.app, name="sessions", short_help="List, show and delete sessions.")
app.command(
    "export", help=export.HELP, short_help="Write sessions out as JSON lines or chat examples."
)(guarded(export.export))
app.add_typer(agno.app, name="import", short_help="Copy sessions from Agno's storage.")
app.command(
    "dashboard", help=dashboard.HELP, short_help="Serve a read-only web dashboard of the store."
)(guarded(dashboard.dashboard))


def main() -> None:
    app(prog_name="aas")
