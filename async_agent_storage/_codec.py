"""The JSON codec every driver uses: orjson, with the checks JSON itself does not make.

- Values orjson knows natively (JSON types, `datetime`, `date`, `time`, `UUID`, enums, dataclasses,
  numpy arrays and scalars) and pydantic models (through `model_dump(mode="json")`) are encoded;
  they come back as plain JSON values.
- NaN and Infinity are refused with a `SerializationError` naming where they are: JSON has no such
  numbers and orjson would otherwise write them as `null`, losing data silently.
- Integers beyond 64 bits, which orjson refuses, are written as exact JSON numbers, and read back
  exactly (orjson would read them as floats). A document holding one starts with a space (still
  plain JSON) so that a reader of unaltered text knows which documents need the exact parser.
- Strings are kept exactly, NUL (``\\u0000``) included. Lone surrogates are refused (not text).
- Nesting deeper than orjson's limit (254 levels) is a `SerializationError`, not a crash.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import secrets
from collections.abc import Iterator, Mapping
from typing import Any, Final

import orjson
from pydantic import BaseModel

from .errors import SerializationError

__all__ = ["DEFAULT_MAX_SESSION_BYTES", "MAX_DEPTH", "dumps", "format_size", "loads", "same_json"]

DEFAULT_MAX_SESSION_BYTES: Final = 16 * 1024 * 1024
"""Default cap on the encoded size of what one write stores (16 MiB)."""

MAX_DEPTH: Final = 254
"""Deepest nesting of containers orjson encodes; deeper values raise `SerializationError`."""

_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY
_INT64_MIN: Final = -(2**63)
_UINT64_MAX: Final = 2**64 - 1
# orjson reads integers outside [-2**63, 2**64) as floats; such literals have at least 19 digits.
# Finding a run of 19 digits: map digits to "0" and everything else to " " (bytes.translate runs
# at memory speed, a regex at a tenth of it), then look for nineteen "0"s.
_DIGITS_TO_ZERO: Final = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_NINETEEN_DIGITS: Final = b"0" * 19


def _default(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def dumps(value: Any, *, path: str = "value") -> bytes:
    """Encode `value` as compact UTF-8 JSON, or raise `SerializationError` naming `path`."""
    try:
        data = orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        return _dumps_slow(value, path, exc)
    if b"null" in data and not _reads_back_as(data, value):
        # orjson writes NaN and +-Infinity as null; find out whether this null is one of them.
        _check_finite(value, path)
    return data


def _reads_back_as(data: bytes, value: Any) -> bool:
    """Whether `data` decodes to a value equal to `value`: then none of its nulls was a NaN or an
    Infinity (NaN equals nothing, None equals no float). Parsing and comparing run in C, several
    times faster than walking the value in Python; a value that does not read back equal for
    another reason (a tuple, a datetime, an integer beyond 64 bits...) is walked after all."""
    try:
        return bool(orjson.loads(data) == value)
    except (orjson.JSONDecodeError, TypeError, ValueError):  # pragma: no cover - defensive
        return False


def same_json(value: Any, previous: bytes) -> bool:
    """True when `value` encodes to exactly `previous` (what `dumps` wrote) and holds no NaN: then
    `previous` can be stored for it as it is. Any value orjson cannot write alone says False."""
    try:
        data = orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return False
    if data != previous:
        return False
    if b"null" in data:  # a NaN written as null could match a stored null
        try:
            _check_finite(value, "value")
        except SerializationError:
            return False
    return True


def loads(data: bytes | bytearray | memoryview | str, *, marked: bool = False) -> Any:
    """Decode JSON produced by `dumps`, with integers of any size read exactly.

    `marked=True` says `data` is byte for byte what `dumps` wrote (SQLite stores it so; `jsonb`
    does not): `dumps` starts a document holding integers beyond 64 bits with a space, so only
    such a document needs the exact parser and the scan for long digit runs is skipped."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"stored value is not valid JSON: {exc}") from exc
    if marked:
        if data[:1] in (b" ", " "):
            value = json.loads(data if isinstance(data, str | bytes) else bytes(data))
        return value
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _NINETEEN_DIGITS in raw.translate(_DIGITS_TO_ZERO):
        # A long run of digits may be an integer orjson read as a float: the standard library
        # parser reads integers exactly and is only paid for on such (rare) documents.
        value = json.loads(raw)
    return value


def format_size(size: int) -> str:
    """`16777216` -> ``"16.0 MiB"``, for error messages."""
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


# --- the slow paths: only taken when orjson refuses a value -------------------------------------


def _dumps_slow(value: Any, path: str, exc: orjson.JSONEncodeError) -> bytes:
    message = str(exc)
    if "64-bit" in message:
        return _dumps_big_ints(value, path)
    for where, node, depth in _walk(value, path):
        if depth >= MAX_DEPTH and _is_container(node):
            raise SerializationError(
                f"{where}: nested deeper than {MAX_DEPTH} levels, the most JSON storage accepts",
                path=where,
            ) from exc
        problem = _problem(node)
        if problem is not None:
            raise SerializationError(f"{where}: {problem}", path=where) from exc
    raise SerializationError(f"{path}: cannot be encoded as JSON: {message}", path=path) from exc


def _problem(node: Any) -> str | None:
    """Why orjson refuses this one node (not its children), or None when it accepts it."""
    if isinstance(node, str):
        try:
            node.encode("utf-8")
        except UnicodeEncodeError:
            return "string holds a lone surrogate, which is not valid Unicode text"
        return None
    if isinstance(node, dict):
        for key in node:
            if not isinstance(key, str):
                return f"dict key {key!r} is a {type(key).__name__}; JSON object keys must be str"
        return None
    if isinstance(node, int | float | bool | list | tuple) or node is None:
        return None
    try:
        orjson.dumps(node, default=_default_shallow, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return f"values of type {type(node).__name__} cannot be stored as JSON"
    return None


def _default_shallow(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return None
    raise TypeError


def _is_container(node: Any) -> bool:
    return isinstance(node, Mapping | list | tuple | BaseModel) or (
        dataclasses.is_dataclass(node) and not isinstance(node, type)
    )


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, child in node.items():
            yield (
                (f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]"),
                child,
            )
    elif isinstance(node, list | tuple):
        for index, child in enumerate(node):
            yield f"[{index}]", child
    elif isinstance(node, BaseModel):
        yield from _children(node.model_dump(mode="json"))
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for field in dataclasses.fields(node):
            yield f".{field.name}", getattr(node, field.name)


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any, int]]:
    """Depth-first (path, node, depth) over a value, without recursion (values may be very deep)."""
    stack: list[tuple[str, Any, int]] = [(path, value, 0)]
    while stack:
        where, node, depth = stack.pop()
        yield where, node, depth
        if depth >= MAX_DEPTH:
            continue
        children = list(_children(node))
        for suffix, child in reversed(children):
            stack.append((where + suffix, child, depth + 1))


_PLAIN: Final = (str, int, bool, type(None))


def _check_finite(value: Any, path: str) -> None:
    """Raise if `value` holds NaN or Infinity. The common case (plain dicts, lists and scalars, the
    `null`s being real Nones) is one pass over exact types with no path bookkeeping; any other
    type, or a non-finite float, hands over to the walk that knows every type and names the path."""
    stack = [value]
    while stack:
        node = stack.pop()
        kind = type(node)
        if kind is dict:
            stack.extend(node.values())
        elif kind is list or kind is tuple:
            stack.extend(node)
        elif kind is float:
            if node - node:  # 0.0 for every finite float; NaN for NaN and +-Infinity
                break
        elif kind not in _PLAIN:
            break
    else:
        return
    _check_finite_slow(value, path)


def _check_finite_slow(value: Any, path: str) -> None:
    for where, node, _depth in _walk(value, path):
        if isinstance(node, float) and not math.isfinite(node):
            raise SerializationError(
                f"{where}: {node!r} is not a JSON number; store it as a string or None",
                path=where,
            )
        if _is_numpy_array(node) and node.dtype.kind in "fc":
            import numpy as np

            if not bool(np.isfinite(node).all()):
                raise SerializationError(
                    f"{where}: array holds NaN or Infinity, which JSON cannot represent",
                    path=where,
                )


def _is_numpy_array(node: Any) -> Any:
    return type(node).__name__ == "ndarray" and type(node).__module__ == "numpy"


def _dumps_big_ints(value: Any, path: str) -> bytes:
    """Encode a value holding integers orjson refuses: each becomes a unique placeholder string,
    orjson encodes the rest, then the placeholders are replaced by the exact digits."""
    nonce = secrets.token_hex(8)
    replacements: dict[bytes, bytes] = {}

    def swap(node: Any, where: str, depth: int) -> Any:
        if depth >= MAX_DEPTH and _is_container(node):
            raise SerializationError(
                f"{where}: nested deeper than {MAX_DEPTH} levels, the most JSON storage accepts",
                path=where,
            )
        if isinstance(node, bool) or node is None or isinstance(node, str | float):
            return node
        if isinstance(node, int) and not isinstance(node, enum.Enum):
            if _INT64_MIN <= node <= _UINT64_MAX:
                return node
            try:
                digits = str(int(node)).encode()
            except ValueError as exc:  # more digits than int -> str conversion allows
                raise SerializationError(
                    f"{where}: integer too large to store", path=where
                ) from exc
            token = f"aas-bigint-{nonce}-{len(replacements)}"
            replacements[orjson.dumps(token)] = digits
            return token
        if isinstance(node, Mapping):
            return {k: swap(v, f"{where}.{k}", depth + 1) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [swap(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node)]
        if isinstance(node, BaseModel):
            return swap(node.model_dump(mode="json"), where, depth)
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
            return swap(fields, where, depth)
        return node

    data = dumps(swap(value, path, 0), path=path)
    for token, digits in replacements.items():
        data = data.replace(token, digits)
    return b" " + data  # the mark `loads(..., marked=True)` looks for
