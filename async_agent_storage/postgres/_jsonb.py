"""Lossless JSON through PostgreSQL's `jsonb`.

`jsonb` is what makes stored sessions queryable (``metadata->>'tag'``, ``@>``, GIN indexes), but
it does not keep every JSON document exactly:

- it refuses the escape ``\\u0000`` (NUL) in any string, object keys included;
- it keeps numbers as `numeric`, so a float written with a positive exponent (orjson writes
  ``1e16`` as ``1e+16``, ``1e300`` as ``1e+300``) comes back as an integer literal
  (``10000000000000000``) that reads as an `int`, and ``-0.0`` comes back as ``0.0``;
- it sorts object keys (shorter first) and keeps one of duplicate keys. Dicts compare equal
  whatever their order, and orjson never writes duplicates, so this one is left as it is.

The driver therefore rewrites, on the way in, the few values `jsonb` would change, and only
those:

====================================  ===================================================
value                                 stored as
====================================  ===================================================
float with a positive exponent        the same number in positional notation with a
(``1e+16``, ``-1.5e+300``)            fraction, ``10000000000000000.0``: still a JSON
                                      number, exact in `numeric`, read back as that float
``-0.0``                              the string ``"\\uffffn-0.0"``
a string or key holding NUL, or       ``"\\uffffs"`` followed by the string with U+FFFF
starting with U+FFFF                  doubled and NUL written as U+FFFF ``0``
====================================  ===================================================

U+FFFF is a Unicode noncharacter, reserved for a program's internal use, so real text does not
start with it; every other string and number is stored unchanged and stays queryable with the
JSON operators (``session_data->'session_state'->>'city'``, ``(metadata->>'score')::float8``).
Floats with a negative exponent (``5e-324``) need nothing: `numeric` keeps them exactly and
prints them positionally, which reads back as the same float.

The cost is paid only by documents that need it: encoding does four substring searches over the
bytes orjson produced (``\\u0000``, U+FFFF, ``e+``, ``-0.0``) and rewrites the text only when one
hits; decoding walks the parsed value only when the stored text holds U+FFFF.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Final

import orjson

from .. import _codec as codec

__all__ = ["MARK", "from_db", "needs_rewrite", "to_db"]

MARK: Final = "\uffff"
_MARK_BYTES: Final = MARK.encode()
_NUL_ESCAPE: Final = b"\\u0000"
_NEGATIVE_ZERO: Final = orjson.dumps(-0.0)
# orjson 3.10+ writes large floats as 1e+16; older releases wrote 1e16.
_PLUS_EXPONENT: Final = b"e+" in orjson.dumps(1e16)
_EXPONENT_RE: Final = re.compile(rb"[0-9][eE][0-9]")

# One token of compact JSON text: a string (with its escapes) or a number. Scanning left to
# right, a string is always consumed whole from its opening quote, so digits inside strings are
# never taken for numbers.
_TOKEN_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+\-]*', re.DOTALL)
_UNESCAPE_RE: Final = re.compile(MARK + "(.)", re.DOTALL)


def needs_rewrite(data: bytes) -> bool:
    """Whether `to_db` changes `data` (compact JSON from the codec)."""
    # A one-byte search (memchr) first, the longer one only when that byte occurs: about 1 us
    # for a 1 KB run instead of 5.
    if b"\\" in data and _NUL_ESCAPE in data:
        return True
    if b"\xef" in data and _MARK_BYTES in data:
        return True
    if _NEGATIVE_ZERO in data:
        return True
    if _PLUS_EXPONENT:
        return b"+" in data and (b"e+" in data or b"E+" in data)
    return _EXPONENT_RE.search(data) is not None  # pragma: no cover - older orjson


def to_db(data: bytes) -> str:
    """The JSON text to bind as a `jsonb` parameter for `data` (compact JSON from the codec)."""
    if not needs_rewrite(data):
        return data.decode()
    return _TOKEN_RE.sub(_rewrite_token, data.decode())


def escape_string(value: str) -> str:
    """The stored form of a string that holds NUL or starts with U+FFFF."""
    return MARK + "s" + value.replace(MARK, MARK + MARK).replace("\x00", MARK + "0")


def _rewrite_token(match: re.Match[str]) -> str:
    token = match.group()
    if token[0] == '"':
        if "\\u0000" not in token and not token.startswith('"' + MARK):
            return token
        value: str = orjson.loads(token)
        if "\x00" in value or value.startswith(MARK):
            return orjson.dumps(escape_string(value)).decode()
        return token  # "\\u0000": an escaped backslash followed by "u0000"
    if "." not in token and "e" not in token and "E" not in token:
        return token  # an integer: numeric keeps it exactly
    if token[0] == "-" and float(token) == 0.0:
        return '"' + MARK + "n" + token + '"'
    exponent = token.replace("E", "e").partition("e")[2]
    if exponent and not exponent.startswith("-"):
        text = format(Decimal(token), "f")
        return text if "." in text else text + ".0"
    return token


def from_db(text: str) -> Any:
    """Decode JSON text read from a `jsonb` column (or an aggregate of them)."""
    value = codec.loads(text)
    if MARK in text:
        value = _restore(value)
    return value


def _restore_string(value: str) -> Any:
    tag = value[1:2]
    if tag == "s":
        return _UNESCAPE_RE.sub(_unescape_pair, value[2:])
    if tag == "n":
        return float(value[2:])
    return value  # not written by this driver: left as it is


def _unescape_pair(match: re.Match[str]) -> str:
    return MARK if match.group(1) == MARK else "\x00"


def _restore(value: Any) -> Any:
    kind = type(value)
    if kind is str:
        return _restore_string(value) if value.startswith(MARK) else value
    if kind is dict:
        return {
            (_restore_string(k) if k.startswith(MARK) else k): _restore(v) for k, v in value.items()
        }
    if kind is list:
        return [_restore(v) for v in value]
    return value
