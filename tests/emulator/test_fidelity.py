"""The real-shape defaults of the emulator and the knobs that bring back the old,
optimistic shapes (README "Real-server fidelity")."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from livekit_history_plugin.testing import RealtimeEmulator, ScriptedAnswer, duplicate_ids_of

from .conftest import BETA_2024_PATH, Connect, user


@pytest.mark.parametrize(
    ("knob", "tool_event_id", "delete_event_id"),
    [(None, None, "d1"), (True, "t1", "d1"), (False, None, None)],
)
async def test_error_event_ids(
    emulator: RealtimeEmulator, connect: Connect, knob: Any, tool_event_id: Any, delete_event_id: Any
) -> None:
    # None (default): as the servers; invalid_tool_call_id omits it (livekit/agents#3344)
    emulator.faults.error_event_ids = knob
    c = await connect("ga")
    output = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    tool = await c.error_for({"type": "conversation.item.create", "event_id": "t1", "item": output})
    assert tool["event_id"] == tool_event_id and tool["param"] is None
    gone = await c.error_for({"type": "conversation.item.delete", "event_id": "d1", "item_id": "x"})
    assert gone["event_id"] == delete_event_id


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        ("gpt-realtime", "reject"),
        ("gpt-realtime-2.1", "reject"),
        ("gpt-realtime-1.5", "append"),
        ("gpt-4o-realtime-preview-2024-12-17", "ignore"),
    ],
)
def test_duplicate_ids_per_model(model: str, mode: str) -> None:
    assert duplicate_ids_of(model) == mode


async def test_duplicate_ids_knob_overrides_the_model(emulator: RealtimeEmulator, connect: Connect) -> None:
    emulator.faults.duplicate_ids = "append"
    c = await connect("ga")
    await c.create(user("a", "dup"))
    events = await c.create(user("a", "dup"))
    assert events[-1]["previous_item_id"] == "dup"
    assert emulator.last_session.item_ids == ["dup", "dup"]
    await c.request({"type": "conversation.item.delete", "item_id": "dup"}, "conversation.item.deleted")
    assert emulator.last_session.item_ids == ["dup"]  # one copy left


async def test_unknown_model_and_served_beta() -> None:
    async with RealtimeEmulator(models={"gpt-realtime"}, openai_beta=True) as emu:
        async with aiohttp.ClientSession() as http:
            url = emu.base_url.replace("http", "ws", 1)
            ws = await http.ws_connect(url + "/v1/realtime?model=gpt-nope", headers={"Authorization": "Bearer k"})
            error = (await ws.receive_json())["error"]
            assert error["code"] == "invalid_model"
            await ws.receive()
            assert ws.close_code == 4000
            beta = await http.ws_connect(
                url + "/v1/realtime?model=gpt-realtime",
                headers={"Authorization": "Bearer k", "OpenAI-Beta": "realtime=v1"},
            )
            assert (await beta.receive_json())["type"] == "session.created"
            assert emu.last_session.dialect == "beta"
            await beta.close()


async def test_binary_frames_decoded_only_on_request(emulator: RealtimeEmulator, connect: Connect) -> None:
    emulator.decode_binary_frames = True
    c = await connect("ga")
    await c.ws.send_bytes(b'{"type": "input_audio_buffer.clear"}')
    assert (await c.recv_until("input_audio_buffer.cleared"))[-1]["type"] == "input_audio_buffer.cleared"


async def test_unchanged_voice_is_accepted_after_audio(emulator: RealtimeEmulator, connect: Connect) -> None:
    # only a changed voice is confirmed refused (openai-agents-python#1661)
    c = await connect("beta")
    emulator.last_session.assistant_audio = True
    ok = await c.request({"type": "session.update", "session": {"voice": "alloy"}}, "session.updated")
    assert ok[-1]["session"]["voice"] == "alloy"
    refused = await c.error_for({"type": "session.update", "session": {"voice": "echo", "instructions": "x"}})
    assert refused["code"] == "cannot_update_voice"
    assert emulator.last_session.instructions != "x"  # discarded whole


async def test_scripted_answer_replaces_the_answer(emulator: RealtimeEmulator, connect: Connect) -> None:
    emulator.faults.scripted = [
        ScriptedAnswer(
            on="conversation.item.create",
            match={"item.id": "s1"},
            apply=True,
            events=[{"type": "error", "error": {"type": "server_error", "code": None, "message": "m",
                                                 "param": None, "event_id": "{event_id}"}}],
        )
    ]
    c = await connect("ga")
    err = await c.error_for({"type": "conversation.item.create", "event_id": "e9", "item": user("x", "s1")})
    assert err["event_id"] == "e9"
    assert emulator.last_session.item_ids == ["s1"]  # applied, answered with the script
    await c.create(user("y", "s2"))  # once: the next create is answered normally
    assert emulator.last_session.item_ids == ["s1", "s2"]


async def test_azure_2024_preview_has_no_retrieve(emulator: RealtimeEmulator, connect: Connect) -> None:
    c = await connect("beta", path=BETA_2024_PATH, headers={"api-key": "k"})
    err = await c.error_for({"type": "conversation.item.retrieve", "item_id": "x"})
    assert (err["code"], err["param"]) == ("invalid_value", "type")
    assert "'conversation.item.retrieve'. Supported values are:" in err["message"]


async def test_session_close_ends_the_session(emulator: RealtimeEmulator, connect: Connect) -> None:
    # OpenAI GA and Azure GA list session.close (2026-09-18 capture; SonicAIDriveThru)
    c = await connect("ga")
    await c.send({"type": "session.close"})
    msg = await c.ws.receive()
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert c.ws.close_code == 1000
    await emulator.wait_until(lambda: emulator.last_session.closed)
