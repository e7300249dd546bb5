"""Full-text recall on every backend (`HistoryStore.search_turns`): scoped to one
user whatever the query holds, ranked, kept in step with deletes, and the
captured-fact fields stored."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_history_plugin.history.models import Fact, Role
from livekit_history_plugin.history.search import owner_token
from livekit_history_plugin.history.stores import base as store_base

from .conftest import make_backend
from .helpers import T0, Backend, turn

# FTS5 / tsquery / SQL syntax a caller (or a model) might put in a query
HOSTILE_QUERIES = [
    '"',
    '"""',
    "*",
    "order*",
    "NEAR(order number)",
    "NEAR",
    "order OR number",
    "OR",
    "AND NOT",
    "text: order",
    "fts_owner: x",
    ":",
    "^order",
    "-order",
    "((((",
    "'; DROP TABLE turns; --",
    "order' | 'number",
    "order & !number",
    "order <-> number",
    "\\",
    "\x00order",
    "{text fts_owner}: order",
    "%_%",
    "",
    "   ",
]

ALICE = [
    "My order number is 4417 and my secret word is pineapple.",
    "I live at 12 Rue de la Paix, Paris.",
    "Please deliver the order number 4417 to the café.",
]
BOB = ["Hello, my order is late.", "Is there any news?"]


async def _seed(store: store_base.HistoryStore) -> None:
    turns = [
        turn("alice", "a1", i * 2, at=i * 10.0, text=t, role=Role.USER) for i, t in enumerate(ALICE)
    ]
    turns += [
        turn("bob", "b1", i * 2, at=i * 10.0, text=t, role=Role.USER) for i, t in enumerate(BOB)
    ]
    assert await store.append(turns) == len(turns)


async def test_recall_finds_the_users_turn_best_first(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)
        hits = await store.search_turns("alice", "what was my order number?", 5)
        texts = [h.turn.text for h in hits]
        assert set(texts) == {ALICE[0], ALICE[2]}
        assert all(h.turn.user_id == "alice" for h in hits)
        assert hits[0].score >= hits[-1].score
        # a rare word outranks common ones; case does not matter
        hits = await store.search_turns("alice", "PINEAPPLE order", 5)
        assert hits[0].turn.text == ALICE[0]
        assert [h.turn.text for h in await store.search_turns("alice", "paris", 1)] == [ALICE[1]]


async def test_bobs_recall_never_returns_alices_words(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)
        for q in ["pineapple", "4417", "Rue de la Paix", "café", "cafe", *HOSTILE_QUERIES]:
            hits = await store.search_turns("bob", q, 10)
            assert all(h.turn.user_id == "bob" for h in hits), (q, hits)
            assert not any("pineapple" in h.turn.text or "4417" in h.turn.text for h in hits)
        # bob's query naming alice's scope tokens (SQLite's owner token, PostgreSQL's
        # owner lexeme) is only words in bob's own turns
        alice_lexeme = "u" + hashlib.md5(b"alice").hexdigest()
        for q in [owner_token("alice"), f'fts_owner : "{owner_token("alice")}"', alice_lexeme]:
            assert await store.search_turns("bob", q, 10) == []
        assert [h.turn.text for h in await store.search_turns("bob", "order", 10)] == [BOB[0]]


async def test_hostile_queries_are_words_not_syntax(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)
        for q in HOSTILE_QUERIES:
            hits = await store.search_turns("alice", q, 10)  # never raises
            assert all(h.turn.user_id == "alice" for h in hits)
        # the words in them still match, the operators do not
        near = await store.search_turns("alice", "NEAR(order number)", 10)
        assert {h.turn.text for h in near} == {ALICE[0], ALICE[2]}
        assert await store.search_turns("alice", "'; DROP TABLE turns; --", 10) == []
        assert await store.count_turns("alice") == len(ALICE)
        # a query of nothing but stop words still searches for them
        only_stop_words = await store.search_turns("alice", "the of and", 10)
        assert {h.turn.text for h in only_stop_words} == {ALICE[0], ALICE[2]}


async def test_recall_limit_exclusion_and_bad_arguments(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)
        await store.append([turn("alice", "a2", 0, at=100.0, text="order 4417 again")])
        assert len(await store.search_turns("alice", "4417", 1)) == 1
        assert await store.search_turns("alice", "4417", 0) == []
        hits = await store.search_turns("alice", "4417", 10, exclude_conversation_id="a2")
        assert {h.turn.conversation_id for h in hits} == {"a1"}
        with pytest.raises(ValueError, match="limit"):
            await store.search_turns("alice", "4417", -1)
        with pytest.raises(TypeError):
            await store.search_turns("alice", None, 3)  # type: ignore[arg-type]


async def test_deleted_and_purged_turns_are_not_recalled(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)
        await store.append([turn("carol", "c9", 0, at=T0 - timedelta(days=90), text="old 4417")])
        await store.append([turn("carol", "c9", 1, at=T0, text="new 4417")])
        await store.purge_older_than(timedelta(days=30), now=T0)
        assert [h.turn.text for h in await store.search_turns("carol", "4417", 10)] == ["new 4417"]
        await store.delete_user("alice")
        assert await store.search_turns("alice", "4417", 10) == []
        assert len(await store.search_turns("bob", "order", 10)) == 1


async def test_redis_fallback_scans_only_the_latest_turns(
    redis_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented bound: without a text index, the latest SCAN_FALLBACK_TURNS
    turns of the user are searched."""
    monkeypatch.setattr(store_base, "SCAN_FALLBACK_TURNS", 3)
    async with redis_backend.store() as store:
        turns = [turn("dana", "d1", i, text=f"filler {i}") for i in range(6)]
        turns[0] = turn("dana", "d1", 0, text="the code is 9931")
        await store.append(turns)
        assert await store.search_turns("dana", "9931", 5) == []
        assert [h.turn.seq for h in await store.search_turns("dana", "filler", 5)] == [5, 4, 3]


async def test_fact_origin_and_source_turns_round_trip(backend: Backend) -> None:
    fact = Fact(
        user_id="u1",
        key="allergy:peanuts",
        text="Allergic to peanuts.",
        origin="rules",
        source_turn_ids=["c1:0", "item_9"],
    )
    async with backend.store() as store:
        await store.save_fact(fact)
        await store.save_fact(Fact(user_id="u1", key="diet", text="Is vegan."))
        facts = {f.key: f for f in await store.load_facts("u1")}
    assert facts["allergy:peanuts"] == fact
    assert facts["diet"].origin == "author" and facts["diet"].source_turn_ids == []


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_any_query_text_is_safe(kind: str, tmp_path: Path) -> None:
    """Generated queries (any characters, FTS5 and tsquery operators mixed in)
    never raise and never return another user's turn."""
    loop = asyncio.new_event_loop()
    backend = loop.run_until_complete(make_backend(kind, tmp_path))
    store = backend.store()
    try:
        loop.run_until_complete(store.open())
        loop.run_until_complete(_seed(store))
        pieces = st.sampled_from(
            [
                '"',
                "'",
                "*",
                ":",
                "^",
                "-",
                "(",
                ")",
                "{",
                "}",
                "NEAR",
                "OR",
                "AND",
                "NOT",
                "&",
                "|",
                "!",
                "<->",
                "\\",
                ";",
                "--",
                "order",
                "pineapple",
                "4417",
                "café",
                " ",
            ]
        )
        queries = st.one_of(st.text(max_size=60), st.lists(pieces, max_size=12).map("".join))

        @settings(max_examples=150, deadline=None)
        @given(queries)
        def check(q: str) -> None:
            hits = loop.run_until_complete(store.search_turns("bob", q, 10))
            assert all(h.turn.user_id == "bob" for h in hits)
            assert not any("pineapple" in h.turn.text for h in hits)

        check()
    finally:
        loop.run_until_complete(store.close())
        loop.run_until_complete(backend.cleanup())
        loop.close()
