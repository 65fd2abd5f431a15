"""The command line: inspect and upgrade a store's schema.

    async-agent-storage status  sqlite:///tmp/data.db
    async-agent-storage migrate sqlite:///tmp/data.db --dry-run
    async-agent-storage migrate postgresql://user@host/db --table agent_sessions

Needs the ``cli`` extra (typer and rich).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

try:
    import typer
    from rich.console import Console
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise SystemExit(
        "the command line needs the 'cli' extra: pip install 'async-agent-storage[cli]'"
    ) from exc

from ._checks import DEFAULT_TABLE_NAME
from ._factory import open_store
from .errors import StorageError
from .models import MigrationReport

app = typer.Typer(
    name="async-agent-storage",
    help="Inspect and upgrade async-agent-storage schemas.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
errors = Console(stderr=True)

Url = Annotated[str, typer.Argument(help="sqlite:///path.db, postgresql://..., mongodb://...")]
TableOption = Annotated[
    str, typer.Option("--table", "-t", help="table (or collection) name of the store")
]


def _print_report(report: MigrationReport) -> None:
    steps = report.pending if report.dry_run else report.applied
    if steps:
        table = Table("version", "name", "checksum", title=str(report.store))
        for step in steps:
            table.add_row(str(step.version), step.name, step.checksum[:12])
        console.print(table)
    console.print(str(report))


@app.command()
def migrate(
    url: Url,
    table: TableOption = DEFAULT_TABLE_NAME,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show the plan, change nothing")
    ] = False,
) -> None:
    """Apply pending migrations (safe to run from many hosts at once)."""

    async def run() -> MigrationReport:
        return await open_store(url, table_name=table).upgrade_schema(dry_run=dry_run)

    try:
        _print_report(asyncio.run(run()))
    except StorageError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@app.command()
def status(url: Url, table: TableOption = DEFAULT_TABLE_NAME) -> None:
    """Show the schema version and what an upgrade would apply."""

    async def run() -> tuple[int, MigrationReport]:
        store = open_store(url, table_name=table)
        return await store.schema_version(), await store.upgrade_schema(dry_run=True)

    try:
        version, plan = asyncio.run(run())
    except StorageError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"schema version: {version} (this code: {plan.to_version})")
    _print_report(plan)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
