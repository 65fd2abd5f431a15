"""`MongoStore`: sessions in MongoDB, on PyMongo's native asyncio client.

Layout (see `_queries` for the documents): a sessions collection, one document per session with
its fields as queryable BSON; a runs collection, one document per run keyed by
``(session_id, gen, seq)``, so that appending and reading the last N runs cost the same whatever
the length of the history and a session can grow past MongoDB's 16 MiB document limit; and a
migrations collection (history and lease lock).

No write uses a multi-document transaction (a standalone ``mongod`` has none, and they would tie
sessions together on a sharded cluster): each write is one atomic update of its session document,
which carries the runs it writes until they are copied to the runs collection (`_writes`; reads
in `_reads`); an append's copy runs in the background, after its caller has the answer.
`append_runs` (`_append`) merges a `state_patch` inside that update (`_patch`) and stores a given
run id once without a lock; `pop_runs`, `truncate_runs` and `fork_session` (`_history`) copy
histories inside the database.

A Motor client passed in works too: the store only uses the collection methods both share.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Final, TypeVar, Unpack
from urllib.parse import unquote

from pymongo import AsyncMongoClient
from pymongo.errors import ConfigurationError as PyMongoConfigurationError
from pymongo.errors import InvalidURI

from .._activity import ActivityCounts, ActivityQuery
from .._checks import (
    DEFAULT_TABLE_NAME,
    check_int_option,
    check_name,
    check_optional_seconds,
    check_seconds,
)
from .._crypto import Reseal
from .._encoding import EncodedAppend, EncodedSession
from .._leases import Busy, Grant
from .._paging import ListQuery, PageKey
from .._store import StoreBase, StoreOptions
from ..errors import ConfigurationError
from ..models import Session
from . import _activity, _append, _bson, _history, _leases, _reads, _retention
from ._errors import ERRORS
from ._migrations import MIGRATIONS, MigrationTarget
from ._queries import Collections
from ._rows import prepare
from ._writes import Writer

__all__ = ["DEFAULT_DB_NAME", "MongoStore"]

T = TypeVar("T")

DEFAULT_DB_NAME: Final = "async_agent_storage"
_DB_NAME_FORBIDDEN: Final = frozenset('/\\. "$*<>:|?\x00')


def _split_url(url: str) -> tuple[str, str | None]:
    """(hosts without credentials, database named in the path) of a mongodb:// URL, without any
    I/O (PyMongo's parser resolves mongodb+srv:// names through DNS)."""
    rest = url.partition("://")[2]
    netloc, _, path = rest.partition("/")
    netloc = netloc.partition("?")[0]
    hosts = netloc.rpartition("@")[2]
    database = unquote(path.partition("?")[0])
    return hosts, database or None


def _check_db_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or len(name.encode(errors="replace")) >= 64
        or any(c in _DB_NAME_FORBIDDEN for c in name)
    ):
        raise ConfigurationError(
            f"db_name={name!r} is not a valid MongoDB database name: 1-63 bytes without "
            '/\\. "$*<>:|? or NUL'
        )
    return name


class MongoStore(StoreBase):
    """Session storage in MongoDB, for teams whose agents already live there.

    ```python
    store = MongoStore(collection_name="agent_sessions", db_url="mongodb://localhost:27017",
                       db_name="ai", auto_upgrade_schema=True)
    async with store:
        session = await store.read("s1", user_id="u1")
    ```

    Options (beside those every store takes: `StoreOptions`):

    - `db_url`: a ``mongodb://`` or ``mongodb+srv://`` URL; the store makes (and closes) its own
      `pymongo.AsyncMongoClient`. Or pass `client`: an `AsyncMongoClient` or a Motor client you
      made, which the store never closes.
    - `db_name`: the database; default: the one the URL names, else ``async_agent_storage``.
    - `pool_min_size`, `pool_max_size`: the client's ``minPoolSize`` and ``maxPoolSize``
      (default: PyMongo's, or the URL's).
    - `server_selection_timeout`: seconds a call waits for a reachable server before
      `StorageUnavailableError` (default: PyMongo's 30, or the URL's ``serverSelectionTimeoutMS``).
    - `operation_timeout`: seconds one call may take in all (PyMongo's ``timeoutMS``), after
      which it raises `StorageUnavailableError`; default: no limit, so a server that hangs makes
      calls wait. A write that times out may or may not have been applied.
    - `max_session_bytes` (a `StoreOptions`): one write is also one document update, so it must
      fit MongoDB's 16 MiB document limit.
    - `migration_lock_timeout`: seconds to wait for another process's migration lease.
    - `client_options`: more keyword arguments for `AsyncMongoClient` (TLS, auth...).
    """

    backend: ClassVar[str] = "mongodb"
    _errors = ERRORS

    def __init__(
        self,
        collection_name: str = DEFAULT_TABLE_NAME,
        db_url: str | None = None,
        db_name: str | None = None,
        *,
        client: Any = None,
        pool_min_size: int | None = None,
        pool_max_size: int | None = None,
        server_selection_timeout: float | None = None,
        operation_timeout: float | None = None,
        migration_lock_timeout: float = 120.0,
        client_options: Mapping[str, Any] | None = None,
        **options: Unpack[StoreOptions],
    ) -> None:
        self._setup(migrations=MIGRATIONS, options=options)
        self.collection_name = check_name(collection_name, "collection_name")
        self.table_name = self.collection_name  # what the other stores call it
        if (client is None) == (db_url is None):
            raise ConfigurationError(
                "MongoStore needs exactly one of db_url='mongodb://host:27017' or client=..."
            )
        if db_url is not None and (
            not isinstance(db_url, str)
            or not db_url.lower().startswith(("mongodb://", "mongodb+srv://"))
        ):
            raise ConfigurationError(
                f"db_url={db_url!r} is not a MongoDB URL; expected mongodb://host:27017/db "
                "or mongodb+srv://cluster.example.com/db"
            )
        hosts, url_db = _split_url(db_url) if db_url is not None else ("(client)", None)
        self.db_url = db_url
        self.db_name = _check_db_name(db_name if db_name is not None else url_db or DEFAULT_DB_NAME)
        self.pool_min_size = (
            None
            if pool_min_size is None
            else check_int_option("pool_min_size", pool_min_size, low=0)
        )
        self.pool_max_size = (
            None
            if pool_max_size is None
            else check_int_option("pool_max_size", pool_max_size, low=1)
        )
        self.server_selection_timeout = check_optional_seconds(
            "server_selection_timeout", server_selection_timeout
        )
        self.operation_timeout = check_optional_seconds("operation_timeout", operation_timeout)
        self.migration_lock_timeout = check_seconds(
            "migration_lock_timeout", migration_lock_timeout
        )
        if client_options is not None and not isinstance(client_options, Mapping):
            raise ConfigurationError(f"client_options must be a dict, got {client_options!r}")
        self.client_options = dict(client_options or {})
        self.runs_collection_name = f"{self.collection_name}_runs"
        self.history_collection_name = f"{self.collection_name}_migrations"
        self.leases_collection_name = f"{self.collection_name}_leases"
        self._label = (
            f"mongodb {hosts} database {self.db_name!r} collection {self.collection_name!r}"
        )
        self._given_client = client
        self._client: Any = None
        self._writer: Writer | None = None
        self._calls: set[asyncio.Task[Any]] = set()

    @property
    def label(self) -> str:
        return self._label

    # --- connections ----------------------------------------------------------------------------

    def _make_client(self) -> tuple[Any, bool]:
        if self._given_client is not None:
            return self._given_client, False
        options: dict[str, Any] = {"appname": "async-agent-storage"}
        if self.pool_min_size is not None:
            options["minPoolSize"] = self.pool_min_size
        if self.pool_max_size is not None:
            options["maxPoolSize"] = self.pool_max_size
        if self.server_selection_timeout is not None:
            options["serverSelectionTimeoutMS"] = int(self.server_selection_timeout * 1000)
        if self.operation_timeout is not None:
            options["timeoutMS"] = int(self.operation_timeout * 1000)
        options.update(self.client_options)
        try:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.db_url, **options)
        except (PyMongoConfigurationError, InvalidURI, ValueError, TypeError) as exc:
            raise ConfigurationError(f"{self.label}: {exc}") from exc
        return client, True

    def _collections(self, client: Any) -> Collections:
        database = client.get_database(self.db_name, codec_options=_bson.CODEC_OPTIONS)
        return Collections(
            database=database,
            sessions=database.get_collection(self.collection_name),
            runs=database.get_collection(self.runs_collection_name),
            history=database.get_collection(self.history_collection_name),
            leases=database.get_collection(self.leases_collection_name),
        )

    async def _open_resources(self) -> None:
        client, own = self._make_client()
        self._client = client if own else None
        self._writer = Writer(self._collections(client), self.label)

    async def _close_resources(self) -> None:
        """Wait for writes in progress (a cancelled call's write included) and for the settles
        of appends running in the background, then close the client the store made (never one
        passed in)."""
        writer = self._writer
        while self._calls or (writer is not None and writer.settling):
            await asyncio.gather(*list(self._calls), return_exceptions=True)
            if writer is not None:
                await writer.settled()
        client, self._client, self._writer = self._client, None, None
        if client is not None:
            await client.close()

    @asynccontextmanager
    async def _migration_target(self) -> AsyncIterator[MigrationTarget]:
        """On the open store's client; before `open()`, on a client made for the occasion."""
        if self._writer is not None:
            parts = self._writer.parts
            yield MigrationTarget(
                parts, self.label, self.collection_name, self.migration_lock_timeout
            )
            return
        client, own = self._make_client()
        try:
            yield MigrationTarget(
                self._collections(client),
                self.label,
                self.collection_name,
                self.migration_lock_timeout,
            )
        finally:
            if own:
                await client.close()

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a call to its end even when the caller is cancelled, and let `close()` wait for it.

        A cancelled write then never stops half-way between its steps, and no connection leaks:
        PyMongo's asyncio client does not close a socket whose task is cancelled while it
        connects (it closes it on OSError only), which a cancelled request would otherwise hit.
        """
        task = asyncio.ensure_future(work)
        self._calls.add(task)
        task.add_done_callback(self._call_done)
        return await asyncio.shield(task)

    def _call_done(self, task: asyncio.Task[Any]) -> None:
        self._calls.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller's call may fail unobserved

    # --- the calls ------------------------------------------------------------------------------

    async def _read(
        self, session_id: str, user_id: str | None, last_runs: int | None
    ) -> Session | None:
        parts = self._live(self._writer).parts
        return await self._shielded(
            _reads.read_session(parts, self.label, session_id, user_id, last_runs)
        )

    async def _upsert(self, session: EncodedSession, if_version: int | None) -> Session:
        writer = self._live(self._writer)
        return await self._shielded(writer.upsert(prepare(session), if_version))

    async def _upsert_many(self, sessions: list[EncodedSession], returning: bool) -> list[Session]:
        writer = self._live(self._writer)
        return await self._shielded(
            writer.upsert_many([prepare(enc) for enc in sessions], returning)
        )

    async def _append(self, append: EncodedAppend) -> Session:
        return await self._shielded(_append.append(self._live(self._writer), append))

    async def _delete(self, session_id: str, user_id: str | None) -> bool:
        writer = self._live(self._writer)
        return await self._shielded(writer.delete(session_id, user_id))

    async def _get_run(
        self, session_id: str, run_id: str, user_id: str | None
    ) -> dict[str, Any] | None:
        parts = self._live(self._writer).parts
        return await self._shielded(_reads.get_run(parts, self.label, session_id, run_id, user_id))

    async def _pop_runs(
        self, session_id: str, user_id: str | None, count: int
    ) -> list[dict[str, Any]]:
        writer = self._live(self._writer)
        return await self._shielded(_history.pop_runs(writer, session_id, user_id, count))

    async def _truncate_runs(self, session_id: str, user_id: str | None, keep_last: int) -> int:
        writer = self._live(self._writer)
        return await self._shielded(_history.truncate_runs(writer, session_id, user_id, keep_last))

    async def _count(self, query: ListQuery) -> int:
        return await self._shielded(_reads.count(self._live(self._writer).parts, query))

    async def _usage(self) -> tuple[int, int, dict[str, int]]:
        return await self._shielded(_reads.usage(self._live(self._writer).parts))

    async def _fork(
        self, session_id: str, new_session_id: str, at_run: str | None, user_id: str | None
    ) -> Session | None:
        writer = self._live(self._writer)
        return await self._shielded(
            _history.fork(
                writer, session_id, new_session_id, at_run, user_id, self._default_expiry.ttl_us
            )
        )

    async def _list_page(self, query: ListQuery) -> tuple[list[Session], PageKey | None]:
        parts = self._live(self._writer).parts
        return await self._shielded(_reads.list_sessions(parts, self.label, query))

    async def _list_ids(self, query: ListQuery) -> list[str]:
        return await self._shielded(_reads.list_ids(self._live(self._writer).parts, query))

    async def _activity(self, query: ActivityQuery) -> ActivityCounts:
        return await self._shielded(_activity.activity(self._live(self._writer).parts, query))

    async def _ping(self) -> None:
        await self._shielded(self._live(self._writer).parts.database.command("ping"))

    def _stats(self) -> dict[str, Any]:
        settling = 0 if self._writer is None else self._writer.settles_in_flight
        return {
            "calls_in_flight": len(self._calls),
            "settles_in_flight": settling,
            "pool_max_size": self.pool_max_size,
        }

    async def _drop(self) -> None:
        database = self._live(self._writer).parts.database
        for name in (
            self.leases_collection_name,
            self.runs_collection_name,
            self.collection_name,
            self.history_collection_name,
        ):
            await database.drop_collection(name)

    async def _purge_expired(self, batch: int) -> tuple[int, int]:
        return await self._shielded(
            self._after_settles(None, lambda parts: _retention.delete_batch(parts, None, batch))
        )

    async def _delete_user(self, user_id: str, batch: int) -> tuple[int, int]:
        return await self._shielded(
            self._after_settles(None, lambda parts: _retention.delete_batch(parts, user_id, batch))
        )

    async def _reseal(self, reseal: Reseal) -> bool:
        return await self._shielded(
            self._after_settles([reseal.session_id], lambda parts: _retention.reseal(parts, reseal))
        )

    async def _after_settles(
        self,
        sids: list[str] | None,
        work: Callable[[Collections], Awaitable[T]],
    ) -> T:
        """`work` once the appends' settles in flight of these sessions (None: all) are done:
        a settle must not copy runs after this call deleted or rewrote them."""
        writer = self._live(self._writer)
        await writer.settled(sids)
        return await work(writer.parts)

    async def _take_lease(
        self, session_id: str, user_id: str | None, holder: str, ttl: float
    ) -> Grant | Busy:
        parts = self._live(self._writer).parts
        return await self._shielded(
            _leases.take(parts, self.label, session_id, user_id, holder, ttl)
        )

    async def _renew_lease(
        self, session_id: str, holder: str, token: int, ttl: float
    ) -> Grant | Busy:
        parts = self._live(self._writer).parts
        return await self._shielded(_leases.renew(parts, session_id, holder, token, ttl))

    async def _release_lease(self, session_id: str, holder: str, token: int) -> None:
        parts = self._live(self._writer).parts
        await self._shielded(_leases.release(parts, session_id, holder, token))
