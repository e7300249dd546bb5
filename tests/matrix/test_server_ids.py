"""A server that keeps our items under ids of its own (StepFun): the call history
stores the server's ids.

Real livekit AgentSessions with `HistoryPlugin` attached, on every path of the
release, against the emulator switched to StepFun's quirk
(``ProviderQuirks.of("stepfun")``). The caller's text turns are items the agent
creates (livekit gives them its own id, the server renames them); the replies
are the server's items. After each call the stored turns, the recorder's turns
and the realtime session's mirror name the items by the server's ids, and each
turn is stored once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents.voice.events import ConversationItemAddedEvent
from matrix_helpers import HAS_RECONNECT, user_turn

from livekit_history_plugin import ReplayOptions, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.history.models import Turn
from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.history.recorder import Recorder
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.stores.sqlite import SqliteStore
from livekit_history_plugin.providers import SERVER_REPLACES_ITEM_IDS, Provider
from livekit_history_plugin.testing import (
    EmulatorSession,
    ProviderQuirks,
    RealtimeEmulator,
    validate_server_event,
)

pytestmark = pytest.mark.matrix

USER = "alice"
FAST = ReplayOptions(ack_timeout=0.3, verify_timeout=0.3)


@pytest.fixture
def url(tmp_path: FsPath) -> str:
    return f"sqlite:///{tmp_path / 'history.db'}"


@pytest.fixture
async def plugin(url: str) -> AsyncIterator[HistoryPlugin]:
    p = HistoryPlugin(url)
    yield p
    await p.aclose()


@dataclass
class Call:
    session: AgentSession[Any]
    recorder: Recorder
    model: Any

    @property
    def rt(self) -> Any:
        return self.recorder.realtime_sessions[-1]

    def mirror_ids(self) -> list[str]:
        return [item.id for item in self.rt.chat_ctx.items]

    def user_messages(self) -> list[llm.ChatMessage]:
        return [
            i
            for i in self.session.history.items
            if isinstance(i, llm.ChatMessage) and i.role == "user"
        ]

    async def end(self) -> None:
        await self.session.aclose()
        await self.recorder.aclose()
        await self.model.aclose()


def as_stepfun(rt: Any) -> None:
    """The adapter applies StepFun's rules (livekit has no StepFun session class
    of its own: `providers.SERVER_REPLACES_ITEM_IDS`)."""
    adapter = adapter_of(rt)
    assert adapter is not None
    adapter.use_provider(
        Provider("StepFun", "-", adapter.provider.quirks | {SERVER_REPLACES_ITEM_IDS})
    )


async def start_call(path: Any, emulator: RealtimeEmulator, plugin: HistoryPlugin) -> Call:
    emulator.quirks = ProviderQuirks.of("stepfun")
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session: AgentSession[Any] = AgentSession(llm=model)
    recorder = plugin.attach(session, user_id=USER)
    await session.start(
        Agent(instructions="You are Maya, the voice assistant of a dental practice.")
    )
    call = Call(session, recorder, model)
    as_stepfun(call.rt)
    return call


async def say(call: Call, text: str) -> None:
    await asyncio.wait_for(user_turn(call.session, text), 20)


async def stored(url: str) -> list[Turn]:
    async with open_store(url) as store:
        turns = await store.load_latest(USER, 100)
    return sorted(turns, key=lambda t: t.seq)


def server_messages(s: EmulatorSession) -> list[tuple[str, str]]:
    """(id, role) of the server's user / assistant messages, in its order."""
    return [
        (str(i["id"]), str(i["role"]))
        for i in s.items
        if i.get("type") == "message" and i.get("role") in ("user", "assistant")
    ]


async def caller_speaks(emulator: RealtimeEmulator, rt: Any) -> str:
    """200 ms of caller audio committed on the server: its item's id (no transcript yet)."""
    s = emulator.last_session
    committed = len(s.sent_of("input_audio_buffer.committed"))
    for _ in range(10):
        rt.push_audio(speech_frame())
    await emulator.wait_until(lambda: s.audio_appends >= 2)
    rt.commit_audio()
    await emulator.wait_until(lambda: len(s.sent_of("input_audio_buffer.committed")) > committed)
    return str(s.sent_of("input_audio_buffer.committed")[-1]["item_id"])


async def mirrored(rt: Any, item_id: str, timeout: float = 10.0) -> None:
    """Poll until livekit mirrors an item (it fires no event we can await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while rt.chat_ctx.get_by_id(item_id) is None:
        if loop.time() > deadline:
            raise TimeoutError(f"{item_id} not mirrored")
        await asyncio.sleep(0.01)


def speech_frame(ms: int = 20, rate: int = 24_000) -> rtc.AudioFrame:
    samples = rate * ms // 1000
    return rtc.AudioFrame(
        data=b"\x01\x00" * samples, sample_rate=rate, num_channels=1, samples_per_channel=samples
    )


def transcript(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": f"event_tr_{item_id[-8:]}",
        "item_id": item_id,
        "content_index": 0,
        "transcript": text,
        "usage": {"type": "duration", "seconds": 1.2},
    }


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("livekit.plugins.history")
    ]


async def test_stored_turns_carry_the_server_ids(
    path: Any,
    emulator: RealtimeEmulator,
    plugin: HistoryPlugin,
    url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = await start_call(path, emulator, plugin)
    for text in ("first question", "second question", "third question"):
        await say(call, text)
    # livekit commits a message again (a re-emit): under its own id, and under the server's
    again = call.user_messages()[0]
    adapter = adapter_of(call.rt)
    assert adapter is not None
    renamed = adapter.server_ids[again.id]
    call.session.emit("conversation_item_added", ConversationItemAddedEvent(item=again))
    call.session.emit(
        "conversation_item_added",
        ConversationItemAddedEvent(item=again.model_copy(update={"id": renamed})),
    )
    mirror = call.mirror_ids()
    local_ids = {m.id for m in call.user_messages()}
    await call.end()

    server = emulator.last_session
    turns = await stored(url)
    assert mirror == server.item_ids
    assert [(t.item_id, t.role.value) for t in turns] == server_messages(server)
    assert [t.text for t in turns if t.role.value == "user"] == [
        "first question",
        "second question",
        "third question",
    ]
    assert len(turns) == 6 and not local_ids & {t.item_id for t in turns}
    assert [t.item_id for t in call.recorder.turns] == [t.item_id for t in turns]
    assert warnings_of(caplog) == []


@pytest.mark.skipif(not HAS_RECONNECT, reason="livekit 1.0 does not reconnect")
async def test_reconnect_records_every_turn_once_under_renamed_ids(
    path: Any, emulator: RealtimeEmulator, plugin: HistoryPlugin, url: str
) -> None:
    """The new connection renames the replayed items again; the turns stored
    before keep the id they were written with, and a re-emit under any of the
    item's ids is no new turn."""
    call = await start_call(path, emulator, plugin)
    await say(call, "before the drop")
    first = emulator.last_session
    await emulator.close_all()  # the server drops the socket; livekit reconnects and replays
    second = await emulator.wait_for_session(2, timeout=10)
    await emulator.wait_until(lambda: len(second.items) == 2, 10)
    await say(call, "after the drop")
    adapter = adapter_of(call.rt)
    assert adapter is not None
    for message in call.user_messages():
        ids = {message.id, adapter.server_ids.get(message.id, message.id)}
        ids |= {ours for ours, theirs in adapter.server_ids.items() if theirs in ids}
        for item_id in ids:
            copy = message.model_copy(update={"id": item_id})
            call.session.emit("conversation_item_added", ConversationItemAddedEvent(item=copy))
    # livekit's id of the first caller item leads to the id the NEW connection gave
    # it (not the first connection's), so a plan from the agent's context finds it
    first_local = call.user_messages()[0].id
    sent_before = len(second.received)
    agent = call.session.current_agent
    await agent.update_chat_ctx(agent.chat_ctx)
    resent = [r.type for r in second.received[sent_before:] if r.type.startswith("conversation.")]
    mirror = call.mirror_ids()
    await call.end()

    assert adapter.server_ids[first_local] == second.item_ids[0] and resent == []
    turns = await stored(url)
    assert [t.text for t in turns if t.role.value == "user"] == [
        "before the drop",
        "after the drop",
    ]
    assert len(turns) == 4
    assert [t.item_id for t in turns[:2]] == [i for i, _ in server_messages(first)]
    assert [t.item_id for t in turns[2:]] == [i for i, _ in server_messages(second)][2:]
    assert mirror == second.item_ids


async def test_rename_learned_after_the_turn_was_numbered(
    path: Any, emulator: RealtimeEmulator, url: str, tmp_path: FsPath
) -> None:
    """A message livekit commits before its item reaches the server (the store is
    not open yet, so the turn waits): it is stored under the id the server gave it."""
    emulator.quirks = ProviderQuirks.of("stepfun")
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session: AgentSession[Any] = AgentSession(llm=model)
    store = SqliteStore(str(tmp_path / "history.db"))
    opened = asyncio.Event()

    async def open_when_allowed() -> None:
        await opened.wait()
        await store.open()

    recorder = Recorder(session, store, user_id=USER, open_store=open_when_allowed)
    rt_box: list[Any] = []
    original = model.session

    def session_factory(*args: Any, **kwargs: Any) -> Any:
        rt = original(*args, **kwargs)
        rt_box.append(rt)
        recorder.watch_realtime_session(rt)
        return rt

    model.session = session_factory
    await session.start(Agent(instructions="You are Maya."))
    rt = rt_box[-1]
    as_stepfun(rt)
    note = llm.ChatMessage(role="user", content=["my order number is 4471"])
    session.emit("conversation_item_added", ConversationItemAddedEvent(item=note))
    assert [t.item_id for t in recorder.turns] == [note.id]
    ctx = rt.chat_ctx.copy()
    ctx.items.append(note)
    await rt.update_chat_ctx(ctx)
    adapter = adapter_of(rt)
    assert adapter is not None
    server_id = adapter.server_ids[note.id]
    mirror = [i.id for i in rt.chat_ctx.items]
    opened.set()
    await session.aclose()
    await recorder.aclose()
    await model.aclose()

    assert mirror == emulator.last_session.item_ids == [server_id]
    assert [t.item_id for t in recorder.turns] == [server_id]
    turns = await stored(url)
    assert [(t.item_id, t.text) for t in turns] == [(server_id, "my order number is 4471")]
    await store.close()


async def test_rename_learned_while_the_turn_waits_for_an_earlier_transcript(
    path: Any, emulator: RealtimeEmulator, url: str
) -> None:
    """A message committed while the caller's earlier audio has no transcript yet
    waits in the reorder buffer; the rename that comes meanwhile reaches it there."""
    plugin = HistoryPlugin(url, HistoryConfig(reorder_window=30.0))
    call = await start_call(path, emulator, plugin)
    await emulator.wait_for_session()
    caller_item = await caller_speaks(emulator, call.rt)
    await mirrored(call.rt, caller_item)
    note = llm.ChatMessage(role="user", content=["my order number is 4471"])
    call.session.emit("conversation_item_added", ConversationItemAddedEvent(item=note))
    assert call.recorder.buffered == 1 and call.recorder.turns == []
    ctx = call.rt.chat_ctx.copy()
    ctx.items.append(note)
    await call.rt.update_chat_ctx(ctx)
    adapter = adapter_of(call.rt)
    assert adapter is not None
    server_id = adapter.server_ids[note.id]
    session = emulator.last_session
    validate_server_event(transcript(caller_item, "I have a question"), session.dialect)
    session._queue(transcript(caller_item, "I have a question"))  # no generator for it
    await emulator.wait_until(lambda: len(call.recorder.turns) == 2)
    await call.end()
    await plugin.aclose()

    turns = await stored(url)
    assert [(t.item_id, t.text) for t in turns] == [
        (caller_item, "I have a question"),
        (server_id, "my order number is 4471"),
    ]
    assert [t.item_id for t in call.recorder.turns] == [caller_item, server_id]


async def test_lost_ack_under_renamed_ids_keeps_our_id_and_says_so(
    path: Any,
    emulator: RealtimeEmulator,
    plugin: HistoryPlugin,
    url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The acks of two caller items are lost, so the server's ids for them never
    reach us: each turn is stored once, under livekit's id, and one WARNING says
    why (the second case logs at DEBUG)."""
    call = await start_call(path, emulator, plugin)
    emulator.faults.drop_acks = lambda _item_id, ack: "lost ack" in str(ack.get("item"))
    await say(call, "lost ack one")
    await say(call, "lost ack two")
    emulator.faults.drop_acks = False
    await say(call, "next question")
    lost = [m.id for m in call.user_messages()[:2]]
    adapter = adapter_of(call.rt)
    assert adapter is not None
    answered = adapter.server_ids[call.user_messages()[2].id]
    mirror = call.mirror_ids()
    await call.end()

    turns = await stored(url)
    users = [t for t in turns if t.role.value == "user"]
    assert [t.text for t in users] == ["lost ack one", "lost ack two", "next question"]
    assert [t.item_id for t in users[:2]] == lost
    assert users[2].item_id == answered
    # the server has each item once; the two it never acknowledged are not mirrored
    server = emulator.last_session
    assert [text for role, text in server.texts() if role == "user"] == [t.text for t in users]
    unacked = {i for i, role in server_messages(server) if role == "user"} - {answered}
    assert len(unacked) == 2 and mirror == [i for i in server.item_ids if i not in unacked]
    unknown = [m for m in warnings_of(caplog) if "was lost" in m]
    assert len(unknown) == 1 and lost[0] in unknown[0]
