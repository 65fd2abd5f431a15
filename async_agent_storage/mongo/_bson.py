"""JSON values as queryable BSON, and back, without losing anything.

Every value reaches this module already checked and canonicalized by the shared codec (datetimes,
UUIDs, enums, models... are their JSON form by then), so what MongoDB stores is what the other
backends store. Most JSON maps onto BSON as it is: objects are documents, arrays are arrays,
strings (NUL included) are strings, floats are doubles (``-0.0`` and subnormals included), and
integers within 64 bits are int32/int64. What BSON or MongoDB cannot hold as it is gets a
reversible form:

================================================  =================================================
JSON                                              BSON
================================================  =================================================
object key containing ``%``, ``.`` or NUL, or     the key with ``%`` -> ``%25``, ``.`` -> ``%2E``,
starting with ``$``                               NUL -> ``%00`` and a leading ``$`` -> ``%24``
the empty key ``""``                              ``"%"``
integer outside int64 of at most 34 digits        ``Decimal128`` (exact, compares as a number)
any longer integer                                ``{"%int": "<the digits>"}``
an object or array nested deeper than             ``{"%json": "<its JSON text>"}`` (MongoDB stores
`MAX_NESTING` levels inside a field               no more than 100 levels in a document)
================================================  =================================================

Keys without those characters (nearly all) are stored unchanged, so ``metadata.tags`` or
``session_data.session_state.city`` can be queried by their names. Escaped keys always hold
``%`` followed by two hex digits, so the reserved keys ``"%int"`` and ``"%json"`` and the lone
``"%"`` cannot come from user data.

`encode` reports whether it changed anything; the store records that per field (and per run), and
`decode` is only paid for on the values that need it. 64-bit integers come back as plain `int`
through `CODEC_OPTIONS`.
"""

from __future__ import annotations

import re
from typing import Any, Final

from bson.codec_options import CodecOptions, TypeDecoder, TypeRegistry
from bson.decimal128 import Decimal128
from bson.int64 import Int64

from .. import _codec as codec

__all__ = [
    "CODEC_OPTIONS",
    "MAX_NESTING",
    "decode",
    "encode",
    "encode_at",
    "escape_key",
    "unescape_key",
]

MAX_NESTING: Final = 64
"""Objects and arrays nested deeper than this inside one field are stored as JSON text. The store
nests a run at most 5 levels deep in its own documents, which keeps every document well inside
MongoDB's limit of 100 levels."""

INT_KEY: Final = "%int"
JSON_KEY: Final = "%json"
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_DECIMAL_LIMIT: Final = 10**34  # Decimal128 holds 34 significant digits exactly
_HEX_ESCAPE: Final = re.compile("%([0-9A-F]{2})")


class _Int64AsInt(TypeDecoder):
    """BSON int64 reads back as `int` (PyMongo's default is its `Int64` subclass)."""

    bson_type = Int64

    def transform_bson(self, value: Any) -> Any:
        return int(value)


CODEC_OPTIONS: Final[CodecOptions[dict[str, Any]]] = CodecOptions(
    document_class=dict, type_registry=TypeRegistry([_Int64AsInt()])
)
"""The codec options of every database handle the store uses, whatever the client's own."""


def escape_key(key: str) -> str:
    """A JSON object key as a BSON field name (unchanged unless it has to be)."""
    if not key:
        return "%"
    if "%" in key or "." in key or "\x00" in key or key[0] == "$":
        key = key.replace("%", "%25").replace(".", "%2E").replace("\x00", "%00")
        if key[0] == "$":
            key = "%24" + key[1:]
    return key


def unescape_key(key: str) -> str:
    """The inverse of `escape_key`."""
    if "%" not in key:
        return key
    if key == "%":
        return ""
    return _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), key)


def encode(value: Any) -> tuple[Any, bool]:
    """A decoded JSON value (what `codec.loads` returns) as a BSON value, and whether any part of
    it needed a form of the table above. The input is never modified; unchanged parts are shared.
    """
    return _encode(value, 0)


def encode_at(value: Any, depth: int) -> tuple[Any, bool]:
    """`encode` for a value that sits `depth` levels inside a field (a field's own value is at
    depth 0, the values of its keys at depth 1...), so that a part written on its own is stored
    exactly as it would be as part of the whole field."""
    return _encode(value, depth)


def _encode(value: Any, depth: int) -> tuple[Any, bool]:
    kind = type(value)
    if kind is dict:
        if depth >= MAX_NESTING:
            return {JSON_KEY: codec.dumps(value).decode()}, True
        out: dict[str, Any] | None = None
        for index, (key, item) in enumerate(value.items()):
            new_key = escape_key(key)
            new_item, changed = _encode(item, depth + 1)
            if out is None and (changed or new_key is not key):
                out = dict(list(value.items())[:index]) if index else {}
            if out is not None:
                out[new_key] = new_item
        return (value, False) if out is None else (out, True)
    if kind is list:
        if depth >= MAX_NESTING:
            return {JSON_KEY: codec.dumps(value).decode()}, True
        items: list[Any] | None = None
        for index, item in enumerate(value):
            new_item, changed = _encode(item, depth + 1)
            if items is None and changed:
                items = value[:index]
            if items is not None:
                items.append(new_item)
        return (value, False) if items is None else (items, True)
    if kind is int and not _INT64_MIN <= value <= _INT64_MAX:
        if -_DECIMAL_LIMIT < value < _DECIMAL_LIMIT:
            return Decimal128(str(value)), True
        return {INT_KEY: str(value)}, True
    return value, False


def decode(value: Any) -> Any:
    """The JSON value a BSON value written by `encode` stands for."""
    kind = type(value)
    if kind is dict:
        if len(value) == 1:
            ((key, item),) = value.items()
            if key == INT_KEY and type(item) is str:
                return int(item)
            if key == JSON_KEY and type(item) is str:
                return codec.loads(item)
        return {unescape_key(k): decode(v) for k, v in value.items()}
    if kind is list:
        return [decode(v) for v in value]
    if kind is Decimal128:
        return int(value.to_decimal())
    return value
