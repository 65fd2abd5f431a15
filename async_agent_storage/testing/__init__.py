"""Test helpers for drivers: the conformance suite and hypothesis strategies.

Needs pytest, hypothesis and anyio: the ``testing`` extra (``pip install '.[testing]'`` from a
checkout).
"""

try:
    import hypothesis  # noqa: F401
    import pytest  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"async_agent_storage.testing needs the 'testing' extra (pytest, hypothesis): "
        f"pip install 'async-agent-storage[testing]' ({exc})"
    ) from exc

from .conformance import SessionStoreConformance, StoreFactory, typed
from .strategies import json_objects, json_values, tricky_strings

__all__ = [
    "SessionStoreConformance",
    "StoreFactory",
    "json_objects",
    "json_values",
    "tricky_strings",
    "typed",
]
