"""Shared helpers of the plugin / recorder tests: one call on a real livekit
AgentSession against the strict emulator, and what the emulator saw of it.

Also imported by `history_call.py`, the child-process script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm
from livekit.agents import __version__ as LIVEKIT_VERSION

from livekit_history_plugin.history.plugin import HistoryPlugin, LoadedHistory
from livekit_history_plugin.history.recorder import Recorder
from livekit_history_plugin.testing import EmulatorSession, RealtimeEmulator

RELEASE = tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])
HAS_HANDOFF_ITEM = RELEASE >= (1, 5)  # conversation_item_added carries AgentHandoff items
# livekit 1.1 added the reconnect loop; on 1.0 a closed socket ends the session
HAS_RECONNECT = hasattr(llm, "RealtimeSessionReconnectedEvent")
# emulator.realtime_model kinds every release has: Azure legacy (beta dialect), OpenAI GA.
# livekit 1.0 - 1.1 reach OpenAI only with the beta shape OpenAI retired on 2026-05-12:
# Azure is their one live path
PATHS = ["azure", "openai"] if RELEASE >= (1, 2) else ["azure"]
DEFAULT_KIND = PATHS[-1]
AGENT_INSTRUCTIONS = "You are Maya, the voice assistant of a dental practice."
SAMPLE_RATE = 24_000
FRAME_MS = 20


async def user_turn(session: AgentSession[Any], text: str, timeout: float = 20) -> Any:
    """One user turn: `session.run` (1.2+) or, on livekit 1.0 - 1.1, `generate_reply`."""
    if hasattr(session, "run"):
        return await asyncio.wait_for(session.run(user_input=text), timeout)
    return await asyncio.wait_for(session.generate_reply(user_input=text), timeout)


async def user_turn_with_tool_reply(
    session: AgentSession[Any], text: str, timeout: float = 20
) -> Any:
    """A user turn whose model calls a tool: returns once the reply to the tool's
    output is done (1.2+: the RunResult; 1.0 - 1.1: the tool reply's SpeechHandle).

    On 1.0 - 1.1 the handle `generate_reply` returns is done before the tool runs
    (`_realtime_generation_task` calls `_mark_playout_done()` "before waiting for
    the tool execution"); the reply to the output is a new handle, child of that
    one, announced by `speech_created` with source "tool_response"."""
    if hasattr(session, "run"):
        return await user_turn(session, text, timeout)
    created: list[Any] = []
    more = asyncio.Event()

    def on_created(ev: Any) -> None:
        if ev.source == "tool_response":
            created.append(ev.speech_handle)
            more.set()

    session.on("speech_created", on_created)
    try:
        first = await user_turn(session, text, timeout)
        while not (replies := [h for h in created if h.parent is first]):
            more.clear()
            await asyncio.wait_for(more.wait(), timeout)
        return await asyncio.wait_for(replies[0], timeout)
    finally:
        session.off("speech_created", on_created)


class Maya(Agent):
    def __init__(self, loaded: LoadedHistory | None = None, *, chat_ctx: Any = None) -> None:
        if loaded is not None:
            super().__init__(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx)
        else:
            super().__init__(instructions=AGENT_INSTRUCTIONS, chat_ctx=chat_ctx)


class Billing(Agent):
    def __init__(self, *, chat_ctx: Any = None) -> None:
        super().__init__(instructions="You handle billing questions.", chat_ctx=chat_ctx)
        self.entered = asyncio.Event()

    async def on_enter(self) -> None:
        self.entered.set()


@dataclass
class Call:
    """One running call: session, recorder, model, what was loaded."""

    session: AgentSession[Any]
    recorder: Recorder
    model: Any
    loaded: LoadedHistory
    replies: list[str] = field(default_factory=list)

    async def say(self, text: str) -> str:
        reply = ""
        if not hasattr(self.session, "run"):  # livekit 1.0 - 1.1: no testing API
            handle = await asyncio.wait_for(self.session.generate_reply(user_input=text), 20)
            message = handle.chat_message
            reply = (message.text_content or "") if message is not None else ""
            self.replies.append(reply)
            return reply
        result: Any = await asyncio.wait_for(self.session.run(user_input=text), 20)
        for ev in result.events:
            item = getattr(ev, "item", None)
            if item is not None and getattr(item, "role", None) == "assistant":
                reply = item.text_content or ""
        self.replies.append(reply)
        return reply

    async def end(self) -> None:
        await self.session.aclose()
        await self.recorder.aclose()
        await self.model.aclose()


async def start_call(
    emu: RealtimeEmulator,
    plugin: HistoryPlugin,
    user_id: str,
    *,
    kind: str = DEFAULT_KIND,
    conversation_id: str | None = None,
    agent_id: str | None = None,
) -> Call:
    loaded = await plugin.load(user_id, instructions=AGENT_INSTRUCTIONS)
    model = emu.realtime_model(kind, modalities=["text"])  # type: ignore[arg-type]
    session: AgentSession[Any] = AgentSession(llm=model)
    recorder = plugin.attach(
        session, user_id=user_id, conversation_id=conversation_id, agent_id=agent_id
    )
    await session.start(Maya(loaded))
    return Call(session, recorder, model, loaded)


async def run_call(
    emu: RealtimeEmulator,
    plugin: HistoryPlugin,
    user_id: str,
    inputs: Sequence[str],
    *,
    kind: str = DEFAULT_KIND,
) -> Call:
    call = await start_call(emu, plugin, user_id, kind=kind)
    for text in inputs:
        await call.say(text)
    await call.end()
    return call


# -- what the emulator saw --------------------------------------------------------------
def text_of(item: dict[str, Any]) -> str:
    return " ".join(
        str(p.get("text") or p.get("transcript") or "")
        for p in item.get("content") or []
        if isinstance(p, dict)
    )


def message_text(ctx: llm.ChatContext, index: int = 0) -> str:
    item = ctx.items[index]
    assert isinstance(item, llm.ChatMessage)
    return item.text_content or ""


def ack_times(s: EmulatorSession, item_ids: Sequence[str]) -> dict[str, float]:
    """When the server acknowledged each item (sent time of its created/added event)."""
    wanted = set(item_ids)
    out: dict[str, float] = {}
    for sent in s.sent:
        if sent.type in ("conversation.item.created", "conversation.item.added"):
            item_id = (sent.event.get("item") or {}).get("id")
            if item_id in wanted and item_id not in out:
                out[item_id] = sent.t
    return out


def first_received(s: EmulatorSession, event_type: str) -> float | None:
    return next((r.t for r in s.received if r.type == event_type), None)


def session_updates_instructions(s: EmulatorSession) -> list[str]:
    out = []
    for ev in s.received_of("session.update"):
        instructions = (ev.get("session") or {}).get("instructions")
        if isinstance(instructions, str):
            out.append(instructions)
    return out


def protocol_errors(s: EmulatorSession) -> list[dict[str, Any]]:
    """Error events of this connection, except one livekit causes on its own:
    livekit < 1.5 cancels "the current response" when a session closes even
    when there is none."""
    return [e for e in s.errors if e["error"].get("code") != "response_cancel_not_active"]


def assert_clean(s: EmulatorSession) -> None:
    """No protocol error and no rejected client event on this connection."""
    errors = protocol_errors(s)
    assert errors == [], errors
    rejected = [f for f in s.emulator.sdk_validation_errors if f.rejected]
    assert rejected == [], rejected


def observe(emu: RealtimeEmulator, loaded: LoadedHistory) -> dict[str, Any]:
    """The emulator's view of the first connection of a call (JSON-able)."""
    s = emu.sessions[0]
    acks = ack_times(s, loaded.item_ids)
    first_response = first_received(s, "response.create")
    first = emu.responses[0] if emu.responses else None
    return {
        "dialect": s.dialect,
        "item_ids": loaded.item_ids,
        "acked": sorted(acks, key=lambda i: acks[i]),
        "last_ack": max(acks.values()) if acks else None,
        "first_response_create": first_response,
        "response_conversation": [
            {"id": i.get("id"), "role": i.get("role"), "text": text_of(i)}
            for i in (first.conversation if first else ())
        ],
        "response_instructions": first.instructions if first else None,
        "session_update_instructions": session_updates_instructions(s),
        "errors": protocol_errors(s),
        "rejected": [f.message for f in emu.sdk_validation_errors if f.rejected],
    }


# -- audio --------------------------------------------------------------------------------
def speech_frame(ms: int = FRAME_MS) -> rtc.AudioFrame:
    samples = SAMPLE_RATE * ms // 1000
    return rtc.AudioFrame(
        data=b"\x01\x00" * samples,
        sample_rate=SAMPLE_RATE,
        num_channels=1,
        samples_per_channel=samples,
    )
