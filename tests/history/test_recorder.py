"""Recorder: committed turns in spoken order, once each, never blocking the call.

Real livekit AgentSessions on the strict emulator. Where livekit needs a
server event the emulator does not generate on its own (the caller's input
audio transcript), the test queues that event on the emulator connection,
validated against the openai SDK models first, and livekit's own handlers do
the rest. Where a test needs a message livekit commits only with real audio
playout (a reply cut mid-sentence), it is emitted through the session's own
event emitter with livekit's event class.

Runs on every livekit release of the matrix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from history_helpers import (
    DEFAULT_KIND,
    HAS_HANDOFF_ITEM,
    HAS_RECONNECT,
    PATHS,
    Maya,
    assert_clean,
    message_text,
    speech_frame,
    start_call,
    user_turn,
)
from livekit.agents import AgentSession, llm
from livekit.agents.voice.events import ConversationItemAddedEvent

from livekit_history_plugin.history.models import Role, Turn
from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.history.recorder import Recorder
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.stores.sqlite import SqliteStore
from livekit_history_plugin.testing import (
    EmulatorSession,
    RealtimeEmulator,
    validate_server_event,
)

LOGGER = "livekit.plugins.history"


@pytest.fixture
async def emu() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator() as e:
        yield e


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition livekit changes without an event we can await."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


def send_server_event(s: EmulatorSession, event: dict[str, Any]) -> None:
    """Queue a server event the emulator has no generator for.

    The emulator has no public way to send one (nor input audio transcription),
    so this uses its outgoing queue; the event is SDK-valid for the dialect.
    """
    validate_server_event(event, s.dialect)
    s._queue(event)


def transcript_event(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": f"event_tr_{item_id[-8:]}",
        "item_id": item_id,
        "content_index": 0,
        "transcript": text,
        "usage": {"type": "duration", "seconds": 1.2},
    }


async def caller_speaks(emu: RealtimeEmulator, rt: Any) -> str:
    """200 ms of caller audio committed on the server: the id of its item (no transcript yet)."""
    s = emu.last_session
    committed = len(s.sent_of("input_audio_buffer.committed"))
    for _ in range(10):
        rt.push_audio(speech_frame())
    await emu.wait_until(lambda: s.audio_appends >= 2)
    rt.commit_audio()
    await emu.wait_until(lambda: len(s.sent_of("input_audio_buffer.committed")) > committed)
    return str(s.sent_of("input_audio_buffer.committed")[-1]["item_id"])


def roles(turns: Sequence[Turn]) -> list[tuple[int, str]]:
    return [(t.seq, t.role.value) for t in turns]


# -- spoken order -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", PATHS)
async def test_late_caller_transcript_is_numbered_before_the_reply(
    emu: RealtimeEmulator, url: str, kind: str
) -> None:
    plugin = HistoryPlugin(url, HistoryConfig(reorder_window=30.0))
    call = await start_call(emu, plugin, "alice", kind=kind)
    await emu.wait_for_session()
    [rt] = call.recorder.realtime_sessions
    user_item = await caller_speaks(emu, rt)

    await asyncio.wait_for(call.session.generate_reply(), 10)
    # the reply is committed, the caller's words are not transcribed yet: it waits
    assert call.recorder.turns == [] and call.recorder.buffered == 1

    send_server_event(emu.last_session, transcript_event(user_item, "I want to book a cleaning"))
    await until(lambda: len(call.recorder.turns) == 2)  # the transcript released both
    turns = call.recorder.turns
    assert roles(turns) == [(0, "user"), (1, "assistant")]
    assert turns[0].text == "I want to book a cleaning" and turns[0].item_id == user_item
    assert turns[0].created_at < turns[1].created_at
    assert call.recorder.late_turns == 0
    await call.end()
    assert_clean(emu.last_session)
    async with open_store(url) as store:
        stored = await store.load_latest("alice", 10)
    assert [(t.role.value, t.item_id) for t in stored] == [
        ("user", user_item),
        ("assistant", turns[1].item_id),
    ]
    await plugin.aclose()


async def test_reply_waits_for_a_missing_transcript_only_for_the_window(
    emu: RealtimeEmulator, url: str
) -> None:
    plugin = HistoryPlugin(url, HistoryConfig(reorder_window=0.3))
    call = await start_call(emu, plugin, "alice")
    await emu.wait_for_session()
    [rt] = call.recorder.realtime_sessions
    user_item = await caller_speaks(emu, rt)
    await asyncio.wait_for(call.session.generate_reply(), 10)
    await until(lambda: len(call.recorder.turns) == 1)  # released by the window
    assert roles(call.recorder.turns) == [(0, "assistant")]

    # the transcript comes after all: numbered late, stored at its spoken time
    send_server_event(emu.last_session, transcript_event(user_item, "are you there"))
    await until(lambda: len(call.recorder.turns) == 2)
    assert call.recorder.late_turns == 1
    await call.end()
    async with open_store(url) as store:
        stored = await store.load_latest("alice", 10)
    assert [(t.role.value, t.seq) for t in stored] == [("user", 1), ("assistant", 0)]
    await plugin.aclose()


# -- reconnect ------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_RECONNECT, reason="livekit 1.0 has no reconnect")
@pytest.mark.parametrize("kind", PATHS)
async def test_reconnect_records_every_turn_once(
    emu: RealtimeEmulator, url: str, kind: str
) -> None:
    plugin = HistoryPlugin(url)
    call = await start_call(emu, plugin, "alice", kind=kind)
    await call.say("before the drop")
    first = emu.last_session
    await emu.close_all()  # the server drops the socket; livekit reconnects and replays
    second = await emu.wait_for_session(2, timeout=10)
    await emu.wait_until(lambda: len(second.items) == 2, 10)
    await call.say("after the drop")
    # a message committed again (re-emit) is not a new turn
    again = [i for i in call.session.history.items if isinstance(i, llm.ChatMessage)][1]
    call.session.emit("conversation_item_added", ConversationItemAddedEvent(item=again))
    await call.end()

    turns = call.recorder.turns
    assert roles(turns) == [(0, "user"), (1, "assistant"), (2, "user"), (3, "assistant")]
    assert [t.text for t in turns][::2] == ["before the drop", "after the drop"]
    assert len({t.item_id for t in turns}) == 4
    assert first.closed and second.item_ids[:2] == [turns[0].item_id, turns[1].item_id]
    assert_clean(second)
    async with open_store(url) as store:
        assert await store.count_turns("alice") == 4
    await plugin.aclose()


# -- interruptions ------------------------------------------------------------------------------------
async def test_reply_interrupted_before_it_was_heard_is_not_stored(
    emu: RealtimeEmulator, url: str
) -> None:
    plugin = HistoryPlugin(url)
    call = await start_call(emu, plugin, "alice")
    emu.faults.hold_responses = True  # the reply never gets past response.created
    handle = call.session.generate_reply(user_input="tell me everything")
    await emu.wait_until(lambda: len(emu.responses) == 1, 10)
    await call.session.interrupt()
    await asyncio.wait_for(handle, 10)
    emu.faults.hold_responses = False
    await call.say("ok, short version")
    await call.end()
    texts = [(t.role.value, t.text, t.interrupted) for t in call.recorder.turns]
    assert texts[0] == ("user", "tell me everything", False)
    assert [r for r, _, _ in texts] == ["user", "user", "assistant"]
    await plugin.aclose()


async def test_interrupted_reply_is_stored_as_heard(emu: RealtimeEmulator, url: str) -> None:
    """livekit commits an interrupted reply with `interrupted=True` and its text
    cut to what was played (synchronized transcript); that is what is stored."""
    plugin = HistoryPlugin(url, HistoryConfig(mode="packed"))
    call = await start_call(emu, plugin, "alice")
    await call.say("what are your opening hours?")
    heard = llm.ChatMessage(role="assistant", content=["We open at nine and"], interrupted=True)
    call.session.emit("conversation_item_added", ConversationItemAddedEvent(item=heard))
    await call.end()
    last = call.recorder.turns[-1]
    assert (last.text, last.interrupted, last.item_id) == ("We open at nine and", True, heard.id)
    loaded = await plugin.load("alice")
    assert 'agent (interrupted): "We open at nine and"' in message_text(loaded.chat_ctx)
    await plugin.aclose()


# -- what is not a turn ---------------------------------------------------------------------------------
async def test_items_that_are_not_turns_are_skipped(emu: RealtimeEmulator, url: str) -> None:
    plugin = HistoryPlugin(url)
    call = await start_call(emu, plugin, "alice")
    await call.say("hello")

    def emit(item: Any) -> None:
        call.session.emit("conversation_item_added", ConversationItemAddedEvent(item=item))

    emit(llm.ChatMessage(role="system", content=["You are now in billing mode."]))
    emit(llm.ChatMessage(role="developer", content=["internal instruction"]))
    emit(llm.ChatMessage(role="user", content=[]))
    emit(llm.ChatMessage(role="assistant", content=["   \n"]))
    if HAS_HANDOFF_ITEM:
        emit(llm.AgentHandoff(old_agent_id="maya", new_agent_id="maya"))
    twice = llm.ChatMessage(role="user", content=["said once"])
    emit(twice)
    emit(twice)
    await call.end()
    assert [t.text for t in call.recorder.turns][2:] == ["said once"]
    assert all(t.role in (Role.USER, Role.ASSISTANT) for t in call.recorder.turns)
    await plugin.aclose()


async def test_long_turns_are_cut_with_a_warning(
    emu: RealtimeEmulator, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    plugin = HistoryPlugin(url, HistoryConfig(max_turn_chars=40))
    call = await start_call(emu, plugin, "alice")
    await call.say("x" * 100)
    await call.end()
    assert call.recorder.turns[0].text == "x" * 40
    assert any("cut to max_turn_chars=40" in r.getMessage() for r in caplog.records)
    await plugin.aclose()


# -- writing --------------------------------------------------------------------------------------------
class BlockedStore(SqliteStore):
    """A store whose appends wait until released (a store stalled mid-call)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.released = asyncio.Event()

    async def append(self, turns: Sequence[Turn]) -> int:
        await self.released.wait()
        return await super().append(turns)


async def test_writing_never_blocks_the_call(emu: RealtimeEmulator, tmp_path: Path) -> None:
    store = BlockedStore(str(tmp_path / "history.db"))
    plugin = HistoryPlugin(store)
    call = await start_call(emu, plugin, "alice")
    for text in ("one", "two", "three"):
        await call.say(text)  # every turn is committed while no write can land
    assert len(call.recorder.turns) == 6
    assert call.recorder.written == 0 and call.recorder.pending == 6
    store.released.set()
    assert await call.recorder.flush(10)
    assert call.recorder.written == 6 and call.recorder.pending == 0
    await call.end()
    await plugin.aclose()
    await store.close()


async def test_session_close_flushes_everything(emu: RealtimeEmulator, url: str) -> None:
    plugin = HistoryPlugin(url)
    model = emu.realtime_model(DEFAULT_KIND, modalities=["text"])  # type: ignore[arg-type]
    session: AgentSession[Any] = AgentSession(llm=model)
    written: list[str] = []
    recorder: Recorder = plugin.attach(session, user_id="alice", agent_id="front-desk")
    recorder.on_written = lambda batch: written.extend(t.text for t in batch)
    await session.start(Maya())
    await user_turn(session, "remember this")
    await session.aclose()  # the close event alone flushes
    assert recorder.closed
    await recorder.aclose()  # idempotent: waits for the same flush
    await model.aclose()
    assert written[0] == "remember this" and recorder.written == 2
    assert {t.agent_id for t in recorder.turns} == {"front-desk"}
    await plugin.aclose()
