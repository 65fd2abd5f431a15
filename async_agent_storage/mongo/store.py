"""`MongoStore`: sessions in MongoDB, on PyMongo's native asyncio client.

Layout (see `queries` for the documents): a sessions collection, one document per session with its
fields as queryable BSON; a runs collection, one document per run keyed by
``(session_id, gen, seq)``, so that appending and reading the last N runs cost the same whatever
the length of the history and a session can grow past MongoDB's 16 MiB document limit; and a
migrations collection (history and lease lock).

No write uses a multi-document transaction (a standalone ``mongod`` has none, and they would tie
sessions together on a sharded cluster): each write is one atomic update of its session document,
which carries the runs it writes until they are copied to the runs collection (`queries` explains
why a crash between the two steps leaves nothing half-written).

A Motor client passed in works too: the store only uses the collection methods both share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import unquote

import orjson
from bson import ObjectId
from bson.errors import BSONError
from pymongo import AsyncMongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    InvalidOperation,
    InvalidURI,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from pymongo.errors import ConfigurationError as PyMongoConfigurationError

from .. import _common as common
from .. import codec
from .. import migrations as migration_runner
from .._base import StoreBase
from ..errors import (
    ConfigurationError,
    MigrationError,
    SerializationError,
    SessionConflictError,
    SessionOwnershipError,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
)
from ..migrations import AppliedMigration, Migration
from ..models import MigrationReport, Session
from . import _bson
from . import queries as q
from .migrations import MIGRATIONS
from .queries import Entry, RunDoc

__all__ = ["DEFAULT_DB_NAME", "MongoStore"]

T = TypeVar("T")
_log = logging.getLogger("async_agent_storage.mongo")

DEFAULT_DB_NAME: Final = "async_agent_storage"
_DB_NAME_FORBIDDEN: Final = frozenset('/\\. "$*<>:|?\x00')
# An entry of `pending` older than this is taken to be left behind by a writer that died, and is
# copied to the runs collection by the next write of the session.
_STALE_US: Final = 10_000_000
_READ_ATTEMPTS: Final = 8
_WRITE_ATTEMPTS: Final = 8
_LEASE_TTL_MS: Final = 30_000
_LEASE_RENEW_SECONDS: Final = 10.0
# Server error codes: document too large, BSON object too large, too deep.
_TOO_LARGE: Final = frozenset({10334, 17419, 17420, 13133, 15})
_NAMESPACE_EXISTS: Final = 48
_AUTH_FAILED: Final = frozenset({13, 18})
_DUPLICATE_KEY: Final = 11000


_State = common.StoreState


@dataclass(slots=True)
class _Collections:
    database: Any
    sessions: Any
    runs: Any
    history: Any


@dataclass(slots=True)
class _Prepared:
    """A session checked by the shared codec, in both forms: JSON values (what the caller gets
    back) and their stored BSON form."""

    session_id: str
    user_id: str | None
    identity: dict[str, Any]
    values: dict[str, Any]
    stored: dict[str, Any]
    esc: int
    runs: list[dict[str, Any]]
    run_docs: list[RunDoc]
    runs_offset: int

    @property
    def fields(self) -> dict[str, Any]:
        return q.session_fields(self.identity, self.stored, self.esc)

    def session(self, *, created_at: int, updated_at: int, version: int, start: int) -> Session:
        return common.build_session(
            session_id=self.session_id,
            user_id=self.user_id,
            **self.identity,
            **self.values,
            runs=self.runs,
            runs_offset=start,
            created_at=common.from_us(created_at),
            updated_at=common.from_us(updated_at),
            version=version,
        )


def _prepare(enc: common.EncodedSession) -> _Prepared:
    values: dict[str, Any] = {}
    stored: dict[str, Any] = {}
    esc = 0
    for name in q.JSON_FIELDS:
        data = getattr(enc, name)
        value = None if data is None else codec.loads(data)
        values[name] = value
        if value is None:
            stored[name] = None
            continue
        stored[name], escaped = _bson.encode(value)
        if escaped:
            esc |= q.ESC_BIT[name]
    runs = common.decode_runs([r.body for r in enc.runs])
    return _Prepared(
        session_id=enc.session_id,
        user_id=enc.user_id,
        identity={
            "session_type": enc.session_type,
            "agent_id": enc.agent_id,
            "team_id": enc.team_id,
            "workflow_id": enc.workflow_id,
        },
        values=values,
        stored=stored,
        esc=esc,
        runs=runs,
        run_docs=[_run_doc(r.run_id, value) for r, value in zip(enc.runs, runs, strict=True)],
        runs_offset=enc.runs_offset,
    )


def _run_doc(run_id: str, value: dict[str, Any]) -> RunDoc:
    stored, escaped = _bson.encode(value)
    return RunDoc(run_id, stored, escaped)


def _field(doc: Mapping[str, Any], name: str, esc: int) -> Any:
    value = doc.get(name)
    if value is not None and esc & q.ESC_BIT[name]:
        return _bson.decode(value)
    return value


def _session_from_doc(
    doc: Mapping[str, Any], runs: list[dict[str, Any]], runs_offset: int
) -> Session:
    esc = doc.get("esc") or 0
    return common.build_session(
        session_id=doc["_id"],
        session_type=doc["session_type"],
        user_id=doc.get("user_id"),
        agent_id=doc.get("agent_id"),
        team_id=doc.get("team_id"),
        workflow_id=doc.get("workflow_id"),
        session_data=_field(doc, "session_data", esc),
        agent_data=_field(doc, "agent_data", esc),
        team_data=_field(doc, "team_data", esc),
        workflow_data=_field(doc, "workflow_data", esc),
        metadata=_field(doc, "metadata", esc),
        summary=_field(doc, "summary", esc),
        runs=runs,
        runs_offset=runs_offset,
        created_at=common.from_us(doc["created_at"]),
        updated_at=common.from_us(doc["updated_at"]),
        version=doc["version"],
    )


def _stale(before: Mapping[str, Any] | None, now: int) -> list[int]:
    """Versions of the `pending` entries left behind by writers that did not finish."""
    if before is None:
        return []
    return [e["v"] for e in before.get("pending") or () if e.get("t", 0) < now - _STALE_US]


def _backoff(attempt: int) -> float:
    return min(0.002 * (1 << attempt), 0.1) * random.uniform(0.5, 1.5)


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
        or len(name.encode()) >= 64
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

    - `db_url`: a ``mongodb://`` or ``mongodb+srv://`` URL; the store makes (and closes) its own
      `pymongo.AsyncMongoClient`. Or pass `client`: an `AsyncMongoClient` or a Motor client you
      made, which the store never closes.
    - `db_name`: the database; default: the one the URL names, else ``async_agent_storage``.
    - `max_pool_size`: the client's ``maxPoolSize`` (default: PyMongo's, or the URL's).
    - `server_selection_timeout`: seconds a call waits for a reachable server before
      `StorageUnavailableError` (default: PyMongo's 30, or the URL's ``serverSelectionTimeoutMS``).
    - `operation_timeout`: seconds one call may take in all (PyMongo's ``timeoutMS``), after
      which it raises `StorageUnavailableError`; default: no limit, so a server that hangs makes
      calls wait. A write that times out may or may not have been applied.
    - `auto_upgrade_schema`: upgrade an older schema at `open()`; without it `open()` raises
      `MigrationError` on an older schema. A missing schema is always created.
    - `max_session_bytes`: the largest JSON payload one write may carry. One write is also one
      document update, so it must fit MongoDB's 16 MiB document limit.
    - `migration_lock_timeout`: seconds to wait for another process's migration lease.
    - `client_options`: more keyword arguments for `AsyncMongoClient` (TLS, auth...).
    """

    def __init__(
        self,
        collection_name: str = common.DEFAULT_TABLE_NAME,
        db_url: str | None = None,
        db_name: str | None = None,
        *,
        client: Any = None,
        max_pool_size: int | None = None,
        auto_upgrade_schema: bool = False,
        max_session_bytes: int = codec.DEFAULT_MAX_SESSION_BYTES,
        server_selection_timeout: float | None = None,
        operation_timeout: float | None = None,
        migration_lock_timeout: float = 120.0,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.collection_name = common.check_name(collection_name, "collection_name")
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
        if max_pool_size is not None and (type(max_pool_size) is not int or max_pool_size < 1):
            raise ConfigurationError(f"max_pool_size must be an int >= 1, got {max_pool_size!r}")
        self.max_pool_size = max_pool_size
        if server_selection_timeout is not None and (
            not isinstance(server_selection_timeout, int | float) or server_selection_timeout <= 0
        ):
            raise ConfigurationError(
                f"server_selection_timeout must be seconds > 0, got {server_selection_timeout!r}"
            )
        self.server_selection_timeout = server_selection_timeout
        if operation_timeout is not None and (
            not isinstance(operation_timeout, int | float) or operation_timeout <= 0
        ):
            raise ConfigurationError(
                f"operation_timeout must be seconds > 0, got {operation_timeout!r}"
            )
        self.operation_timeout = operation_timeout
        if not isinstance(migration_lock_timeout, int | float) or migration_lock_timeout <= 0:
            raise ConfigurationError(
                f"migration_lock_timeout must be seconds > 0, got {migration_lock_timeout!r}"
            )
        self.migration_lock_timeout = float(migration_lock_timeout)
        self.auto_upgrade_schema = bool(auto_upgrade_schema)
        self.max_session_bytes = common.check_max_bytes(max_session_bytes)
        self.client_options = dict(client_options or {})
        self.migrations: Sequence[Migration] = MIGRATIONS
        self.runs_collection_name = f"{self.collection_name}_runs"
        self.history_collection_name = f"{self.collection_name}_migrations"
        self._label = (
            f"mongodb {hosts} database {self.db_name!r} collection {self.collection_name!r}"
        )
        self._given_client = client
        self._client: Any = None
        self._parts: _Collections | None = None
        self._state = _State.NEW
        self._dropped = False
        self._lifecycle = asyncio.Lock()
        self._calls: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"MongoStore({self._label}, state={self._state.value})"

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, then create the schema if missing (or upgrade it when allowed)."""
        async with self._lifecycle:
            if self._state is _State.OPEN:
                return
            if self._state is _State.CLOSED:
                raise StoreClosedError(f"{self._label}: a closed store cannot be reopened")
            client, own = self._make_client()
            try:
                parts = self._collections(client)
                with self._errors():
                    await migration_runner.ensure_schema(
                        _MigrationTarget(self, parts),
                        self.migrations,
                        auto_upgrade=self.auto_upgrade_schema,
                    )
            except BaseException:
                if own:
                    await client.close()
                raise
            self._client, self._parts = client if own else None, parts
            self._state = _State.OPEN

    async def close(self) -> None:
        """Wait for writes in progress (a cancelled call's write included), then close the client
        the store made (never one passed in). Idempotent."""
        async with self._lifecycle:
            if self._state is not _State.OPEN:
                self._state = _State.CLOSED
                return
            self._state = _State.CLOSED
            while self._calls:
                await asyncio.gather(*list(self._calls), return_exceptions=True)
            client, self._client, self._parts = self._client, None, None
            if client is not None:
                await client.close()

    def _make_client(self) -> tuple[Any, bool]:
        if self._given_client is not None:
            return self._given_client, False
        options: dict[str, Any] = {"appname": "async-agent-storage"}
        if self.max_pool_size is not None:
            options["maxPoolSize"] = self.max_pool_size
        if self.server_selection_timeout is not None:
            options["serverSelectionTimeoutMS"] = int(self.server_selection_timeout * 1000)
        if self.operation_timeout is not None:
            options["timeoutMS"] = int(self.operation_timeout * 1000)
        options.update(self.client_options)
        try:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(self.db_url, **options)
        except (PyMongoConfigurationError, InvalidURI, ValueError, TypeError) as exc:
            raise ConfigurationError(f"{self._label}: {exc}") from exc
        return client, True

    def _collections(self, client: Any) -> _Collections:
        database = client.get_database(self.db_name, codec_options=_bson.CODEC_OPTIONS)
        return _Collections(
            database=database,
            sessions=database.get_collection(self.collection_name),
            runs=database.get_collection(self.runs_collection_name),
            history=database.get_collection(self.history_collection_name),
        )

    def _open_parts(self) -> _Collections:
        if self._state is not _State.OPEN or self._parts is None:
            state = "was closed" if self._state is _State.CLOSED else "is not open yet"
            raise StoreClosedError(
                f"{self._label}: the store {state}; use `async with store:` or `await store.open()`"
            )
        if self._dropped:
            raise MigrationError(
                f"{self._label}: the store's collections were dropped; run "
                "`await store.upgrade_schema()` to create them again"
            )
        return self._parts

    @asynccontextmanager
    async def _database(self) -> AsyncIterator[_Collections]:
        """The open store's collections; before `open()`, collections of a client made for the
        occasion."""
        if self._state is _State.OPEN and self._parts is not None:
            yield self._parts
            return
        if self._state is _State.CLOSED:
            self._open_parts()  # raises StoreClosedError
        client, own = self._make_client()
        try:
            yield self._collections(client)
        finally:
            if own:
                await client.close()

    # --- the boundary where PyMongo errors become StorageErrors ----------------------------------

    def _translate(self, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        message = str(exc)
        if isinstance(exc, BulkWriteError):
            errors = exc.details.get("writeErrors") or [{}]
            first = errors[0]
            message = first.get("errmsg", message)
            if first.get("code") in _TOO_LARGE:
                return self._too_large(message)
            return StorageError(f"{self._label}: bulk write failed: {message}")
        if isinstance(exc, DocumentTooLarge) or (
            isinstance(exc, OperationFailure) and exc.code in _TOO_LARGE
        ):
            return self._too_large(message)
        if isinstance(exc, NetworkTimeout | ExecutionTimeout | WTimeoutError) and not isinstance(
            exc, ServerSelectionTimeoutError
        ):
            return StorageUnavailableError(
                f"{self._label}: MongoDB did not answer in the time allowed; a write may or may "
                f"not have been applied: {message[:300]}"
            )
        if isinstance(exc, ConnectionFailure) or getattr(exc, "timeout", False):
            return StorageUnavailableError(
                f"{self._label}: MongoDB cannot be reached: {message[:300]}"
            )
        if isinstance(exc, OperationFailure) and exc.code in _AUTH_FAILED:
            return ConfigurationError(
                f"{self._label}: MongoDB refused the credentials or the rights of this user: "
                f"{message[:300]}"
            )
        if isinstance(exc, PyMongoConfigurationError | InvalidURI):
            return ConfigurationError(f"{self._label}: {message}")
        if isinstance(exc, InvalidOperation) and "close" in message:
            if self._state is _State.CLOSED:
                return StoreClosedError(f"{self._label}: the store was closed during the call")
            return StorageUnavailableError(
                f"{self._label}: the MongoDB client passed to the store was closed ({message})"
            )
        if isinstance(exc, BSONError):
            return SerializationError(f"{self._label}: MongoDB cannot store the value: {message}")
        return StorageError(f"{self._label}: {type(exc).__name__}: {message[:500]}")

    def _too_large(self, message: str) -> SerializationError:
        return SerializationError(
            f"{self._label}: the write does not fit one MongoDB document (16 MiB, which holds "
            f"the session's fields and the runs of writes in flight): {message[:300]}; append "
            "the history in smaller parts, or keep large blobs out of the session"
        )

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except (PyMongoError, BSONError) as exc:
            raise self._translate(exc) from exc

    async def _run(self, work: Coroutine[Any, Any, T]) -> T:
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

    # --- sessions -------------------------------------------------------------------------------

    async def read(
        self, session_id: str, *, user_id: str | None = None, last_runs: int | None = None
    ) -> Session | None:
        """The session, or None when it does not exist or belongs to another user than `user_id`.
        `last_runs=N` loads only the last N runs; the cost does not grow with the history."""
        sid = common.check_id(session_id, "session_id")
        uid = common.check_optional_id(user_id, "user_id")
        tail = common.check_last_runs(last_runs)
        parts = self._open_parts()
        return await self._run(self._read(parts, sid, uid, tail))

    async def _read(
        self, parts: _Collections, sid: str, uid: str | None, tail: int | None
    ) -> Session | None:
        with self._errors():
            return await self._read_session(parts, sid, uid, tail)

    async def _read_session(
        self, parts: _Collections, sid: str, uid: str | None, tail: int | None
    ) -> Session | None:
        filter_ = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
        projection = q.WITHOUT_PENDING if tail == 0 else None
        for attempt in range(_READ_ATTEMPTS):
            doc = await parts.sessions.find_one(filter_, projection)
            if doc is None:
                return None
            count = doc["run_count"]
            low = 0 if tail is None else max(0, count - tail)
            runs = await self._load_runs(parts, doc, low)
            if runs is not None:
                return _session_from_doc(doc, runs, low)
            await asyncio.sleep(_backoff(attempt))
        raise StorageUnavailableError(
            f"{self._label}: session {sid!r} was rewritten {_READ_ATTEMPTS} times while being "
            "read; retry"
        )

    async def _load_runs(
        self, parts: _Collections, doc: Mapping[str, Any], low: int
    ) -> list[dict[str, Any]] | None:
        """Runs ``low .. run_count-1`` of the session as `doc` has it, or None when a later write
        changed one of them meanwhile (the caller reads again)."""
        count = doc["run_count"]
        if low >= count:
            return []
        version = doc["version"]
        found: dict[int, tuple[int, Any, bool]] = {}
        for entry in doc.get("pending") or ():
            v, start = entry["v"], entry["start"]
            for index, item in enumerate(entry["runs"]):
                seq = start + index
                if low <= seq < count and (seq not in found or found[seq][0] < v):
                    found[seq] = (v, item["run"], item["esc"])
        cursor = parts.runs.find(
            q.runs_range(doc["_id"], doc["gen"], low, count), q.RUN_FIELDS
        ).sort(q.RUN_SORT)
        for row in await cursor.to_list(None):
            seq, v = row["seq"], row["version"]
            if v > version:
                return None  # rewritten by a write newer than `doc`
            if seq not in found or found[seq][0] < v:
                found[seq] = (v, row["run"], row["esc"])
        if len(found) != count - low:
            return None  # cut off by a newer write between the two reads
        decode = _bson.decode
        runs = []
        for seq in range(low, count):
            _, run, escaped = found[seq]
            runs.append(decode(run) if escaped else run)
        return runs

    async def upsert(self, session: Session, *, if_version: int | None = None) -> Session:
        """Write the whole session and return what was stored, with its new version.

        With `if_version`, the write happens only if the stored version is `if_version` (0: the
        session must not exist); otherwise `SessionConflictError`. Without it the last writer wins.
        A session read with `last_runs` (or listed) keeps its older runs: only its tail is replaced.
        """
        enc = common.encode_session(session, max_bytes=self.max_session_bytes)
        expected = common.check_if_version(if_version)
        parts = self._open_parts()
        prepared = _prepare(enc)
        return await self._run(self._upsert(parts, prepared, expected))

    async def _upsert(self, parts: _Collections, p: _Prepared, expected: int | None) -> Session:
        with self._errors():
            now = common.now_us()
            gen = ObjectId()
            before: dict[str, Any] | None = None
            if expected == 0:
                document = q.new_session_document(
                    p.session_id, p.user_id, p.fields, now=now, runs=p.run_docs, gen=gen
                )
                try:
                    await parts.sessions.insert_one(document)
                except DuplicateKeyError:
                    raise await self._refusal(parts, p.session_id, p.user_id, 0) from None
            else:
                before = await self._update_whole(parts, p, expected, now, gen)
            if before is None:
                version, start, created, old_count = 1, 0, now, 0
            else:
                version, gen, created = before["version"] + 1, before["gen"], before["created_at"]
                old_count = before["run_count"]
                start = min(p.runs_offset, old_count)
            run_count = start + len(p.run_docs)
            entries = [Entry(version, start, [r.item() for r in p.run_docs])] if p.run_docs else []
            await self._settle(
                parts,
                p.session_id,
                gen,
                entries,
                truncate=(run_count, version) if run_count < old_count else None,
                stale=_stale(before, now),
            )
            return p.session(created_at=created, updated_at=now, version=version, start=start)

    async def _update_whole(
        self, parts: _Collections, p: _Prepared, expected: int | None, now: int, gen: ObjectId
    ) -> dict[str, Any] | None:
        """The one update of an upsert; returns the document as it was before (None: created)."""
        filter_: dict[str, Any] = {"_id": p.session_id, "user_id": p.user_id}
        if expected is not None:
            filter_["version"] = expected
        pipeline = q.upsert_pipeline(
            p.fields, runs_offset=p.runs_offset, runs=p.run_docs, now=now, gen=gen
        )
        for _ in range(_WRITE_ATTEMPTS):
            try:
                before: dict[str, Any] | None = await parts.sessions.find_one_and_update(
                    filter_,
                    pipeline,
                    projection=q.BEFORE_UPSERT,
                    upsert=expected is None,
                    return_document=ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                # The filter missed a session that exists: another user's, or one just created.
                await self._check_owner(parts, p.session_id, p.user_id, "written as")
                continue
            if before is None and expected is not None:
                raise await self._refusal(parts, p.session_id, p.user_id, expected)
            return before
        raise StorageUnavailableError(
            f"{self._label}: session {p.session_id!r} was created and deleted repeatedly while "
            "being written; retry"
        )

    async def _refusal(
        self, parts: _Collections, sid: str, uid: str | None, expected: int
    ) -> StorageError:
        doc = await parts.sessions.find_one({"_id": sid}, {"user_id": 1, "version": 1})
        if doc is not None and doc.get("user_id") != uid:
            return self._ownership(sid, uid, "written as")
        actual = 0 if doc is None else int(doc["version"])
        return SessionConflictError(
            f"{self._label}: session {sid!r} is at version {actual}, not {expected}; "
            "read it again, re-apply the change and retry",
            session_id=sid,
            expected=expected,
            actual=actual,
        )

    async def _check_owner(self, parts: _Collections, sid: str, uid: str | None, verb: str) -> None:
        doc = await parts.sessions.find_one({"_id": sid}, {"user_id": 1})
        if doc is not None and doc.get("user_id") != uid:
            raise self._ownership(sid, uid, verb)

    def _ownership(self, sid: str, uid: str | None, verb: str) -> SessionOwnershipError:
        if verb == "append to":
            what = f"user_id={uid!r} cannot append to it"
        else:
            what = f"it cannot be {verb} user_id={uid!r}"
        return SessionOwnershipError(
            f"{self._label}: session {sid!r} belongs to another user; {what}", session_id=sid
        )

    async def _settle(
        self,
        parts: _Collections,
        sid: str,
        gen: ObjectId,
        entries: list[Entry],
        *,
        truncate: tuple[int, int] | None = None,
        stale: Sequence[int] = (),
    ) -> None:
        """Copy a committed write's runs to the runs collection and drop them from `pending`
        (with any entries left behind by writers that died). The write is complete without this:
        when it fails, readers keep finding the runs in `pending` and a later write finishes it."""
        try:
            operations: list[Any] = []
            pulled = [e.version for e in entries]
            for entry in entries:
                operations += q.copy_runs(sid, gen, entry)
            if stale:
                doc = await parts.sessions.find_one({"_id": sid, "gen": gen}, {"pending": 1})
                for raw in (doc or {}).get("pending") or ():
                    if raw["v"] in stale:
                        operations += q.copy_runs(
                            sid, gen, Entry(raw["v"], raw["start"], raw["runs"])
                        )
                        pulled.append(raw["v"])
            if truncate is not None:
                operations.append(q.drop_runs_after(sid, gen, *truncate))
            if operations:
                await self._bulk_runs(parts, operations)
            if pulled:
                await parts.sessions.update_one({"_id": sid, "gen": gen}, q.pull_entries(pulled))
        except PyMongoError as exc:
            _log.warning(
                "%s: session %r is written; moving its new runs out of the session document "
                "failed and is left to its next write: %s",
                self._label,
                sid,
                exc,
            )

    async def _bulk_runs(self, parts: _Collections, operations: list[Any]) -> None:
        try:
            await parts.runs.bulk_write(operations, ordered=False)
        except BulkWriteError as exc:
            # A duplicate key is a seq a newer write already holds: nothing to copy.
            errors = exc.details.get("writeErrors") or []
            if exc.details.get("writeConcernErrors") or any(
                e.get("code") != _DUPLICATE_KEY for e in errors
            ):
                raise

    async def upsert_many(self, sessions: Sequence[Session]) -> list[Session]:
        """Write many sessions with one `updated_at`, in one bulk write (last writer wins).

        Every session is validated, and the owner of every stored one checked, before anything
        is written: a bad session or another user's session writes nothing. Each session's write
        is atomic, but MongoDB has no atomic batch without a transaction: if the server fails
        during the bulk write (or an owner changes between the check and the write), some
        sessions may be written and others not; the call then raises.
        """
        encoded = common.encode_sessions(sessions, max_bytes=self.max_session_bytes)
        if not encoded:
            return []
        parts = self._open_parts()
        prepared = [_prepare(enc) for enc in encoded]
        return await self._run(self._upsert_many(parts, prepared))

    async def _upsert_many(self, parts: _Collections, items: list[_Prepared]) -> list[Session]:
        with self._errors():
            now = common.now_us()
            todo = {p.session_id: p for p in items}
            done: dict[str, Session] = {}
            settled: list[_Planned] = []
            for attempt in range(_WRITE_ATTEMPTS):
                stored = {
                    d["_id"]: d
                    for d in await parts.sessions.find(
                        {"_id": {"$in": list(todo)}}, q.BEFORE_UPSERT
                    ).to_list(None)
                }
                for sid, p in todo.items():
                    doc = stored.get(sid)
                    if doc is not None and doc.get("user_id") != p.user_id:
                        error = self._ownership(sid, p.user_id, "written as")
                        if done:
                            error = SessionOwnershipError(
                                f"{error}; its owner changed during the batch, after "
                                f"{len(done)} other session(s) were written",
                                session_id=sid,
                            )
                        raise error
                plans = [_plan(p, stored.get(p.session_id), now) for p in todo.values()]
                failed = await self._bulk_sessions(parts, plans, now)
                for index, plan in enumerate(plans):
                    if index not in failed:
                        done[plan.item.session_id] = plan.session(now)
                        settled.append(plan)
                        del todo[plan.item.session_id]
                if not todo:
                    break
                await asyncio.sleep(_backoff(attempt))
            else:
                raise StorageUnavailableError(
                    f"{self._label}: {len(todo)} session(s) of the batch kept changing under "
                    f"other writers ({', '.join(map(repr, list(todo)[:5]))}); {len(done)} others "
                    "were written; retry"
                )
            await self._settle_many(parts, settled)
            return [done[p.session_id] for p in items]

    async def _bulk_sessions(
        self, parts: _Collections, plans: list[_Planned], now: int
    ) -> set[int]:
        """One bulk write of compare-and-set updates; returns the positions that did not apply."""
        operations: list[Any] = []
        for plan in plans:
            p = plan.item
            entry = q.pending_entry(plan.version, plan.start, now, p.run_docs, plan.token)
            if plan.new:
                document = q.new_session_document(
                    p.session_id,
                    p.user_id,
                    p.fields,
                    now=now,
                    runs=p.run_docs,
                    gen=plan.gen,
                    token=plan.token,
                )
                operations.append(
                    ReplaceOne(
                        {"_id": p.session_id, "version": {"$exists": False}}, document, upsert=True
                    )
                )
            else:
                update = q.cas_update(
                    p.fields,
                    version=plan.version,
                    run_count=plan.start + len(p.run_docs),
                    now=now,
                    entry=entry,
                )
                operations.append(
                    UpdateOne(
                        {"_id": p.session_id, "version": plan.version - 1, "gen": plan.gen}, update
                    )
                )
        failed: set[int] = set()
        try:
            result = await parts.sessions.bulk_write(operations, ordered=False)
            matched = result.matched_count
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors") or ():
                if error.get("code") != _DUPLICATE_KEY:
                    raise
                failed.add(error["index"])  # created meanwhile: plan it again
            matched = exc.details.get("nMatched", 0)
        updates = [i for i, plan in enumerate(plans) if not plan.new]
        if matched < len(updates):
            # Some compare-and-set missed (another writer came first): the ones that applied
            # hold their token in `pending`.
            ids = [plans[i].item.session_id for i in updates]
            docs = await parts.sessions.find({"_id": {"$in": ids}}, {"pending.w": 1}).to_list(None)
            tokens = {d["_id"]: {e.get("w") for e in d.get("pending") or ()} for d in docs}
            for i in updates:
                plan = plans[i]
                if plan.token not in tokens.get(plan.item.session_id, ()):
                    failed.add(i)
        return failed

    async def _settle_many(self, parts: _Collections, plans: list[_Planned]) -> None:
        try:
            operations: list[Any] = []
            for plan in plans:
                p = plan.item
                if p.run_docs:
                    entry = Entry(plan.version, plan.start, [r.item() for r in p.run_docs])
                    operations += q.copy_runs(p.session_id, plan.gen, entry)
                run_count = plan.start + len(p.run_docs)
                if run_count < plan.old_count:
                    operations.append(
                        q.drop_runs_after(p.session_id, plan.gen, run_count, plan.version)
                    )
            if operations:
                await self._bulk_runs(parts, operations)
            await parts.sessions.update_many(
                {"_id": {"$in": [plan.item.session_id for plan in plans]}},
                {"$pull": {"pending": {"w": {"$in": [plan.token for plan in plans]}}}},
            )
        except PyMongoError as exc:
            _log.warning(
                "%s: a batch of %d sessions is written; moving its runs out of the session "
                "documents failed and is left to their next writes: %s",
                self._label,
                len(plans),
                exc,
            )
        for plan in plans:
            if plan.stale:
                await self._settle(parts, plan.item.session_id, plan.gen, [], stale=plan.stale)

    async def append_runs(
        self,
        session_id: str,
        runs: Sequence[Mapping[str, Any]],
        *,
        user_id: str | None = None,
        session_data: dict[str, Any] | None = None,
    ) -> Session:
        """Append runs atomically (and replace `session_data` when given), creating the session,
        owned by `user_id`, when it does not exist. No run is lost when many callers append at once,
        and the cost does not grow with the history. Returns the session with only these runs."""
        append = common.encode_append(
            session_id, runs, user_id, session_data, max_bytes=self.max_session_bytes
        )
        sid, uid, data, encoded = (
            append.session_id,
            append.user_id,
            append.session_data,
            append.runs,
        )
        parts = self._open_parts()
        data_value = None if data is None else codec.loads(data)
        values = common.decode_runs([r.body for r in encoded])
        run_docs = [_run_doc(r.run_id, v) for r, v in zip(encoded, values, strict=True)]
        return await self._run(self._append(parts, sid, uid, data_value, values, run_docs))

    async def _append(
        self,
        parts: _Collections,
        sid: str,
        uid: str | None,
        data: dict[str, Any] | None,
        values: list[dict[str, Any]],
        run_docs: list[RunDoc],
    ) -> Session:
        with self._errors():
            now = common.now_us()
            gen = ObjectId()
            pipeline = q.append_pipeline(
                user_id=uid,
                session_data=None if data is None else _bson.encode(data),
                runs=run_docs,
                now=now,
                gen=gen,
            )
            filter_ = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
            projection = q.PENDING_WITHOUT_RUNS if data is None else q.WITHOUT_DATA_OR_PENDING_RUNS
            for _ in range(_WRITE_ATTEMPTS):
                try:
                    before: dict[str, Any] | None = await parts.sessions.find_one_and_update(
                        filter_,
                        pipeline,
                        projection=projection,
                        upsert=True,
                        return_document=ReturnDocument.BEFORE,
                    )
                    break
                except DuplicateKeyError:
                    # Another user's session (the filter names the owner), or one just created.
                    await self._check_owner(parts, sid, uid, "append to")
            else:
                raise StorageUnavailableError(
                    f"{self._label}: session {sid!r} was created and deleted repeatedly while "
                    "appending; retry"
                )
            if before is None:
                version, start, created = 1, 0, now
            else:
                version, start = before["version"] + 1, before["run_count"]
                gen, created = before["gen"], before["created_at"]
            entries = [Entry(version, start, [r.item() for r in run_docs])] if run_docs else []
            await self._settle(parts, sid, gen, entries, stale=_stale(before, now))
            if before is None:
                doc: dict[str, Any] = {"_id": sid, "session_type": "agent", "user_id": uid}
            else:
                doc = before
            esc = doc.get("esc") or 0
            return common.build_session(
                session_id=sid,
                session_type=doc["session_type"],
                user_id=doc.get("user_id"),
                agent_id=doc.get("agent_id"),
                team_id=doc.get("team_id"),
                workflow_id=doc.get("workflow_id"),
                session_data=data if data is not None else _field(doc, "session_data", esc) or {},
                agent_data=_field(doc, "agent_data", esc),
                team_data=_field(doc, "team_data", esc),
                workflow_data=_field(doc, "workflow_data", esc),
                metadata=_field(doc, "metadata", esc),
                summary=_field(doc, "summary", esc),
                runs=values,
                runs_offset=start,
                created_at=common.from_us(created),
                updated_at=common.from_us(now),
                version=version,
            )

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when it is absent or another user's."""
        sid = common.check_id(session_id, "session_id")
        uid = common.check_optional_id(user_id, "user_id")
        parts = self._open_parts()
        return await self._run(self._delete(parts, sid, uid))

    async def _delete(self, parts: _Collections, sid: str, uid: str | None) -> bool:
        with self._errors():
            filter_ = {"_id": sid} if uid is None else {"_id": sid, "user_id": uid}
            doc = await parts.sessions.find_one_and_delete(filter_, projection={"gen": 1})
            if doc is None:
                return False
        try:
            await parts.runs.delete_many({"session_id": sid, "gen": doc["gen"]})
        except PyMongoError as exc:
            # The session is gone; its runs can no longer be read (a re-created session is
            # another incarnation), they only take space.
            _log.warning("%s: session %r is deleted, its runs are not: %s", self._label, sid, exc)
        return True

    # --- listing --------------------------------------------------------------------------------

    async def _list_page(
        self, query: common.ListQuery
    ) -> tuple[list[Session], tuple[int, str] | None]:
        return await self._run(self._list(self._open_parts(), query))

    async def _list_ids(self, query: common.ListQuery) -> list[str]:
        return await self._run(self._ids(self._open_parts(), query))

    async def _ids(self, parts: _Collections, query: common.ListQuery) -> list[str]:
        with self._errors():
            cursor = parts.sessions.find(q.listing_filter(query), {"_id": 1}).sort(q.LIST_SORT)
            return [doc["_id"] for doc in await cursor.to_list(None)]

    async def _list(
        self, parts: _Collections, query: common.ListQuery
    ) -> tuple[list[Session], tuple[int, str] | None]:
        """The sessions of one listing, and the key of the last one when a next page exists."""
        with self._errors():
            cursor = parts.sessions.find(
                q.listing_filter(query), None if query.include_runs else q.WITHOUT_PENDING
            ).sort(q.LIST_SORT)
            if query.limit is not None:
                cursor = cursor.limit(query.limit + 1)
            docs = await cursor.to_list(None)
            last = None
            if query.limit is not None and len(docs) > query.limit:
                del docs[query.limit :]
                last = (docs[-1]["updated_at"], docs[-1]["_id"])
            if not query.include_runs:
                # No runs loaded: an `upsert` of such a session keeps its whole history.
                return [_session_from_doc(d, [], d["run_count"]) for d in docs], last
            sessions: list[Session] = []
            for start in range(0, len(docs), 32):
                chunk = docs[start : start + 32]
                loaded = await asyncio.gather(*(self._load_runs(parts, d, 0) for d in chunk))
                for doc, runs in zip(chunk, loaded, strict=True):
                    if runs is not None:
                        sessions.append(_session_from_doc(doc, runs, 0))
                        continue
                    # Rewritten while listed: read it again as it is now.
                    again = await self._read_session(parts, doc["_id"], query.user_id, None)
                    if again is not None:
                        sessions.append(again)
            return sessions, last

    # --- schema ---------------------------------------------------------------------------------

    async def upgrade_schema(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations under the migration lease, or with ``dry_run=True`` report
        them without changing anything. Works on a store that is not open yet (it connects just
        for this), which is how to upgrade a database that `open()` refused."""
        async with self._database() as parts:
            with self._errors():
                report = await migration_runner.upgrade(
                    _MigrationTarget(self, parts), self.migrations, dry_run=dry_run
                )
        if not dry_run:
            self._dropped = False
        return report

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 when there is none). Works on a store
        that is not open yet."""
        async with self._database() as parts:
            history = await _MigrationTarget(self, parts).applied()
        return max((m.version for m in history), default=0)

    async def drop(self) -> None:
        """Delete the store's collections and all their data. `upgrade_schema()` creates them
        again; until then this store refuses reads and writes with `MigrationError`."""
        if self._state is not _State.OPEN or self._parts is None:
            self._open_parts()  # raises StoreClosedError
        parts = self._parts
        assert parts is not None
        with self._errors():
            for name in (
                self.runs_collection_name,
                self.collection_name,
                self.history_collection_name,
            ):
                await parts.database.drop_collection(name)
        self._dropped = True


@dataclass(slots=True)
class _Planned:
    """One session of an `upsert_many` batch, planned against the version read before."""

    item: _Prepared
    new: bool
    gen: ObjectId
    version: int
    start: int
    created_at: int
    old_count: int
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    stale: list[int] = field(default_factory=list)

    def session(self, now: int) -> Session:
        return self.item.session(
            created_at=self.created_at, updated_at=now, version=self.version, start=self.start
        )


def _plan(p: _Prepared, doc: Mapping[str, Any] | None, now: int) -> _Planned:
    if doc is None:
        return _Planned(p, True, ObjectId(), 1, 0, now, 0)
    count = doc["run_count"]
    return _Planned(
        p,
        False,
        doc["gen"],
        doc["version"] + 1,
        min(p.runs_offset, count),
        doc["created_at"],
        count,
        stale=_stale(doc, now),
    )


# --- migrations -----------------------------------------------------------------------------------


class _Lease:
    """The migration lock: a document in the history collection that one process owns until it
    deletes it or its lease (30 s, renewed every 10 s while held) expires, so a process that
    crashes holding it blocks the others for 30 s at most."""

    def __init__(self, collection: Any, label: str, timeout: float) -> None:
        self._collection = collection
        self._label = label
        self._timeout = timeout
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        deadline = time.monotonic() + self._timeout
        delay = 0.01
        while True:
            try:
                doc = await self._collection.find_one_and_update(
                    {"_id": q.LEASE_ID},
                    q.take_lease(self.owner, _LEASE_TTL_MS),
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                doc = None  # another process created the lease document at the same moment
            if doc is not None and doc.get("owner") == self.owner:
                self._renewer = asyncio.create_task(self._renew())
                return
            if time.monotonic() >= deadline:
                holder = doc or {}
                raise MigrationError(
                    f"{self._label}: could not take the migration lock within "
                    f"{self._timeout:g}s: {holder.get('owner')!r} holds it until "
                    f"{holder.get('expires')} (server time). A process that died holding it "
                    f"loses it {_LEASE_TTL_MS // 1000}s after its last renewal"
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(_LEASE_RENEW_SECONDS)
            try:
                await self._collection.update_one(
                    {"_id": q.LEASE_ID, "owner": self.owner}, q.renew_lease(_LEASE_TTL_MS)
                )
            except PyMongoError as exc:
                _log.warning("%s: renewing the migration lease failed: %s", self._label, exc)

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        try:
            await self._collection.delete_one({"_id": q.LEASE_ID, "owner": self.owner})
        except PyMongoError as exc:
            _log.warning(
                "%s: releasing the migration lease failed (it expires by itself): %s",
                self._label,
                exc,
            )


class _MigrationTransaction:
    """One migration under the lease. MongoDB cannot run index builds in a transaction: the steps
    are idempotent instead, and the history document is written after them, so a crash half-way
    leaves a migration that is simply applied again."""

    def __init__(self, target: _MigrationTarget) -> None:
        self._target = target

    async def applied(self) -> list[AppliedMigration]:
        return await self._target.applied()

    async def apply(self, migration: Migration) -> datetime:
        store, parts = self._target.store, self._target.parts
        _log.info("%s: applying migration %d (%s)", store._label, migration.version, migration.name)
        with store._errors():
            for step in migration.steps:
                command = orjson.loads(step.replace("{table}", store.collection_name))
                try:
                    await parts.database.command(command)
                except OperationFailure as exc:
                    exists = exc.code == _NAMESPACE_EXISTS or "already exists" in str(exc)
                    if not ("create" in command and exists):
                        raise
            now = common.now_us()
            record = {
                "_id": migration.version,
                "version": migration.version,
                "name": migration.name,
                "checksum": migration.checksum,
                "applied_at": now,
            }
            try:
                await parts.history.insert_one(record)
            except DuplicateKeyError:
                # Applied by a process whose lease expired under it: the same steps, if the
                # checksum agrees.
                existing = await parts.history.find_one({"_id": migration.version})
                if existing is None or existing.get("checksum") != migration.checksum:
                    raise MigrationError(
                        f"{store._label}: migration {migration.version} was recorded twice with "
                        "different checksums"
                    ) from None
                now = int(existing["applied_at"])
                return common.from_us(now)
        _log.info("%s: applied migration %d (%s)", store._label, migration.version, migration.name)
        return common.from_us(now)


class _MigrationTarget:
    def __init__(self, store: MongoStore, parts: _Collections) -> None:
        self.store = store
        self.parts = parts
        self.label = store._label

    async def applied(self) -> list[AppliedMigration]:
        with self.store._errors():
            cursor = self.parts.history.find({"version": {"$exists": True}}).sort("version", 1)
            docs = await cursor.to_list(None)
        return [
            AppliedMigration(
                d["version"], d["name"], d["checksum"], common.from_us(d["applied_at"])
            )
            for d in docs
        ]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_MigrationTransaction]:
        lease = _Lease(self.parts.history, self.label, self.store.migration_lock_timeout)
        with self.store._errors():
            await lease.acquire()
        try:
            yield _MigrationTransaction(self)
        finally:
            await asyncio.shield(lease.release())
