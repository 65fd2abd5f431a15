"""PostgreSQL URLs: the schemes accepted, and checks made before any connection."""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError

__all__ = ["normalize_url", "where"]

_SCHEMES: Final = ("postgresql", "postgres")


def normalize_url(url: object) -> str:
    """``postgresql+psycopg://...`` and ``postgresql+asyncpg://...`` (SQLAlchemy style, as Agno
    writes them) -> ``postgresql://...``; ``postgres://`` is kept. Anything else, or a URL whose
    host or port cannot be parsed, is a `ConfigurationError`."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"db_url={url!r} is not a PostgreSQL URL; expected postgresql://user:password@host/db"
        )
    scheme, _, rest = url.partition("://")
    base = scheme.lower().split("+", 1)[0]
    if base not in _SCHEMES:
        raise ConfigurationError(
            f"db_url scheme {scheme!r} is not PostgreSQL; use postgresql:// (or postgres://, "
            "postgresql+psycopg://, postgresql+asyncpg://)"
        )
    normalized = f"{base}://{rest}"
    try:
        hosts = urlsplit(normalized).netloc.rpartition("@")[2].split(",")
        for host in hosts:  # each host of a multi-host URL: a malformed address or port
            urlsplit(f"//{host}").port  # noqa: B018
    except ValueError as exc:
        raise ConfigurationError(f"db_url has a malformed host or port: {exc}") from None
    return normalized


def where(url: str) -> str:
    """host:port/database of a URL, for messages (never the user or password)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2] or "localhost"
    database = unquote(parts.path.lstrip("/")) or "(default database)"
    return f"{hosts}/{database}"
