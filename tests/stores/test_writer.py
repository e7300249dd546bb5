"""HistoryWriter semantics on a real SQLite store wrapped to inject failures.
(Real server outages are in test_faults.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from livekit_history_plugin.history import writer as writer_mod
from livekit_history_plugin.history.calls import CallRecord
from livekit_history_plugin.history.models import (
    ConversationInfo,
    Fact,
    StoreStats,
    Summary,
    Turn,
)
from livekit_history_plugin.history.stores import StoreError, StoreUnavailableError, open_store
from livekit_history_plugin.history.stores.base import HistoryStore, PurgeProgress
from livekit_history_plugin.history.writer import HistoryWriter

from .helpers import turn

LOGGER = "livekit.plugins.history"


class FlakyStore(HistoryStore):
    """Delegates to a real store; `fail_next` appends raise `error`, `poison`
    turns raise ValueError, `gate` (when set) holds appends until opened."""

    def __init__(self, inner: HistoryStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_next = 0
        self.fail_forever = False
        self.error: StoreError = StoreUnavailableError("flaky: connection refused")
        self.poison: set[int] = set()
        self.batches: list[int] = []
        self.gate: asyncio.Event | None = None

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def append(self, turns: Sequence[Turn]) -> int:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_forever or self.fail_next > 0:
            self.fail_next -= 1
            raise self.error
        if any(t.seq in self.poison for t in turns):
            raise ValueError("backend cannot store this turn")
        self.batches.append(len(turns))
        return await self.inner.append(turns)

    async def load_latest(
        self, user_id: str, limit: int, *, before: datetime | None = None
    ) -> list[Turn]:
        return await self.inner.load_latest(user_id, limit, before=before)

    async def count_turns(self, user_id: str) -> int:
        return await self.inner.count_turns(user_id)

    async def list_conversations(self, user_id: str) -> list[ConversationInfo]:
        return await self.inner.list_conversations(user_id)

    async def list_users(self) -> list[str]:
        return await self.inner.list_users()

    async def delete_user(self, user_id: str) -> int:
        return await self.inner.delete_user(user_id)

    async def purge_older_than(
        self, age: timedelta, *, now: datetime | None = None, progress: PurgeProgress | None = None
    ) -> int:
        return await self.inner.purge_older_than(age, now=now, progress=progress)

    async def save_summary(self, summary: Summary) -> None:
        await self.inner.save_summary(summary)

    async def load_summary(self, user_id: str) -> Summary | None:
        return await self.inner.load_summary(user_id)

    async def save_fact(self, fact: Fact) -> None:
        await self.inner.save_fact(fact)

    async def load_facts(self, user_id: str) -> list[Fact]:
        return await self.inner.load_facts(user_id)

    async def delete_fact(self, user_id: str, key: str) -> bool:
        return await self.inner.delete_fact(user_id, key)

    async def stats(self) -> StoreStats:
        return await self.inner.stats()

    async def record_call(self, record: CallRecord) -> None:
        await self.inner.record_call(record)

    async def load_calls(self, user_id: str, limit: int) -> list[CallRecord]:
        return await self.inner.load_calls(user_id, limit)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FlakyStore]:
    s = FlakyStore(open_store(f"sqlite:///{tmp_path}/h.db"))
    async with s:
        yield s


def seqs(turns: Sequence[Turn]) -> list[int]:
    return [t.seq for t in turns]


async def test_batches_in_order_and_reports_written(store: FlakyStore) -> None:
    reported: list[int] = []
    writer = HistoryWriter(store, batch_size=50, on_written=lambda b: reported.extend(seqs(b)))
    for i in range(500):
        writer.submit(turn(seq=i))
    assert writer.pending == 500  # submit only queues
    assert await writer.flush(10)
    assert (writer.written, writer.pending, writer.dropped) == (500, 0, 0)
    assert reported == list(range(500))
    assert max(store.batches) <= 50 and len(store.batches) < 500  # batched
    assert seqs(await store.load_latest("u1", 1000)) == list(range(500))
    await writer.aclose()


async def test_retries_with_backoff_then_recovers(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    store.fail_next = 4
    writer = HistoryWriter(store, retry_base=0.001, retry_max=0.01)
    for i in range(5):
        writer.submit(turn(seq=i))
    assert await writer.flush(10)
    assert writer.written == 5 and writer.last_error is None
    assert seqs(await store.load_latest("u1", 10)) == list(range(5))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("history store failing" in m for m in messages) == 1  # once per episode
    assert any("flaky: connection refused" in m for m in messages)  # with the cause
    assert sum("recovered after 4 failed attempts" in m for m in messages) == 1
    # a second episode is logged again
    store.fail_next = 1
    writer.submit(turn(seq=5))
    assert await writer.flush(10)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("history store failing" in m for m in messages) == 2
    await writer.aclose()


async def test_backoff_is_exponential_capped_and_jittered(
    store: FlakyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float, *args: Any) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(writer_mod.asyncio, "sleep", record)
    monkeypatch.setattr(writer_mod.random, "uniform", lambda a, b: b)
    store.fail_next = 8
    writer = HistoryWriter(store, retry_base=0.05, retry_max=1.0)
    writer.submit(turn())
    assert await writer.flush(10)
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    monkeypatch.setattr(writer_mod.random, "uniform", lambda a, b: a)
    delays.clear()
    store.fail_next = 2
    writer.submit(turn(seq=1))
    assert await writer.flush(10)
    assert delays == [0.025, 0.05]  # jitter draws from [delay/2, delay]
    await writer.aclose()


async def test_any_store_error_is_retried(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store.error = StoreError("sqlite:///h.db: append failed: database or disk is full")
    store.fail_next = 2
    writer = HistoryWriter(store, retry_base=0.001, retry_max=0.002)
    writer.submit(turn())
    assert await writer.flush(10)
    assert writer.written == 1
    failing = [r for r in caplog.records if "history store failing" in r.getMessage()]
    assert failing[0].levelno == logging.ERROR and "disk is full" in failing[0].getMessage()
    await writer.aclose()


async def test_overflow_keeps_accepted_turns_and_logs_once(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store.gate = asyncio.Event()
    writer = HistoryWriter(store, max_buffer=10, batch_size=4)
    for i in range(25):
        writer.submit(turn(seq=i))
    assert (writer.pending, writer.dropped) == (10, 15)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "buffer full" in errors[0].getMessage()
    store.gate.set()
    assert await writer.flush(10)
    assert seqs(await store.load_latest("u1", 100)) == list(range(10))
    assert "15 turns were dropped during the overflow" in caplog.text
    # room again: accepted again, and a new episode would log again
    writer.submit(turn(seq=100))
    assert await writer.flush(10)
    assert writer.written == 11 and writer.dropped == 15
    await writer.aclose()


async def test_a_poison_turn_is_dropped_alone(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store.poison = {3}
    writer = HistoryWriter(store, batch_size=10)
    for i in range(8):
        writer.submit(turn(seq=i))
    assert await writer.flush(10)
    assert (writer.written, writer.dropped, writer.pending) == (7, 1, 0)
    assert seqs(await store.load_latest("u1", 100)) == [0, 1, 2, 4, 5, 6, 7]
    assert "refused turn c1:3" in caplog.text
    await writer.aclose()


async def test_callback_errors_do_not_stop_writing(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(batch: Sequence[Turn]) -> None:
        raise RuntimeError("callback bug")

    writer = HistoryWriter(store, on_written=boom, batch_size=1)
    for i in range(3):
        writer.submit(turn(seq=i))
    assert await writer.flush(10)
    assert writer.written == 3
    assert "on_written callback failed" in caplog.text
    await writer.aclose()


async def test_flush_timeout_and_close_give_up_loudly(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store.fail_forever = True
    writer = HistoryWriter(store, retry_base=0.005, retry_max=0.01)
    writer.submit(turn(seq=0))
    writer.submit(turn(seq=1))
    assert await writer.flush(0.1) is False
    assert "flush timed out" in caplog.text and "2 turns pending" in caplog.text
    await writer.aclose(timeout=0.1)
    assert (writer.written, writer.pending, writer.dropped) == (0, 0, 2)
    assert "closed with 2 turns unwritten" in caplog.text
    writer.submit(turn(seq=2))  # after close: dropped, logged, no exception
    assert writer.dropped == 3
    assert "is closed" in caplog.text
    await writer.aclose()  # idempotent


async def test_submit_never_raises(store: FlakyStore, caplog: pytest.LogCaptureFixture) -> None:
    writer = HistoryWriter(store)
    writer.submit(None)  # type: ignore[arg-type]
    assert writer.dropped == 1
    assert "could not queue turn" in caplog.text
    await writer.aclose()


def test_submit_outside_a_loop_is_queued(tmp_path: Path) -> None:
    store = FlakyStore(open_store(f"sqlite:///{tmp_path}/h.db"))
    writer = HistoryWriter(store)
    writer.submit(turn(seq=0))  # no running loop: just queued
    assert writer.pending == 1

    async def later() -> list[Turn]:
        async with store:
            async with writer:
                assert await writer.flush(10)
            return await store.load_latest("u1", 10)

    assert seqs(asyncio.run(later())) == [0]


async def test_flush_waits_only_for_turns_before_it(store: FlakyStore) -> None:
    store.gate = asyncio.Event()
    writer = HistoryWriter(store, batch_size=1)
    writer.submit(turn(seq=0))
    flushing = asyncio.create_task(writer.flush(10))
    writer.submit(turn(seq=1))
    await asyncio.sleep(0)
    assert not flushing.done()
    store.gate.set()
    assert await flushing
    assert writer.written >= 1
    assert await writer.flush(10)
    assert writer.written == 2
    await writer.aclose()


def test_invalid_settings() -> None:
    store = FlakyStore(open_store("sqlite://:memory:"))
    with pytest.raises(ValueError):
        HistoryWriter(store, max_buffer=0)
    with pytest.raises(ValueError):
        HistoryWriter(store, retry_base=2, retry_max=1)
