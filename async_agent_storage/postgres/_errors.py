"""The PostgreSQL driver's error table: SQLSTATEs (by code, then by class) and asyncpg's
client-side exceptions, mapped to the error tree."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from .._boundary import ErrorTable, Rule
from ..errors import (
    ConfigurationError,
    MigrationError,
    SerializationError,
    StorageUnavailableError,
)

__all__ = ["ERRORS"]

_UNAVAILABLE: Final = Rule(StorageUnavailableError)
# The connection broke or a timeout expired, possibly after the statement was sent.
_LOST: Final = Rule(StorageUnavailableError, outcome_unknown=True)
_CHECK_URL: Final = Rule(ConfigurationError, "check db_url")
_NOT_AS_MADE: Final = Rule(
    MigrationError,
    "the store's tables are missing or not as this code made them (dropped, never created, or "
    "changed outside async-agent-storage); run `await store.upgrade_schema()`",
)


def _sqlstate(exc: BaseException) -> Hashable | None:
    return getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None


ERRORS: Final = ErrorTable(
    codes={
        "42P01": _NOT_AS_MADE,  # undefined_table
        "42703": _NOT_AS_MADE,  # undefined_column
        "42501": Rule(ConfigurationError, "the database user lacks a right the store needs"),
        # undefined_object: an unknown query parameter of db_url is sent as a server setting.
        "42704": Rule(ConfigurationError, "check the query parameters of db_url"),
        "25006": Rule(StorageUnavailableError, "the server is read-only; is db_url a standby?"),
        "28": _CHECK_URL,  # invalid authorization: user, password
        "3D": _CHECK_URL,  # invalid catalog name: no such database
        "08": _LOST,  # connection exception
        "57": _LOST,  # operator intervention: shutdown, terminated, cannot connect now
        "53": _UNAVAILABLE,  # insufficient resources: too many connections, disk full
        "40": Rule(
            StorageUnavailableError, "nothing was written; retry"
        ),  # deadlock, serialization
        "22": Rule(SerializationError, "the server refused a value"),  # data exception
    },
    code_of=_sqlstate,
    classes=[
        # command_timeout: asyncpg cancelled the statement on the server.
        (
            TimeoutError,
            Rule(
                StorageUnavailableError,
                "the statement did not finish within command_timeout={store.command_timeout}; "
                "it was cancelled",
                show=False,
                outcome_unknown=True,
            ),
        ),
        (asyncpg.ClientConfigurationError, _CHECK_URL),
        (
            asyncpg.TargetServerAttributeNotMatched,
            Rule(
                StorageUnavailableError,
                "no host of db_url matches its target_session_attrs (e.g. none accepts writes "
                "yet: a failover in progress); retry",
            ),
        ),
        (ClientDataError, Rule(SerializationError, "asyncpg refused a value")),
        (
            asyncpg.InternalClientError,
            Rule(StorageUnavailableError, "the connection broke", outcome_unknown=True),
        ),
        (
            asyncpg.InterfaceError,
            Rule(StorageUnavailableError, "the connection is not usable", outcome_unknown=True),
        ),
        (ConnectionRefusedError, _UNAVAILABLE),  # nothing was sent
        (OSError, _LOST),  # reset, unreachable
    ],
)
