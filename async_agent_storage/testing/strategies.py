"""Hypothesis strategies for values a session may hold."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["json_objects", "json_values", "tricky_strings"]

# Strings that storage layers get wrong: NUL, lone emoji, combining marks, RTL, JSON and SQL
# syntax, keys that look like operators or paths.
tricky_strings = st.sampled_from(
    [
        "",
        "\x00",
        "a\x00b",
        "\x00\x00\x00",
        "😀",
        "👩🏽‍💻",
        "e\u0301",
        "\u202eevil",
        "\ufeff",
        "\\u0000",
        '"quoted"',
        "' OR 1=1 --",
        "$set",
        "a.b.c",
        "{}",
        "null",
        "\n\r\t",
        "\U0010ffff",
    ]
)

_text = st.one_of(tricky_strings, st.text(max_size=40))
_ints = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=-(10**40), max_value=10**40),  # beyond 64 bits, both signs
)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_scalars = st.one_of(st.none(), st.booleans(), _ints, _floats, _text)


def json_values(max_leaves: int = 30) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, unicode and NUL strings, big integers, nested lists and objects."""
    return st.recursive(
        _scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(_text, children, max_size=5),
        ),
        max_leaves=max_leaves,
    )


def json_objects(max_leaves: int = 30) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object (what `session_data`, `metadata` and runs are)."""
    return st.dictionaries(_text, json_values(max_leaves), max_size=6)
