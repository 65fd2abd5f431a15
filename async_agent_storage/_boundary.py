"""Where a driver's exceptions become the package's errors: one table per driver, one function.

A driver declares an `ErrorTable`: its exception classes, and the codes its database reports
(SQLSTATEs, SQLite result codes, MongoDB error codes), each mapped to a `Rule` (the class of the
error tree and a hint for the message). `translate` looks the code up first (a SQLSTATE by its
full code, then by its two-character class), then the classes in order, then falls back to
`StorageError`. Nothing is classified by message text.

The store calls `translate` in one place: the call path every public method passes through
(`StoreBase._call`), and the schema calls (`upgrade_schema`, `schema_version`, `open`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import StorageError, StorageUnavailableError

__all__ = ["ErrorTable", "NotSent", "Rule"]


class NotSent(Exception):
    """Raised by a driver around an exception that struck before the call reached the database
    (while opening or taking a connection): whatever the exception, nothing was written, so the
    error it becomes never says `maybe_committed`."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Rule:
    """The error a class or code becomes. `hint` is added to the message; it may name the
    store's options as ``{store.busy_timeout}``. `show` says whether the driver's own message is
    quoted (off for errors whose hint says it all)."""

    error: type[StorageError]
    hint: str = ""
    show: bool = True
    outcome_unknown: bool = False  # a write that failed so may have been applied (maybe_committed)


@dataclass(frozen=True, slots=True)
class ErrorTable:
    """A driver's exceptions and codes, mapped to the error tree."""

    classes: Sequence[tuple[type[BaseException] | tuple[type[BaseException], ...], Rule]]
    codes: Mapping[Hashable, Rule] = field(default_factory=dict)
    code_of: Callable[[BaseException], Hashable | None] = lambda exc: None
    default: Rule = Rule(StorageError)

    def rule(self, exc: BaseException) -> Rule:
        """The rule for `exc`: by code first, then by class."""
        code = self.code_of(exc)
        if code is not None:
            rule = self.codes.get(code)
            if rule is None and isinstance(code, str) and len(code) == 5:  # a SQLSTATE's class
                rule = self.codes.get(code[:2])
            if rule is not None:
                return rule
        for kinds, rule in self.classes:
            if isinstance(exc, kinds):
                return rule
        return self.default

    def translate(self, exc: BaseException, store: Any, *, write: bool = False) -> StorageError:
        """`exc` as an error of the tree, its message naming `store` (its `label`). `write`: the
        call was a write (whose outcome a lost answer leaves unknown)."""
        if isinstance(exc, StorageError):
            return exc
        sent = True
        if isinstance(exc, NotSent):
            exc, sent = exc.cause, False
            if isinstance(exc, StorageError):
                return exc
        rule = self.rule(exc)
        text = str(exc).strip()
        detail = text[:500] if rule.error is not StorageError else f"{type(exc).__name__}: {text}"
        parts = [p for p in (detail if rule.show else "", rule.hint.format(store=store)) if p]
        message = f"{store.label}: " + "; ".join(parts or [type(exc).__name__])
        if issubclass(rule.error, StorageUnavailableError):
            unknown = write and sent and rule.outcome_unknown
            if unknown:
                message += "; the write may or may not have been applied"
            return rule.error(message, maybe_committed=unknown)
        return rule.error(message)
