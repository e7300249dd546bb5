"""Real-server behaviours that are not a single recorded answer, on the REAL livekit
client: the GA response order, rate limits, the frozen voice, the retired beta shape,
ids the server refuses, and the server_error / session-expiry wording."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from livekit.agents import __version__ as LIVEKIT_VERSION
from livekit.agents import llm
from livekit.plugins import openai as lk_openai

from livekit_history_plugin import ReplayOptions, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.dialects import valid_wire_id, wire_call_id, wire_item_id
from livekit_history_plugin.testing import RealtimeEmulator, RejectRule

from .conftest import cases, load

RELEASE = tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])
HAS_BETA_CLASS = hasattr(lk_openai.realtime, "RealtimeModelBeta")  # livekit <= 1.4
OPTIONS = ReplayOptions(ack_timeout=0.5, verify_timeout=0.5)
_CONTENT_STREAM = ("delta", "text.done", "audio.done", "transcript.done", "arguments.done")


def _openai(emu: RealtimeEmulator, **kwargs: Any) -> Any:
    return wrap_realtime_model(
        lk_openai.realtime.RealtimeModel(**emu.openai_kwargs(), **kwargs), options=OPTIONS
    )


def _mirror(session: Any) -> list[str]:
    return [item.id for item in session.chat_ctx.items]


def _without_content_stream(types: list[str]) -> list[str]:
    return [t for t in types if t.startswith("rate_limits") or not t.endswith(_CONTENT_STREAM)]


@pytest.mark.parametrize(("case", "data"), [(c, d) for _, c, d in cases("sequences")])
async def test_ga_response_order_matches_the_capture(case: dict[str, Any], data: Any) -> None:
    # D12: conversation.item.done before response.output_item.done; rate_limits.updated last
    async with RealtimeEmulator() as emu:
        model = _openai(emu, modalities=["text"])
        session = model.session()
        try:
            conn = await emu.wait_for_session()
            await asyncio.wait_for(session.generate_reply(), 10)
            await emu.wait_until(lambda: bool(conn.sent_of("rate_limits.updated")))
            types = [s.type for s in conn.sent if s.type.startswith(("response.", "conversation.", "rate_"))]
            assert _without_content_stream(types) == case["types"]
        finally:
            await session.aclose()
            await model.aclose()


async def test_rate_limit_is_a_failed_response_and_the_replay_is_untouched() -> None:
    # D7: no error answers an item create; the response fails and rate_limits.updated follows
    recorded = load("voice_rate_limits.json")["rate_limited"]
    async with RealtimeEmulator() as emu:
        model = _openai(emu, modalities=["text"])
        session = model.session()
        errors: list[Any] = []
        session.on("error", errors.append)
        try:
            conn = await emu.wait_for_session()
            emu.faults.rate_limited_responses = 1
            await asyncio.wait_for(session.generate_reply(), 10)
            await emu.wait_until(lambda: bool(conn.sent_of("rate_limits.updated")))
            types = [s.type for s in conn.sent if s.type.startswith(("response.", "rate_"))]
            assert types == recorded["types"]
            assert conn.sent_of("response.done")[0]["response"]["status"] == recorded["status"]
            ctx = llm.ChatContext([llm.ChatMessage(id="m0", role="user", content=["after"])])
            await session.update_chat_ctx(ctx)
            await emu.wait_until(lambda: _mirror(session) == conn.item_ids)
            adapter = adapter_of(session)
            assert adapter is not None and adapter.last_result is not None
            assert adapter.last_result.ok and conn.item_ids == ["m0"]
        finally:
            await session.aclose()
            await model.aclose()


async def test_reasserted_session_update_never_touches_the_voice() -> None:
    # D10: after assistant audio the server refuses a session.update naming another
    # voice (cannot_update_voice) and discards it whole; the strict knob refuses any voice
    recorded = load("voice_rate_limits.json")["cannot_update_voice"]
    async with RealtimeEmulator() as emu:
        emu.faults.refuse_any_voice_after_audio = True
        model = _openai(emu)  # audio output
        session = model.session()
        try:
            conn = await emu.wait_for_session()
            await asyncio.wait_for(session.generate_reply(), 10)
            await emu.wait_until(lambda: conn.assistant_audio)
            updates_before = len(conn.received_of("session.update"))
            ctx = llm.ChatContext([llm.ChatMessage(id="m0", role="user", content=["remember me"])])
            await session.update_chat_ctx(ctx)
            await emu.wait_until(lambda: len(conn.received_of("session.update")) > updates_before)
            reasserted = conn.received_of("session.update")[-1]
            assert "voice" not in reasserted["session"].get("audio", {}).get("output", {})
            await emu.wait_until(lambda: len(conn.sent_of("session.updated")) >= 2)
            assert "cannot_update_voice" not in conn.error_codes()
            # livekit's own voice change is refused with the recorded error
            emu.faults.refuse_any_voice_after_audio = False
            session.update_options(voice="echo")
            await emu.wait_until(lambda: "cannot_update_voice" in conn.error_codes())
            error = next(e["error"] for e in conn.errors if e["error"]["code"] == "cannot_update_voice")
            assert {k: error[k] for k in recorded} == recorded
        finally:
            await session.aclose()
            await model.aclose()


@pytest.mark.skipif(not HAS_BETA_CLASS, reason="RealtimeModelBeta exists in livekit <= 1.4")
async def test_openai_beta_model_is_refused_as_openai_refuses_it() -> None:
    # D3: removed 2026-05-12; an OpenAI-Beta: realtime=v1 handshake gets
    # beta_api_shape_disabled and close 4000
    async with RealtimeEmulator() as emu:
        model = emu.realtime_model("openai-beta", modalities=["text"])
        session = model.session()
        try:
            await emu.wait_until(lambda: bool(emu.refused_connections), 10)
            assert emu.refused_connections[0][:2] == (4000, "beta_api_shape_disabled")
            assert emu.sessions == []
        finally:
            await session.aclose()
            await model.aclose()


async def test_ids_the_server_refuses_are_replayed_under_stable_wire_ids() -> None:
    # D6: ^[a-zA-Z0-9_-]+$ for item ids (livekit/agents#1717) and call ids (#5652)
    items: list[llm.ChatItem] = [
        llm.ChatMessage(id="a.b", role="user", content=["look it up"]),
        llm.FunctionCall(id="x:y", call_id="fc/1", name="lookup", arguments="{}"),
        llm.FunctionCallOutput(id="out 1", call_id="fc/1", output="42", is_error=False),
        llm.ChatMessage(id="ok_1", role="assistant", content=["it is 42"]),
    ]
    async with RealtimeEmulator() as emu:
        model = _openai(emu, modalities=["text"])
        session = model.session()
        try:
            conn = await emu.wait_for_session()
            await session.update_chat_ctx(llm.ChatContext(list(items)))
            await emu.wait_until(lambda: _mirror(session) == conn.item_ids)
            assert conn.item_ids == [wire_item_id(i.id) for i in items]
            assert all(valid_wire_id(i) for i in conn.item_ids)
            assert conn.items[1]["call_id"] == conn.items[2]["call_id"] == wire_call_id("fc/1")
            assert conn.errors == []
            sent = len(conn.received)
            await session.update_chat_ctx(llm.ChatContext(list(items)))  # stable: nothing to do
            assert len(conn.received) == sent
        finally:
            await session.aclose()
            await model.aclose()


async def test_server_error_and_session_expiry_wording() -> None:
    # D15: code null, event_id null, the recorded sentence (trace at index id 34909638017);
    # session limits of 15 / 30 / 60 minutes over time
    recorded = load("server_error_trace.json")["server_error"]

    def broken(_item: dict[str, Any], _event: dict[str, Any]) -> bool:
        raise RuntimeError("an emulator bug")

    async with RealtimeEmulator() as emu:
        model = _openai(emu, modalities=["text"])
        session = model.session()
        try:
            conn = await emu.wait_for_session()
            emu.faults.reject = [RejectRule(match=broken)]
            session.send_event(
                {"type": "conversation.item.create", "event_id": "e1",
                 "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}}
            )
            await emu.wait_until(lambda: bool(conn.errors))
            assert conn.errors[0]["error"] == recorded
            emu.faults.reject = []
            await emu.close_all(session_expired=True, session_minutes=30)
            expired = [e["error"] for e in conn.errors if e["error"]["code"] == "session_expired"]
            assert expired[0]["message"] == "Your session hit the maximum duration of 30 minutes."
            assert expired[0]["event_id"] is None
        finally:
            await session.aclose()
            await model.aclose()
