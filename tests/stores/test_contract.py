"""The HistoryStore contract, run against every backend (real SQLite files, a
real PostgreSQL and a real Redis)."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livekit_history_plugin.history.models import (
    MAX_TURN_CHARS,
    Fact,
    Role,
    Source,
    Summary,
    Turn,
)
from livekit_history_plugin.history.stores import StoreError
from livekit_history_plugin.history.stores import postgres as pg_mod
from livekit_history_plugin.history.stores import redis as redis_mod
from livekit_history_plugin.history.stores import sqlite as sqlite_mod
from livekit_history_plugin.history.stores.migrations import postgres as pg_migrations
from livekit_history_plugin.history.stores.migrations import sqlite as sqlite_migrations

from .helpers import T0, Backend, RedisBackend, spoken_key, turn

LOGGER = "livekit.plugins.history"
LATEST_VERSION = {
    "sqlite": sqlite_migrations.LATEST,
    "postgresql": pg_migrations.LATEST,
    "redis": redis_mod.LAYOUT_VERSION,
}
BACKEND_MODULES = {"sqlite": sqlite_mod, "postgresql": pg_mod, "redis": redis_mod}

# ids that collide in naive key building, LIKE patterns, SCAN globs or collations
TRICKY_USERS = [
    "a",
    "a:",
    "a:b",
    "A",
    "a*",
    "a?",
    "a[1]",
    "a%",
    "a_",
    "ä",
    "a b",
    "order:a",
    "turns",
    "🙂",
    "a\\",
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# -- turns: round trip, order, limit ---------------------------------------------------


async def test_roundtrip_keeps_every_field(backend: Backend) -> None:
    t = Turn(
        user_id="u1",
        conversation_id="conv-1",
        seq=7,
        role=Role.SYSTEM,
        text="héllo 🙂\nsecond line\tTab",
        created_at=datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=timezone(timedelta(hours=2))),
        source=Source.TOOL,
        agent_id="agent-7",
        item_id="item_abc",
        interrupted=True,
    )
    async with backend.store() as store:
        assert await store.append([t]) == 1
        got = await store.load_latest("u1", 10)
    assert got == [t]
    assert got[0].created_at.tzinfo == timezone.utc
    assert got[0].created_at.microsecond == 123456


async def test_spoken_order_across_conversations_and_ties(backend: Backend) -> None:
    expected = [
        # interleaved conversations: time decides
        turn(conv="b", seq=0, at=0),
        turn(conv="a", seq=0, at=1),
        turn(conv="b", seq=1, at=2),
        turn(conv="a", seq=1, at=3),
        # same instant: conversation id (by code point), then seq (numerically)
        turn(conv="a", seq=10, at=10),
        turn(conv="a b", seq=0, at=10),
        turn(conv="ab", seq=0, at=10),
        turn(conv="b", seq=2, at=10),
        turn(conv="z", seq=0, at=10),
        turn(conv="é", seq=0, at=10),
        turn(conv="c", seq=2, at=20),
        turn(conv="c", seq=10, at=20),
        # same (time, conversation, seq): the idempotency key breaks the tie
        turn(conv="d", seq=0, at=30, item_id="i-a"),
        turn(conv="d", seq=0, at=30, item_id="i-b"),
        # microseconds count
        turn(conv="y", seq=0, at=40.000001),
        turn(conv="x", seq=0, at=40.000002),
    ]
    assert expected == sorted(expected, key=spoken_key)
    shuffled = expected[:]
    random.Random(7).shuffle(shuffled)
    async with backend.store() as store:
        for i in range(0, len(shuffled), 5):
            await store.append(shuffled[i : i + 5])
        assert await store.load_latest("u1", 100) == expected
        assert await store.load_latest("u1", 3) == expected[-3:]
        assert await store.load_latest("u1", 1) == expected[-1:]


async def test_limit_and_before(backend: Backend) -> None:
    turns = [turn(seq=i) for i in range(10)]
    async with backend.store() as store:
        await store.append(turns)
        assert await store.load_latest("u1", 0) == []
        with pytest.raises(ValueError, match="limit"):
            await store.load_latest("u1", -1)
        assert await store.load_latest("u1", 4) == turns[6:]
        assert await store.load_latest("u1", 1000) == turns
        # strictly before: the turn at exactly `before` is excluded
        assert await store.load_latest("u1", 100, before=at(5)) == turns[:5]
        assert await store.load_latest("u1", 2, before=at(5)) == turns[3:5]
        assert await store.load_latest("u1", 2, before=at(4.5)) == turns[3:5]
        assert await store.load_latest("u1", 10, before=at(0)) == []
        # a naive `before` is UTC, like every other time of the contract
        assert await store.load_latest("u1", 1, before=at(5).replace(tzinfo=None)) == turns[4:5]
        assert await store.load_latest("nobody", 10) == []


async def test_append_is_idempotent(backend: Backend) -> None:
    a = [turn(seq=i) for i in range(5)]
    async with backend.store() as store:
        assert await store.append([]) == 0
        assert await store.append(a) == 5
        assert await store.append(a) == 0
        # a re-sent turn keeps its first version, whatever changed since
        changed = a[0].model_copy(update={"text": "edited"})
        more = [changed, turn(seq=5), turn(seq=5)]  # duplicate inside one batch too
        assert await store.append(more) == 1
        got = await store.load_latest("u1", 100)
        assert [t.seq for t in got] == [0, 1, 2, 3, 4, 5]
        assert got[0].text == a[0].text
        # item_id is the key when present: same position, other item = another turn
        assert await store.append([turn(seq=0, item_id="item-1")]) == 1
        assert await store.append([turn(seq=0, item_id="item-1", text="again")]) == 0
        # the same key under another user is another turn
        assert await store.append([turn(user="u2", seq=0)]) == 1
        assert await store.count_turns("u1") == 7
        assert await store.count_turns("u2") == 1


async def test_one_batch_can_mix_users(backend: Backend) -> None:
    batch = [turn(user=u, seq=i) for i in range(3) for u in ("u1", "u2", "u3")]
    async with backend.store() as store:
        assert await store.append(batch) == 9
        for u in ("u1", "u2", "u3"):
            got = await store.load_latest(u, 10)
            assert [t.seq for t in got] == [0, 1, 2]
            assert {t.user_id for t in got} == {u}


async def test_control_characters_are_dropped_on_write(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with backend.store() as store:
        await store.append([turn(text="nul\x00 bell\x07 esc\x1b[31m ok\n", seq=0)])
        got = await store.load_latest("u1", 10)
    assert got[0].text == "nul bell esc[31m ok\n"
    assert "removed 3 control characters from 1 turns" in caplog.text


async def test_large_text_is_stored_whole_and_capped_on_load(backend: Backend) -> None:
    big = "x" * (MAX_TURN_CHARS * 3)
    async with backend.store() as store:
        await store.append([turn(text=big)])
        got = await store.load_latest("u1", 1)
    assert got[0].text == big[:MAX_TURN_CHARS]


async def test_list_conversations_and_count(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append(
            [turn(conv="late", seq=0, at=100), turn(conv="late", seq=1, at=105)]
            + [turn(conv="early", seq=i, at=i) for i in range(3)]
            + [turn(user="u2", conv="other", seq=0, at=50)]
        )
        convs = await store.list_conversations("u1")
        assert await store.count_turns("u1") == 5
        assert await store.list_conversations("nobody") == []
        assert await store.count_turns("nobody") == 0
    assert [(c.conversation_id, c.turn_count) for c in convs] == [("early", 3), ("late", 2)]
    assert convs[0].started_at == at(0) and convs[0].ended_at == at(2)
    assert convs[1].started_at == at(100) and convs[1].ended_at == at(105)
    assert {c.user_id for c in convs} == {"u1"}


# -- isolation --------------------------------------------------------------------------

ops_strategy = st.lists(
    st.tuples(
        st.integers(0, len(TRICKY_USERS) - 1),  # user
        st.integers(0, 2),  # conversation
        st.integers(0, 4),  # seq
        st.integers(0, 30),  # seconds after T0
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=ops_strategy, batch=st.integers(1, 7))
async def test_no_api_returns_another_users_data(
    backend: Backend, ops: list[tuple[int, int, int, int]], batch: int
) -> None:
    turns = [turn(user=TRICKY_USERS[u], conv=f"c{c}", seq=s, at=t) for u, c, s, t in ops]
    expected: dict[str, dict[str, Turn]] = {}
    for t in turns:  # the first version of a key wins
        expected.setdefault(t.user_id, {}).setdefault(t.idempotency_key, t)
    async with backend.store() as store:
        for i in range(0, len(turns), batch):
            await store.append(turns[i : i + batch])
        fact_user = TRICKY_USERS[ops[0][0]]
        await store.save_fact(Fact(user_id=fact_user, key="k", text=f"fact of {fact_user}"))
        await store.save_summary(
            Summary(
                user_id=fact_user, text=f"summary of {fact_user}", covers_until=T0, turn_count=1
            )
        )
        users = sorted(expected)
        assert await store.list_users() == users
        for user in TRICKY_USERS:
            mine = sorted(expected.get(user, {}).values(), key=spoken_key)
            assert await store.load_latest(user, 1000) == mine
            assert await store.count_turns(user) == len(mine)
            convs = await store.list_conversations(user)
            assert {c.user_id for c in convs} <= {user}
            assert sum(c.turn_count for c in convs) == len(mine)
            facts = await store.load_facts(user)
            summary = await store.load_summary(user)
            if user == fact_user:
                assert [f.text for f in facts] == [f"fact of {user}"]
                assert summary is not None and summary.text == f"summary of {user}"
            else:
                assert facts == [] and summary is None
        # deleting one user leaves every other exactly as it was
        victim = users[0]
        await store.delete_user(victim)
        for user in users[1:]:
            assert await store.count_turns(user) == len(expected[user])
        for user in users + [fact_user]:
            await store.delete_user(user)
        assert await store.list_users() == []
    for user in TRICKY_USERS:
        assert await backend.raw_rows_of(user) == 0


# -- deletion -------------------------------------------------------------------------------


async def test_delete_user_removes_everything(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append([turn(user="u1", seq=i) for i in range(4)])
        await store.append([turn(user="u1:x", seq=0), turn(user="u", seq=0)])
        await store.save_summary(Summary(user_id="u1", text="s", covers_until=T0, turn_count=4))
        await store.save_fact(Fact(user_id="u1", key="name", text="Ann"))
        await store.save_fact(Fact(user_id="u1:x", key="name", text="Bo"))
        assert await backend.raw_rows_of("u1") > 0

        assert await store.delete_user("u1") == 4
        assert await backend.raw_rows_of("u1") == 0
        assert await store.load_latest("u1", 10) == []
        assert await store.load_summary("u1") is None
        assert await store.load_facts("u1") == []
        assert "u1" not in await store.list_users()
        # neighbours whose ids share a prefix are untouched
        assert await store.count_turns("u1:x") == 1
        assert await store.count_turns("u") == 1
        assert [f.text for f in await store.load_facts("u1:x")] == ["Bo"]
        assert await store.delete_user("u1") == 0
        assert await store.delete_user("never-seen") == 0


async def test_purge_older_than(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny batches so the batching loop runs
    monkeypatch.setattr(BACKEND_MODULES[backend.kind], "_PURGE_BATCH", 2)
    async with backend.store() as store:
        await store.append([turn(user="old", seq=i, at=i) for i in range(5)])
        await store.append([turn(user="mixed", seq=i, at=i * 10) for i in range(5)])
        await store.save_summary(Summary(user_id="old", text="s", covers_until=T0, turn_count=5))
        await store.save_fact(Fact(user_id="old", key="k", text="kept"))
        seen: list[int] = []
        with pytest.raises(ValueError):
            await store.purge_older_than(timedelta(seconds=-1))
        # cutoff = T0 + 25s: everything strictly before it goes
        n = await store.purge_older_than(
            timedelta(hours=1), now=at(25) + timedelta(hours=1), progress=seen.append
        )
        assert n == 5 + 3
        assert seen and seen[-1] == 8 and seen == sorted(seen)
        assert await store.count_turns("old") == 0
        assert [t.seq for t in await store.load_latest("mixed", 10)] == [3, 4]
        # what remains of old history: its summary and facts
        assert await store.load_summary("old") is not None
        assert [f.text for f in await store.load_facts("old")] == ["kept"]
        assert (
            await store.purge_older_than(timedelta(hours=1), now=at(25) + timedelta(hours=1)) == 0
        )
        assert await store.purge_older_than(timedelta(0), now=at(-1)) == 0


# -- summaries and facts ----------------------------------------------------------------------


async def test_summary_save_replace_load(backend: Backend) -> None:
    async with backend.store() as store:
        assert await store.load_summary("u1") is None
        first = Summary(user_id="u1", text="one", covers_until=at(5), turn_count=3, method="llm")
        await store.save_summary(first)
        assert await store.load_summary("u1") == first
        second = Summary(user_id="u1", text="two", covers_until=at(9), turn_count=8)
        await store.save_summary(second)
        assert await store.load_summary("u1") == second
        assert await store.load_summary("u2") is None


async def test_facts_upsert_order_delete(backend: Backend) -> None:
    async with backend.store() as store:
        assert await store.load_facts("u1") == []
        await store.save_fact(Fact(user_id="u1", key="name", text="Ann", created_at=at(1)))
        await store.save_fact(Fact(user_id="u1", key="city", text="Oslo", created_at=at(2)))
        await store.save_fact(Fact(user_id="u1", key="b", text="tie b", created_at=at(3)))
        await store.save_fact(Fact(user_id="u1", key="a", text="tie a", created_at=at(3)))
        await store.save_fact(Fact(user_id="u2", key="name", text="Bob", created_at=at(1)))
        facts = await store.load_facts("u1")
        assert [(f.key, f.text) for f in facts] == [
            ("name", "Ann"),
            ("city", "Oslo"),
            ("a", "tie a"),
            ("b", "tie b"),
        ]
        # upsert replaces text and time of the same key
        await store.save_fact(Fact(user_id="u1", key="name", text="Anna", created_at=at(9)))
        facts = await store.load_facts("u1")
        assert [(f.key, f.text) for f in facts][-1] == ("name", "Anna")
        assert len(facts) == 4
        assert await store.delete_fact("u1", "city") is True
        assert await store.delete_fact("u1", "city") is False
        assert await store.delete_fact("u1", "missing") is False
        assert [f.key for f in await store.load_facts("u1")] == ["a", "b", "name"]
        assert [f.text for f in await store.load_facts("u2")] == ["Bob"]


# -- stats, users, lifecycle -----------------------------------------------------------------------


async def test_stats_and_list_users(backend: Backend) -> None:
    async with backend.store() as store:
        empty = await store.stats()
        assert (empty.users, empty.turns, empty.conversations) == (0, 0, 0)
        assert empty.schema_version == LATEST_VERSION[backend.kind]
        await store.append([turn(user="u1", conv=c, seq=i) for c in ("a", "b") for i in range(3)])
        await store.append([turn(user="u2", conv="a", seq=0)])
        await store.save_fact(Fact(user_id="only-fact", key="k", text="v"))
        await store.save_fact(Fact(user_id="u1", key="k", text="v"))
        await store.save_fact(Fact(user_id="u1", key="k2", text="v"))
        await store.save_summary(
            Summary(user_id="only-summary", text="s", covers_until=T0, turn_count=0)
        )
        stats = await store.stats()
        assert await store.list_users() == ["only-fact", "only-summary", "u1", "u2"]
    assert stats.users == 4
    assert stats.conversations == 3
    assert stats.turns == 7
    assert stats.summaries == 1
    assert stats.facts == 3
    assert stats.schema_version == LATEST_VERSION[backend.kind]


async def test_data_survives_reopen_and_open_is_idempotent(backend: Backend) -> None:
    store = backend.store()
    await store.open()
    await store.open()
    await store.append([turn(seq=i) for i in range(3)])
    await store.close()
    await store.close()
    async with backend.store() as again:
        assert [t.seq for t in await again.load_latest("u1", 10)] == [0, 1, 2]


async def test_closed_store_raises_store_error(backend: Backend) -> None:
    store = backend.store()
    with pytest.raises(StoreError, match="not open"):
        await store.append([turn()])
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.load_latest("u1", 1)


async def test_concurrent_appends_and_loads(backend: Backend) -> None:
    async with backend.store() as store:

        async def session(n: int) -> None:
            for i in range(5):
                await store.append([turn(user=f"s{n}", seq=i)])
                got = await store.load_latest(f"s{n}", 100)
                assert [t.seq for t in got] == list(range(i + 1))

        await asyncio.gather(*(session(n) for n in range(20)))
        assert (await store.stats()).turns == 100


# -- corrupt and hostile rows ------------------------------------------------------------------------


async def test_hostile_rows_are_skipped_or_cleaned(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with backend.store() as store:
        await store.append([turn(seq=0, at=0), turn(seq=5, at=5)])
        await backend.raw_turn("u1", seq=1, role="wizard", created_at=at(1))
        await backend.raw_turn("u1", seq=2, text="y" * 1_000_000, created_at=at(2))
        await backend.raw_turn("u1", seq=3, text="ok\x01\x02\x1b[31mred\x7f", created_at=at(3))
        await backend.raw_turn("u1", seq=4, role="", created_at=at(4))
        got = await store.load_latest("u1", 100)
    assert [t.seq for t in got] == [0, 2, 3, 5]
    assert got[1].text == "y" * MAX_TURN_CHARS
    assert got[2].text == "ok[31mred"
    assert "skipping corrupt history row" in caplog.text and "role" in caplog.text
    assert f"truncated 1000000 chars to {MAX_TURN_CHARS}" in caplog.text
    assert "removed 4 control characters" in caplog.text
    # the warning names where the row is, so an operator can find it
    assert backend.url.split("?")[0].split("@")[-1] in caplog.text or backend.kind in caplog.text


async def test_hostile_redis_entries(
    redis_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    b = redis_backend
    async with b.store() as store:
        await store.append([turn(seq=0, at=0), turn(seq=9, at=9)])
        score = at(1).timestamp() * 1e6

        def m(seq: int) -> bytes:
            return f"c1\x00{seq:019d}\x00c1:{seq}".encode()

        await b.raw_entry("u1", m(1), b"{not json", score)
        await b.raw_entry("u1", m(2), b"[" * 100_000, score + 1)
        await b.raw_entry("u1", m(3), b"\xff\xfe\x00", score + 2)
        await b.raw_entry("u1", m(4), b"[1, 2]", score + 3)
        await b.raw_entry("u1", m(5), None, score + 4)  # order entry without data
        await b.raw_entry("u1", b"no-separators", None, score + 5)
        await b.raw_turn("u1", seq=6, created_at=at(1.5), record_user="someone-else")
        await b.raw_entry("u1", m(7), b'{"user_id": "u1"}', score + 6)
        await b.run(lambda r: r.set(f"{b.prefix}:summary:u1", b"{broken"))
        await b.run(lambda r: r.hset(f"{b.prefix}:facts:u1", "bad", b"nope"))
        await store.save_fact(Fact(user_id="u1", key="good", text="kept"))
        got = await store.load_latest("u1", 100)
        assert [t.seq for t in got] == [0, 9]
        assert await store.load_summary("u1") is None
        assert [f.key for f in await store.load_facts("u1")] == ["good"]
        assert await store.count_turns("u1") == 10  # rows stored, corrupt ones included
        convs = await store.list_conversations("u1")
        assert sum(c.turn_count for c in convs) == 10
    text = caplog.text
    assert "bad JSON" in text
    assert "not an object" in text
    assert "no turn data" in text
    assert "belongs to another user" in text
    assert "missing" in text.lower() or "Field required" in text


async def test_hostile_sqlite_rows(
    sqlite_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    b = sqlite_backend
    async with b.store() as store:
        await store.append([turn(seq=0, at=0)])
        await b.raw_turn("u1", seq=1, created_at=2**62)  # type: ignore[arg-type]
        await b.raw_turn("u1", seq=-3, created_at=at(2))
        db = b.connect()  # type: ignore[attr-defined]
        db.execute("INSERT INTO facts (user_id, key, text, created_at) VALUES ('u1', 'empty', '', 0)")
        db.execute("INSERT INTO summaries VALUES ('u1', 's', 0, -5, 0, 'x')")
        db.close()
        assert [t.seq for t in await store.load_latest("u1", 10)] == [0]
        assert await store.load_facts("u1") == []
        assert await store.load_summary("u1") is None
    assert "created_at" in caplog.text and "seq" in caplog.text
    assert "text" in caplog.text and "turn_count" in caplog.text


async def test_hostile_postgres_rows(pg_backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    b = pg_backend
    async with b.store() as store:
        await store.append([turn(seq=0, at=0)])
        await b.raw_turn("u1", seq=-3, created_at=at(2))
        await b.raw_turn("u1", seq=4, role="assistant", text="fine", created_at=at(3))
        s = b.schema  # type: ignore[attr-defined]
        await b.run(
            lambda c: c.execute(
                f"INSERT INTO \"{s}\".facts (user_id, key, text, created_at) "
                "VALUES ('u1', 'empty', '', now());"
                f"INSERT INTO \"{s}\".summaries VALUES ('u1', 's', now(), -5, now(), 'x')"
            )
        )
        assert [t.seq for t in await store.load_latest("u1", 10)] == [0, 4]
        assert await store.load_facts("u1") == []
        assert await store.load_summary("u1") is None
    assert "seq" in caplog.text and "turn_count" in caplog.text
