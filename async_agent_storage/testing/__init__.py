"""Test helpers for drivers: the conformance suite and hypothesis strategies.

Needs pytest, hypothesis and anyio (``pip install 'async-agent-storage[dev]'``).
"""

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
