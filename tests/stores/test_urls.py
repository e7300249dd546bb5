"""open_store: every URL form, and a one-line ValueError for every bad one."""

from __future__ import annotations

import sys
from datetime import timedelta

import pytest

from livekit_history_plugin.history.stores import (
    DEFAULT_URL,
    ENV_VAR,
    MissingDriverError,
    StoreError,
    open_store,
)
from livekit_history_plugin.history.stores.postgres import PostgresStore
from livekit_history_plugin.history.stores.redis import RedisStore
from livekit_history_plugin.history.stores.sqlite import SqliteStore


def test_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    store = open_store()
    assert isinstance(store, SqliteStore) and store.path == "livekit_history.db"
    assert DEFAULT_URL == "sqlite:///livekit_history.db"
    monkeypatch.setenv(ENV_VAR, "redis://localhost:6379/2?prefix=fromenv")
    store = open_store()
    assert isinstance(store, RedisStore) and store.prefix == "fromenv"
    monkeypatch.setenv(ENV_VAR, "")
    assert isinstance(open_store(), SqliteStore)


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:///sub/dir/h.db", "sub/dir/h.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite:///my%20file.db", "my file.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLite:///upper.db", "upper.db"),
    ],
)
def test_sqlite_forms(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SqliteStore) and store.path == path


def test_sqlite_parameters() -> None:
    store = open_store("sqlite:///h.db?synchronous=FULL&busy_timeout=250&readers=0")
    assert isinstance(store, SqliteStore)
    assert (store._synchronous, store._busy_timeout_ms, store._reader_count) == ("full", 250, 0)


def test_postgres_forms() -> None:
    for scheme in ("postgresql", "postgres"):
        store = open_store(
            f"{scheme}://app:pw@db.example:5433/calls?schema=tenant_1&pool_max=20&sslmode=require"
        )
        assert isinstance(store, PostgresStore)
        assert store.schema == "tenant_1" and store._pool_max == 20
        assert "sslmode=require" in store._dsn and "schema" not in store._dsn
        assert "pw" not in store.url
    store = open_store("postgresql:///calls")
    assert isinstance(store, PostgresStore) and store.schema == "livekit_history"


def test_redis_forms() -> None:
    store = open_store("redis://:pw@cache:6380/3?prefix=myapp&ttl=30d&socket_keepalive=true")
    assert isinstance(store, RedisStore)
    assert store.prefix == "myapp" and store.ttl == timedelta(days=30)
    assert "prefix" not in store._client_url and "socket_keepalive" in store._client_url
    assert "pw" not in store.url
    store = open_store("rediss://cache")
    assert isinstance(store, RedisStore) and store.ttl is None
    assert store.prefix == "livekit_history"
    for ttl, expected in (("12h", 12 * 3600), ("45", 45), ("2w", 14 * 86400), ("15m", 900)):
        s = open_store(f"redis://h/0?ttl={ttl}")
        assert isinstance(s, RedisStore) and s.ttl == timedelta(seconds=expected)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "unsupported history store URL scheme 'mysql'"),
        ("history.db", "has no scheme"),
        ("sqlite://", "bad sqlite URL"),
        ("sqlite:///", "bad sqlite URL"),
        ("sqlite://host/h.db", "bad sqlite URL"),
        ("sqlite:///h.db?journal=wal", "unknown parameter 'journal'"),
        ("sqlite:///h.db?synchronous=off", "synchronous must be one of"),
        ("sqlite:///h.db?busy_timeout=soon", "busy_timeout='soon'"),
        ("sqlite:///h.db?readers=-1", "must be >= 0"),
        ("postgresql://h:99999/db", "malformed history store URL"),
        ("postgresql://h:port/db", "malformed history store URL"),
        ("postgresql://h/db?schema=bad-name;drop", "invalid PostgreSQL schema name"),
        ("postgresql://h/db?pool_max=0", "pool_max"),
        ("redis://h/abc", "must be a database number"),
        ("redis://h/0?prefix=has:colon", "invalid redis key prefix"),
        ("redis://h/0?ttl=30x", "invalid ttl '30x'"),
        ("redis://h/0?ttl=0d", "invalid ttl"),
        ("redis://:secret@h:xx/0", "malformed"),
    ],
)
def test_bad_urls_are_one_line_value_errors(url: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        open_store(url)
    text = str(err.value)
    assert message in text
    assert "\n" not in text
    assert "secret" not in text


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://h/db", "asyncpg", "postgres"),
        ("redis://h/0", "redis.asyncio", "redis"),
    ],
)
def test_missing_driver_names_the_extra(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import of it now fails
    with pytest.raises(
        MissingDriverError, match=rf"pip install 'livekit-history-plugin\[{extra}\]'"
    ) as err:
        open_store(url)
    assert isinstance(err.value, ImportError) and isinstance(err.value, StoreError)
