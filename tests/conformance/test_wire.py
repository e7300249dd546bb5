"""Recorded server answers, checked against the emulator over a raw websocket: the same
client events get the same error objects, close codes, acks and event order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from livekit_history_plugin.testing import RealtimeEmulator, validate_server_event

from .conftest import cases

WIRE = list(cases("wire"))
TIMEOUT = 5.0


async def _events_until(ws: aiohttp.ClientWebSocketResponse, done: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not done(out):
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        event = json.loads(msg.data)
        out.append(event)
    return out


def _dialect(path: str, headers: dict[str, str]) -> Any:
    if path.startswith("/openai/realtime"):
        return "beta"
    return "beta" if headers.get("OpenAI-Beta") else "ga"


def _check_error(error: dict[str, Any], expect: dict[str, Any]) -> None:
    for key, value in expect.get("error", {}).items():
        assert error.get(key) == value, (key, error)
    message = str(error.get("message"))
    if "message_starts" in expect:
        assert message.startswith(expect["message_starts"]), message
    for part in expect.get("message_contains", ()):
        assert part in message, message
    for part in expect.get("message_lacks", ()):
        assert part not in message, message


@pytest.mark.parametrize(("case", "data"), [(c, d) for _, c, d in WIRE], ids=[i for i, _, _ in WIRE])
async def test_recorded_answer(case: dict[str, Any], data: dict[str, Any]) -> None:
    expect = case["expect"]
    headers = case.get("headers", {"Authorization": "Bearer test-key"})
    async with RealtimeEmulator(api_keys={"test-key", "k"}) as emu, aiohttp.ClientSession() as http:
        url = emu.base_url.replace("http", "ws", 1) + case["path"]
        if "http" in expect:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, headers=headers)
            assert info.value.status == expect["http"]
            assert emu.sessions == []
            return
        ws = await http.ws_connect(url, headers=headers)
        if "close" in expect:
            # upgraded (101), then one error and a close with the recorded code
            events = await _events_until(ws, lambda got: False)
            assert [e["type"] for e in events] == ["error"]
            _check_error(events[0]["error"], expect)
            assert ws.close_code == expect["close"]
            assert emu.sessions == [] and emu.refused_connections[0][0] == expect["close"]
            return
        dialect = _dialect(case["path"], headers)
        created = await _events_until(ws, lambda got: bool(got))
        assert created[0]["type"] == "session.created"
        for event in case.get("send", ()):
            if "raw" in event:
                await ws.send_str(event["raw"])
            elif "binary" in event:
                await ws.send_bytes(event["binary"].encode())
            else:
                await ws.send_str(json.dumps(event))
        await emu.wait_until(lambda: len(emu.last_session.received) == len(case.get("send", ())))
        session = emu.last_session
        await emu.wait_until(lambda: not session._heap)
        sent = [s.event for s in session.sent]
        for event in sent:
            validate_server_event(event, dialect)
        if "error" in expect:
            errors = [e for e in sent if e["type"] == "error"]
            assert len(errors) == 1, errors
            _check_error(errors[0]["error"], expect)
        if "acks" in expect:
            ack_type = "conversation.item.created" if dialect == "beta" else "conversation.item.added"
            acks = {e["item"]["id"]: e["previous_item_id"] for e in sent if e["type"] == ack_type}
            for item_id, prev in expect["acks"].items():
                assert acks[item_id] == prev, (item_id, acks)
        if "items" in expect:
            assert session.item_ids == expect["items"]
        await ws.close()
