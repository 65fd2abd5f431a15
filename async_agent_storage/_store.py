"""`StoreBase`: every public method of a store, written once above the drivers.

A driver is a subclass that answers small questions (the hooks below) about its database; the
base owns the rest: argument and option checks, the lifecycle, the one docstring of each call,
and the one path every call takes (`_call`), where the driver's exceptions become the error
tree through its `ErrorTable`.

====================================  ===========================================================
hook                                  what the driver does
====================================  ===========================================================
`_open_resources`                     connect (pool, client, connections); clean up on failure
`_close_resources`                    wait for calls in flight, close what it opened
`_migration_target`                   a `MigrationTarget` on the open store's connections, or on
                                      one made for the occasion before `open()`
`_read`                               one session, or None (absent / another user's)
`_upsert`                             write one encoded session, if_version and owner checked
`_upsert_many`                        write a batch of encoded sessions (last writer wins)
`_append`                             append encoded runs atomically, creating the session; the
                                      state replaced or merge-patched in the same write; run ids
                                      already stored not appended again
`_get_run`                            one run by id
`_pop_runs`, `_truncate_runs`         remove runs from the end, or all but the last N
`_count`                              how many sessions a `ListQuery` matches
`_fork`                               copy a session and its history up to a run, in the database
`_delete`                             delete one session and its runs
`_list_page`, `_list_ids`             one listing (`ListQuery`): sessions and next key, or ids
`_activity`                           counts for a dashboard (`ActivityQuery`), grouped in the
                                      database: per entity, active sessions, runs per bucket
`_drop`                               drop the store's tables
`_ping`, `_stats`                     one cheap round trip; the pool or batching figures
`_take_lease`, `_renew_lease`,        a session's lease: take it (owner checked, token + 1,
`_release_lease`                      written on the session too), renew it, end it (`_leases`)
`_purge_expired`                      delete up to N expired sessions and their runs
`_delete_user`                        delete up to N sessions of a user and their runs
`_reseal`                             store re-encrypted values of a session still at a version
====================================  ===========================================================

A write that carries `fence=` (a lease token) reaches the hooks inside its `EncodedAppend` /
`EncodedSession`; the driver refuses it in the same statement as the write when the session's
latest lease token is newer (`_rules.decide`).

Expiry (`ttl`, `expires_at=`) reaches the write hooks the same way (`Expiry`); every read,
listing, count, activity and get_run statement leaves out sessions whose expiry has passed, and
a write that finds its session expired removes it first and creates it anew.

Encryption (`encryption=KeyRing(...)`) happens here, not in the drivers: payloads are sealed
after encoding and opened after each hook returns (`_crypto`), so a driver stores and returns
JSON strings where it otherwise has JSON objects.

A hook gets checked, encoded arguments and raises its driver's own exceptions (or an error of the
tree it decided on, such as `SessionOwnershipError` from `_rules.decide`); it never translates.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import inspect
import uuid
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import (
    Any,
    ClassVar,
    Final,
    Literal,
    ParamSpec,
    Self,
    TypedDict,
    TypeVar,
    overload,
)

from . import _migrations as migration_runner
from . import _retention as retention
from ._activity import ActivityCounts, ActivityQuery, activity_from_counts, activity_query
from ._boundary import ErrorTable
from ._checks import (
    check_count,
    check_duration,
    check_fence,
    check_id,
    check_if_version,
    check_last_runs,
    check_max_bytes,
    check_optional_id,
    check_optional_seconds,
)
from ._codec import DEFAULT_MAX_SESSION_BYTES
from ._crypto import KeyRing, Reseal, open_runs, open_session, seal_append, seal_session
from ._encoding import (
    NO_EXPIRY,
    EncodedAppend,
    EncodedSession,
    Expiry,
    encode_append,
    encode_session,
    encode_sessions,
)
from ._leases import Busy, Grant, Lease
from ._migrations import Migration, MigrationTarget
from ._observe import Observer, logger_for
from ._paging import ListQuery, PageKey, list_query
from ._time import to_us
from .errors import (
    ConfigurationError,
    InvalidInputError,
    MigrationError,
    StorageError,
    StoreClosedError,
)
from .models import (
    Activity,
    ActivityBucket,
    Erasure,
    MigrationReport,
    Session,
    SessionPage,
    StoreUsage,
)

__all__ = ["StoreBase", "StoreOptions", "StoreState"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


# The calls that write: a lost answer leaves their outcome unknown (`maybe_committed`).
_WRITES: Final = frozenset(
    {
        "upsert",
        "upsert_many",
        "append_runs",
        "delete_session",
        "pop_runs",
        "truncate_runs",
        "clear_runs",
        "fork_session",
        "lease",
        "renew_lease",
        "release_lease",
        "purge_expired",
        "delete_user",
        "rotate_keys",
    }
)


class StoreOptions(TypedDict, total=False):
    """The options every store takes, beside its own (`SqliteStore(db_file=..., **options)`).

    - `auto_upgrade_schema` (False): upgrade an older schema at `open()`; without it `open()`
      raises `MigrationError` on an older schema. A missing schema is always created.
    - `max_session_bytes` (16 MiB): the largest JSON payload one write may carry.
    - `require_user_id` (False): refuse every call made without a `user_id`
      (`InvalidInputError`), for multi-tenant servers where no call may reach another user's
      sessions.
    - `slow_call_threshold` (None: off): seconds; a call that takes longer is logged at WARNING.
    - `ttl` (None: never): seconds a session lives after it is created (or, with
      `sliding_ttl`, after each write); an expired session is gone for every read at once and
      `purge_expired()` deletes it. `expires_at=` on a write sets one session's expiry.
    - `sliding_ttl` (False): every write of a session pushes its expiry to now + `ttl`.
    - `encryption` (None): a `KeyRing`; payloads are encrypted with AES-GCM before they leave
      the process (docs/privacy.md). Needs the ``crypto`` extra.
    """

    auto_upgrade_schema: bool
    max_session_bytes: int
    require_user_id: bool
    slow_call_threshold: float | None
    ttl: float | None
    sliding_ttl: bool
    encryption: KeyRing | None


_SHARED: Final[dict[str, object]] = {
    "auto_upgrade_schema": False,
    "max_session_bytes": DEFAULT_MAX_SESSION_BYTES,
    "require_user_id": False,
    "slow_call_threshold": None,
    "ttl": None,
    "sliding_ttl": False,
    "encryption": None,
}


class StoreState(enum.Enum):
    """A store's lifecycle: NEW -> OPEN -> CLOSED; a closed store is not reopened."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class StoreBase(abc.ABC):
    """What every store does, whatever its database. See the module docstring for the hooks."""

    backend: ClassVar[str]
    """The database, as OpenTelemetry names it (``sqlite``, ``postgresql``, ``mongodb``)."""
    _errors: ClassVar[ErrorTable]

    migrations: Sequence[Migration]
    auto_upgrade_schema: bool
    max_session_bytes: int
    require_user_id: bool
    slow_call_threshold: float | None
    ttl: float | None
    sliding_ttl: bool
    encryption: KeyRing | None
    token: str
    table_name: str
    _state: StoreState = StoreState.NEW
    _dropped: bool = False

    def __init_subclass__(cls, *, abstract: bool = False, **kwargs: Any) -> None:
        """A driver that leaves a hook out fails here, when its class is defined, rather than
        when a store is first used. (`abstract=True` for an intermediate base class.)"""
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        missing = sorted(
            name
            for name in getattr(StoreBase, "__abstractmethods__", ())
            if getattr(getattr(cls, name, None), "__isabstractmethod__", False)
        )
        if missing:
            raise TypeError(f"{cls.__name__} does not implement the store hooks {missing}")

    def _setup(self, *, migrations: Sequence[Migration], options: Mapping[str, object]) -> None:
        """Check the options every store has (`StoreOptions`) and refuse unknown ones; called
        first by each driver's `__init__` with its `**options`."""
        unknown = {name: value for name, value in options.items() if name not in _SHARED}
        if unknown:
            raise self._unknown_options(unknown)
        values = {**_SHARED, **options}
        auto_upgrade_schema = values["auto_upgrade_schema"]
        if type(auto_upgrade_schema) is not bool:
            raise ConfigurationError(
                f"auto_upgrade_schema must be True or False, got {auto_upgrade_schema!r}"
            )
        self.auto_upgrade_schema = auto_upgrade_schema
        self.max_session_bytes = check_max_bytes(values["max_session_bytes"])
        require_user_id = values["require_user_id"]
        if type(require_user_id) is not bool:
            raise ConfigurationError(
                f"require_user_id must be True or False, got {require_user_id!r}"
            )
        self.require_user_id = require_user_id
        self.slow_call_threshold = check_optional_seconds(
            "slow_call_threshold", values["slow_call_threshold"], allow_zero=True
        )
        self.ttl = check_optional_seconds("ttl", values["ttl"])
        sliding_ttl = values["sliding_ttl"]
        if type(sliding_ttl) is not bool:
            raise ConfigurationError(f"sliding_ttl must be True or False, got {sliding_ttl!r}")
        if sliding_ttl and self.ttl is None:
            raise ConfigurationError("sliding_ttl=True needs a ttl (seconds) to slide by")
        self.sliding_ttl = sliding_ttl
        encryption = values["encryption"]
        if encryption is not None and not isinstance(encryption, KeyRing):
            raise ConfigurationError(
                f"encryption must be a KeyRing or None, got {type(encryption).__name__}"
            )
        self.encryption = encryption
        self._default_expiry = (
            NO_EXPIRY
            if self.ttl is None
            else Expiry(ttl_us=round(self.ttl * 1_000_000), slide=self.sliding_ttl)
        )
        self.token = uuid.uuid4().hex  # this store object, for `RunSource`
        self._observer: Observer | None = None
        self.migrations = migrations
        self._state = StoreState.NEW
        self._dropped = False
        self._lifecycle = asyncio.Lock()
        # An encrypting store's state patches of one session, one at a time (`_retention`).
        self._patching: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword options this store's constructor takes: its own and `StoreOptions`."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        own = [
            p.name
            for p in parameters
            if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        return own + list(_SHARED)

    def _unknown_options(self, unknown: Mapping[str, object]) -> ConfigurationError:
        names = ", ".join(sorted(unknown))
        return ConfigurationError(
            f"{type(self).__name__} got unknown option(s) {names}; "
            f"valid options: {', '.join(self.option_names())}"
        )

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """Names the store in messages: its backend, where it is (never a password) and its
        table, e.g. ``sqlite 'tmp/data.db' table 'agent_sessions'``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label}, state={self._state.value})"

    # --- the hooks ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open_resources(self) -> None: ...

    @abc.abstractmethod
    async def _close_resources(self) -> None: ...

    @abc.abstractmethod
    def _migration_target(self) -> AbstractAsyncContextManager[MigrationTarget]: ...

    @abc.abstractmethod
    async def _read(
        self, session_id: str, user_id: str | None, last_runs: int | None
    ) -> Session | None: ...

    @abc.abstractmethod
    async def _upsert(self, session: EncodedSession, if_version: int | None) -> Session: ...

    @abc.abstractmethod
    async def _upsert_many(
        self, sessions: list[EncodedSession], returning: bool
    ) -> list[Session]: ...

    @abc.abstractmethod
    async def _append(self, append: EncodedAppend) -> Session: ...

    @abc.abstractmethod
    async def _delete(self, session_id: str, user_id: str | None) -> bool: ...

    @abc.abstractmethod
    async def _get_run(
        self, session_id: str, run_id: str, user_id: str | None
    ) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def _pop_runs(
        self, session_id: str, user_id: str | None, count: int
    ) -> list[dict[str, Any]]:
        """Remove the last `count` runs (fewer when the history is shorter) in one atomic write
        that adds one to the version, and return them, oldest first; [] when the session is
        absent or has no runs (then nothing is written). Another user's session:
        `SessionOwnershipError`."""

    @abc.abstractmethod
    async def _truncate_runs(self, session_id: str, user_id: str | None, keep_last: int) -> int:
        """Remove all runs but the last `keep_last` (atomic, one version), return how many."""

    @abc.abstractmethod
    async def _count(self, query: ListQuery) -> int: ...

    @abc.abstractmethod
    async def _usage(self) -> tuple[int, int, dict[str, int]]:
        """Sessions, runs (the sum of the histories), and bytes per table or collection."""

    @abc.abstractmethod
    async def _fork(
        self, session_id: str, new_session_id: str, at_run: str | None, user_id: str | None
    ) -> Session | None:
        """Create `new_session_id` as a copy of the session with its runs up to `at_run`
        (included; all when None), without its runs in the result (`runs_offset` = the count).
        None when the source is absent or another user's; `SessionConflictError` when the new id
        exists; `InvalidInputError` when `at_run` is not in the source."""

    @abc.abstractmethod
    async def _list_page(self, query: ListQuery) -> tuple[list[Session], PageKey | None]:
        """The sessions matching `query` (at most `query.limit`), newest first, and the key of
        the last one when more follow (None otherwise)."""

    @abc.abstractmethod
    async def _list_ids(self, query: ListQuery) -> list[str]:
        """The ids of every session matching `query`, newest first."""

    @abc.abstractmethod
    async def _activity(self, query: ActivityQuery) -> ActivityCounts:
        """Count in the database, without loading a session (see `ActivityCounts`): sessions
        and the sum of their run counts per entity, sessions active in the last hour/day/week
        before `query.now_us`, and runs per entity per bucket from `query.since_us` to
        `query.now_us` by the time each run was written; all of one user with `query.user_id`."""

    @abc.abstractmethod
    async def _drop(self) -> None: ...

    @abc.abstractmethod
    async def _ping(self) -> None:
        """One cheap round trip to the database."""

    @abc.abstractmethod
    def _stats(self) -> dict[str, Any]:
        """The driver's figures: its pool (in use, idle, waiting) or its batching."""

    @abc.abstractmethod
    async def _take_lease(
        self, session_id: str, user_id: str | None, holder: str, ttl: float
    ) -> Grant | Busy:
        """In one atomic step: refuse another user's session (`SessionOwnershipError`, rule
        IF_GIVEN; an absent session may be leased); take the lease when it is absent (token 1),
        expired (token + 1) or released, for `ttl` seconds of the database's clock; and write
        its token on the session (when it exists) as its latest lease token, so that writes
        fenced with an older token are refused from then on. `Busy` when another holder has it."""

    @abc.abstractmethod
    async def _renew_lease(
        self, session_id: str, holder: str, token: int, ttl: float
    ) -> Grant | Busy:
        """Expire the lease (`holder`, `token`) `ttl` seconds from now; `Busy` (who holds the
        session's lease now) when its token moved on."""

    @abc.abstractmethod
    async def _release_lease(self, session_id: str, holder: str, token: int) -> None:
        """End the lease (`holder`, `token`) now, keeping its token; nothing when it moved on."""

    @abc.abstractmethod
    async def _purge_expired(self, batch: int) -> tuple[int, int]:
        """Delete up to `batch` sessions whose expiry has passed, with their runs, in one atomic
        step where the database has one; (sessions, runs) deleted."""

    @abc.abstractmethod
    async def _delete_user(self, user_id: str, batch: int) -> tuple[int, int]:
        """Delete up to `batch` sessions of `user_id` (expired or not) with their runs, runs
        first where the database has no transaction; (sessions, runs) deleted."""

    @abc.abstractmethod
    async def _reseal(self, reseal: Reseal) -> bool:
        """Store the re-encrypted fields and runs of `reseal` when the session is still at
        `reseal.version`, leaving its version, `updated_at` and expiry as they are; False (and
        nothing written) when it moved on or is gone."""

    # --- the boundary -----------------------------------------------------------------------------

    def _translate(self, exc: BaseException, *, write: bool = False) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        if self._state is StoreState.CLOSED:
            return StoreClosedError(f"{self.label}: the store was closed during the call ({exc})")
        return self._errors.translate(exc, self, write=write)

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        """Translate the driver's exceptions raised inside the block (schema and lifecycle
        calls; data calls go through `_call`)."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def _closed(self) -> StoreClosedError:
        state = "was closed" if self._state is StoreState.CLOSED else "is not open yet"
        return StoreClosedError(
            f"{self.label}: the store {state}; use `async with store:` or `await store.open()`"
        )

    def _live(self, resource: R | None) -> R:
        """A resource `open()` made (a pool, a client), or `StoreClosedError` once `close()` has
        taken it away (a call that started as the store was closing)."""
        if resource is None:
            raise self._closed()
        return resource

    def _check_usable(self) -> None:
        if self._state is not StoreState.OPEN:
            raise self._closed()
        if self._dropped:
            raise MigrationError(
                f"{self.label}: the store's tables were dropped; run "
                "`await store.upgrade_schema()` to create them again"
            )

    def _user(self, user_id: object, what: str = "user_id") -> str | None:
        """A checked user id; with `require_user_id`, None is refused."""
        uid = check_optional_id(user_id, what)
        if uid is None and self.require_user_id:
            raise InvalidInputError(
                f"{self.label}: this store has require_user_id=True; pass {what}=... with every "
                "call, so that no call can reach another user's sessions"
            )
        return uid

    async def _call(
        self,
        operation: str,
        hook: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """The one path of every data call: the store must be open, whatever the hook raises
        leaves as an error of the tree, and the call is reported (`_observe`). `operation` names
        the public call."""
        self._check_usable()
        observer = self._observer
        assert observer is not None  # made by open()
        call = observer.start(operation)
        try:
            result = await hook(*args, **kwargs)
        except StorageError as exc:
            observer.end(call, exc)
            raise
        except Exception as exc:
            error = self._translate(exc, write=operation in _WRITES)
            observer.end(call, error)
            raise error from exc
        except BaseException as exc:  # cancelled
            observer.end(call, exc)
            raise
        observer.end(call)
        return result

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, then create the schema if it is missing, or upgrade an older one when
        `auto_upgrade_schema` is set (else `MigrationError` says how). Idempotent; a closed
        store cannot be reopened."""
        async with self._lifecycle:
            if self._state is StoreState.OPEN:
                return
            if self._state is StoreState.CLOSED:
                raise StoreClosedError(f"{self.label}: a closed store cannot be reopened")
            self._observer = Observer(
                backend=self.backend,
                table=self.table_name,
                describe=lambda: self.label,
                slow_call_threshold=self.slow_call_threshold,
            )
            with self._mapped():
                await self._open_resources()
            try:
                with self._mapped():
                    async with self._migration_target() as target:
                        report = await migration_runner.ensure_schema(
                            target, self.migrations, auto_upgrade=self.auto_upgrade_schema
                        )
            except BaseException:
                await asyncio.shield(self._close_resources())
                raise
            self._log_applied(report)
            self._state = StoreState.OPEN
            logger_for(self.backend).info("%s: open", self.label)

    async def close(self) -> None:
        """Wait for the calls in progress, then close the store's connections (never a pool or
        client that was passed in). Idempotent."""
        async with self._lifecycle:
            if self._state is not StoreState.OPEN:
                self._state = StoreState.CLOSED
                return
            self._state = StoreState.CLOSED
            with self._mapped():
                await self._close_resources()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "_state", None) is StoreState.OPEN:
            warnings.warn(
                f"{self!r} was never closed; use `async with store:` or `await store.close()`",
                ResourceWarning,
                stacklevel=1,
            )

    # --- sessions -------------------------------------------------------------------------------

    async def read(
        self, session_id: str, *, user_id: str | None = None, last_runs: int | None = None
    ) -> Session | None:
        """The session, or None when it does not exist or belongs to another user than `user_id`.
        `last_runs=N` loads only the last N runs; the cost does not grow with the history."""
        sid = check_id(session_id, "session_id")
        uid = self._user(user_id)
        tail = check_last_runs(last_runs)
        session = await self._call("read", self._read, sid, uid, tail)
        return None if session is None else self._opened(session)

    def _opened(self, session: Session) -> Session:
        """A session a hook returned, its encrypted values decrypted (`EncryptionKeyError` when
        this store cannot)."""
        return open_session(session, self.encryption)

    def _expiry(self, expires_at: object) -> Expiry:
        """The expiry a write carries: its `expires_at`, else the store's ttl."""
        if expires_at is None:
            return self._default_expiry
        return Expiry(to_us(expires_at, "expires_at"), None, False)

    async def upsert(
        self,
        session: Session,
        *,
        if_version: int | None = None,
        fence: int | None = None,
        expires_at: datetime | None = None,
    ) -> Session:
        """Write the whole session and return what was stored, with its new version.

        With `if_version`, the write happens only if the stored version is `if_version` (0: the
        session must not exist); otherwise `SessionConflictError`. Without it the last writer wins.
        A session read with `last_runs` (or listed) keeps its older runs: only its tail is replaced.
        Each run id appears once in a session: a tail bringing the id of a run kept before
        `runs_offset` is refused, nothing written, with `SessionConflictError` when the session
        changed since `session.version` (read it again and retry), else `InvalidInputError`.
        The owner never changes: `session.user_id` must be the stored one (None included), else
        `SessionOwnershipError`.

        With `fence=lease.token` (see `lease`), the write is refused with `SessionFencedError`,
        nothing written, when a newer lease of the session was taken since.

        `expires_at` (an aware datetime) sets when the session expires; without it a new session
        expires after the store's `ttl` (none without one) and an existing one keeps its expiry
        (pushed to now + `ttl` with `sliding_ttl`). A session whose expiry has passed is gone:
        writing it creates a new one.
        """
        enc = encode_session(session, max_bytes=self.max_session_bytes)
        self._user(enc.user_id, "session.user_id")
        enc.fence = check_fence(fence)
        enc.expiry = self._expiry(expires_at)
        expected = check_if_version(if_version)
        if self.encryption is not None:
            seal_session(enc, self.encryption)
        return self._opened(await self._call("upsert", self._upsert, enc, expected))

    @overload
    async def upsert_many(
        self, sessions: Sequence[Session], *, returning: Literal[True] = True
    ) -> list[Session]: ...

    @overload
    async def upsert_many(
        self, sessions: Sequence[Session], *, returning: Literal[False]
    ) -> None: ...

    async def upsert_many(
        self, sessions: Sequence[Session], *, returning: bool = True
    ) -> list[Session] | None:
        """Write many sessions in one batch (last writer wins), all with one `updated_at`, and
        return them as stored. Every session is checked before anything is written; another
        user's session refuses the batch (see each store for how atomic the batch is).

        `returning=False` returns None instead: the sessions are written the same, but not
        rebuilt from what was written (decoding every run again: a quarter of a SQLite bulk
        load's work in the process, a sixth of a PostgreSQL one), for an import of sessions
        that are not used afterwards."""
        if type(returning) is not bool:
            raise InvalidInputError(f"returning must be True or False, got {returning!r}")
        encoded = encode_sessions(sessions, max_bytes=self.max_session_bytes)
        for enc in encoded:
            self._user(enc.user_id, "session.user_id")
            enc.expiry = self._default_expiry
            if self.encryption is not None:
                seal_session(enc, self.encryption)
        if not encoded:
            self._check_usable()
            return [] if returning else None
        written = await self._call("upsert_many", self._upsert_many, encoded, returning)
        if not returning:
            return None
        return [self._opened(session) for session in written]

    async def append_runs(
        self,
        session_id: str,
        runs: Sequence[Mapping[str, Any]],
        *,
        user_id: str | None = None,
        session_data: dict[str, Any] | None = None,
        state_patch: dict[str, Any] | None = None,
        if_version: int | None = None,
        run_ids: Sequence[str] | None = None,
        fence: int | None = None,
        expires_at: datetime | None = None,
    ) -> Session:
        """Append runs atomically, creating the session (owned by `user_id`) when it does not
        exist, in one write that also updates the state: `session_data` replaces it, or
        `state_patch` merges into it inside the database (RFC 7396: a key set to None is removed,
        nested objects merge), so concurrent turns that patch different keys all keep theirs.
        No run is lost when many callers append at once; the cost does not grow with the history.

        Runs are stored exactly as given. A run's id is its own ``run_id`` key, else the id at its
        position in `run_ids`, else a new one. Runs whose ids the session already holds are not
        appended again, so a call retried after `StorageUnavailableError` adds nothing twice; when
        every run was already there, nothing is written and the session is returned as stored.

        With `if_version`, the write happens only if the stored version is `if_version` (0: the
        session must not exist); otherwise `SessionConflictError`.

        With `fence=lease.token` (see `lease`), the write is refused with `SessionFencedError`,
        nothing written, when a newer lease of the session was taken since: a turn whose holder
        stalled past its ttl cannot write over the next holder's turn.

        `expires_at` sets the session's expiry, as for `upsert`.

        On a store with `encryption`, the database cannot merge into encrypted state: a
        `state_patch` is merged by the store itself (read, merge, append at the version read,
        again when another write came in between), which gives the same result at the cost of
        one read per call.

        Returns the session with only the runs this call appended (`runs_offset` is the position
        of the first), and the state as it is after the write.
        """
        if state_patch is not None and self.encryption is not None and session_data is None:
            return await retention.append_patched(
                self,
                session_id,
                runs,
                state_patch,
                {
                    "user_id": user_id,
                    "if_version": if_version,
                    "run_ids": run_ids,
                    "fence": fence,
                    "expires_at": expires_at,
                },
            )
        append = encode_append(
            session_id,
            runs,
            user_id=self._user(user_id),
            session_data=session_data,
            state_patch=state_patch,
            if_version=if_version,
            run_ids=run_ids,
            max_bytes=self.max_session_bytes,
            fence=fence,
            expiry=self._expiry(expires_at),
        )
        if self.encryption is not None:
            append = seal_append(append, self.encryption)
        return self._opened(await self._call("append_runs", self._append, append))

    def lease(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        ttl: float = 30.0,
        wait: float = 0.0,
        renew_every: float | None = None,
    ) -> Lease:
        """An exclusive lease on the session for every process sharing the database, to run one
        turn at a time: ``async with store.lease(session_id, user_id=user) as lease:``.

        Entering the block takes the lease, polling for up to `wait` seconds while another
        holder has it, else raises `SessionBusyError` (who holds it, until when). The lease
        expires `ttl` seconds after it was taken or last renewed (`await lease.renew()`, or
        every `renew_every` seconds in the background while the block runs); leaving the block
        releases it. Pass `fence=lease.token` to the turn's writes: once the lease is lost (it
        expired and another holder took it) they are refused with `SessionFencedError`.

        A lease on another user's session is `SessionOwnershipError`; a session that does not
        exist yet may be leased (the turn may create it). Writes without `fence` ignore leases.
        """
        sid = check_id(session_id, "session_id")
        uid = self._user(user_id)
        seconds = check_duration("ttl", ttl)
        patience = check_duration("wait", wait, allow_zero=True)
        every = None if renew_every is None else check_duration("renew_every", renew_every)
        if every is not None and every >= seconds:
            raise InvalidInputError(
                f"renew_every={renew_every!r} must be shorter than ttl={ttl!r}, or the lease "
                "expires between renewals"
            )
        return Lease(self, sid, uid, ttl=seconds, wait=patience, renew_every=every)

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Delete the session and its runs; False when it is absent or another user's (an expired
        session is absent: its rows are deleted and the answer is False)."""
        sid = check_id(session_id, "session_id")
        uid = self._user(user_id)
        return await self._call("delete_session", self._delete, sid, uid)

    # --- runs -----------------------------------------------------------------------------------

    async def get_run(
        self, session_id: str, run_id: str, *, user_id: str | None = None
    ) -> dict[str, Any] | None:
        """One run of the session by its id, as written; None when the session or the run is
        absent, or the session is another user's."""
        sid = check_id(session_id, "session_id")
        rid = check_id(run_id, "run_id")
        uid = self._user(user_id)
        run: Any = await self._call("get_run", self._get_run, sid, rid, uid)
        if type(run) is str:  # encrypted
            run = open_runs([run], self.encryption, sid)[0]
        return run  # type: ignore[no-any-return]

    async def pop_runs(
        self, session_id: str, n: int = 1, *, user_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Remove the last `n` runs in one atomic write and return them, oldest first (fewer when
        the history is shorter; [] and no write when the session is absent or has no runs). The
        version goes up by one. Another user's session: `SessionOwnershipError`."""
        sid = check_id(session_id, "session_id")
        count = check_count(n, "n", low=1)
        uid = self._user(user_id)
        runs = await self._call("pop_runs", self._pop_runs, sid, uid, count)
        return open_runs(runs, self.encryption, sid) if str in map(type, runs) else runs

    async def truncate_runs(
        self, session_id: str, *, keep_last: int, user_id: str | None = None
    ) -> int:
        """Remove every run but the last `keep_last`, in one atomic write (one version), keeping
        the state and metadata; returns how many were removed (0: nothing written). The kept runs
        move to the start of the history."""
        sid = check_id(session_id, "session_id")
        keep = check_count(keep_last, "keep_last", low=0)
        uid = self._user(user_id)
        return await self._call("truncate_runs", self._truncate_runs, sid, uid, keep)

    async def clear_runs(self, session_id: str, *, user_id: str | None = None) -> int:
        """Remove every run, keeping the state and metadata; returns how many were removed."""
        sid = check_id(session_id, "session_id")
        uid = self._user(user_id)
        return await self._call("clear_runs", self._truncate_runs, sid, uid, 0)

    async def fork_session(
        self,
        session_id: str,
        new_session_id: str,
        *,
        at_run: str | None = None,
        user_id: str | None = None,
    ) -> Session | None:
        """A new session `new_session_id`: a copy of the session (state, metadata, owner) with its
        history up to the run `at_run` (included; all of it when None), made inside the database
        (the history does not travel through Python). Returns the new session without its runs
        (`run_count` says how many it has); None when the source is absent or another user's.
        `SessionConflictError` when `new_session_id` exists; `InvalidInputError` when `at_run` is
        not a run of the source."""
        sid = check_id(session_id, "session_id")
        new_sid = check_id(new_session_id, "new_session_id")
        run = None if at_run is None else check_id(at_run, "at_run")
        uid = self._user(user_id)
        if new_sid == sid:
            raise InvalidInputError("new_session_id must differ from session_id")
        if self.encryption is not None:
            return await retention.fork_copied(self, sid, new_sid, run, uid)
        forked = await self._call("fork_session", self._fork, sid, new_sid, run, uid)
        return None if forked is None else self._opened(forked)

    # --- listing --------------------------------------------------------------------------------

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: str | None = None,
        entity_id: str | None = None,
        updated_after: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
        include_runs: bool = False,
    ) -> SessionPage:
        """One page of sessions, newest first (`updated_at`, then `session_id`, descending).
        Pass `next_cursor` back with the same filters for the next page; pages do not shift when
        sessions are written between calls. Runs are loaded only with `include_runs`."""
        query = list_query(
            user_id=self._user(user_id),
            session_type=session_type,
            entity_id=entity_id,
            updated_after=updated_after,
            limit=limit,
            cursor=cursor,
            include_runs=include_runs,
        )
        sessions, last = await self._call("list_sessions", self._list_page, query)
        next_cursor = None if last is None else query.cursor_after(*last)
        return SessionPage(items=[self._opened(s) for s in sessions], next_cursor=next_cursor)

    async def get_all_session_ids(
        self, *, user_id: str | None = None, entity_id: str | None = None
    ) -> list[str]:
        """Ids of the matching sessions, most recently updated first."""
        query = list_query(user_id=self._user(user_id), entity_id=entity_id)
        return await self._call("get_all_session_ids", self._list_ids, query)

    async def get_all_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        include_runs: bool = False,
    ) -> list[Session]:
        """The matching sessions, most recently updated first; runs only with `include_runs`."""
        query = list_query(
            user_id=self._user(user_id), entity_id=entity_id, include_runs=include_runs
        )
        sessions, _ = await self._call("get_all_sessions", self._list_page, query)
        return [self._opened(s) for s in sessions]

    async def get_recent_sessions(
        self,
        *,
        user_id: str | None = None,
        entity_id: str | None = None,
        limit: int = 2,
        include_runs: bool = False,
    ) -> list[Session]:
        """The `limit` most recently updated matching sessions."""
        query = list_query(
            user_id=self._user(user_id), entity_id=entity_id, limit=limit, include_runs=include_runs
        )
        sessions, _ = await self._call("get_recent_sessions", self._list_page, query)
        return [self._opened(s) for s in sessions]

    async def usage(self) -> StoreUsage:
        """How many sessions and runs the store holds and the bytes its tables take (with their
        indexes), counted by the database: for capacity planning and `aas status`."""
        sessions, runs, sizes = await self._call("usage", self._usage)
        return StoreUsage(sessions=sessions, runs=runs, bytes=sizes)

    async def count_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: str | None = None,
        entity_id: str | None = None,
        updated_after: datetime | None = None,
    ) -> int:
        """How many sessions match these filters (the ones of `list_sessions`), counted in the
        database."""
        query = list_query(
            user_id=self._user(user_id),
            session_type=session_type,
            entity_id=entity_id,
            updated_after=updated_after,
        )
        return await self._call("count_sessions", self._count, query)

    # --- retention and privacy ------------------------------------------------------------------

    async def purge_expired(self, *, batch: int = 500) -> int:
        """Delete every session whose expiry has passed, with its runs, `batch` sessions per
        step (each step atomic where the database has transactions); returns how many. Expired
        sessions are already invisible to every call: this frees their space and their data."""
        return await retention.purge_expired(self, retention.check_batch(batch))

    async def delete_user(self, user_id: str, *, batch: int = 500) -> Erasure:
        """Delete every session of `user_id` (expired ones too) and every run of them, `batch`
        sessions per step; returns the counts. Safe to run again after a crash or a timeout: it
        deletes what is left (0 and 0 when nothing is). A session the user writes while this
        runs may survive it: stop the user's traffic first, or run it again after."""
        uid = check_id(user_id, "user_id")
        sessions, runs = await retention.delete_user(self, uid, retention.check_batch(batch))
        return Erasure(user_id=uid, sessions=sessions, runs=runs)

    async def rotate_keys(self, *, batch: int = 100) -> int:
        """Encrypt again, under the key ring's current key, every value stored under an older
        key or in clear, `batch` sessions at a time; versions and `updated_at` do not change.
        Returns how many sessions were rewritten: run it until it returns 0 (it resumes where
        values are left after a crash), then the old keys can leave the ring. Expired sessions
        are left to `purge_expired`."""
        return await retention.rotate_keys(self, retention.check_batch(batch))

    # --- monitoring -----------------------------------------------------------------------------

    async def activity(
        self,
        *,
        now: datetime | None = None,
        bucket: ActivityBucket = "hour",
        since: datetime | None = None,
        user_id: str | None = None,
    ) -> Activity:
        """What a dashboard shows, counted in the database (no session is loaded): sessions and
        runs in total and per agent, team or workflow; sessions active (by `updated_at`) in the
        last hour, day and week before `now` (default: the current time); and the runs written
        per entity in each `bucket` (``"hour"`` or ``"day"``, UTC) from `since` to `now`.
        `since` is rounded down to the start of its bucket; by default the last 48 hours or 30
        days are counted, at most 1,000 buckets. With `user_id`, only that user's sessions."""
        query = activity_query(now=now, bucket=bucket, since=since, user_id=self._user(user_id))
        counts = await self._call("activity", self._activity, query)
        return activity_from_counts(query, counts)

    # --- schema ---------------------------------------------------------------------------------

    async def upgrade_schema(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply pending migrations, each in its own transaction under the backend's migration
        lock, or with ``dry_run=True`` report them without changing anything.

        Works on a store that is not open yet (it connects just for this), which is how to upgrade
        a database that `open()` refused because `auto_upgrade_schema` is off. After `drop()` it
        creates the tables again."""
        if type(dry_run) is not bool:
            raise ConfigurationError(f"dry_run must be True or False, got {dry_run!r}")
        if self._state is StoreState.CLOSED:
            raise self._closed()
        with self._mapped():
            async with self._migration_target() as target:
                report = await migration_runner.upgrade(target, self.migrations, dry_run=dry_run)
        if not dry_run:
            self._dropped = False
            self._log_applied(report)
        return report

    def _log_applied(self, report: MigrationReport | None) -> None:
        if report is None:
            return
        log = logger_for(self.backend)
        for step in report.applied:
            log.info("%s: applied migration %d (%s)", self.label, step.version, step.name)

    # --- health ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        """One cheap round trip to the database; returns when it answered, else raises
        (`StorageUnavailableError` when it cannot be reached, `StoreClosedError` when the store
        is not open). For `/healthz` handlers."""
        await self._call("ping", self._ping)

    def stats(self) -> dict[str, Any]:
        """Figures for monitoring, without I/O: the store's state, its calls and errors per
        operation since `open()`, and its driver's pool or batching figures."""
        observer = self._observer
        return {
            "backend": self.backend,
            "state": self._state.value,
            "calls": dict(observer.calls) if observer else {},
            "errors": dict(observer.errors) if observer else {},
            **(self._stats() if self._state is StoreState.OPEN else {}),
        }

    async def schema_version(self) -> int:
        """The schema version recorded in the database (0 when there is none). Works on a store
        that is not open yet."""
        if self._state is StoreState.CLOSED:
            raise self._closed()
        with self._mapped():
            async with self._migration_target() as target:
                applied = await target.applied()
        return max((m.version for m in applied), default=0)

    async def drop(self) -> None:
        """Delete the store's tables and all their data. The store stays open but refuses reads
        and writes (`MigrationError`) until `upgrade_schema()` creates the tables again."""
        if self._state is not StoreState.OPEN:
            raise self._closed()
        with self._mapped():
            await self._drop()
        self._dropped = True
