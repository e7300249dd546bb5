"""`validate_client_event`: SDK models of each dialect plus the server's own rules."""

from __future__ import annotations

from typing import Any

import pytest

from livekit_history_plugin.testing import (
    provider_item_error,
    sdk_event_error,
    validate_client_event,
    validate_server_event,
)


def create(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": item}


def msg(role: str, part_type: str, text: str = "hi") -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": part_type, "text": text}]}


@pytest.mark.parametrize(
    ("dialect", "role", "part"),
    [
        ("beta", "user", "input_text"),
        ("beta", "system", "input_text"),
        ("beta", "assistant", "text"),
        ("ga", "user", "input_text"),
        ("ga", "system", "input_text"),
        ("ga", "assistant", "output_text"),
    ],
)
def test_valid_messages_pass(dialect: Any, role: str, part: str) -> None:
    validate_client_event(create(msg(role, part)), dialect)


@pytest.mark.parametrize(
    ("dialect", "role", "part", "sentence"),
    [
        ("beta", "assistant", "input_text", "Value must be 'text'."),
        ("beta", "assistant", "output_text", "Value must be 'text'."),
        ("beta", "user", "text", "Supported values are: 'input_text' and 'input_audio'."),
        ("beta", "system", "text", "Value must be 'input_text'."),
        ("ga", "assistant", "text", "Value must be 'output_text'."),
        ("ga", "assistant", "input_text", "Value must be 'output_text'."),
        ("ga", "user", "text", "Supported values are: 'input_text' and 'input_audio'."),
        ("ga", "user", "output_text", "Supported values are: 'input_text' and 'input_audio'."),
        ("ga", "system", "output_text", "Value must be 'input_text'."),
    ],
)
def test_wrong_part_type_is_refused_in_the_providers_words(
    dialect: Any, role: str, part: str, sentence: str
) -> None:
    err = provider_item_error(msg(role, part), dialect)
    assert err is not None
    assert (err.code, err.param) == ("invalid_value", "item.content[0].type")
    assert err.message == f"Invalid value: '{part}'. {sentence}"
    with pytest.raises(ValueError, match="invalid_value"):
        validate_client_event(create(msg(role, part)), dialect)


@pytest.mark.parametrize("dialect", ["beta", "ga"])
def test_typeless_item_is_refused_although_the_beta_sdk_model_allows_it(dialect: Any) -> None:
    item = {"id": "item_handoff", "role": "user", "content": []}
    if dialect == "beta":
        assert sdk_event_error(create(item), "beta") is None  # every beta field is optional
    err = provider_item_error(item, dialect)
    assert err is not None
    assert (err.code, err.param, err.message) == (
        "missing_required_parameter",
        "item.type",
        "Missing required parameter: 'item.type'.",
    )
    with pytest.raises(ValueError, match=r"Missing required parameter: 'item.type'\."):
        validate_client_event(create(item), dialect)


def test_sdk_failures_are_worded_like_the_server() -> None:
    bad = create(
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": 5}]}
    )
    result = sdk_event_error(bad, "ga")
    assert result is not None
    err, report = result
    assert (err.code, err.param) == ("invalid_type", "item.content[0].text")
    assert err.message == (
        "Invalid type for 'item.content[0].text': expected a string, but got an integer instead."
    )
    assert "validation error" in report
    session = sdk_event_error({"type": "session.update", "session": {"instructions": "x"}}, "ga")
    assert session is not None
    assert session[0].message == "Missing required parameter: 'session.type'."
    # the beta session has no `type`
    assert (
        sdk_event_error({"type": "session.update", "session": {"instructions": "x"}}, "beta")
        is None
    )


@pytest.mark.parametrize(
    ("item", "code", "param", "message"),
    [
        (
            {"type": "message", "role": "user", "content": []},
            "empty_array",
            "item.content",
            "Invalid 'item.content': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
        ),
        (
            {"type": "message", "role": "bot", "content": [{"type": "input_text", "text": "x"}]},
            "invalid_value",
            "item.role",
            "Invalid value: 'bot'. Supported values are: 'user', 'assistant', and 'system'.",
        ),
        (
            {"type": "text", "text": "x"},
            "invalid_value",
            "item.type",
            "Invalid value: 'text'. Supported values are: 'message', 'function_call', "
            "'function_call_output', and 'item_reference'.",
        ),
        (
            {"type": "function_call_output", "output": "42"},
            "missing_required_parameter",
            "item.call_id",
            "Missing required parameter: 'item.call_id'.",
        ),
        (
            {"type": "message", "role": "user", "content": "hello"},
            "invalid_type",
            "item.content",
            "Invalid type for 'item.content': expected an array of objects, but got a string instead.",
        ),
        (
            {"id": "x" * 39, **msg("user", "input_text")},
            "string_above_max_length",
            "item.id",
            "Invalid 'item.id': string too long. Expected a string with maximum length 32, "
            "but got a string with length 39 instead.",
        ),
    ],
)
def test_item_rules(item: dict[str, Any], code: str, param: str, message: str) -> None:
    err = provider_item_error(item, "beta")
    assert err is not None
    assert (err.code, err.param, err.message) == (code, param, message)


def test_unknown_event_type() -> None:
    with pytest.raises(ValueError, match=r"Invalid value: 'ping'\. Supported values are: 'session"):
        validate_client_event({"type": "ping"}, "ga")
    with pytest.raises(ValueError, match="transcription_session.update"):
        validate_client_event({"type": "transcription_session.update", "session": {}}, "ga")


def test_validate_server_event() -> None:
    validate_server_event(
        {"type": "conversation.item.deleted", "event_id": "event_1", "item_id": "a"}, "ga"
    )
    with pytest.raises(ValueError, match="unknown ga server event"):
        validate_server_event({"type": "conversation.item.gone", "event_id": "e"}, "ga")
    with pytest.raises(ValueError, match="invalid"):
        validate_server_event({"type": "conversation.item.deleted", "event_id": "e"}, "beta")
