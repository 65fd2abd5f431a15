"""`aas import agno`: copy sessions out of Agno's storage tables into a store.

Two table layouts are read, straight from the database (SQLite through `sqlite3`, PostgreSQL
through asyncpg), without Agno installed:

- Agno 1.x storage tables (`SqliteStorage`, `PostgresStorage`), one per mode: ``session_id``,
  ``user_id``, ``memory`` (the runs are ``memory["runs"]``), ``session_data``, ``extra_data``,
  ``agent_id``/``agent_data`` or ``team_id``/``team_data`` or ``workflow_id``/``workflow_data``,
  ``created_at``/``updated_at`` in epoch seconds.
- Agno 2.x and 3.x session tables (``agno_sessions``): ``session_type`` and the fields our
  `Session` mirrors; the runs in its ``runs`` column (2.x) or in the runs table beside it (3.x,
  ``agno_runs``, one row per run), merged the way Agno 3 merges them when both hold runs.

A session already in the store is skipped, never overwritten (`upsert(..., if_version=0)`), so a
second run imports only what is new.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Protocol
from urllib.parse import unquote

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from async_agent_storage import (
    InvalidInputError,
    SerializationError,
    Session,
    SessionConflictError,
    SessionOwnershipError,
    SessionStore,
    SessionValidationError,
    open_store,
)

from .common import (
    DEFAULT_TABLE,
    TABLE_ENV,
    CliError,
    JsonOption,
    SessionKind,
    UrlOption,
    console,
    fail,
    guarded,
    print_json,
    print_note,
    run,
    stderr,
    stderr_is_terminal,
    store_url,
    text,
)

# The key of `Session.metadata` that keeps what has no field of its own: where the session came
# from, Agno's timestamps (the store sets its own), and Agno 1.x's memory besides the runs.
PROVENANCE: Final = "imported_from_agno"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _quoted(name: str) -> str:
    """``schema.table`` or ``table`` as a quoted SQL name; anything else is refused."""
    parts = name.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise CliError(f"--table {name!r}: expected a table name, or schema.table")
    return ".".join(f'"{part}"' for part in parts)


def _json(value: Any) -> Any:
    """A JSON column's value. Agno 2.x on SQLite stores JSON text inside a JSON string, so a
    string that decodes to a string holding JSON is decoded again."""
    if isinstance(value, bytes | str):
        value = orjson.loads(value)
        if isinstance(value, str) and value[:1] in ("{", "["):
            value = orjson.loads(value)
    return value


# --- the sources ------------------------------------------------------------------------------


class Source(Protocol):
    """An Agno table, read in batches ordered like Agno's recency (oldest first)."""

    label: str
    columns: frozenset[str]
    runs_table: str | None

    async def count(self, session_type: str | None) -> int: ...

    def batches(
        self, session_type: str | None, size: int
    ) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def runs_for(self, session_ids: Sequence[str]) -> dict[str, list[Any]]: ...

    async def close(self) -> None: ...


def _order(columns: frozenset[str]) -> str:
    moment = [c for c in ("updated_at", "created_at") if c in columns]
    key = f"COALESCE({', '.join(moment)}, 0)" if moment else "0"
    return f"ORDER BY {key}, session_id"


def _runs_table_name(table: str) -> str:
    """Agno 3's default: ``agno_runs`` beside ``agno_sessions``, else ``<sessions>_runs``."""
    schema, _, name = table.rpartition(".")
    runs = "agno_runs" if name == "agno_sessions" else f"{name}_runs"
    return f"{schema}.{runs}" if schema else runs


class SqliteSource:
    """An Agno table in a SQLite file, opened read-only (nothing is created or written)."""

    def __init__(self, path: str, table: str, runs_table: str | None) -> None:
        if not Path(path).is_file():
            raise CliError(f"no SQLite database at {path!r}")
        self.label = f"{path} table {table}"
        self._table = _quoted(table)
        uri = f"file:{Path(path).resolve().as_posix()}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            self.columns = self._columns(table)
            if not self.columns:
                raise CliError(f"no table {table!r} in {path!r}")
            wanted = runs_table or _runs_table_name(table)
            self.runs_table = wanted if self._columns(wanted) else None
            if runs_table and self.runs_table is None:
                raise CliError(f"no runs table {runs_table!r} in {path!r}")
        except BaseException:
            self._db.close()
            raise

    def _columns(self, table: str) -> frozenset[str]:
        _quoted(table)
        schema, _, name = table.rpartition(".")
        sql = "SELECT name FROM pragma_table_info(?, ?)"
        rows = self._db.execute(sql, (name, schema or "main")).fetchall()
        return frozenset(row[0] for row in rows)

    async def count(self, session_type: str | None) -> int:
        where, params = _type_filter(session_type, "?")
        sql = f"SELECT count(*) FROM {self._table}{where}"
        row = await asyncio.to_thread(lambda: self._db.execute(sql, params).fetchone())
        return int(row[0])

    async def batches(
        self, session_type: str | None, size: int
    ) -> AsyncIterator[list[dict[str, Any]]]:
        where, params = _type_filter(session_type, "?")
        cursor = self._db.execute(
            f"SELECT * FROM {self._table}{where} {_order(self.columns)}", params
        )
        names = [d[0] for d in cursor.description]
        while rows := await asyncio.to_thread(cursor.fetchmany, size):
            yield [dict(zip(names, row, strict=True)) for row in rows]

    async def runs_for(self, session_ids: Sequence[str]) -> dict[str, list[Any]]:
        if self.runs_table is None or not session_ids:
            return {}
        marks = ", ".join("?" * len(session_ids))
        sql = (
            f"SELECT session_id, run_data FROM {_quoted(self.runs_table)} "
            f"WHERE session_id IN ({marks}) ORDER BY session_id, run_index, created_at, run_id"
        )
        rows = await asyncio.to_thread(lambda: self._db.execute(sql, list(session_ids)).fetchall())
        return _group(rows)

    async def close(self) -> None:
        self._db.close()


class PostgresSource:
    """An Agno table in PostgreSQL (``schema.table``, or found on the search_path)."""

    def __init__(self, connection: Any, table: str, columns: frozenset[str], runs: str | None):
        self._connection = connection
        self.label = table
        self._table = _quoted(table)
        self.columns = columns
        self.runs_table = runs

    @classmethod
    async def open(cls, url: str, table: str, runs_table: str | None) -> PostgresSource:
        try:
            import asyncpg
        except ImportError as exc:
            raise CliError(
                "reading PostgreSQL needs asyncpg: pip install 'async-agent-storage[postgres]'"
            ) from exc
        scheme, sep, rest = url.partition("://")
        try:
            connection = await asyncpg.connect(f"{scheme.split('+')[0]}{sep}{rest}", timeout=30)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise CliError(f"cannot connect to the Agno database: {exc}") from exc
        try:
            columns = await _pg_columns(connection, table)
            if not columns:
                hint = (
                    ""
                    if "." in table
                    else " (Agno 1.x and 2.x keep their tables in schema ai: --table ai.NAME)"
                )
                raise CliError(f"no table {table!r} in the Agno database{hint}")
            wanted = runs_table or _runs_table_name(table)
            runs = wanted if await _pg_columns(connection, wanted) else None
            if runs_table and runs is None:
                raise CliError(f"no runs table {runs_table!r} in the Agno database")
        except BaseException:
            await connection.close()
            raise
        return cls(connection, table, columns, runs)

    async def count(self, session_type: str | None) -> int:
        where, params = _type_filter(session_type, "$1")
        return int(
            await self._connection.fetchval(f"SELECT count(*) FROM {self._table}{where}", *params)
        )

    async def batches(
        self, session_type: str | None, size: int
    ) -> AsyncIterator[list[dict[str, Any]]]:
        where, params = _type_filter(session_type, "$1")
        # JSON columns as text: decoded here like SQLite's, whatever codecs the server has.
        async with self._connection.transaction(readonly=True, isolation="repeatable_read"):
            cursor = await self._connection.cursor(
                f"SELECT * FROM {self._table}{where} {_order(self.columns)}", *params
            )
            while rows := await cursor.fetch(size):
                yield [dict(row.items()) for row in rows]

    async def runs_for(self, session_ids: Sequence[str]) -> dict[str, list[Any]]:
        if self.runs_table is None or not session_ids:
            return {}
        rows = await self._connection.fetch(
            f"SELECT session_id, run_data FROM {_quoted(self.runs_table)} "
            "WHERE session_id = ANY($1::text[]) ORDER BY session_id, run_index, created_at, run_id",
            list(session_ids),
        )
        return _group([(row[0], row[1]) for row in rows])

    async def close(self) -> None:
        await self._connection.close()


async def _pg_columns(connection: Any, table: str) -> frozenset[str]:
    quoted = _quoted(table)
    rows = await connection.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
        "AND NOT attisdropped",
        quoted,
    )
    return frozenset(row[0] for row in rows)


def _type_filter(session_type: str | None, mark: str) -> tuple[str, list[str]]:
    if session_type is None:
        return "", []
    return f" WHERE session_type = {mark}", [session_type]


def _group(rows: Sequence[tuple[str, Any]]) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {}
    for session_id, data in rows:
        runs.setdefault(session_id, []).append(data)
    return runs


async def open_source(url: str, table: str, runs_table: str | None) -> Source:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:  # a plain path
        return SqliteSource(url, table, runs_table)
    if scheme.startswith("sqlite"):
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise CliError(f"--from {url!r}: expected sqlite:///relative.db or sqlite:////abs.db")
        return SqliteSource(unquote(rest[1:].partition("?")[0]), table, runs_table)
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return await PostgresSource.open(url, table, runs_table)
    raise CliError(f"--from {url!r}: expected a SQLite file or a postgresql:// URL")


# --- from Agno's rows to sessions -------------------------------------------------------------


class Refused(Exception):
    """A row that cannot become a session; the message is the reason, grouped in the report."""


def _decode(row: dict[str, Any], column: str) -> Any:
    try:
        return _json(row.get(column))
    except orjson.JSONDecodeError:
        raise Refused(f"{column} is not valid JSON") from None


def _object(row: dict[str, Any], column: str) -> dict[str, Any] | None:
    value = _decode(row, column)
    if value is None or isinstance(value, dict):
        return value
    raise Refused(f"{column} is not a JSON object")


def _moment(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _provenance(layout: str, source: Source, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "layout": layout,
        "table": source.label,
        "created_at": _moment(row.get("created_at")),
        "updated_at": _moment(row.get("updated_at")),
    }


def _runs(value: Any, what: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise Refused(f"{what} is not a list of JSON objects")
    return value


def _merge_runs(legacy: list[dict[str, Any]], table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Agno 3's merge of the legacy ``runs`` column with its runs table: the column's order, the
    table's copy of a run when both have it, then the runs only the table has."""
    by_id = {r["run_id"]: r for r in table if r.get("run_id") is not None}
    merged = [by_id.get(r.get("run_id"), r) for r in legacy]
    known = {r.get("run_id") for r in legacy}
    return merged + [r for r in table if r.get("run_id") is None or r["run_id"] not in known]


def agno1_session(source: Source, row: dict[str, Any], mode: str) -> Session:
    memory = _object(row, "memory") or {}
    runs = _runs(memory.get("runs"), "memory.runs")
    if not runs and "runs" in row:  # workflow_v2 tables keep the runs in a column
        runs = _runs(_decode(row, "runs"), "runs")
    extra = _decode(row, "extra_data")
    metadata: dict[str, Any] = dict(extra) if isinstance(extra, dict) else {}
    if extra is not None and not isinstance(extra, dict):
        metadata["extra_data"] = extra
    provenance = _provenance("agno 1.x storage", source, row)
    if row.get("team_session_id"):
        provenance["team_session_id"] = row["team_session_id"]
    rest = {k: v for k, v in memory.items() if k != "runs" and v not in (None, {}, [])}
    if rest:
        provenance["memory"] = rest
    metadata[PROVENANCE] = provenance
    summary = memory.get("summary")
    return _session(
        session_id=row.get("session_id"),
        session_type=mode,
        user_id=row.get("user_id"),
        agent_id=row.get("agent_id"),
        team_id=row.get("team_id"),
        workflow_id=row.get("workflow_id"),
        session_data=_object(row, "session_data") or {},
        agent_data=_object(row, "agent_data"),
        team_data=_object(row, "team_data"),
        workflow_data=_object(row, "workflow_data"),
        metadata=metadata,
        summary=summary if isinstance(summary, dict) else None,
        runs=runs,
    )


def agno2_session(source: Source, row: dict[str, Any], table_runs: list[Any]) -> Session:
    legacy = _runs(_decode(row, "runs"), "runs") if "runs" in row else []
    try:
        from_table = _runs([_json(r) for r in table_runs], "the runs table's run_data")
    except orjson.JSONDecodeError:
        raise Refused("a run in the runs table is not valid JSON") from None
    metadata = dict(_object(row, "metadata") or {})
    metadata[PROVENANCE] = _provenance("agno 2.x/3.x sessions", source, row)
    session_type = row.get("session_type")
    if session_type not in ("agent", "team", "workflow"):
        raise Refused(f"session_type {session_type!r} is not agent, team or workflow")
    return _session(
        session_id=row.get("session_id"),
        session_type=session_type,
        user_id=row.get("user_id"),
        agent_id=row.get("agent_id"),
        team_id=row.get("team_id"),
        workflow_id=row.get("workflow_id"),
        session_data=_object(row, "session_data") or {},
        agent_data=_object(row, "agent_data"),
        team_data=_object(row, "team_data"),
        workflow_data=_object(row, "workflow_data"),
        metadata=metadata,
        summary=_object(row, "summary"),
        runs=_merge_runs(legacy, from_table) if legacy else from_table,
    )


def _session(**fields: Any) -> Session:
    try:
        return Session(**fields)
    except SessionValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise Refused(f"{where}: {error['msg']}") from None


# --- the import -------------------------------------------------------------------------------


@dataclass
class Report:
    rows: int = 0
    imported: int = 0
    skipped: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def refuse(self, reason: str, session_id: Any) -> None:
        self.refused[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(str(session_id))

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "imported": self.imported,
            "skipped": self.skipped,
            "refused": sum(self.refused.values()),
            "reasons": [
                {"reason": why, "count": n, "examples": self.examples[why]}
                for why, n in self.refused.most_common()
            ],
        }


def _mode_of(columns: frozenset[str]) -> str | None:
    found = [m for m in ("agent", "team", "workflow") if f"{m}_id" in columns]
    return found[0] if len(found) == 1 else None


@dataclass(frozen=True)
class Plan:
    """What a table holds: its layout ("1": Agno 1.x storage, "2": Agno 2.x/3.x sessions), the
    mode of a 1.x table, and the session type a 2.x/3.x import is limited to."""

    layout: str
    mode: str | None
    session_type: str | None


def plan(source: Source, mode: str | None) -> Plan:
    """Check the table before anything is written."""
    if "session_type" in source.columns:
        return Plan("2", None, mode)
    if "memory" not in source.columns:
        raise CliError(
            f"{source.label} is not an Agno storage table (it has neither Agno 1.x's memory "
            "column nor Agno 2.x/3.x's session_type column)"
        )
    detected = _mode_of(source.columns)
    if mode is None:
        if detected is None:
            raise CliError(f"cannot tell the mode of Agno 1.x table {source.label}: pass --mode")
        return Plan("1", detected, None)
    if f"{mode}_id" not in source.columns:
        raise CliError(
            f"{source.label} has no {mode}_id column: it is not an Agno 1.x {mode} table"
            + (f" (its columns say {detected})" if detected else "")
        )
    return Plan("1", mode, None)


async def import_agno(
    store: SessionStore,
    source: Source,
    how: Plan,
    *,
    batch_size: int,
    started: Callable[[int], None],
    advance: Callable[[int], None],
) -> Report:
    report = Report()
    layout, mode, session_type = how.layout, how.mode, how.session_type
    if layout == "2" and source.runs_table is None and "runs" not in source.columns:
        print_note(f"no runs table beside {source.label}: sessions are imported without runs")
    started(await source.count(session_type))
    async for rows in source.batches(session_type, batch_size):
        report.rows += len(rows)
        table_runs = await source.runs_for([str(r.get("session_id")) for r in rows])
        sessions: list[Session] = []
        for row in rows:
            try:
                if layout == "1":
                    assert mode is not None
                    sessions.append(agno1_session(source, row, mode))
                else:
                    runs = table_runs.get(str(row.get("session_id")), [])
                    sessions.append(agno2_session(source, row, runs))
            except Refused as exc:
                report.refuse(str(exc), row.get("session_id"))
        outcomes = await asyncio.gather(
            *(store.upsert(s, if_version=0) for s in sessions), return_exceptions=True
        )
        for session, outcome in zip(sessions, outcomes, strict=True):
            if isinstance(outcome, SessionConflictError):
                report.skipped += 1
            elif isinstance(outcome, SessionOwnershipError):
                report.refuse("already in the store, owned by another user", session.session_id)
            elif isinstance(outcome, SerializationError | InvalidInputError):
                report.refuse(f"the store refused it: {outcome}", session.session_id)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                report.imported += 1
        advance(len(rows))
    return report


app = typer.Typer(
    name="import",
    help="Copy sessions into a store from another framework's storage.",
    no_args_is_help=True,
)

HELP: Final = """Copy sessions from Agno's storage tables into the store at --url.

Reads Agno 1.x storage tables (SqliteStorage, PostgresStorage; one table per mode, runs inside
the memory column) and Agno 2.x/3.x session tables (agno_sessions, with the runs in its runs
column or, in 3.x, in the runs table beside it), on SQLite or PostgreSQL. Agno need not be
installed, and the Agno database is only read.

Sessions already in the store are skipped, never overwritten, so the import can be run again to
pick up what is new. Rows that cannot be stored (a bad id, JSON that does not parse, a session
owned by another user in the store) are refused and counted with the reason. Agno's created_at
and updated_at (the store sets its own), and Agno 1.x's memory besides the runs, are kept in
metadata["imported_from_agno"]. Sessions are written oldest first, so the store lists them in
Agno's order.

\b
Examples:
    aas import agno --from sqlite:///tmp/agents.db --table agent_sessions --url sqlite:///store.db
    aas import agno --from postgresql+psycopg://ai:ai@localhost:5532/ai --table ai.agno_sessions
"""


@app.command("agno", help=HELP, short_help="Copy sessions from Agno 1.x, 2.x or 3.x tables.")
@guarded
def import_from_agno(
    source_url: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="URL",
            help="The Agno database: a SQLite file (path or sqlite:///path) or a postgresql:// "
            "URL (Agno's postgresql+psycopg:// works as it is).",
            show_default=False,
        ),
    ],
    table: Annotated[
        str,
        typer.Option(
            "--table",
            metavar="NAME",
            help="The Agno table: an Agno 1.x storage table, or Agno 2.x/3.x's agno_sessions. "
            "PostgreSQL: schema.table (Agno's schema is ai by default).",
            show_default=False,
        ),
    ],
    url: UrlOption = None,
    store_table: Annotated[
        str,
        typer.Option(
            "--store-table",
            metavar="NAME",
            envvar=TABLE_ENV,
            show_envvar=True,
            help="The store's table to import into.",
        ),
    ] = DEFAULT_TABLE,
    mode: Annotated[
        SessionKind | None,
        typer.Option(
            "--mode",
            help="Agno 1.x: the table's mode (found from its columns when not given). "
            "Agno 2.x/3.x: import only the sessions of this type.",
        ),
    ] = None,
    runs_table: Annotated[
        str | None,
        typer.Option(
            "--runs-table",
            metavar="NAME",
            help="Agno 3.x's runs table, when not the default (agno_runs beside agno_sessions, "
            "else <table>_runs).",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", metavar="N", min=1, max=10_000, help="Sessions per batch."),
    ] = 100,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Show a progress bar on stderr. Default: when stderr is a terminal.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    destination = store_url(url)
    bar = Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not (stderr_is_terminal() if progress is None else progress),
    )
    task = bar.add_task("import", total=None)

    async def main() -> Report:
        source = await open_source(source_url, table, runs_table)
        try:
            how = plan(source, None if mode is None else mode.value)
            store = open_store(destination, table_name=store_table)
            async with store:
                return await import_agno(
                    store,
                    source,
                    how,
                    batch_size=batch_size,
                    started=lambda total: bar.update(task, total=total),
                    advance=lambda n: bar.advance(task, n),
                )
        finally:
            await source.close()

    with bar:
        report = run(main())
    refused = sum(report.refused.values())
    if as_json:
        print_json(report.as_json())
        if refused:
            fail(f"{refused} Agno session(s) could not be imported (see reasons)")
        return
    console.print(
        text(
            f"imported {report.imported}, skipped {report.skipped} (already in the store), "
            f"refused {refused}, of {report.rows} Agno session(s)"
        )
    )
    for why, count in report.refused.most_common():
        examples = ", ".join(repr(e) for e in report.examples[why])
        console.print(text(f"  refused {count}: {why} (e.g. {examples})"))
    if refused:
        fail(f"{refused} Agno session(s) could not be imported (the reasons are listed above)")
