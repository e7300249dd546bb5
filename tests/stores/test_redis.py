"""Redis-specific behaviour: key layout, prefixes, TTL, SCAN-driven purge."""

from __future__ import annotations

from datetime import timedelta

import pytest

from livekit_history_plugin.history.models import Fact, Summary
from livekit_history_plugin.history.stores import StoreUnavailableError, open_store
from livekit_history_plugin.history.stores import redis as redis_mod

from .helpers import REDIS_URL, T0, RedisBackend, free_port, require_server, turn


async def test_key_layout(redis_backend: RedisBackend) -> None:
    b = redis_backend
    async with b.store() as store:
        await store.append([turn(user="u:1", seq=0, item_id="it-1"), turn(user="u:1", seq=1)])
        await store.save_summary(Summary(user_id="u:1", text="s", covers_until=T0, turn_count=2))
        await store.save_fact(Fact(user_id="u:1", key="name", text="Ann"))
    p = b.prefix
    assert sorted(await b.keys()) == sorted(
        f"{p}:{k}".encode()
        for k in ("schema", "order:u:1", "turns:u:1", "summary:u:1", "facts:u:1")
    )
    members = await b.run(lambda r: r.zrange(f"{p}:order:u:1", 0, -1, withscores=True))
    assert members == [
        (b"c1\x000000000000000000000\x00it-1", float(T0.timestamp() * 1_000_000)),
        (b"c1\x000000000000000000001\x00c1:1", float(T0.timestamp() * 1_000_000 + 1_000_000)),
    ]
    assert sorted(await b.run(lambda r: r.hkeys(f"{p}:turns:u:1"))) == [b"c1:1", b"it-1"]


async def test_prefixes_isolate_deployments(redis_backend: RedisBackend) -> None:
    other = RedisBackend(REDIS_URL, prefix=redis_backend.prefix + "-other")
    try:
        async with redis_backend.store() as a, other.store() as b:
            await a.append([turn(seq=0)])
            assert await b.load_latest("u1", 10) == []
            assert await b.list_users() == []
            assert (await b.stats()).turns == 0
            await b.purge_older_than(timedelta(0))
            assert await a.count_turns("u1") == 1
    finally:
        await other.cleanup()


async def test_ttl_is_set_and_refreshed_on_every_write(redis_backend: RedisBackend) -> None:
    require_server("redis", REDIS_URL)
    b = RedisBackend(REDIS_URL, prefix=redis_backend.prefix, query="&ttl=2h")
    p, hour2 = b.prefix, 2 * 3600 * 1000
    async with b.store() as store:
        await store.append([turn(seq=0)])
        for kind in ("order", "turns"):
            ttl = await b.run(lambda r, k=kind: r.pttl(f"{p}:{k}:u1"))
            assert hour2 - 60_000 < ttl <= hour2
        await store.save_fact(Fact(user_id="u1", key="k", text="v"))
        await store.save_summary(Summary(user_id="u1", text="s", covers_until=T0, turn_count=1))
        for kind in ("summary", "facts"):
            assert await b.run(lambda r, k=kind: r.pttl(f"{p}:{k}:u1")) > hour2 - 60_000
        # time passes (simulated), then the caller talks again: every key is refreshed
        for kind in ("order", "turns", "summary", "facts"):
            await b.run(lambda r, k=kind: r.pexpire(f"{p}:{k}:u1", 5_000))
        await store.append([turn(seq=1)])
        for kind in ("order", "turns", "summary", "facts"):
            assert await b.run(lambda r, k=kind: r.pttl(f"{p}:{k}:u1")) > hour2 - 60_000
        assert await b.run(lambda r: r.pttl(f"{p}:schema")) == -1  # never expires


async def test_purge_walks_users_with_scan(
    redis_backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_mod, "_SCAN_COUNT", 5)
    async with redis_backend.store() as store:
        await store.append(
            [turn(user=f"user{u}", seq=i, at=i) for u in range(40) for i in range(3)]
        )
        progress: list[int] = []
        n = await store.purge_older_than(
            timedelta(seconds=0), now=T0 + timedelta(seconds=2), progress=progress.append
        )
        assert n == 80
        assert len(progress) > 1 and progress[-1] == 80
        assert [await store.count_turns(f"user{u}") for u in range(40)] == [1] * 40
        # emptied users leave no key behind
        await store.purge_older_than(timedelta(0), now=T0 + timedelta(seconds=10))
        assert await store.list_users() == []
    assert await redis_backend.keys() == [f"{redis_backend.prefix}:schema".encode()]


async def test_unreachable_server_is_store_unavailable() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0?prefix=nobody")
    with pytest.raises(StoreUnavailableError, match="open failed"):
        await store.open()
