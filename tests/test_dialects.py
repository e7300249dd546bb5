"""Wire JSON for the beta and GA realtime dialects, checked against the openai SDK's own models.

What the SDK models check, and what they do not (so the tests add it):

* GA (``openai.types.realtime``): ``ConversationItem`` is a union of one model per item
  kind and role, so a missing ``type``, an unknown role, and a content part type the role
  cannot carry (assistant ``input_text``/``text``, user or system ``output_text``/``text``)
  all fail validation.
* beta (``openai.types.beta.realtime``): one flat ``ConversationItem`` with every field
  optional, including ``type``, and one ``ConversationItemContent`` shared by all roles.
  The SDK accepts a typeless ``{"id": ...}`` (livekit's handoff bug) and any part type on
  any role; only unknown part types (e.g. ``output_text``) fail. The role/part table the
  server enforces is written down in the SDK's docstring and checked here by
  `assert_beta_roles_match_parts`.
* Neither rejects unknown keys: openai's BaseModel is ``extra="allow"`` and keeps them, so
  a round-trip compare alone would not catch a misspelt field. `validate` also asserts no
  model in the parsed tree holds extras.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import rtc
from livekit.agents import llm
from openai.types import realtime as ga_sdk
from openai.types.beta import realtime as beta_sdk
from pydantic import BaseModel, ValidationError

from livekit_history_plugin.dialects import (
    DIALECTS,
    ITEM_CREATED_ACK,
    MAX_CALL_ID_CHARS,
    create_item_event,
    delete_item_event,
    item_to_wire,
    text_part_type,
    wire_call_id,
    wire_item_to_livekit,
)

CREATE_MODEL: dict[str, type[BaseModel]] = {
    "beta": beta_sdk.ConversationItemCreateEvent,
    "ga": ga_sdk.ConversationItemCreateEvent,
}
DELETE_MODEL: dict[str, type[BaseModel]] = {
    "beta": beta_sdk.ConversationItemDeleteEvent,
    "ga": ga_sdk.ConversationItemDeleteEvent,
}
# the server's rule, from the beta SDK's ConversationItem.content docstring
BETA_PARTS_BY_ROLE = {
    "system": {"input_text"},
    "user": {"input_text", "input_audio"},
    "assistant": {"text"},
}
AgentHandoff: Any = getattr(llm, "AgentHandoff", None)
Instructions: Any = getattr(
    importlib.import_module("livekit.agents.llm.chat_context"), "Instructions", None
)


def msg(item_id: str, role: str, *content: Any) -> llm.ChatMessage:
    return llm.ChatMessage(id=item_id, role=role, content=list(content))  # type: ignore[arg-type]


def call(item_id: str = "f1", call_id: str = "call_1") -> llm.FunctionCall:
    return llm.FunctionCall(
        id=item_id, call_id=call_id, name="get_weather", arguments='{"q":"Paris"}'
    )


def output(item_id: str = "o1", call_id: str = "call_1") -> llm.FunctionCallOutput:
    return llm.FunctionCallOutput(id=item_id, call_id=call_id, output="sunny", is_error=False)


def assert_no_extras(model: Any) -> None:
    if isinstance(model, BaseModel):
        assert not model.model_extra, (
            f"unknown keys kept by {type(model).__name__}: {model.model_extra}"
        )
        for name in type(model).model_fields:
            assert_no_extras(getattr(model, name))
    elif isinstance(model, list):
        for value in model:
            assert_no_extras(value)


def validate(event: dict[str, Any], model: type[BaseModel]) -> BaseModel:
    """Validate with the SDK model; nothing may be dropped, added or unknown."""
    parsed = model.model_validate(event)
    assert parsed.model_dump(mode="json", exclude_unset=True) == event
    assert_no_extras(parsed)
    assert json.loads(json.dumps(event, ensure_ascii=False)) == event  # plain JSON
    return parsed


def assert_beta_roles_match_parts(item: dict[str, Any]) -> None:
    if item.get("type") == "message":
        allowed = BETA_PARTS_BY_ROLE[item["role"]]
        assert {part["type"] for part in item["content"]} <= allowed


ITEMS = {
    "user": lambda: msg("m_user", "user", "Hello", "second part"),
    "assistant": lambda: msg("m_asst", "assistant", "Hi, how can I help?"),
    "system": lambda: msg("m_sys", "system", "The caller is a returning customer."),
    "developer": lambda: msg("m_dev", "developer", "Be brief."),
    "function_call": call,
    "function_call_output": output,
}

EXPECTED_ITEMS: dict[str, dict[str, dict[str, Any]]] = {
    dialect: {
        "user": {
            "id": "m_user",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [
                {"type": "input_text", "text": "Hello"},
                {"type": "input_text", "text": "second part"},
            ],
        },
        "assistant": {
            "id": "m_asst",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": assistant_part, "text": "Hi, how can I help?"}],
        },
        "system": {
            "id": "m_sys",
            "type": "message",
            "role": "system",
            "status": "completed",
            "content": [{"type": "input_text", "text": "The caller is a returning customer."}],
        },
        "developer": {
            "id": "m_dev",
            "type": "message",
            "role": "system",
            "status": "completed",
            "content": [{"type": "input_text", "text": "Be brief."}],
        },
        "function_call": {
            "id": "f1",
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"q":"Paris"}',
        },
        "function_call_output": {
            "id": "o1",
            "type": "function_call_output",
            "call_id": "call_1",
            "output": "sunny",
        },
    }
    for dialect, assistant_part in (("beta", "text"), ("ga", "output_text"))
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", sorted(ITEMS))
def test_item_to_wire_is_exact(dialect: str, kind: str) -> None:
    assert item_to_wire(ITEMS[kind](), dialect) == EXPECTED_ITEMS[dialect][kind]  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", sorted(ITEMS))
@pytest.mark.parametrize("previous_item_id", [None, "root", "m_prev"])
def test_create_event_validates_with_sdk(
    dialect: str, kind: str, previous_item_id: str | None
) -> None:
    event = create_item_event(
        ITEMS[kind](),
        dialect=dialect,
        event_id="evt_1",
        previous_item_id=previous_item_id,  # type: ignore[arg-type]
    )
    expected: dict[str, Any] = {"type": "conversation.item.create", "event_id": "evt_1"}
    if previous_item_id is not None:
        expected["previous_item_id"] = previous_item_id
    expected["item"] = EXPECTED_ITEMS[dialect][kind]
    assert event == expected
    assert ("previous_item_id" in event) is (previous_item_id is not None)  # None appends
    validate(event, CREATE_MODEL[dialect])
    if dialect == "beta":
        assert_beta_roles_match_parts(event["item"])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_delete_event_validates_with_sdk(dialect: str) -> None:
    event = delete_item_event("m_user", event_id="evt_2")
    assert event == {"type": "conversation.item.delete", "event_id": "evt_2", "item_id": "m_user"}
    validate(event, DELETE_MODEL[dialect])


def test_text_part_types_per_role_and_dialect() -> None:
    table = {
        (r, d): text_part_type(r, d)
        for r in ("user", "system", "assistant", "developer")
        for d in DIALECTS
    }
    assert table == {
        ("user", "beta"): "input_text",
        ("user", "ga"): "input_text",
        ("system", "beta"): "input_text",
        ("system", "ga"): "input_text",
        ("developer", "beta"): "input_text",
        ("developer", "ga"): "input_text",
        ("assistant", "beta"): "text",
        ("assistant", "ga"): "output_text",
    }
    with pytest.raises(ValueError, match="dialect"):
        text_part_type("user", "v2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role"):
        text_part_type("tool", "ga")


def test_item_created_ack_names_match_sdk_server_events() -> None:
    assert ITEM_CREATED_ACK == {
        "beta": "conversation.item.created",
        "ga": "conversation.item.added",
    }
    beta_type = beta_sdk.ConversationItemCreatedEvent.model_fields["type"].annotation
    ga_type = ga_sdk.ConversationItemAdded.model_fields["type"].annotation
    assert beta_type.__args__ == (ITEM_CREATED_ACK["beta"],)  # type: ignore[union-attr]
    assert ga_type.__args__ == (ITEM_CREATED_ACK["ga"],)  # type: ignore[union-attr]


# --- what the SDK models enforce (and where the tests must do it themselves) -----------


def _event_with_item(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "event_id": "evt", "item": item}


def _message(role: str, part_type: str) -> dict[str, Any]:
    return {
        "id": "m1",
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [{"type": part_type, "text": "hi"}],
    }


@pytest.mark.parametrize(
    ("role", "part_type"),
    [
        ("assistant", "input_text"),
        ("assistant", "text"),  # the beta spelling
        ("user", "output_text"),
        ("user", "text"),
        ("system", "output_text"),
        ("system", "text"),
    ],
)
def test_ga_sdk_rejects_wrong_part_types(role: str, part_type: str) -> None:
    with pytest.raises(ValidationError):
        ga_sdk.ConversationItemCreateEvent.model_validate(
            _event_with_item(_message(role, part_type))
        )


@pytest.mark.parametrize(
    ("role", "part_type"), [("assistant", "output_text"), ("user", "output_text")]
)
def test_beta_sdk_rejects_ga_only_part_types(role: str, part_type: str) -> None:
    with pytest.raises(ValidationError):
        beta_sdk.ConversationItemCreateEvent.model_validate(
            _event_with_item(_message(role, part_type))
        )


@pytest.mark.parametrize(
    ("role", "part_type"), [("assistant", "input_text"), ("user", "text"), ("system", "text")]
)
def test_beta_sdk_does_not_check_part_type_per_role(role: str, part_type: str) -> None:
    # the SDK lets it through, the server would not: our own table catches it
    event = _event_with_item(_message(role, part_type))
    validate(event, beta_sdk.ConversationItemCreateEvent)
    with pytest.raises(AssertionError):
        assert_beta_roles_match_parts(event["item"])


def test_typeless_item_livekit_bug_shape() -> None:
    event = _event_with_item({"id": "item_handoff"})  # what livekit <= 1.4.3 beta sends
    validate(event, beta_sdk.ConversationItemCreateEvent)  # the beta SDK accepts it...
    with pytest.raises(ValidationError):  # ...GA does not; the server rejects both
        ga_sdk.ConversationItemCreateEvent.model_validate(event)


def test_unknown_keys_are_kept_by_the_sdk_so_validate_checks_them() -> None:
    item = EXPECTED_ITEMS["ga"]["user"] | {"statuz": "completed"}
    with pytest.raises(AssertionError, match="unknown keys"):
        validate(_event_with_item(item), ga_sdk.ConversationItemCreateEvent)


# --- unconvertible input -------------------------------------------------------------


def _frame() -> rtc.AudioFrame:
    return rtc.AudioFrame.create(24000, 1, 240)


class Bogus:
    type = "message"
    id = "b1"
    role = "user"
    content = ["hi"]


UNCONVERTIBLE: list[tuple[str, Any, str]] = [
    (
        "audio part",
        lambda: msg("m", "assistant", llm.AudioContent(frame=[_frame()], transcript="hi")),
        "AudioContent",
    ),
    (
        "image part",
        lambda: msg("m", "user", llm.ImageContent(image="https://example.com/x.png")),
        "ImageContent",
    ),
    (
        "none part",
        lambda: llm.ChatMessage.model_construct(
            id="m", type="message", role="user", content=[None]
        ),
        "NoneType",
    ),
    ("empty message", lambda: msg("m", "user"), "no content"),
    (
        "bad role",
        lambda: llm.ChatMessage.model_construct(id="m", type="message", role="tool", content=["x"]),
        "role",
    ),
    (
        "empty id",
        lambda: llm.ChatMessage.model_construct(id="", type="message", role="user", content=["x"]),
        "empty id",
    ),
    (
        "no id",
        lambda: llm.ChatMessage.model_construct(
            id=None, type="message", role="user", content=["x"]
        ),
        "'id'",
    ),
    (
        "call without name",
        lambda: llm.FunctionCall.model_construct(
            id="f", type="function_call", call_id="c", name=None, arguments="{}"
        ),
        "'name'",
    ),
    (
        "call with empty call_id",
        lambda: llm.FunctionCall.model_construct(
            id="f", type="function_call", call_id="", name="n", arguments="{}"
        ),
        "call_id",
    ),
    (
        "output not str",
        lambda: llm.FunctionCallOutput.model_construct(
            id="o", type="function_call_output", call_id="c", output=3, is_error=False
        ),
        "'output'",
    ),
    ("lone surrogate", lambda: msg("m", "user", "a\ud800"), "unicode"),
    ("unknown class", Bogus, "Bogus"),
    ("not an item", lambda: None, "NoneType"),
]
if AgentHandoff is not None:
    UNCONVERTIBLE.append(
        ("agent handoff", lambda: AgentHandoff(id="h", new_agent_id="b"), "agent_handoff")
    )


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("name", "make", "message"), UNCONVERTIBLE, ids=[u[0] for u in UNCONVERTIBLE]
)
def test_unconvertible_items_raise_value_error(
    dialect: str, name: str, make: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        item_to_wire(make(), dialect)  # type: ignore[arg-type]


def test_bad_event_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="dialect"):
        item_to_wire(msg("m", "user", "x"), "v1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_id"):
        create_item_event(msg("m", "user", "x"), dialect="ga", event_id="", previous_item_id=None)
    with pytest.raises(ValueError, match="previous_item_id"):
        create_item_event(msg("m", "user", "x"), dialect="ga", event_id="e", previous_item_id="")
    with pytest.raises(ValueError, match="item_id"):
        delete_item_event("", event_id="e")
    with pytest.raises(ValueError, match="event_id"):
        delete_item_event("m", event_id=None)  # type: ignore[arg-type]


# --- details --------------------------------------------------------------------------


@pytest.mark.skipif(
    Instructions is None or not issubclass(Instructions, str),
    reason="str Instructions: livekit 1.4.6-1.5",
)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_instructions_str_subclass_goes_out_as_plain_str(dialect: str) -> None:
    item = item_to_wire(msg("s", "system", Instructions("voice", text="text")), dialect)  # type: ignore[arg-type]
    text = item["content"][0]["text"]
    assert type(text) is str and text == "voice"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_long_call_ids_are_hashed_consistently(dialect: str) -> None:
    long_id = "toolu_" + "x" * 60
    wire_call = item_to_wire(call(call_id=long_id), dialect)  # type: ignore[arg-type]
    wire_out = item_to_wire(output(call_id=long_id), dialect)  # type: ignore[arg-type]
    assert wire_call["call_id"] == wire_out["call_id"] == wire_call_id(long_id)
    assert len(wire_call["call_id"]) == MAX_CALL_ID_CHARS
    assert item_to_wire(call(call_id="c" * 32), dialect)["call_id"] == "c" * 32  # type: ignore[arg-type]


def test_call_id_hash_matches_livekit_when_it_has_one() -> None:
    try:
        utils = importlib.import_module("livekit.agents.llm._realtime.openai_utils")
    except ImportError:
        pytest.skip("livekit < 1.8 does not shorten call ids")
    long_id = "call_" + "z" * 50
    assert wire_call_id(long_id) == utils._shorten_call_id(long_id)


# --- acks back to livekit items ------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("kind", sorted(ITEMS))
def test_wire_round_trip(dialect: str, kind: str) -> None:
    original = ITEMS[kind]()
    back = wire_item_to_livekit(item_to_wire(original, dialect))  # type: ignore[arg-type]
    assert back is not None and back.type == original.type and back.id == original.id
    if isinstance(original, llm.ChatMessage):
        assert isinstance(back, llm.ChatMessage)
        assert back.role == ("system" if original.role == "developer" else original.role)
        assert back.content == original.content
    elif isinstance(original, llm.FunctionCall):
        assert isinstance(back, llm.FunctionCall)
        assert (back.call_id, back.name, back.arguments) == (
            original.call_id,
            original.name,
            original.arguments,
        )
    else:
        assert isinstance(back, llm.FunctionCallOutput)
        assert (back.call_id, back.output, back.is_error) == (
            original.call_id,
            original.output,
            False,
        )


def test_server_items_with_audio_and_extra_fields() -> None:
    beta_user_audio = {
        "id": "item_1",
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": "bonjour"}],
    }
    back = wire_item_to_livekit(beta_user_audio)
    assert isinstance(back, llm.ChatMessage) and back.content == ["bonjour"]

    ga_assistant_pending = {
        "id": "item_2",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [{"type": "output_audio", "transcript": None}],
    }
    back = wire_item_to_livekit(ga_assistant_pending)
    assert isinstance(back, llm.ChatMessage) and back.role == "assistant" and back.content == []

    image = {
        "id": "item_3",
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
            {"type": "input_text", "text": "see"},
        ],
    }
    back = wire_item_to_livekit(image)
    assert isinstance(back, llm.ChatMessage)
    assert isinstance(back.content[0], llm.ImageContent) and back.content[1] == "see"


@pytest.mark.parametrize(
    "item",
    [
        {"id": "x", "type": "mcp_call"},
        {"id": "x", "type": "reasoning"},
        {"id": "x"},
        {},
        None,
        "message",
        {"type": "message", "role": "user", "content": []},  # no id
        {"id": "x", "type": "message", "role": "tool", "content": []},
        {"id": "x", "type": "function_call", "call_id": "c", "arguments": "{}"},  # no name
        {"id": "x", "type": "function_call_output", "call_id": "c"},  # no output
        {"id": "x", "type": "function_call_output", "output": "o"},  # no call_id
    ],
)
def test_unknown_or_malformed_server_items_give_none(item: Any) -> None:
    assert wire_item_to_livekit(item) is None


# --- property: any valid text survives both dialects and the SDK models -------------

texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=200)


@settings(max_examples=100, deadline=None)
@given(
    role=st.sampled_from(["user", "assistant", "system", "developer"]),
    parts=st.lists(texts, min_size=1, max_size=4),
    item_id=texts,
    dialect=st.sampled_from(DIALECTS),
    previous=st.one_of(st.none(), texts),
)
def test_property_messages_validate(
    role: str, parts: list[str], item_id: str, dialect: str, previous: str | None
) -> None:
    event = create_item_event(
        msg(item_id, role, *parts), dialect=dialect, event_id="e", previous_item_id=previous
    )  # type: ignore[arg-type]
    validate(event, CREATE_MODEL[dialect])
    if dialect == "beta":
        assert_beta_roles_match_parts(event["item"])
    back = wire_item_to_livekit(event["item"])
    assert isinstance(back, llm.ChatMessage) and back.content == parts


@settings(max_examples=50, deadline=None)
@given(
    call_id=texts,
    name=texts,
    arguments=texts,
    out=st.text(st.characters(codec="utf-8")),
    dialect=st.sampled_from(DIALECTS),
)
def test_property_function_items_validate(
    call_id: str, name: str, arguments: str, out: str, dialect: str
) -> None:
    fc = llm.FunctionCall(id="f", call_id=call_id, name=name, arguments=arguments)
    fo = llm.FunctionCallOutput(id="o", call_id=call_id, output=out, is_error=False)
    for item in (fc, fo):
        event = create_item_event(item, dialect=dialect, event_id="e", previous_item_id=None)  # type: ignore[arg-type]
        validate(event, CREATE_MODEL[dialect])
        assert len(event["item"]["call_id"]) <= MAX_CALL_ID_CHARS
