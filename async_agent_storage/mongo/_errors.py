"""The MongoDB driver's error table: server error codes and PyMongo's exceptions, mapped to the
error tree."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from bson.errors import BSONError
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    ExecutionTimeout,
    InvalidOperation,
    InvalidURI,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)
from pymongo.errors import ConfigurationError as PyMongoConfigurationError

from .._boundary import ErrorTable, Rule
from ..errors import ConfigurationError, SerializationError, StorageUnavailableError

__all__ = ["ERRORS"]

_TOO_LARGE: Final = Rule(
    SerializationError,
    "the write does not fit one MongoDB document (16 MiB, which holds the session's fields and "
    "the runs of writes in flight); append the history in smaller parts, or keep large blobs out "
    "of the session",
)
_UNREACHABLE: Final = Rule(StorageUnavailableError, "MongoDB cannot be reached")
_NO_ANSWER: Final = Rule(
    StorageUnavailableError, "MongoDB did not answer in the time allowed", outcome_unknown=True
)
_LOST: Final = Rule(
    StorageUnavailableError, "the connection to MongoDB broke", outcome_unknown=True
)
_CREDENTIALS: Final = Rule(
    ConfigurationError, "MongoDB refused the credentials or the rights of this user"
)


def _server_code(exc: BaseException) -> Hashable | None:
    if isinstance(exc, BulkWriteError):  # the first failed write's code
        errors = exc.details.get("writeErrors") or [{}]
        code: Hashable | None = errors[0].get("code")
        return code
    if isinstance(exc, OperationFailure):
        return exc.code
    return None


ERRORS: Final = ErrorTable(
    codes={
        10334: _TOO_LARGE,  # BSONObjectTooLarge
        17419: _TOO_LARGE,  # document grew too large in an update
        17420: _TOO_LARGE,
        13133: _TOO_LARGE,
        15: _TOO_LARGE,  # Overflow (nesting)
        13: _CREDENTIALS,  # Unauthorized
        18: _CREDENTIALS,  # AuthenticationFailed
        50: _NO_ANSWER,  # MaxTimeMSExpired (operation_timeout)
        91: _LOST,  # ShutdownInProgress
        189: _LOST,  # PrimarySteppedDown
        10107: _UNREACHABLE,  # NotWritablePrimary: refused before writing
        13435: _UNREACHABLE,  # NotPrimaryNoSecondaryOk
        11602: _LOST,  # InterruptedDueToReplStateChange
    },
    code_of=_server_code,
    classes=[
        (DocumentTooLarge, _TOO_LARGE),
        (ServerSelectionTimeoutError, _UNREACHABLE),
        ((NetworkTimeout, ExecutionTimeout, WTimeoutError), _NO_ANSWER),
        (ConnectionFailure, _LOST),
        ((PyMongoConfigurationError, InvalidURI), Rule(ConfigurationError)),
        (
            InvalidOperation,
            Rule(StorageUnavailableError, "the MongoDB client refused the call (was it closed?)"),
        ),
        (BSONError, Rule(SerializationError, "MongoDB cannot store the value")),
    ],
)
