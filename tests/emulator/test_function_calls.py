"""Scripted tool calls: a reply function returning :class:`FunctionCallReply` makes the
emulated model call a tool, with the events the real API streams in each dialect.

Event shapes: the ``openai`` SDK server-event models (every event is validated by
``RawClient.recv``); the beta ``response.function_call_arguments.done`` has no ``name``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, RunContext, function_tool
from livekit.plugins.openai import realtime as lk_realtime

from livekit_history_plugin.testing import (
    ConversationView,
    Dialect,
    FunctionCallReply,
    RealtimeEmulator,
    reply_with_tool,
    validate_client_event,
    validate_server_event,
)

from .conftest import Connect, user

HAS_BETA_CLASS = hasattr(lk_realtime, "RealtimeModelBeta")  # livekit <= 1.4
PATHS: list[tuple[str, str]] = [("azure", "beta"), ("openai", "ga")]
PATHS += [("openai-beta", "beta")] if HAS_BETA_CLASS else [("azure-ga", "ga")]

BETA_SEQUENCE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.created",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.done",
]
GA_SEQUENCE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "conversation.item.done",  # before output_item.done, as recorded (README D12)
    "response.output_item.done",
    "response.done",
]


def _squash(types: list[str]) -> list[str]:
    """Event types with runs of deltas collapsed to one."""
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t and t.endswith(".delta")):
            out.append(t)
    return out


def _weather_call(view: ConversationView) -> str | FunctionCallReply:
    if view.items and view.items[-1].get("type") == "function_call_output":
        return "It is sunny: " + str(view.items[-1].get("output"))
    return FunctionCallReply("get_weather", {"city": "Paris"}, call_id="call_weather1")


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_function_call_events(
    emulator: RealtimeEmulator, connect: Connect, dialect: Dialect
) -> None:
    emulator.reply = _weather_call
    client = await connect(dialect)
    await client.create(user("weather in Paris?", "u1"))
    events = await client.request({"type": "response.create"}, "response.done")
    types = [e["type"] for e in events]
    assert _squash(types) == (BETA_SEQUENCE if dialect == "beta" else GA_SEQUENCE)
    deltas = [e["delta"] for e in events if e["type"].endswith("arguments.delta")]
    assert json.loads("".join(deltas)) == {"city": "Paris"}

    by_type = {e["type"]: e for e in events}
    added = by_type["response.output_item.added"]["item"]
    assert added["type"] == "function_call" and added["status"] == "in_progress"
    assert added["arguments"] == "" and added["call_id"] == "call_weather1"
    args_done = by_type["response.function_call_arguments.done"]
    assert args_done["arguments"] == '{"city": "Paris"}'
    assert args_done["call_id"] == "call_weather1"
    assert ("name" in args_done) == (dialect == "ga")
    done_item = by_type["response.output_item.done"]["item"]
    assert done_item == {**added, "status": "completed", "arguments": '{"city": "Paris"}'}
    response = by_type["response.done"]["response"]
    assert response["status"] == "completed" and response["output"] == [done_item]
    ack = by_type["conversation.item.created" if dialect == "beta" else "conversation.item.added"]
    assert ack["previous_item_id"] == "u1" and ack["item"]["id"] == done_item["id"]

    s = emulator.last_session
    assert s.items[-1] == done_item
    assert s.responses[-1].function_call == FunctionCallReply(
        "get_weather", {"city": "Paris"}, call_id="call_weather1"
    )
    assert s.responses[-1].text == ""

    # the call is in the conversation, so its output is accepted and seen by the model
    output = {"type": "function_call_output", "call_id": "call_weather1", "output": "22C"}
    await client.create(output)
    events = await client.request({"type": "response.create"}, "response.done")
    assert events[-1]["response"]["status"] == "completed"
    assert s.texts()[-1] == ("assistant", "It is sunny: 22C")
    assert s.error_codes() == []


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_unknown_call_id_is_still_rejected(
    emulator: RealtimeEmulator, connect: Connect, dialect: Dialect
) -> None:
    emulator.reply = _weather_call
    client = await connect(dialect)
    await client.create(user("weather?"))
    await client.request({"type": "response.create"}, "response.done")
    err = await client.error_for(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_other", "output": "x"},
        }
    )
    assert err["code"] == "invalid_tool_call_id"


@pytest.mark.parametrize("dialect", ["beta", "ga"])
async def test_out_of_band_function_call_stays_out_of_the_conversation(
    emulator: RealtimeEmulator, connect: Connect, dialect: Dialect
) -> None:
    emulator.reply = lambda view: FunctionCallReply("classify", '{"topic": "sales"}')
    client = await connect(dialect)
    await client.create(user("hi", "u1"))
    event = {"type": "response.create", "response": {"conversation": "none"}}
    events = await client.request(event, "response.done")
    types = {e["type"] for e in events}
    assert not types & {"conversation.item.created", "conversation.item.added"}
    assert events[-1]["response"]["conversation_id"] is None
    assert events[-1]["response"]["output"][0]["arguments"] == '{"topic": "sales"}'
    assert emulator.last_session.item_ids == ["u1"]


async def test_bad_reply_value_fails_the_response(
    emulator: RealtimeEmulator, connect: Connect
) -> None:
    emulator.reply = lambda view: 42  # type: ignore[assignment,return-value]
    client = await connect("ga")
    events = await client.request({"type": "response.create"}, "response.done")
    assert events[-1]["response"]["status"] == "failed"


def test_function_call_reply_checks_its_fields() -> None:
    with pytest.raises(ValueError):
        FunctionCallReply("", {})
    with pytest.raises(TypeError):
        FunctionCallReply("f", 3)  # type: ignore[arg-type]
    assert FunctionCallReply("f", {"a": 1}).arguments_json() == '{"a": 1}'
    assert FunctionCallReply("f", '{"a":1}').arguments_json() == '{"a":1}'


def _view(*items: dict[str, Any]) -> ConversationView:
    return ConversationView("ga", tuple(items), None, {}, {})


def test_reply_with_tool_calls_once_per_user_turn() -> None:
    reply = reply_with_tool(
        "transfer", lambda v: "transfer" in (v.last_user_text or ""), arguments={"to": "b"}
    )
    asks = user("please transfer me")
    call = {"type": "function_call", "name": "transfer", "call_id": "c1", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    assert reply(_view(asks)) == FunctionCallReply("transfer", {"to": "b"})
    assert isinstance(reply(_view(asks, call, output)), str)
    assert isinstance(reply(_view(user("hello"))), str)
    # a new request in a later turn calls it again
    assert isinstance(reply(_view(asks, call, output, asks)), FunctionCallReply)


# -- the real livekit client ------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_VERSION", "AZURE_OPENAI_ENDPOINT", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


class WeatherAgent(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You tell the weather.")
        self.calls: list[str] = []

    @function_tool
    async def get_weather(self, context: RunContext, city: str) -> str:
        """Look up the weather of a city.

        Args:
            city: the city
        """
        self.calls.append(city)
        return f"22C in {city}"


def _weather_reply(view: ConversationView) -> str | FunctionCallReply:
    last = view.items[-1] if view.items else {}
    if last.get("type") == "function_call_output":
        return f"Tool said: {last.get('output')}"
    return FunctionCallReply("get_weather", {"city": "Paris"})


@pytest.mark.parametrize("path", PATHS, ids=[k for k, _ in PATHS])
async def test_agent_session_runs_the_tool(
    emulator: RealtimeEmulator, path: tuple[str, str]
) -> None:
    emulator.reply = _weather_reply
    emulator.openai_beta = path[0] == "openai-beta"  # the retired shape, served explicitly
    model = emulator.realtime_model(path[0], modalities=["text"])  # type: ignore[arg-type]
    agent = WeatherAgent()
    async with AgentSession(llm=model) as agent_session:
        await agent_session.start(agent)
        await asyncio.wait_for(agent_session.run(user_input="weather in Paris?"), 20)
        s = emulator.last_session
        await emulator.wait_until(lambda: len(s.responses) >= 2 and s.texts()[-1][0] == "assistant")
    assert agent.calls == ["Paris"]
    assert s.dialect == path[1]
    call_item = next(i for i in s.items if i["type"] == "function_call")
    outputs = s.received_of("conversation.item.create")
    sent_output = [e["item"] for e in outputs if e["item"].get("type") == "function_call_output"]
    assert [o["call_id"] for o in sent_output] == [call_item["call_id"]]
    assert "22C in Paris" in sent_output[0]["output"]
    # the output was accepted and a second response answered with text
    assert s.responses[0].function_call is not None
    assert s.responses[-1].function_call is None
    assert s.texts()[-1][1].startswith("Tool said: ")
    assert [c for c in s.error_codes() if c != "response_cancel_not_active"] == []
    for e in s.received:
        if e.type in ("conversation.item.create", "response.create"):
            validate_client_event(e.event, s.dialect)
    for sent in s.sent:
        validate_server_event(sent.event, s.dialect)
