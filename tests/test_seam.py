"""The driver seam: the rules written once above the drivers, held without a database.

- the ownership / version decision, as a truth table;
- every driver refuses the same bad options the same way (unknown names, NaN, booleans);
- a driver that forgets a hook fails when its class is defined;
- the error tables classify by class and code, never by message;
- the package imports without its optional extras.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from pymongo.errors import (
    BulkWriteError,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from async_agent_storage import (
    ConfigurationError,
    EncryptionKeyError,
    MigrationError,
    MongoStore,
    PostgresStore,
    SerializationError,
    SessionConflictError,
    SessionFencedError,
    SessionOwnershipError,
    SqliteStore,
    StorageError,
    StorageUnavailableError,
)
from async_agent_storage._boundary import ErrorTable, NotSent, Rule
from async_agent_storage._rules import OwnerRule, Stored, Verdict, decide, sealed_key
from async_agent_storage._store import StoreBase
from async_agent_storage.mongo._errors import ERRORS as MONGO_ERRORS
from async_agent_storage.postgres._errors import ERRORS as POSTGRES_ERRORS
from async_agent_storage.sqlite._errors import ERRORS as SQLITE_ERRORS

# --- the ownership / version decision ------------------------------------------------------------

EXACT, IF_GIVEN = OwnerRule.EXACT, OwnerRule.IF_GIVEN
OWNER = SessionOwnershipError
CONFLICT = SessionConflictError

TRUTH_TABLE: list[tuple[Stored | None, str | None, int | None, OwnerRule, object]] = [
    # stored                 user_id  if_version  rule      outcome
    (None, "u", None, EXACT, Verdict.CREATE),
    (None, "u", 0, EXACT, Verdict.CREATE),
    (None, "u", 3, EXACT, (CONFLICT, 3, 0)),
    (None, None, None, IF_GIVEN, Verdict.CREATE),
    (Stored("u", 2), "u", None, EXACT, Verdict.RETRY),
    (Stored("u", 2), "u", 2, EXACT, Verdict.RETRY),
    (Stored("u", 2), "u", 0, EXACT, (CONFLICT, 0, 2)),
    (Stored("u", 2), "u", 5, EXACT, (CONFLICT, 5, 2)),
    (Stored("u", 2), "v", None, EXACT, OWNER),
    (Stored("u", 2), "v", 2, EXACT, OWNER),  # ownership is decided before the version
    (Stored("u", 2), None, None, EXACT, OWNER),  # None is an owner like any other for upsert
    (Stored(None, 2), "u", None, EXACT, OWNER),
    (Stored(None, 2), None, None, EXACT, Verdict.RETRY),
    (Stored("u", 2), None, None, IF_GIVEN, Verdict.RETRY),  # append without user_id: no check
    (Stored("u", 2), "v", None, IF_GIVEN, OWNER),
    (Stored(None, 2), "u", None, IF_GIVEN, OWNER),
]


@pytest.mark.parametrize(("stored", "user_id", "if_version", "rule", "outcome"), TRUTH_TABLE)
def test_the_write_decision(
    stored: Stored | None,
    user_id: str | None,
    if_version: int | None,
    rule: OwnerRule,
    outcome: Any,
) -> None:
    def call() -> Verdict:
        return decide("store", "s1", stored, user_id=user_id, if_version=if_version, rule=rule)

    if isinstance(outcome, Verdict):
        assert call() is outcome
    elif outcome is OWNER:
        with pytest.raises(SessionOwnershipError, match="belongs to another user") as owner:
            call()
        assert owner.value.session_id == "s1"
    else:
        _, expected, actual = outcome
        with pytest.raises(SessionConflictError, match=f"at version {actual}, not {expected}") as c:
            call()
        assert (c.value.expected, c.value.actual, c.value.session_id) == (expected, actual, "s1")


# The fence (a write's lease token) against the session's latest lease token: decided after the
# owner, before the version; None ignores leases.
FENCED = SessionFencedError
FENCE_TABLE: list[tuple[Stored | None, str | None, int | None, OwnerRule, int | None, object]] = [
    # stored                 user_id  if_version  rule      fence  outcome
    (Stored("u", 2, 5), "u", None, EXACT, 4, (FENCED, 4, 5)),
    (Stored("u", 2, 5), "u", None, EXACT, 5, Verdict.RETRY),
    (Stored("u", 2, 5), "u", None, EXACT, 9, Verdict.RETRY),  # no lease has it: not stale
    (Stored("u", 2, 5), "u", None, EXACT, None, Verdict.RETRY),  # unfenced: leases ignored
    (Stored("u", 2, 5), "v", None, EXACT, 4, OWNER),  # the owner before the fence
    (Stored("u", 2, 5), None, None, IF_GIVEN, 4, (FENCED, 4, 5)),
    (Stored("u", 2, 5), "u", 7, EXACT, 4, (FENCED, 4, 5)),  # the fence before the version
    (Stored("u", 2, 5), "u", 7, EXACT, 5, (CONFLICT, 7, 2)),
    (Stored("u", 2, 5), "u", 2, IF_GIVEN, 5, Verdict.RETRY),
    (Stored("u", 2), "u", None, IF_GIVEN, 0, Verdict.RETRY),  # never leased: token 0
    (None, "u", None, IF_GIVEN, 3, Verdict.CREATE),  # absent: the driver checks its lease row
    (None, "u", 3, IF_GIVEN, 3, (CONFLICT, 3, 0)),
]


@pytest.mark.parametrize(
    ("stored", "user_id", "if_version", "rule", "fence", "outcome"), FENCE_TABLE
)
def test_the_write_decision_with_a_fence(
    stored: Stored | None,
    user_id: str | None,
    if_version: int | None,
    rule: OwnerRule,
    fence: int | None,
    outcome: Any,
) -> None:
    def call() -> Verdict:
        return decide(
            "store", "s1", stored, user_id=user_id, if_version=if_version, rule=rule, fence=fence
        )

    if isinstance(outcome, Verdict):
        assert call() is outcome
    elif outcome is OWNER:
        with pytest.raises(SessionOwnershipError):
            call()
    elif outcome[0] is FENCED:
        _, token, latest = outcome
        with pytest.raises(SessionFencedError, match=f"token {latest}") as info:
            call()
        assert (info.value.token, info.value.latest, info.value.session_id) == (token, latest, "s1")
    else:
        _, expected, actual = outcome
        with pytest.raises(SessionConflictError) as c:
            call()
        assert (c.value.expected, c.value.actual) == (expected, actual)


# A patch whose session holds its state encrypted: refused after the owner, the fence and the
# version (a store without the key ring never replaces ciphertext with its patch).
SEALED = EncryptionKeyError
PATCH_TABLE: list[tuple[Stored | None, str | None, int | None, int | None, bool, object]] = [
    # stored                        user_id if_version fence  patch  outcome
    (Stored("u", 2, 0, "k1"), "u", None, None, True, SEALED),
    (Stored("u", 2, 0, "k1"), None, 2, None, True, SEALED),
    (Stored("u", 2, 0, "k1"), "u", None, None, False, Verdict.RETRY),  # a whole state: written
    (Stored("u", 2, 0, None), "u", None, None, True, Verdict.RETRY),  # in clear: patched
    (Stored("u", 2, 0, "k1"), "v", None, None, True, OWNER),  # the owner first
    (Stored("u", 2, 5, "k1"), "u", None, 4, True, FENCED),  # then the fence
    (Stored("u", 2, 0, "k1"), "u", 7, None, True, CONFLICT),  # then the version
    (None, "u", None, None, True, Verdict.CREATE),
]


@pytest.mark.parametrize(
    ("stored", "user_id", "if_version", "fence", "patch", "outcome"), PATCH_TABLE
)
def test_the_write_decision_of_a_patch(
    stored: Stored | None,
    user_id: str | None,
    if_version: int | None,
    fence: int | None,
    patch: bool,
    outcome: Any,
) -> None:
    def call() -> Verdict:
        return decide(
            "store", "s1", stored, user_id=user_id, if_version=if_version, rule=IF_GIVEN,
            fence=fence, patch=patch,
        )  # fmt: skip

    if isinstance(outcome, Verdict):
        assert call() is outcome
        return
    with pytest.raises(outcome) as info:
        call()
    if isinstance(info.value, EncryptionKeyError):
        assert (info.value.key_id, info.value.session_id) == ("k1", "s1")


def test_the_key_id_of_a_sealed_state_is_read_from_its_stored_text() -> None:
    assert sealed_key(None) is None
    assert sealed_key('"aas1:k-2.x:AAAA') == "k-2.x"  # a JSON string, cut short
    assert sealed_key(' "aas1:k1:') == "k1"
    assert sealed_key('"something else"') == "(unknown)"


# --- options -------------------------------------------------------------------------------

DRIVERS: list[tuple[Any, dict[str, Any], list[str]]] = [
    (SqliteStore, {}, ["busy_timeout"]),
    (
        PostgresStore,
        {"db_url": "postgresql://h/d"},
        ["acquire_timeout", "command_timeout", "max_inactive_connection_lifetime"],
    ),
    (
        MongoStore,
        {"db_url": "mongodb://h"},
        ["server_selection_timeout", "operation_timeout", "migration_lock_timeout"],
    ),
]


@pytest.mark.parametrize(("driver", "base", "timeouts"), DRIVERS)
def test_unknown_options_are_refused_with_the_valid_ones_listed(
    driver: Any, base: dict[str, Any], timeouts: list[str]
) -> None:
    with pytest.raises(ConfigurationError, match="unknown option") as info:
        driver(**base, pool_size=3)
    message = str(info.value)
    assert "pool_size" in message
    for name in ("auto_upgrade_schema", "max_session_bytes", *timeouts):
        assert name in message


@pytest.mark.parametrize(("driver", "base", "timeouts"), DRIVERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, -1, "5", [1]])
def test_every_driver_refuses_the_same_bad_timeouts(
    driver: Any, base: dict[str, Any], timeouts: list[str], bad: object
) -> None:
    for name in timeouts:
        with pytest.raises(ConfigurationError, match=name):
            driver(**base, **{name: bad})


@pytest.mark.parametrize(("driver", "base", "timeouts"), DRIVERS)
def test_shared_options_have_one_rule(
    driver: Any, base: dict[str, Any], timeouts: list[str]
) -> None:
    for bad in (1, "yes", None):
        with pytest.raises(ConfigurationError, match="auto_upgrade_schema"):
            driver(**base, auto_upgrade_schema=bad)
    for bad_size in (0, 1023, True, 2.0):
        with pytest.raises(ConfigurationError, match="max_session_bytes"):
            driver(**base, max_session_bytes=bad_size)
    with pytest.raises(ConfigurationError, match="sqlite_"):
        driver("sqlite_master", **base)


@pytest.mark.parametrize(("driver", "base"), [(PostgresStore, {"db_url": "postgresql://h/d"})])
def test_pool_sizes_are_named_and_checked_alike(driver: Any, base: dict[str, Any]) -> None:
    for store_class, extra in ((PostgresStore, base), (MongoStore, {"db_url": "mongodb://h"})):
        with pytest.raises(ConfigurationError, match="pool_max_size"):
            store_class(**extra, pool_max_size=0)
        with pytest.raises(ConfigurationError, match="pool_min_size"):
            store_class(**extra, pool_min_size=-1)
        assert store_class(**extra, pool_max_size=7).pool_max_size == 7


@pytest.mark.parametrize(
    "url",
    ["postgresql://h:99999/d", "postgresql://h:port/d", "postgresql://[::1/d", "mysql://h/d"],
)
def test_malformed_postgres_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        PostgresStore(db_url=url)


# --- the hooks ---------------------------------------------------------------------------------


def test_a_driver_missing_a_hook_fails_when_its_class_is_defined() -> None:
    with pytest.raises(TypeError, match="does not implement the store hooks") as info:

        class Partial(StoreBase):
            async def _read(
                self, session_id: str, user_id: str | None, last_runs: int | None
            ) -> Any:
                return None

    assert "_append" in str(info.value)
    assert "_read'" not in str(info.value)


# --- error tables --------------------------------------------------------------------------


class _Store:
    label = "test store"
    busy_timeout = 2.5
    command_timeout = 1.5


def _sqlite_error(code: int) -> sqlite3.Error:
    error = sqlite3.OperationalError("whatever the message says")
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("table", "exc", "expected", "hint"),
    [
        (SQLITE_ERRORS, _sqlite_error(sqlite3.SQLITE_BUSY), StorageUnavailableError, "2.5s"),
        (SQLITE_ERRORS, _sqlite_error(5 | (1 << 8)), StorageUnavailableError, "busy_timeout"),
        (SQLITE_ERRORS, _sqlite_error(sqlite3.SQLITE_ERROR), MigrationError, "upgrade_schema"),
        (SQLITE_ERRORS, _sqlite_error(sqlite3.SQLITE_CORRUPT), StorageError, "whatever"),
        (SQLITE_ERRORS, ConnectionRefusedError("no"), StorageUnavailableError, "no"),
        (POSTGRES_ERRORS, asyncpg.UndefinedTableError("x"), MigrationError, "upgrade_schema"),
        (POSTGRES_ERRORS, asyncpg.AdminShutdownError("x"), StorageUnavailableError, "x"),
        (POSTGRES_ERRORS, asyncpg.SerializationError("x"), StorageUnavailableError, "retry"),
        (POSTGRES_ERRORS, asyncpg.InvalidPasswordError("x"), ConfigurationError, "db_url"),
        (POSTGRES_ERRORS, asyncpg.NumericValueOutOfRangeError("x"), SerializationError, "x"),
        (
            POSTGRES_ERRORS,
            asyncpg.ReadOnlySQLTransactionError("x"),
            StorageUnavailableError,
            "standby",
        ),
        (POSTGRES_ERRORS, TimeoutError(), StorageUnavailableError, "command_timeout=1.5"),
        (POSTGRES_ERRORS, asyncpg.InterfaceError("y"), StorageUnavailableError, "y"),
        (MONGO_ERRORS, OperationFailure("x", code=18), ConfigurationError, "credentials"),
        (MONGO_ERRORS, OperationFailure("x", code=10334), SerializationError, "16 MiB"),
        (MONGO_ERRORS, NetworkTimeout("x"), StorageUnavailableError, "did not answer"),
        (POSTGRES_ERRORS, asyncpg.UndefinedObjectError("x"), ConfigurationError, "db_url"),
        (
            MONGO_ERRORS,
            BulkWriteError({"writeErrors": [{"code": 17419, "errmsg": "big"}]}),
            SerializationError,
            "16 MiB",
        ),
    ],
)
def test_error_tables_classify_by_class_and_code(
    table: ErrorTable, exc: BaseException, expected: type[StorageError], hint: str
) -> None:
    error = table.translate(exc, _Store())
    assert type(error) is expected
    assert str(error).startswith("test store: ")
    assert hint in str(error)


@pytest.mark.parametrize(
    ("table", "exc", "maybe"),
    [
        (POSTGRES_ERRORS, asyncpg.AdminShutdownError("x"), True),
        (POSTGRES_ERRORS, asyncpg.InternalClientError("x"), True),
        (POSTGRES_ERRORS, ConnectionResetError("x"), True),
        (POSTGRES_ERRORS, TimeoutError(), True),
        (POSTGRES_ERRORS, ConnectionRefusedError("x"), False),
        (POSTGRES_ERRORS, NotSent(asyncpg.AdminShutdownError("x")), False),
        (POSTGRES_ERRORS, asyncpg.SerializationError("x"), False),  # rolled back
        (MONGO_ERRORS, NetworkTimeout("x"), True),
        (MONGO_ERRORS, ServerSelectionTimeoutError("x"), False),
        (SQLITE_ERRORS, _sqlite_error(sqlite3.SQLITE_BUSY), False),
    ],
)
def test_a_write_whose_answer_was_lost_may_have_been_committed(
    table: ErrorTable, exc: BaseException, maybe: bool
) -> None:
    written = table.translate(exc, _Store(), write=True)
    assert isinstance(written, StorageUnavailableError)
    assert written.maybe_committed is maybe
    assert ("may or may not have been applied" in str(written)) is maybe
    read = table.translate(exc, _Store(), write=False)
    assert isinstance(read, StorageUnavailableError)
    assert read.maybe_committed is False


def test_a_message_alone_never_changes_the_class() -> None:
    table = ErrorTable(classes=[(KeyError, Rule(MigrationError))])
    # The words of other rules in a message of an unknown exception: still the default.
    error = table.translate(RuntimeError("database is locked; connection closed"), _Store())
    assert type(error) is StorageError
    assert "RuntimeError" in str(error)


# --- the public face ---------------------------------------------------------------------------

_WITHOUT_EXTRAS = """
import sys
sys.modules["asyncpg"] = None
sys.modules["pymongo"] = None
sys.modules["bson"] = None
namespace = {}
exec("from async_agent_storage import *", namespace)
assert "SqliteStore" in namespace and "open_store" in namespace, sorted(namespace)
assert "PostgresStore" not in namespace and "MongoStore" not in namespace
import async_agent_storage
for name, extra in (("MongoStore", "mongo"), ("PostgresStore", "postgres")):
    try:
        getattr(async_agent_storage, name)
    except async_agent_storage.ConfigurationError as exc:
        assert f"[{extra}]" in str(exc), exc
    else:
        raise AssertionError(name)
try:
    from async_agent_storage import MongoStore
except async_agent_storage.ConfigurationError as exc:
    print("OK", exc)
"""


def test_the_package_imports_without_its_optional_extras() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK MongoStore needs the 'mongo' extra")


def test_star_import_with_the_extras_takes_every_driver() -> None:
    namespace: dict[str, Any] = {}
    exec("from async_agent_storage import *", namespace)
    assert {"SqliteStore", "PostgresStore", "MongoStore", "open_store"} <= set(namespace)
