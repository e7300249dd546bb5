"""A call never waits for memory: summaries after the call, the tokenizer in a thread.

Real livekit AgentSessions on the strict emulator; real SQLite files, and the
local PostgreSQL / Redis servers where a test runs on every backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from history_helpers import assert_clean, message_text, run_call, start_call, text_of
from llm_helpers import ScriptedLLM

from livekit_history_plugin.history.budget import BudgetConfig
from livekit_history_plugin.history.jobs import PostCallContext, PostCallJobs
from livekit_history_plugin.history.models import Role, Summary, Turn
from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.history.render import SUMMARY_TAG
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.summarize import ExtractiveSummarizer, LLMSummarizer
from livekit_history_plugin.history.tokens import message_tokens
from livekit_history_plugin.testing import RealtimeEmulator

LOGGER = "livekit.plugins.history"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
SMALL = BudgetConfig(max_recent_turns=10, min_recent_turns=2)
CHILD = Path(__file__).with_name("summary_job_child.py")
# a fresh interpreter imports livekit: seconds on a loaded 2-core machine
CHILD_TIMEOUT = 120.0
# safety nets only: every wait below ends on an event long before
SAFETY = 60.0


def seeded(user: str, n: int, *, conv: str = "old-call") -> list[Turn]:
    return [
        Turn(
            user_id=user,
            conversation_id=conv,
            seq=i,
            role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
            text=f"{conv} turn {i}: " + ("I'd like to book a cleaning." if i % 2 == 0 else "Sure."),
            created_at=T0 + timedelta(seconds=10 * i),
            item_id=f"{conv}-{i}",
        )
        for i in range(n)
    ]


@dataclass
class Where:
    """A store URL for one test, and the users it created (deleted afterwards)."""

    url: str
    users: list[str] = field(default_factory=list)

    def user(self, name: str) -> str:
        user = f"{name}-{uuid.uuid4().hex[:8]}"
        self.users.append(user)
        return user


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def where(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Where]:
    from stores.helpers import PG_URL, REDIS_URL, require_server  # tests/ is on sys.path

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.db'}"
    elif request.param == "postgresql":
        require_server("postgresql", PG_URL)
        url = PG_URL
    else:
        require_server("redis", REDIS_URL)
        sep = "&" if "?" in REDIS_URL else "?"
        url = f"{REDIS_URL}{sep}prefix=lhp_test_{uuid.uuid4().hex[:8]}"
    w = Where(url)
    yield w
    async with open_store(url) as store:
        for user in w.users:
            await store.delete_user(user)


@pytest.fixture
def sqlite_where(tmp_path: Path) -> Where:
    return Where(f"sqlite:///{tmp_path / 'history.db'}")


async def seed(url: str, turns: Sequence[Turn], summary: Summary | None = None) -> None:
    async with open_store(url) as store:
        await store.append(turns)
        if summary is not None:
            await store.save_summary(summary)


async def stored(url: str, user: str) -> tuple[int, Summary | None]:
    async with open_store(url) as store:
        return await store.count_turns(user), await store.load_summary(user)


class GatedSummarizer(ExtractiveSummarizer):
    """Extractive, but each summary waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.calls: list[int] = []

    async def summarize(self, turns: Sequence[Turn], previous: Summary | None) -> Summary:
        self.calls.append(len(turns))
        self.started.set()
        await self.gate.wait()
        return await super().summarize(turns, previous)


# -- load never waits for a summarizer -------------------------------------------------------
async def test_load_with_a_summarizer_that_never_answers_returns_the_stored_summary(
    where: Where,
) -> None:
    user = where.user("nora")
    turns = seeded(user, 40)
    old = await ExtractiveSummarizer().summarize(turns[:20], None)
    await seed(where.url, turns, old)
    provider = ScriptedLLM([None])  # never answers
    cfg = HistoryConfig(
        summarizer=provider, summary_timeout=3600, post_call_timeout=3600, budget=SMALL
    )
    plugin = HistoryPlugin(where.url, cfg)

    # the safety net is all that could end a load waiting on this summarizer
    loaded = await asyncio.wait_for(plugin.load(user), SAFETY)
    assert loaded.summary == old
    assert loaded.summary_stale and loaded.summary_pending
    assert [t.seq for t in loaded.turns] == list(range(30, 40))
    packed = message_text(loaded.chat_ctx)
    assert f"<{SUMMARY_TAG} " in packed and old.text.splitlines()[0] in packed

    # the catch-up job asks the LLM after load returned; cut it mid-way
    await asyncio.wait_for(provider.wait_for_streams(1), SAFETY)
    assert plugin.jobs.pending(user)
    await plugin.jobs.aclose(timeout=0)
    await plugin.aclose()
    assert await stored(where.url, user) == (40, old)


async def test_a_cancelled_summary_job_loses_nothing_and_the_next_call_sees_the_redone_one(
    where: Where,
) -> None:
    user = where.user("omar")
    await seed(where.url, seeded(user, 30))
    # the first chunk of the backlog is answered, the second never
    provider = ScriptedLLM(["The caller books cleanings.", None])
    summarizer = LLMSummarizer(provider, max_input_tokens=60, timeout=3600)
    plugin = HistoryPlugin(
        where.url, HistoryConfig(summarizer=summarizer, budget=SMALL, post_call_timeout=3600)
    )
    async with RealtimeEmulator() as emu:
        first = await run_call(emu, plugin, user, ["Please book me a cleaning on Friday."])
        assert first.loaded.summary is None and first.loaded.summary_stale
        assert first.recorder.written == 2
        await asyncio.wait_for(provider.wait_for_streams(2), SAFETY)
        await plugin.jobs.aclose(timeout=0)  # killed with one chunk folded in memory
        await plugin.aclose()
        assert await stored(where.url, user) == (32, None)

        redo = HistoryPlugin(where.url, HistoryConfig(budget=SMALL))
        loaded = await redo.load(user)
        assert loaded.summary is None and loaded.summary_stale and loaded.summary_pending
        assert await redo.wait_post_call(user, SAFETY)
        count, summary = await stored(where.url, user)
        assert count == 32 and summary is not None
        assert summary.turn_count == 22 and summary.method == "extractive"

        second = await start_call(emu, redo, user)
        assert second.loaded.summary == summary
        assert not second.loaded.summary_stale and not second.loaded.summary_pending
        await second.say("Is my Friday booking still on?")
        await second.end()
        assert_clean(emu.sessions[-1])
        packed = text_of(emu.responses[-1].conversation[0])
        assert f'<{SUMMARY_TAG} turns="22"' in packed
    await redo.aclose()


async def test_a_summary_job_killed_with_its_process_loses_nothing_and_is_redone(
    sqlite_where: Where,
) -> None:
    url = sqlite_where.url
    user = sqlite_where.user("pia")
    await seed(url, seeded(user, 30))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        url,
        user,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(CHILD.parent),
    )
    try:
        lines = await asyncio.wait_for(_read_until(proc, "mid-way"), CHILD_TIMEOUT)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    assert lines[-2:] == ["call ended", "mid-way"], err.decode()[-3000:]
    assert proc.returncode == -signal.SIGKILL
    assert await stored(url, user) == (32, None)

    plugin = HistoryPlugin(url, HistoryConfig(budget=SMALL))
    loaded = await plugin.load(user)
    assert loaded.summary_stale and loaded.summary_pending
    assert await plugin.wait_post_call(user, SAFETY)
    again = await plugin.load(user)
    await plugin.aclose()
    assert again.summary is not None and again.summary.turn_count == 22
    assert not again.summary_stale and not again.summary_pending
    # the killed process's call is all there: its caller turn and the reply
    assert again.turns[-2].text == "Please book me a cleaning on Friday."
    assert again.turns[-1].role is Role.ASSISTANT and again.turns[-1].text
    assert await stored(url, user) == (32, again.summary)


async def _read_until(proc: asyncio.subprocess.Process, wanted: str) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            return lines
        lines.append(raw.decode().strip())
        if lines[-1] == wanted:
            return lines


# -- the summary after a call ----------------------------------------------------------------
async def test_a_call_closing_brings_the_summary_up_to_date_for_the_next_call(
    sqlite_where: Where,
) -> None:
    url = sqlite_where.url
    user = sqlite_where.user("rui")
    plugin = HistoryPlugin(url, HistoryConfig(budget=BudgetConfig(max_recent_turns=4)))
    async with RealtimeEmulator() as emu:
        first = await run_call(
            emu,
            plugin,
            user,
            ["My name is Rui.", "I need a cleaning.", "Friday at 9:30 works.", "Thanks."],
        )
        assert first.recorder.written == 8
        assert await plugin.wait_post_call(user, SAFETY)
        [job] = plugin.jobs.history
        assert job.reason == "call_closed"
        # the summary is the first post-call step (others may follow it)
        assert (job.steps[0].name, job.steps[0].ok) == ("summary", True)
        count, summary = await stored(url, user)
        assert count == 8 and summary is not None
        assert summary.turn_count == 4
        assert summary.covers_until == first.recorder.turns[3].created_at
        assert "My name is Rui." in summary.text

        second = await start_call(emu, plugin, user)
        assert second.loaded.summary == summary
        assert not second.loaded.summary_stale and not second.loaded.summary_pending
        assert [t.text for t in second.loaded.turns] == [t.text for t in first.recorder.turns[4:]]
        # load takes the selection's count; it is the exact count of what is sent
        assert second.loaded.tokens == message_tokens("user", message_text(second.loaded.chat_ctx))
        await second.say("Hello again")
        await second.end()
    await plugin.aclose()


async def test_a_call_starting_while_the_summary_is_computed_replays_the_last_stored_one(
    sqlite_where: Where,
) -> None:
    url = sqlite_where.url
    user = sqlite_where.user("sana")
    summarizer = GatedSummarizer()
    plugin = HistoryPlugin(
        url, HistoryConfig(summarizer=summarizer, budget=BudgetConfig(max_recent_turns=4))
    )
    async with RealtimeEmulator() as emu:
        first = await run_call(emu, plugin, user, ["One.", "Two.", "Three."])
        await asyncio.wait_for(summarizer.started.wait(), SAFETY)  # the job waits on the gate

        second = await start_call(emu, plugin, user)
        assert second.loaded.summary is None  # nothing stored yet
        assert second.loaded.summary_stale and second.loaded.summary_pending
        assert [t.text for t in second.loaded.turns] == [t.text for t in first.recorder.turns[2:]]
        assert await second.say("Still there?")
        await second.end()

        summarizer.gate.set()
        assert await plugin.wait_post_call(user, SAFETY)
        _, summary = await stored(url, user)
        assert summary is not None and summary.turn_count == 4  # 8 turns, 4 verbatim
        third = await start_call(emu, plugin, user)
        assert third.loaded.summary == summary and not third.loaded.summary_stale
        await third.end()
    # one job per user at a time: the second call's job ran after the first's
    assert summarizer.calls == [2, 2]
    await plugin.aclose()


# -- the post-call job runner ------------------------------------------------------------------
async def test_post_call_steps_are_isolated_bounded_and_run_in_order(
    sqlite_where: Where, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ran: list[str] = []

    async def boom(ctx: PostCallContext) -> None:
        ran.append("boom")
        raise RuntimeError("no luck")

    async def hang(ctx: PostCallContext) -> None:
        ran.append("hang")
        await asyncio.Event().wait()

    async def ok(ctx: PostCallContext) -> None:
        ran.append(f"ok {ctx.user_id} {len(ctx.turns)}")

    jobs = PostCallJobs()
    jobs.add_step("boom", boom)
    jobs.add_step("hang", hang, timeout=0.2)
    jobs.add_step("ok", ok)
    assert jobs.steps == ["boom", "hang", "ok"]
    with pytest.raises(ValueError, match="exists already"):
        jobs.add_step("ok", ok)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        jobs.add_step("never", ok, timeout=0)
    async with open_store(sqlite_where.url) as store:
        turns = seeded("tess", 2)
        await jobs.schedule(PostCallContext("tess", store, "call_closed", "c1", turns))
    assert ran == ["boom", "hang", "ok tess 2"]
    [record] = jobs.history
    assert [(s.name, s.ok, s.error) for s in record.steps] == [
        ("boom", False, "RuntimeError('no luck')"),
        ("hang", False, "timeout"),
        ("ok", True, None),
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any("'boom'" in m and "no luck" in m for m in messages), messages
    assert any("'hang'" in m and "timed out" in m for m in messages), messages


async def test_jobs_of_one_user_run_one_at_a_time_and_load_jobs_skip_call_only_steps(
    sqlite_where: Where,
) -> None:
    gate = asyncio.Event()
    entered: list[str] = []

    async def slow(ctx: PostCallContext) -> None:
        entered.append(f"{ctx.user_id} {ctx.conversation_id}")
        if ctx.conversation_id == "c1":
            await gate.wait()

    async def call_only(ctx: PostCallContext) -> None:
        entered.append(f"call-only {ctx.conversation_id}")

    jobs = PostCallJobs()
    jobs.add_step("slow", slow)
    jobs.add_step("facts", call_only, on_load=False)
    async with open_store(sqlite_where.url) as store:
        a1 = jobs.schedule(PostCallContext("ann", store, "call_closed", "c1"))
        a2 = jobs.schedule(PostCallContext("ann", store, "load", "c2"))
        b1 = jobs.schedule(PostCallContext("ben", store, "call_closed", "c3"))
        await b1  # another user's job does not wait for ann's
        assert entered == ["ann c1", "ben c3", "call-only c3"]
        assert jobs.pending("ann") and not jobs.pending("ben")
        assert not await jobs.wait_idle("ann", timeout=0)
        a3 = jobs.schedule(PostCallContext("ann", store, "call_closed", "c4"))
        a3.cancel()  # a queued job cancelled does not cancel the one it waits for
        await asyncio.gather(a3, return_exceptions=True)
        assert a3.cancelled() and not a1.done() and jobs.pending("ann")
        a5 = jobs.schedule(PostCallContext("ann", store, "load", "c5"))
        gate.set()
        await asyncio.gather(a1, a2, a5)
    # c5 waited for c1 and c2 although the job queued between them was cancelled
    assert entered == ["ann c1", "ben c3", "call-only c3", "call-only c1", "ann c2", "ann c5"]
    assert await jobs.wait_idle(timeout=0) and jobs.running == 0


# -- the tokenizer ---------------------------------------------------------------------------------
_TOKENIZER_CHILD = """
import asyncio, json, threading, time
from livekit_history_plugin.history import tokens

seen = {}
original = tokens._load_ranks

def traced():
    seen["thread"] = threading.current_thread().name
    seen["start"] = time.monotonic()
    try:
        return original()
    finally:
        seen["end"] = time.monotonic()

tokens._load_ranks = traced

async def main():
    from livekit_history_plugin.history.plugin import HistoryPlugin

    ticks = []

    async def heartbeat():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.002)

    beat = asyncio.ensure_future(heartbeat())
    await asyncio.sleep(0)
    imported_ready = tokens.encoding_ready()
    plugin = HistoryPlugin("sqlite://:memory:")
    loaded = await plugin.load("u1", instructions="You are Maya.")
    beat.cancel()
    await plugin.aclose()
    during = [t for t in ticks if seen["start"] <= t <= seen["end"]]
    print(json.dumps({
        "thread": seen.get("thread"),
        "imported_ready": imported_ready,
        "ready": tokens.encoding_ready(),
        "ticks_during_build": len(during),
        "budget": loaded.budget,
    }))

asyncio.run(main())
"""


def test_the_tokenizer_is_built_in_a_thread_while_the_event_loop_runs() -> None:
    """A fresh process: nothing warms the tokenizer up by hand; the plugin builds
    it in a worker thread and the event loop keeps ticking meanwhile."""
    done = subprocess.run(
        [sys.executable, "-c", _TOKENIZER_CHILD],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["imported_ready"] is False  # importing the plugin builds nothing
    assert seen["thread"] == "lhp-tokenizer-warm-up"
    assert seen["ready"] is True and seen["budget"] > 0
    # a build on the loop would leave no tick inside its own duration
    assert seen["ticks_during_build"] >= 1
