"""`open_store(url)`: pick the driver from the URL scheme."""

from __future__ import annotations

import importlib
from typing import Any, Final
from urllib.parse import unquote

from ._checks import DEFAULT_TABLE_NAME
from .errors import ConfigurationError
from .protocol import SessionStore

__all__ = ["open_store"]

# scheme -> (module, class, extra, name of the table argument)
_DRIVERS: Final[dict[str, tuple[str, str, str | None, str]]] = {
    "sqlite": ("async_agent_storage.sqlite", "SqliteStore", None, "table_name"),
    "postgresql": ("async_agent_storage.postgres", "PostgresStore", "postgres", "table_name"),
    "postgres": ("async_agent_storage.postgres", "PostgresStore", "postgres", "table_name"),
    "mongodb": ("async_agent_storage.mongo", "MongoStore", "mongo", "collection_name"),
    "mongodb+srv": ("async_agent_storage.mongo", "MongoStore", "mongo", "collection_name"),
}


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs.db`` -> ``/abs.db``;
    ``sqlite:///:memory:`` and ``sqlite://`` -> ``:memory:``."""
    _, _, rest = url.partition("://")
    if rest in ("", "/", "/:memory:"):
        return ":memory:"
    if "?" in rest or "#" in rest:
        raise ConfigurationError(
            f"{url!r}: query parameters are not supported in SQLite URLs; pass options as "
            "keyword arguments to open_store()"
        )
    if not rest.startswith("/"):
        raise ConfigurationError(
            f"{url!r} names a host; SQLite URLs are sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    return unquote(rest[1:])


def open_store(url: str, *, table_name: str = DEFAULT_TABLE_NAME, **options: Any) -> SessionStore:
    """A store for `url`, not yet opened (use `async with store:`).

    ``sqlite:///path.db`` and ``sqlite:///:memory:`` need nothing more; ``postgresql://``,
    ``postgres://`` and Agno's ``postgresql+psycopg://`` / ``postgresql+asyncpg://`` need the
    ``postgres`` extra; ``mongodb://`` and ``mongodb+srv://`` the ``mongo`` extra. `options` go to
    the store's constructor (e.g. ``auto_upgrade_schema=True``).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"{url!r} is not a store URL; expected e.g. sqlite:///data.db, "
            "postgresql://user@host/db or mongodb://host"
        )
    scheme = url.partition("://")[0].lower()
    driver = _DRIVERS.get(scheme) or _DRIVERS.get(scheme.split("+", 1)[0])
    if driver is None:
        known = ", ".join(sorted(_DRIVERS))
        raise ConfigurationError(f"unknown URL scheme {scheme!r} in {url!r}; known: {known}")
    module_name, class_name, extra, table_argument = driver
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"{scheme}:// needs the {extra!r} extra: pip install 'async-agent-storage[{extra}]' "
            f"({exc})"
        ) from exc
    store_class = getattr(module, class_name)
    if extra is None:
        store: SessionStore = store_class(table_name, sqlite_path(url), **options)
    else:
        store = store_class(**{table_argument: table_name}, db_url=url, **options)
    return store
