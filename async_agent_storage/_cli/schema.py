"""`aas status` and `aas migrate`: the store's schema."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from async_agent_storage import MigrationReport, MigrationStep, StoreUsage

from .common import (
    DEFAULT_TABLE,
    CliError,
    JsonOption,
    TableOption,
    UrlOption,
    console,
    print_json,
    run,
    store_for,
    text,
    when,
)

# The URL may also come first, as in 0.1 (`aas status sqlite:///data.db`).
PositionalUrl = Annotated[
    str | None,
    typer.Argument(
        metavar="URL",
        help="The store's URL, instead of --url (kept for scripts written for 0.1).",
        show_default=False,
    ),
]


def _url(positional: str | None, option: str | None) -> str | None:
    if positional is not None and option is not None and positional != option:
        raise CliError("two different store URLs: pass it once, as --url or as the argument")
    return positional if positional is not None else option


def _steps_json(steps: list[MigrationStep]) -> list[dict[str, Any]]:
    return [step.model_dump() for step in steps]


def _steps_table(steps: list[MigrationStep], title: str) -> Table:
    applied = any(step.applied_at is not None for step in steps)
    columns = ["version", "name", "checksum"] + (["applied at (UTC)"] if applied else [])
    table = Table(*columns, title=title, title_justify="left")
    for step in steps:
        cells = [text(step.version), text(step.name), text(step.checksum[:12])]
        if step.applied_at is not None:
            cells.append(text(when(step.applied_at)))
        table.add_row(*cells)
    return table


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def status(
    url_argument: PositionalUrl = None,
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    as_json: JsonOption = False,
) -> None:
    """Show the schema version of a store, the migrations it lacks, and what it holds: sessions,
    runs and the size of its tables.

    Reads only: creates no file, table or directory. Exits with status 1 when the store
    cannot be reached or its schema is newer than this version of async-agent-storage.
    """

    async def main() -> tuple[int, MigrationReport, StoreUsage | None]:
        _, store = store_for(_url(url_argument, url), table)
        version, plan = await store.schema_version(), await store.upgrade_schema(dry_run=True)
        usage = None
        if plan.up_to_date:  # opening a current schema changes nothing
            async with store:
                usage = await store.usage()
        return version, plan, usage

    version, plan, usage = run(main())
    # Facts in display order.
    facts: dict[str, Any] = {
        "store": plan.store,
        "table": table,
        "schema_version": version,
        "latest_version": plan.to_version,
        "up_to_date": plan.up_to_date,
        "pending": _steps_json(plan.pending),
        "sessions": None if usage is None else usage.sessions,
        "runs": None if usage is None else usage.runs,
        "bytes": None if usage is None else usage.bytes,
    }
    if as_json:
        print_json(facts)
        return
    # "label: value" lines; "schema version: N (this code: M)" is the line 0.1 printed.
    pending = "none" if plan.up_to_date else str(len(plan.pending))
    lines = [
        f"store: {plan.store}",
        f"schema version: {version} (this code: {plan.to_version})",
        f"pending migrations: {pending}",
    ]
    if usage is not None:
        lines += [f"sessions: {usage.sessions}", f"runs: {usage.runs}"]
        if usage.bytes:
            sizes = ", ".join(f"{name} {_size(n)}" for name, n in sorted(usage.bytes.items()))
            lines.append(f"size: {_size(sum(usage.bytes.values()))} ({sizes})")
    for line in lines:
        console.print(text(line))
    if plan.pending:
        console.print(_steps_table(plan.pending, "pending migrations"))
        console.print(text("apply them with: aas migrate"))


def migrate(
    url_argument: PositionalUrl = None,
    url: UrlOption = None,
    table: TableOption = DEFAULT_TABLE,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be applied; change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create the store's tables, or upgrade them to this version's schema.

    Safe to run from many hosts at once: each migration is applied exactly once, under a lock.
    Running it again does nothing. Never creates a SQLite database file that does not exist
    (the application creates it when it first opens the store).
    """

    async def main() -> MigrationReport:
        _, store = store_for(_url(url_argument, url), table)
        return await store.upgrade_schema(dry_run=dry_run)

    report = run(main())
    if as_json:
        print_json({**report.model_dump(), "up_to_date": report.up_to_date})
        return
    steps = report.pending if report.dry_run else report.applied
    if steps:
        title = "would apply" if report.dry_run else "applied"
        console.print(_steps_table(steps, title))
    console.print(text(report))
