"""Redis URL parameters: ours (prefix, ttl), redis-py's connection options, and a
typo, which `open_store` refuses at once instead of redis-py failing with a
TypeError at the first command."""

from __future__ import annotations

import pytest

from livekit_history_plugin import HistoryPlugin
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.stores.redis import RedisStore

from .helpers import REDIS_URL, require_server


@pytest.mark.parametrize(
    ("query", "unknown"),
    [("typo_ttl=30d", "typo_ttl"), ("prefix=a&socket_timout=3", "socket_timout")],
)
def test_a_mistyped_parameter_is_refused_by_open_store(query: str, unknown: str) -> None:
    with pytest.raises(ValueError, match=f"unknown parameter '{unknown}' in redis URL") as e:
        open_store(f"redis://:s3cret@127.0.0.1:6379/0?{query}")
    assert "s3cret" not in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_mistyped_parameter_is_refused_by_the_plugin_and_the_store() -> None:
    with pytest.raises(ValueError, match="typo_ttl"):
        HistoryPlugin("redis://127.0.0.1:6379/0?typo_ttl=30d")
    with pytest.raises(ValueError, match="typo_ttl"):
        RedisStore("redis://127.0.0.1:6379/0?typo_ttl=30d")


def test_a_bad_value_of_a_redis_py_option_is_refused() -> None:
    with pytest.raises(ValueError, match="bad redis URL .*socket_timeout"):
        open_store("redis://127.0.0.1:6379/0?socket_timeout=soon")


@pytest.mark.parametrize(
    "query",
    [
        "prefix=app&ttl=30d&socket_timeout=3&health_check_interval=10",
        "client_name=worker-1&max_connections=20&retry_on_timeout=true",
    ],
)
def test_redis_py_options_pass(query: str) -> None:
    store = open_store(f"redis://127.0.0.1:6379/0?{query}")
    assert isinstance(store, RedisStore)


def test_tls_options_pass_on_rediss() -> None:
    store = open_store("rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false")
    assert isinstance(store, RedisStore)


@pytest.mark.redis
async def test_a_valid_url_with_redis_py_options_loads() -> None:
    require_server("redis", REDIS_URL)
    url = f"{REDIS_URL}?prefix=lhp_url_test&socket_timeout=3&client_name=lhp-test"
    plugin = HistoryPlugin(url)
    try:
        loaded = await plugin.load("nobody-here")
        assert loaded.turns == []
    finally:
        await plugin.aclose()
