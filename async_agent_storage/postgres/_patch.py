"""An RFC 7396 merge patch as a SQL expression, so that an append applies it to the stored state
in plain ``jsonb`` operators, without calling the store's plpgsql merge-patch function.

The function walks the patch on the server: a query over ``jsonb_each`` and a nested call per
key, each with plpgsql's overhead. On the benchmark's patch (an object of five keys, one of them
an object of three) it cost about 60 µs of the append statement's 150 µs of executor time; the
expression below costs about a fifth of that (see docs/benchmarks.md, "The state patch as a SQL
expression"). The patch is known here, so its structure is unrolled into the statement and only
its keys and values are bound. For an object of the patch over the stored value ``base``::

    (base as an object, else {})                   -- an object patch replaces any other value
        - $n::text[]                               -- the keys the patch sets to null
        || $n+1::text::jsonb                       -- the keys it sets to anything but an object
        || jsonb_build_object($k::text, <the same over base -> $k>, ...)   -- its object values

The statement's text depends only on the patch's shape (which keys hold objects, how deep), not
on its keys or values, so a server agent that patches the same kind of state every turn prepares
one statement. A patch this module cannot bind exactly as the plpgsql function would read it is
left to the function (`plan` returns None): one whose JSON the driver rewrites for `jsonb`
(`_jsonb`: NUL, U+FFFF, -0.0, large exponents), one holding an integer beyond 64 bits, and one
with more than `MAX_NODES` objects (which bounds the number of statement shapes).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson

from ._jsonb import needs_rewrite

__all__ = ["MAX_NODES", "PatchPlan", "patched_statement", "plan"]

MAX_NODES: Final = 8
"""The most objects (the patch itself included) a patch may hold to be bound as an expression."""

# A patch's shape: per object, the shapes of its object values, in order.
Shape = tuple["Shape", ...]


class PatchPlan(NamedTuple):
    """A patch ready for `patched_statement`: its shape, and the values to bind after the
    statement's own parameters (per object: deleted keys, other values, then per object value its
    key and its own)."""

    shape: Shape
    args: list[Any]


def plan(patch: bytes) -> PatchPlan | None:
    """The plan of `patch` (JSON from the codec), or None when the merge-patch function must apply
    it."""
    if patch[:1] == b" " or needs_rewrite(patch):  # an integer beyond 64 bits; a rewritten value
        return None
    value = orjson.loads(patch)
    if type(value) is not dict:
        return None
    args: list[Any] = []
    budget = [MAX_NODES]
    shape = _split(value, args, budget)
    return None if shape is None else PatchPlan(shape, args)


def _split(patch: dict[str, Any], args: list[Any], budget: list[int]) -> Shape | None:
    budget[0] -= 1
    if budget[0] < 0:
        return None
    deleted: list[str] = []
    values: dict[str, Any] = {}
    objects: list[tuple[str, dict[str, Any]]] = []
    for key, value in patch.items():
        if value is None:
            deleted.append(key)
        elif type(value) is dict:
            objects.append((key, value))
        else:
            values[key] = value
    # Floats and 64-bit integers read by orjson write back as the same text.
    args += (deleted, orjson.dumps(values).decode())
    shapes: list[Shape] = []
    for key, value in objects:
        args.append(key)
        shape = _split(value, args, budget)
        if shape is None:
            return None
        shapes.append(shape)
    return tuple(shapes)


def expression(target: str, shape: Shape, first: int, *, is_object: bool = False) -> str:
    """The merged value of `target` (SQL) with a patch of `shape` whose values are bound from
    ``$first`` on; `is_object`: the target is known to be an object."""
    return _expression(target, shape, first, is_object)[0]


def _expression(target: str, shape: Shape, n: int, is_object: bool) -> tuple[str, int]:
    base = (
        target
        if is_object
        else f"CASE WHEN jsonb_typeof({target}) = 'object' THEN {target} ELSE '{{}}'::jsonb END"
    )
    text = f"({base} - ${n}::text[]) || ${n + 1}::text::jsonb"
    n += 2
    if shape:
        pairs = []
        for child in shape:
            key = f"${n}::text"
            merged, n = _expression(f"{target} -> {key}", child, n + 1, False)
            pairs.append(f"{key}, {merged}")
        text += " || jsonb_build_object(" + ", ".join(pairs) + ")"
    return text, n


@lru_cache(maxsize=256)
def patched_statement(statement: str, call: str, shape: Shape, first: int) -> str:
    """`statement` with the merge-patch function's `call` on the stored state replaced by the
    expression of a patch of `shape` bound from ``$first`` on."""
    assert call in statement
    return statement.replace(call, expression("s.session_data", shape, first, is_object=True))
