"""The emulator over a raw websocket: URL shapes, dialects, auth, every rule (with the
exact error shapes), audio buffer, retrieve / truncate / delete, and response flows.

Every server event received here is also checked against the SDK model of its dialect
(`RawClient.recv`).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from livekit_history_plugin.testing import ConversationView, RealtimeEmulator

from .conftest import Connect, RawClient, assistant, user

DIALECTS = ["beta", "ga"]
ACK = {
    "beta": ["conversation.item.created"],
    "ga": ["conversation.item.added", "conversation.item.done"],
}


def error_shape(event: dict[str, Any]) -> None:
    assert set(event) == {"type", "event_id", "error"}
    assert event["event_id"].startswith("event_")
    assert set(event["error"]) == {"type", "code", "message", "param", "event_id"}


# ---------------------------------------------------------------------------
# URL shapes, dialects, auth
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "dialect"),
    [
        (
            "/openai/realtime?api-version=2024-10-01-preview&deployment=dep",
            {"api-key": "k"},
            "beta",
        ),
        (
            "/openai/realtime?api-version=2025-04-01-preview&deployment=dep",
            {"api-key": "k"},
            "beta",
        ),
        ("/openai/v1/realtime?model=dep", {"api-key": "k"}, "ga"),
        ("/openai/v1/realtime?model=dep", {"api-key": "k", "OpenAI-Beta": "realtime=v1"}, "ga"),
        ("/v1/realtime?model=gpt-realtime", {"Authorization": "Bearer k"}, "ga"),
        ("/realtime?model=gpt-realtime", {"Authorization": "Bearer k"}, "ga"),
        (
            "/v1/realtime?model=gpt-realtime",
            {"Authorization": "Bearer k", "OpenAI-Beta": "realtime=v1"},
            "beta",
        ),
    ],
)
async def test_url_shapes_select_the_dialect(
    emulator: RealtimeEmulator, connect: Connect, path: str, headers: dict[str, str], dialect: Any
) -> None:
    # OpenAI's retired beta shape only where explicitly served (the default refuses it:
    # tests/emulator/test_fidelity.py)
    emulator.openai_beta = True
    client = await connect(dialect, path=path, headers=headers)
    session = emulator.last_session
    assert session.dialect == dialect
    created = client.events[0]["session"]
    if dialect == "beta":
        assert created["modalities"] == ["text", "audio"] and "type" not in created
    else:
        assert created["type"] == "realtime" and created["output_modalities"] == ["audio"]
        assert created["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session.model == "gpt-realtime"
    assert not {"authorization", "api-key"} & {k.lower() for k in session.headers}
    assert ("OpenAI-Beta" in session.headers) == ("OpenAI-Beta" in headers)


async def _handshake_status(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, headers=headers)
        async with http.get(url, headers=headers) as resp:
            body = await resp.json()
    return info.value.status, body


async def test_missing_auth_is_http_401(emulator: RealtimeEmulator) -> None:
    url = emulator.openai_base_url + "/realtime?model=gpt-realtime"
    status, body = await _handshake_status(url, {})
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("You didn't provide an API key.")
    assert emulator.sessions == []
    assert emulator.rejected_connections[0][0] == 401


async def test_restricted_keys() -> None:
    async with RealtimeEmulator(api_keys={"good"}) as emu:
        url = emu.base_url + "/openai/v1/realtime?model=x"
        status, body = await _handshake_status(url, {"api-key": "bad"})
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, headers={"Authorization": "Bearer good"})
            assert (await ws.receive_json())["type"] == "session.created"
            await ws.close()


@pytest.mark.parametrize(
    ("path", "status", "param"),
    [
        ("/openai/realtime?deployment=dep", 400, "api-version"),
        ("/openai/realtime?api-version=2024-10-01-preview", 400, "deployment"),
        ("/openai/v1/realtime", 400, "model"),
        ("/v2/somewhere", 404, None),
    ],
)
async def test_bad_paths(emulator: RealtimeEmulator, path: str, status: int, param: Any) -> None:
    got, body = await _handshake_status(emulator.base_url + path, {"api-key": "k"})
    assert got == status
    if param is not None:
        assert body["error"]["param"] == param


def test_addresses_and_kwargs() -> None:
    emu = RealtimeEmulator(api_key="sekret")
    assert emu.azure_kwargs() == {
        "azure_endpoint": emu.base_url,
        "api_key": "sekret",
        "azure_deployment": "gpt-realtime",
        "api_version": "2024-10-01-preview",
    }
    assert "api_version" not in emu.azure_kwargs(api_version=None)
    assert emu.openai_kwargs() == {"base_url": emu.base_url + "/v1", "api_key": "sekret"}


# ---------------------------------------------------------------------------
# conversation items
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_create_acks_and_ordering(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any
) -> None:
    c = await connect(dialect)
    first = await c.create(user("one", "item_a"))
    assert [e["type"] for e in first] == ACK[dialect]
    for ack in first:
        assert ack["previous_item_id"] is None
        assert ack["item"] == {
            "id": "item_a",
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": "one"}],
        }
    second = await c.create(assistant("two", dialect, "item_b"))  # appended
    assert second[0]["previous_item_id"] == "item_a"
    third = await c.create(user("zero", "item_0"), previous_item_id="root")
    assert third[0]["previous_item_id"] is None
    mid = await c.create(user("half", "item_h"), previous_item_id="item_0")
    assert mid[0]["previous_item_id"] == "item_0"
    empty_prev = await c.create(user("last", "item_z"), previous_item_id="")
    assert empty_prev[0]["previous_item_id"] == "item_b"
    session = emulator.last_session
    assert session.item_ids == ["item_0", "item_h", "item_a", "item_b", "item_z"]
    assert session.texts()[:3] == [("user", "zero"), ("user", "half"), ("user", "one")]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_typeless_item(emulator: RealtimeEmulator, connect: Connect, dialect: Any) -> None:
    c = await connect(dialect)
    event = {"type": "conversation.item.create", "event_id": "evt_1", "item": {"id": "handoff_1"}}
    events = await c.request(event, "error")
    error_shape(events[-1])
    assert events[-1]["error"] == {
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "message": "Missing required parameter: 'item.type'.",
        "param": "item.type",
        "event_id": "evt_1",
    }
    assert emulator.typeless_items == 1
    assert emulator.last_session.items == []
    await emulator.wait_until(lambda: emulator.errors_by_code["missing_required_parameter"] == 1)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_unknown_previous_item(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any
) -> None:
    c = await connect(dialect)
    err = await c.error_for(
        {
            "type": "conversation.item.create",
            "event_id": "evt_2",
            "previous_item_id": "handoff_1",
            "item": user("after the handoff"),
        }
    )
    assert err == {
        "type": "invalid_request_error",
        "code": "item_create_invalid_previous_item_id",
        "message": "Error adding item: the previous item with id 'handoff_1' does not exist.",
        "param": None,
        "event_id": "evt_2",
    }
    assert emulator.last_session.items == []


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_duplicate_item_id(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any
) -> None:
    c = await connect(dialect)
    await c.create(user("one", "dup"))
    err = await c.error_for({"type": "conversation.item.create", "item": user("again", "dup")})
    assert err == {
        "type": "invalid_request_error",
        "code": "item_create_duplicate_item_id",
        "message": "Error adding item: an item with id 'dup' already exists.",
        "param": None,
        "event_id": None,
    }
    assert emulator.last_session.texts() == [("user", "one")]


@pytest.mark.parametrize(
    ("dialect", "role", "part", "message"),
    [
        ("beta", "assistant", "output_text", "Invalid value: 'output_text'. Value must be 'text'."),
        ("beta", "assistant", "input_text", "Invalid value: 'input_text'. Value must be 'text'."),
        ("ga", "assistant", "text", "Invalid value: 'text'. Value must be 'output_text'."),
        (
            "ga",
            "assistant",
            "input_text",
            "Invalid value: 'input_text'. Value must be 'output_text'.",
        ),
        (
            "ga",
            "user",
            "text",
            "Invalid value: 'text'. Supported values are: 'input_text' and 'input_audio'.",
        ),
        (
            "beta",
            "user",
            "text",
            "Invalid value: 'text'. Supported values are: 'input_text' and 'input_audio'.",
        ),
        (
            "ga",
            "system",
            "output_text",
            "Invalid value: 'output_text'. Value must be 'input_text'.",
        ),
    ],
)
async def test_wrong_content_part_type(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any, role: str, part: str, message: str
) -> None:
    c = await connect(dialect)
    item = {"type": "message", "role": role, "content": [{"type": part, "text": "x"}]}
    err = await c.error_for({"type": "conversation.item.create", "event_id": "e1", "item": item})
    assert err == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": message,
        "param": "item.content[0].type",
        "event_id": "e1",
    }


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_message_shape_rules(connect: Connect, dialect: Any) -> None:
    c = await connect(dialect)
    empty = await c.error_for(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": []},
        }
    )
    assert (empty["code"], empty["param"]) == ("empty_array", "item.content")
    role = await c.error_for(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "tool",
                "content": [{"type": "input_text", "text": "x"}],
            },
        }
    )
    assert role["message"] == (
        "Invalid value: 'tool'. Supported values are: 'user', 'assistant', and 'system'."
    )
    assert (role["code"], role["param"]) == ("invalid_value", "item.role")
    long_id = await c.error_for({"type": "conversation.item.create", "item": user("x", "i" * 33)})
    assert (long_id["code"], long_id["param"]) == ("string_above_max_length", "item.id")


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_function_call_output_needs_its_call(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any
) -> None:
    c = await connect(dialect)
    output = {"type": "function_call_output", "call_id": "call_1", "output": "42"}
    err = await c.error_for({"type": "conversation.item.create", "item": output})
    assert err["code"] == "invalid_tool_call_id"
    assert err["message"] == "Tool call ID 'call_1' not found in conversation."
    # livekit/agents#3344: param and event_id null
    assert (err["param"], err["event_id"]) == (None, None)
    call = {"type": "function_call", "call_id": "call_1", "name": "add", "arguments": "{}"}
    await c.create(call)
    await c.create(output)
    assert [i["type"] for i in emulator.last_session.items] == [
        "function_call",
        "function_call_output",
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_delete_retrieve_truncate(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any
) -> None:
    c = await connect(dialect)
    await c.create(user("keep", "a"))
    await c.create(assistant("answer", dialect, "b"))
    deleted = await c.request(
        {"type": "conversation.item.delete", "item_id": "a"}, "conversation.item.deleted"
    )
    assert deleted[-1]["item_id"] == "a"
    assert emulator.last_session.item_ids == ["b"]
    err = await c.error_for({"type": "conversation.item.delete", "event_id": "d2", "item_id": "a"})
    assert err == {
        "type": "invalid_request_error",
        "code": "item_delete_invalid_item_id",
        "message": "Error deleting item: the item with id 'a' does not exist.",
        "param": None,
        "event_id": "d2",
    }
    got = await c.request(
        {"type": "conversation.item.retrieve", "item_id": "b"}, "conversation.item.retrieved"
    )
    assert got[-1]["item"]["id"] == "b"
    err = await c.error_for({"type": "conversation.item.retrieve", "item_id": "zz"})
    assert (err["code"], err["message"]) == (
        "item_retrieve_invalid_item_id",
        "Error retrieving item: the item with id 'zz' does not exist.",
    )
    text_truncate = {
        "type": "conversation.item.truncate",
        "item_id": "b",
        "content_index": 0,
        "audio_end_ms": 50,
    }
    err = await c.error_for(text_truncate)
    assert (err["code"], err["param"]) == ("invalid_value", "content_index")
    err = await c.error_for({**text_truncate, "item_id": "nope"})
    assert (err["code"], err["message"]) == (
        "item_truncate_invalid_item_id",
        "Error truncating item: the item with id 'nope' does not exist.",
    )
    # an audio reply (the default session outputs audio) can be truncated
    await c.request({"type": "response.create"}, "response.done")
    spoken = emulator.last_session.responses[-1].item_id
    done = await c.request(
        {**text_truncate, "item_id": spoken, "audio_end_ms": 40}, "conversation.item.truncated"
    )
    assert (done[-1]["item_id"], done[-1]["audio_end_ms"]) == (spoken, 40)
    assert emulator.last_session.truncations == {spoken: 40}
    # the unheard transcript is gone from the server context
    assert emulator.last_session.item(spoken)["content"][0]["transcript"] is None  # type: ignore[index]
    # a delete missing its item_id fails the SDK model of the event
    err = await c.error_for({"type": "conversation.item.delete"})
    assert (err["code"], err["param"]) == ("missing_required_parameter", "item_id")


# ---------------------------------------------------------------------------
# envelope errors, SDK validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_and_unknown_events(
    emulator: RealtimeEmulator, connect: Connect, dialect: Any
) -> None:
    c = await connect(dialect)
    await c.send("{not json")
    bad = (await c.recv_until("error"))[-1]
    error_shape(bad)
    assert (bad["error"]["code"], bad["error"]["event_id"]) == ("invalid_json", None)
    assert bad["error"]["message"].startswith("Invalid event: failed to parse JSON value.")
    unknown = await c.error_for({"type": "ping", "event_id": "p1"})
    assert unknown["code"] == "invalid_value" and unknown["param"] == "type"
    assert unknown["message"].startswith(
        "Invalid value: 'ping'. Supported values are: 'session.update'"
    )
    assert unknown["message"].endswith(", and 'response.cancel'.")
    assert unknown["event_id"] == "p1"
    no_type = await c.error_for({"event_id": "p2"})
    assert (no_type["code"], no_type["param"]) == ("missing_required_parameter", "type")
    assert emulator.last_session.received[0].event is None
    assert emulator.last_session.received[0].raw == "{not json"


async def test_session_update_sdk_failure_is_recorded_not_rejected(
    emulator: RealtimeEmulator, connect: Connect
) -> None:
    c = await connect("ga")
    # a beta-shaped update on GA: no `session.type`
    events = await c.request(
        {"type": "session.update", "session": {"instructions": "be brief"}}, "session.updated"
    )
    assert events[-1]["session"]["instructions"] == "be brief"
    assert emulator.last_session.instructions == "be brief"
    [failure] = emulator.sdk_validation_errors
    assert failure.event_type == "session.update" and not failure.rejected
    assert (
        failure.message
        == "[missing_required_parameter] Missing required parameter: 'session.type'."
    )


async def test_strict_session_rejects_it(connect: Connect, emulator: RealtimeEmulator) -> None:
    emulator.strict_session = True
    c = await connect("ga")
    err = await c.error_for(
        {"type": "session.update", "event_id": "s1", "session": {"instructions": "x"}}
    )
    assert err == {
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "message": "Missing required parameter: 'session.type'.",
        "param": "session.type",
        "event_id": "s1",
    }
    assert emulator.sdk_validation_errors[0].rejected


async def test_item_sdk_failure_is_rejected(emulator: RealtimeEmulator, connect: Connect) -> None:
    c = await connect("ga")
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": 7}]}
    err = await c.error_for({"type": "conversation.item.create", "item": item})
    assert (err["code"], err["param"]) == ("invalid_type", "item.content[0].text")
    assert emulator.sdk_validation_errors[0].rejected
    assert emulator.last_session.items == []


async def test_session_update_merges_nested_audio(connect: Connect) -> None:
    c = await connect("ga")
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["text"],
            "audio": {"output": {"voice": "marin"}},
        },
    }
    session = (await c.request(update, "session.updated"))[-1]["session"]
    assert session["output_modalities"] == ["text"]
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "marin",
        "speed": 1.0,
    }


# ---------------------------------------------------------------------------
# input audio
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_audio_buffer(emulator: RealtimeEmulator, connect: Connect, dialect: Any) -> None:
    import base64

    c = await connect(dialect)
    chunk = base64.b64encode(bytes(2400)).decode()  # 50 ms of pcm16 @ 24 kHz
    await c.send({"type": "input_audio_buffer.append", "audio": chunk})
    err = await c.error_for({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert err == {
        "type": "invalid_request_error",
        "code": "input_audio_buffer_commit_empty",
        "message": "Error committing input audio buffer: buffer too small. Expected at least "
        "100ms of audio, but buffer only has 50.00ms of audio.",
        "param": None,
        "event_id": "c1",
    }
    session = emulator.last_session
    assert session.audio_appends == 1
    assert session.first_audio_at == session.received[0].t
    await c.send({"type": "input_audio_buffer.append", "audio": chunk})
    events = await c.request({"type": "input_audio_buffer.commit"}, ACK[dialect][-1])
    assert [e["type"] for e in events] == ["input_audio_buffer.committed", *ACK[dialect]]
    assert session.items[0]["content"] == [{"type": "input_audio", "transcript": None}]
    cleared = await c.request({"type": "input_audio_buffer.clear"}, "input_audio_buffer.cleared")
    assert cleared[-1]["type"] == "input_audio_buffer.cleared"


# ---------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------

TEXT_FLOW = {
    "beta": [
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        "response.text.delta",
        "response.text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ],
    "ga": [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        # GA order of two recorded captures (README D12)
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ],
}


def _dedup(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


async def _text_session(connect: Connect, dialect: Any) -> RawClient:
    c = await connect(dialect)
    key = "modalities" if dialect == "beta" else "output_modalities"
    session: dict[str, Any] = {key: ["text"], "instructions": "be kind"}
    if dialect == "ga":
        session["type"] = "realtime"
    await c.request({"type": "session.update", "session": session}, "session.updated")
    return c


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_text_response(emulator: RealtimeEmulator, connect: Connect, dialect: Any) -> None:
    c = await _text_session(connect, dialect)
    await c.create(user("earlier", "u1"))
    await c.create(assistant("sure", dialect, "a1"))
    await c.create(user("what did I say?", "u2"))
    meta = {"client_event_id": "response_create_1"}
    events = await c.request(
        {
            "type": "response.create",
            "event_id": "response_create_1",
            "response": {"metadata": meta},
        },
        "response.done",
    )
    assert _dedup([e["type"] for e in events]) == TEXT_FLOW[dialect]
    created, done = events[0]["response"], events[-1]["response"]
    assert created["metadata"] == meta and created["status"] == "in_progress"
    expected = "I see 3 earlier messages. Last user message: what did I say?"
    deltas = "".join(e["delta"] for e in events if e["type"].endswith("text.delta"))
    assert deltas == expected
    part = "text" if dialect == "beta" else "output_text"
    assert done["status"] == "completed"
    assert done["output"][0]["content"] == [{"type": part, "text": expected}]
    assert done["usage"]["output_tokens"] > 0
    ack = next(
        e for e in events if e["type"] in ("conversation.item.created", "conversation.item.added")
    )
    assert ack["previous_item_id"] == "u2"
    assert ack["item"]["status"] == "in_progress" and ack["item"]["content"] == []
    session = emulator.last_session
    [record] = session.responses
    assert record.modalities == ("text",) and not record.audio
    assert record.client_event_id == "response_create_1" and record.metadata == meta
    assert [i["id"] for i in record.conversation] == ["u1", "a1", "u2"]
    assert record.instructions == "be kind"
    assert session.texts()[-1] == ("assistant", expected)
    assert session.item_ids[-1] == record.item_id


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_audio_response(emulator: RealtimeEmulator, connect: Connect, dialect: Any) -> None:
    c = await connect(dialect)  # default session: audio output
    events = await c.request({"type": "response.create"}, "response.done")
    types = [e["type"] for e in events]
    prefix = "response.audio" if dialect == "beta" else "response.output_audio"
    assert f"{prefix}.delta" in types and f"{prefix}_transcript.done" in types
    audio = next(e for e in events if e["type"] == f"{prefix}.delta")
    assert len(audio["delta"]) > 0
    transcript = "".join(e["delta"] for e in events if e["type"] == f"{prefix}_transcript.delta")
    assert transcript == "I see 0 earlier messages. Last user message: <none>"
    part = events[-1]["response"]["output"][0]["content"][0]
    assert part == {
        "type": "audio" if dialect == "beta" else "output_audio",
        "transcript": transcript,
    }
    record = emulator.last_session.responses[0]
    assert record.audio
    assert record.modalities == (("text", "audio") if dialect == "beta" else ("audio",))


async def test_reply_callable_and_out_of_band(emulator: RealtimeEmulator, connect: Connect) -> None:
    seen: list[ConversationView] = []

    def reply(view: ConversationView) -> str:
        seen.append(view)
        return "|".join(f"{role}:{text}" for role, text in view.texts())

    emulator.reply = reply
    c = await _text_session(connect, "ga")
    await c.create(user("hi", "u1"))
    events = await c.request(
        {"type": "response.create", "response": {"conversation": "none", "instructions": "oob"}},
        "response.done",
    )
    assert "conversation.item.added" not in [e["type"] for e in events]
    assert events[-1]["response"]["conversation_id"] is None
    assert seen[0].instructions == "oob" and seen[0].texts() == [("user", "hi")]
    assert emulator.last_session.item_ids == ["u1"]  # nothing added to the conversation
    events = await c.request(
        {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "input": [{"type": "item_reference", "id": "u1"}, user("extra")],
            },
        },
        "response.done",
    )
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "user:hi|user:extra"


async def test_cancel_and_active_response(emulator: RealtimeEmulator, connect: Connect) -> None:
    c = await _text_session(connect, "ga")
    err = await c.error_for({"type": "response.cancel", "event_id": "x1"})
    assert err == {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": "x1",
    }
    emulator.faults.hold_responses = True
    created = await c.request({"type": "response.create"}, "response.created")
    rid = created[-1]["response"]["id"]
    busy = await c.error_for({"type": "response.create"})
    assert busy["code"] == "conversation_already_has_active_response"
    assert busy["message"] == (
        f"Conversation already has an active response in progress: {rid}. "
        "Wait until the response is finished before creating a new one."
    )
    done = await c.request({"type": "response.cancel"}, "response.done")
    assert done[-1]["response"]["status"] == "cancelled"
    assert emulator.last_session.responses[0].status == "cancelled"
    assert emulator.last_session.items == []
    # a held response finishes when released
    await c.request({"type": "response.create"}, "response.created")
    emulator.release_responses()
    await c.recv_until("response.done")
    assert emulator.last_session.responses[-1].status == "completed"
    assert len(emulator.last_session.items) == 1


async def test_failing_reply_fails_the_response(
    emulator: RealtimeEmulator, connect: Connect
) -> None:
    def boom(view: ConversationView) -> str:
        raise RuntimeError("scripted failure")

    emulator.reply = boom
    c = await _text_session(connect, "beta")
    events = await c.request({"type": "response.create"}, "response.done")
    assert [e["type"] for e in events] == ["response.created", "response.done"]
    assert events[-1]["response"]["status"] == "failed"


async def test_other_events(emulator: RealtimeEmulator, connect: Connect) -> None:
    beta = await connect("beta")
    err = await beta.error_for({"type": "transcription_session.update", "session": {}})
    assert (err["code"], err["param"]) == ("invalid_value", "type")
    ga = await connect("ga")
    # WebRTC/SIP only: the OpenAI GA websocket does not list it (2026-09-18 capture)
    err = await ga.error_for({"type": "output_audio_buffer.clear"})
    assert (err["code"], err["param"]) == ("invalid_value", "type")
    # the GA dialect has no transcription_session.update at all
    err = await ga.error_for({"type": "transcription_session.update", "session": {}})
    assert err["message"].startswith("Invalid value: 'transcription_session.update'.")


def test_conversation_view_and_default_reply() -> None:
    items = (
        {
            "id": "s",
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "rules"}],
        },
        {
            "id": "u",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": "spoken"}],
        },
        {"id": "f", "type": "function_call", "call_id": "c", "name": "n", "arguments": "{}"},
    )
    view = ConversationView(dialect="ga", items=items, instructions=None, session={}, response={})
    assert view.texts() == [("system", "rules"), ("user", "spoken")]
    assert view.last_user_text == "spoken"
    assert [m["id"] for m in view.messages("system")] == ["s"]
    from livekit_history_plugin.testing import default_reply

    assert default_reply(view) == "I see 2 earlier messages. Last user message: spoken"
    empty = ConversationView(dialect="beta", items=(), instructions=None, session={}, response={})
    assert default_reply(empty) == "I see 0 earlier messages. Last user message: <none>"
