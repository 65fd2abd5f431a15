"""open_store(): the URL picks the driver; a bad URL is a ConfigurationError, never a crash."""

from __future__ import annotations

import pytest

from async_agent_storage import ConfigurationError, SqliteStore, open_store
from async_agent_storage._factory import sqlite_path


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data.db", "data.db"),
        ("sqlite:///tmp/data.db", "tmp/data.db"),
        ("sqlite:////var/lib/app/data.db", "/var/lib/app/data.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
        ("sqlite+aiosqlite:///data.db", "data.db"),
        ("sqlite:///with%20space.db", "with space.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    assert sqlite_path(url) == path
    store = open_store(url)
    assert isinstance(store, SqliteStore)
    assert store.db_file == path
    assert store.table_name == "agent_sessions"


def test_options_reach_the_store() -> None:
    store = open_store("sqlite:///x.db", table_name="custom", busy_timeout=1.5)
    assert isinstance(store, SqliteStore)
    assert (store.table_name, store.busy_timeout) == ("custom", 1.5)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "not a store URL"),
        ("", "not a store URL"),
        ("redis://localhost", "unknown URL scheme 'redis'"),
        ("sqlite://host/data.db", "names a host"),
        ("sqlite:///data.db?mode=ro", "query parameters"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        open_store(url)


def test_a_bad_table_name_in_open_store_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="not a valid name"):
        open_store("sqlite:///x.db", table_name="x; DROP TABLE y")
