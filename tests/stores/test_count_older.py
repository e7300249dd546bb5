"""`count_turns_older_than`: exactly what `purge_older_than` then deletes, on every backend
(the CLI's `purge --dry-run` and its "this deletes everything" question rest on it)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from livekit_history_plugin.history.stores.base import HistoryStore

from .helpers import T0, Backend, turn


@pytest.mark.parametrize("age_s", [0, 5, 10, 30, 10_000])
async def test_count_equals_what_purge_deletes(backend: Backend, age_s: float) -> None:
    now = T0 + timedelta(seconds=20)
    turns = [turn("u1", "c1", i, at=float(i)) for i in range(20)]
    turns += [turn("u2", "c9", i, at=float(i) + 0.5) for i in range(6)]
    turns.append(turn("u3", "c3", 0, at=10.0))  # exactly at a cutoff: not older, kept
    async with backend.store() as store:
        await store.append(turns)
        age = timedelta(seconds=age_s)
        counted = await store.count_turns_older_than(age, now=now)
        assert counted == sum(1 for t in turns if t.created_at < now - age)
        assert await store.purge_older_than(age, now=now) == counted
        assert await store.count_turns_older_than(age, now=now) == 0


async def test_the_default_counts_through_the_public_reads(sqlite_backend: Backend) -> None:
    """A third-party store gets a correct count without overriding it."""
    now = T0 + timedelta(seconds=20)
    async with sqlite_backend.store() as store:
        await store.append([turn("a", "c", i, at=float(i)) for i in range(12)])
        generic = await HistoryStore.count_turns_older_than(store, timedelta(seconds=15), now=now)
        assert generic == await store.count_turns_older_than(timedelta(seconds=15), now=now) == 5
