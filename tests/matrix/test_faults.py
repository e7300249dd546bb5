"""The safe replay under the emulator's fault knobs, on the real livekit client.

Each test ends with the same invariant: every valid item is on the server in
order, and livekit's mirror (`session.chat_ctx`) equals the server id for id.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import llm
from matrix_helpers import HAS_RECONNECT, HAS_TEXT_TRUNCATE

from livekit_history_plugin import ReplayOptions, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.testing import RealtimeEmulator, RejectRule

pytestmark = pytest.mark.matrix

FAST = ReplayOptions(ack_timeout=0.3, verify_timeout=0.3)


def messages(ids: list[str]) -> list[llm.ChatMessage]:
    return [
        llm.ChatMessage(id=i, role="user" if n % 2 == 0 else "assistant", content=[f"text of {i}"])
        for n, i in enumerate(ids)
    ]


def server_ids(emu: RealtimeEmulator) -> list[str]:
    return [item["id"] for item in emu.last_session.items]


def mirror_ids(session: Any) -> list[str]:
    return [item.id for item in session.chat_ctx.items]


async def replay(
    path: Any, emu: RealtimeEmulator, ids: list[str], options: ReplayOptions = FAST
) -> tuple[list[str], list[str], Any]:
    model = wrap_realtime_model(path.build(emu), options=options)
    session = model.session()
    await emu.wait_for_session()
    try:
        await session.update_chat_ctx(llm.ChatContext(list(messages(ids))))
        await emu.wait_until(lambda: mirror_ids(session) == server_ids(emu), 3)
        adapter = adapter_of(session)
        assert adapter is not None
        return server_ids(emu), mirror_ids(session), adapter.last_result
    finally:
        await session.aclose()


IDS = [f"item_{i:02d}" for i in range(12)]


async def test_errors_without_event_id(path: Any, emulator: RealtimeEmulator) -> None:
    emulator.faults.error_event_ids = False
    emulator.faults.reject.append(RejectRule.item_id("item_04", code="invalid_value"))
    server, mirror, result = await replay(path, emulator, IDS)
    assert server == [i for i in IDS if i != "item_04"]
    assert mirror == server
    assert [r.item_id for r in result.rejected] == ["item_04"]


async def test_errors_without_event_id_and_a_dropped_ack(
    path: Any, emulator: RealtimeEmulator
) -> None:
    # the hardest case for matching by order: the error must not be pinned on
    # the item whose ack was lost
    emulator.faults.error_event_ids = False
    emulator.faults.drop_acks = lambda item_id, _ack: item_id == "item_03"
    emulator.faults.reject.append(RejectRule.item_id("item_04", code="invalid_value"))
    server, mirror, result = await replay(path, emulator, IDS)
    assert server == [i for i in IDS if i != "item_04"]
    assert mirror == server
    assert [r.item_id for r in result.rejected] == ["item_04"]


async def test_dropped_last_ack_is_verified(path: Any, emulator: RealtimeEmulator) -> None:
    # the create's ack only: where retrieve is missing (Azure 2024-10-01-preview) the
    # check is a delete probe, whose own ack must come through
    emulator.faults.drop_acks = lambda item_id, ack: (
        item_id == IDS[-1] and ack["type"] != "conversation.item.deleted"
    )
    t0 = time.perf_counter()
    server, mirror, result = await replay(path, emulator, IDS)
    assert server == IDS
    assert mirror == server
    assert not result.rejected
    assert time.perf_counter() - t0 < 3  # one ack timeout + one retrieve, never a stall


async def test_duplicate_and_reordered_acks(path: Any, emulator: RealtimeEmulator) -> None:
    emulator.faults.duplicate_acks = True
    emulator.faults.reorder_acks = 3
    emulator.faults.reject.append(RejectRule.item_id("item_07", code="invalid_value"))
    server, mirror, result = await replay(path, emulator, IDS)
    assert server == [i for i in IDS if i != "item_07"]
    assert mirror == server
    assert [r.item_id for r in result.rejected] == ["item_07"]


async def test_delayed_acks_and_latency(path: Any, emulator: RealtimeEmulator) -> None:
    emulator.faults.latency = 0.05
    emulator.faults.ack_delay = 0.1
    server, mirror, _ = await replay(path, emulator, IDS)
    assert server == IDS
    assert mirror == server


async def test_rejection_between_existing_items_is_rechained(
    path: Any, emulator: RealtimeEmulator
) -> None:
    """Items inserted mid-conversation are anchored with previous_item_id; after a
    rejection the ones behind it are re-chained onto the last acknowledged item."""
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session = model.session()
    await emulator.wait_for_session()
    head, tail = messages(["first", "last"])
    middle = messages([f"mid_{i}" for i in range(6)])
    emulator.faults.reject.append(RejectRule.item_id("mid_2", code="invalid_value"))
    try:
        await session.update_chat_ctx(llm.ChatContext([head, tail]))
        await session.update_chat_ctx(llm.ChatContext([head, *middle, tail]))
        await emulator.wait_until(lambda: mirror_ids(session) == server_ids(emulator), 3)
        server = server_ids(emulator)
        adapter = adapter_of(session)
        assert adapter is not None and adapter.last_result is not None
        result = adapter.last_result
    finally:
        await session.aclose()
    want = ["first", "mid_0", "mid_1", "mid_3", "mid_4", "mid_5", "last"]
    assert server == want
    assert [r.item_id for r in result.rejected] == ["mid_2"]
    assert result.resends == 3


@pytest.mark.skipif(
    not HAS_TEXT_TRUNCATE,
    reason="livekit 1.0 - 1.1: truncate sends only conversation.item.truncate (no chat context)",
)
async def test_truncate_text_path_is_safe(path: Any, emulator: RealtimeEmulator) -> None:
    """livekit's text `truncate` rewrites one item through its own chat-ctx events;
    wrapped, it goes through the safe replay (delete + create of that item)."""
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session = model.session()
    await emulator.wait_for_session()
    try:
        await session.update_chat_ctx(llm.ChatContext(messages(["u1", "a1", "u2"])))
        session.truncate(
            message_id="a1", modalities=["text"], audio_end_ms=0, audio_transcript="cut sh"
        )
        await emulator.wait_until(
            lambda: any(
                item["id"] == "a1" and "cut sh" in str(item.get("content"))
                for item in emulator.last_session.items
            ),
            3,
        )
        await emulator.wait_until(lambda: mirror_ids(session) == server_ids(emulator), 3)
        server = server_ids(emulator)
    finally:
        await session.aclose()
    assert server == ["u1", "a1", "u2"]
    assert emulator.typeless_items == 0


def _frame() -> rtc.AudioFrame:
    return rtc.AudioFrame(
        data=b"\x00\x00" * 2400, sample_rate=24000, num_channels=1, samples_per_channel=2400
    )


async def test_caller_audio_waits_for_history(path: Any, emulator: RealtimeEmulator) -> None:
    emulator.faults.latency = 0.05
    model = wrap_realtime_model(
        path.build(emulator), options=ReplayOptions(audio_gate_timeout=1.5)
    )
    session = model.session()
    await emulator.wait_for_session()
    try:
        for _ in range(5):
            session.push_audio(_frame())  # the caller starts talking at once
        await asyncio.sleep(0.2)
        assert emulator.last_session.audio_appends == 0
        await session.update_chat_ctx(llm.ChatContext(messages(IDS)))
        await emulator.wait_until(lambda: emulator.last_session.audio_appends > 0, 3)
        emu_session = emulator.last_session
        acks = [e.t for e in emu_session.sent if e.event["type"].startswith("conversation.item.")]
        adapter = adapter_of(session)
        assert adapter is not None
        gate = adapter.audio_gate
    finally:
        await session.aclose()
    assert emu_session.first_audio_at is not None and acks
    assert emu_session.first_audio_at >= max(acks)  # no audio before the history
    assert gate.reason == "replayed" and gate.frames_held == 5 and gate.frames_dropped == 0


async def test_audio_gate_opens_after_its_timeout(path: Any, emulator: RealtimeEmulator) -> None:
    model = wrap_realtime_model(
        path.build(emulator), options=ReplayOptions(audio_gate_timeout=0.2)
    )
    session = model.session()
    await emulator.wait_for_session()
    try:
        session.push_audio(_frame())
        await emulator.wait_until(lambda: emulator.last_session.audio_appends > 0, 3)
        adapter = adapter_of(session)
        assert adapter is not None
        assert adapter.audio_gate.reason == "timeout"
    finally:
        await session.aclose()


async def test_replay_while_a_response_is_generated(path: Any, emulator: RealtimeEmulator) -> None:
    """A response generated concurrently adds its own item; ours still land in
    order, none is lost, and the mirror follows the server exactly."""
    emulator.faults.latency = 0.05
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session = model.session()
    await emulator.wait_for_session()
    new = [f"late_{i}" for i in range(10)]
    try:
        await session.update_chat_ctx(llm.ChatContext(messages(["u0", "a0"])))
        reply = session.generate_reply(instructions="answer")
        ctx = session.chat_ctx.copy()
        for m in messages(new):
            ctx.items.append(m)
        await session.update_chat_ctx(ctx)
        await asyncio.wait_for(reply, 5)
        await emulator.wait_until(lambda: len(emulator.responses) == 1, 3)
        await emulator.wait_until(lambda: mirror_ids(session) == server_ids(emulator), 3)
        server = server_ids(emulator)
    finally:
        await session.aclose()
    ours = [i for i in server if i.startswith("late_")]
    assert ours == new
    assert server[:2] == ["u0", "a0"]
    assert len(server) == 13  # + the response's own assistant item


@pytest.mark.skipif(
    not HAS_RECONNECT,
    reason="livekit 1.0 has no reconnect: a closed socket ends the session (test_release_gating.py)",
)
async def test_caller_audio_waits_for_history_after_a_reconnect(
    path: Any, emulator: RealtimeEmulator
) -> None:
    """Mid-call the audio keeps flowing; after livekit reconnects, the caller's
    audio must not reach the new connection before the replayed history."""
    emulator.faults.latency = 0.05
    model = wrap_realtime_model(
        path.build(emulator), options=ReplayOptions(audio_gate_timeout=1.5)
    )
    session = model.session()
    await emulator.wait_for_session()
    reconnected = asyncio.Event()
    session.on("session_reconnected", lambda *_: reconnected.set())
    try:
        await session.update_chat_ctx(llm.ChatContext(messages(IDS)))
        first = emulator.last_session
        await emulator.close_all()
        await asyncio.wait_for(reconnected.wait(), 10)
        for _ in range(5):
            session.push_audio(_frame())
        await emulator.wait_until(
            lambda: emulator.last_session is not first
            and emulator.last_session.audio_appends > 0,
            5,
        )
        second = emulator.last_session
        acks = [e.t for e in second.sent if e.event["type"].startswith("conversation.item.")]
    finally:
        await session.aclose()
    assert second.item_ids == IDS
    assert second.first_audio_at is not None and acks
    assert second.first_audio_at >= max(acks)


async def test_wrapping_again_replaces_options_for_new_sessions(
    path: Any, emulator: RealtimeEmulator
) -> None:
    from livekit_history_plugin.compat import replay_options_of

    model = wrap_realtime_model(path.build(emulator), options=FAST)
    gated = FAST.model_copy(update={"audio_gate_timeout": 0.5})
    assert wrap_realtime_model(model, options=gated) is model
    assert replay_options_of(model) == gated
    session = model.session()
    try:
        adapter = adapter_of(session)
        assert adapter is not None and adapter.options == gated
    finally:
        await session.aclose()


async def test_other_internal_callers_of_the_event_builder_go_the_safe_way(
    path: Any, emulator: RealtimeEmulator
) -> None:
    """Any livekit code that builds chat-ctx events itself (not reconnect, not
    truncate) gets no raw events back; the same context is replayed safely."""
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session = model.session()
    await emulator.wait_for_session()
    try:
        events = session._create_update_chat_ctx_events(llm.ChatContext(messages(IDS)))
        assert events == []
        await emulator.wait_until(lambda: server_ids(emulator) == IDS, 3)
        await emulator.wait_until(lambda: mirror_ids(session) == IDS, 3)
    finally:
        await session.aclose()
