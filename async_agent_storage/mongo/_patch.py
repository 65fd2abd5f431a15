"""An RFC 7396 merge patch as an aggregation expression, so that MongoDB applies it to the stored
state inside the one atomic update of an append: no read-modify-write, so concurrent appends that
patch different keys all keep theirs.

The patch is known here, so its structure is unrolled into the expression; only the stored values
are looked at by the server. For an object (the patch itself, or an object value in it) over the
stored object ``base``::

    {$mergeObjects: [
        base without the keys the patch sets to null,      # $objectToArray, $filter...
        {key: {$literal: value},                           # a value that is not an object
         key: {$let: {vars: {sN: base.key},                # an object: merged into the stored
               in: {$cond: [sN is an object,              #   value when that is an object,
                            <the same, over $$sN>,
                            {$literal: the object without its nulls}]}}}}]}   # else it replaces it

`$mergeObjects` keeps the stored keys in place and adds new ones in the patch's order, as
`_encoding.merge_patch` (the reference) does. Keys and values are in their stored form
(`_bson.encode_at`, at the depth they will have in the field), so a patched state is stored exactly
as a whole state written at once would be. A stored big integer (``{"%int": ...}``) or deep value
(``{"%json": ...}``) is a BSON object but not a JSON object: a patch object replaces it.

Operators used: ``$mergeObjects``, ``$objectToArray``, ``$arrayToObject``, ``$filter``, ``$in``,
``$getField`` (MongoDB 5.0), ``$let``, ``$cond``, ``$type``, ``$eq``, ``$literal``; all of them
also answered as MongoDB does on mongoeco 4.11 (which lacks ``$not``, hence ``$eq: [false, ...]``).

Each object level of the patch adds about seven levels of nesting to the update command, whose
nesting MongoDB caps (200 levels, checked by `bsonValidate`), so a patch may nest objects at most
`MAX_PATCH_DEPTH` levels; a deeper one is refused before anything is written.
"""

from __future__ import annotations

from typing import Any, Final

from .._encoding import merge_patch
from ..errors import InvalidInputError
from ._bson import INT_KEY, JSON_KEY, encode_at, escape_key

__all__ = ["MAX_PATCH_DEPTH", "patch_expression"]

MAX_PATCH_DEPTH: Final = 16
"""The deepest object nesting of a ``state_patch`` (the patch itself is level 1)."""


def patch_expression(base: Any, patch: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The expression of `patch` applied to the stored object `base` (an expression), and whether
    any key or value of it is stored in an escaped form (`_bson`). `InvalidInputError` when the
    patch nests objects deeper than `MAX_PATCH_DEPTH`."""
    return _merge(base, patch, 0)


def _is_object(value: str) -> dict[str, Any]:
    """Whether `value` (a variable) holds a JSON object: a BSON object that is not one of the
    reserved forms of `_bson`."""
    plain = {
        "$and": [
            {"$eq": [{"$type": {"$getField": {"field": key, "input": value}}}, "missing"]}
            for key in (INT_KEY, JSON_KEY)
        ]
    }
    return {"$cond": [{"$eq": [{"$type": value}, "object"]}, plain, False]}


def _merge(base: Any, patch: dict[str, Any], depth: int) -> tuple[dict[str, Any], bool]:
    if depth >= MAX_PATCH_DEPTH:
        raise InvalidInputError(
            f"state_patch nests objects deeper than {MAX_PATCH_DEPTH} levels, the most MongoDB "
            "can merge in one update; patch a shallower part, or pass session_data"
        )
    escaped = False
    removed: list[str] = []
    fields: dict[str, Any] = {}
    for key, value in patch.items():
        name = escape_key(key)
        escaped = escaped or name != key
        if value is None:
            removed.append(name)
        elif type(value) is dict:
            var = f"s{depth}"
            merged, inner = _merge(f"$${var}", value, depth + 1)
            whole, changed = encode_at(merge_patch(None, value), depth + 1)
            escaped = escaped or inner or changed
            fields[name] = {
                "$let": {
                    "vars": {var: {"$getField": {"field": {"$literal": name}, "input": base}}},
                    "in": {"$cond": [_is_object(f"$${var}"), merged, {"$literal": whole}]},
                }
            }
        else:
            stored, changed = encode_at(value, depth + 1)
            escaped = escaped or changed
            fields[name] = {"$literal": stored}
    kept = base
    if removed:
        kept = {
            "$arrayToObject": {
                "$filter": {
                    "input": {"$objectToArray": base},
                    "cond": {"$eq": [False, {"$in": ["$$this.k", {"$literal": removed}]}]},
                }
            }
        }
    return {"$mergeObjects": [kept, fields]}, escaped
