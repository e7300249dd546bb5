"""Validation of realtime client events, the way the OpenAI / Azure servers validate them.

Two layers, both usable on their own:

* the ``openai`` SDK models of the dialect (``openai.types.beta.realtime`` for the
  ``beta`` dialect spoken by Azure legacy / preview deployments and by OpenAI with the
  ``OpenAI-Beta: realtime=v1`` header, ``openai.types.realtime`` for ``ga``);
* the provider rules the SDK models cannot express (an item without ``type``, content
  part types per role, empty content, ...), each answered with the error the real
  service sends (code, ``param`` and wording).

:func:`validate_client_event` runs both and raises :class:`ValueError`;
the emulator uses the finer-grained :func:`provider_event_error`,
:func:`provider_item_error` and :func:`sdk_event_error`.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

__all__ = [
    "CLIENT_EVENT_TYPES",
    "Dialect",
    "ProviderError",
    "provider_event_error",
    "provider_item_error",
    "sdk_event_error",
    "validate_client_event",
    "validate_server_event",
]

Dialect = Literal["beta", "ga"]

# The real servers cap client-chosen item ids at 32 characters:
# "Invalid 'item.id': string too long. Expected a string with maximum length 32, ..."
MAX_ITEM_ID_LENGTH = 32
# ... and to this pattern: `invalid_value`, param `item.id`, event_id echoed
# (livekit/agents#1717); call ids follow it too (livekit/agents#5652). The sentence is
# OpenAI's pattern-error template.
ID_PATTERN = "^[a-zA-Z0-9_-]+$"
_ID_RE = re.compile(ID_PATTERN)

# The unknown-event answer lists what each endpoint accepts, in its own order.
# OpenAI GA: the 2026-09-18 websocket capture (index id 69522944037), verbatim.
OPENAI_GA_EVENTS: tuple[str, ...] = (
    "session.update",
    "session.close",
    "input_audio_buffer.append",
    "session.input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
)
# Azure GA (gpt-realtime-2.1 live probe, swigerb/SonicAIDriveThru tests/conformance/
# README.md): has session.close and transcription_session.update, no
# output_audio_buffer.clear; the order of the two extra entries was not captured.
AZURE_GA_EVENTS: tuple[str, ...] = (
    "session.update",
    "transcription_session.update",
    *OPENAI_GA_EVENTS[1:],
)
# Azure api-version=2024-10-01-preview: the nine client events of its reference
# (MicrosoftDocs/azure-ai-docs articles/ai-services/openai/realtime-audio-reference.md,
# 12/12/2024), in its order; no conversation.item.retrieve.
AZURE_2024_10_EVENTS: tuple[str, ...] = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)

CLIENT_EVENT_TYPES: dict[Dialect, tuple[str, ...]] = {
    "beta": (
        "session.update",
        "transcription_session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "output_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "response.create",
        "response.cancel",
    ),
    "ga": (
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "output_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "response.create",
        "response.cancel",
    ),
}

# Item types `conversation.item.create` accepts. The beta list is the server's own
# wording ("Invalid value: 'text'. Supported values are: 'message', 'function_call',
# 'function_call_output', and 'item_reference'.", param item.type). The GA list is the
# union of item types in `openai.types.realtime.ConversationItem`; its wording follows
# the same enum template (not captured live).
ITEM_TYPES: dict[Dialect, tuple[str, ...]] = {
    "beta": ("message", "function_call", "function_call_output", "item_reference"),
    "ga": (
        "message",
        "function_call",
        "function_call_output",
        "mcp_approval_response",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
    ),
}

ROLES: tuple[str, ...] = ("user", "assistant", "system")

# Content part types a *client-created* message may carry, per dialect and role, and
# the sentence the server answers for any other type (param `item.content[i].type`).
# GA: captured live against gpt-realtime (user "Supported values are: 'input_text' and
# 'input_audio'.", assistant "Value must be 'output_text'.", system "Value must be
# 'input_text'."). GA user messages also accept `input_image` (SDK model), although the
# captured sentence does not list it. Beta: assistant "Invalid value: 'input_text'.
# Value must be 'text'." is a logged Azure/OpenAI rejection; user/system follow the
# beta docs ("system supports only input_text, user input_text and input_audio,
# assistant text").
_CONTENT_RULES: dict[Dialect, dict[str, tuple[frozenset[str], str]]] = {
    "beta": {
        "user": (
            frozenset({"input_text", "input_audio"}),
            "Supported values are: 'input_text' and 'input_audio'.",
        ),
        "assistant": (frozenset({"text"}), "Value must be 'text'."),
        "system": (frozenset({"input_text"}), "Value must be 'input_text'."),
    },
    "ga": {
        "user": (
            frozenset({"input_text", "input_audio", "input_image"}),
            "Supported values are: 'input_text' and 'input_audio'.",
        ),
        "assistant": (frozenset({"output_text"}), "Value must be 'output_text'."),
        "system": (frozenset({"input_text"}), "Value must be 'input_text'."),
    },
}

_TEXT_PART_TYPES = frozenset({"input_text", "text", "output_text"})


@dataclass(frozen=True)
class ProviderError:
    """One rejection, worded as the realtime service words it (the ``error`` object)."""

    code: str | None
    message: str
    param: str | None = None
    type: str = "invalid_request_error"
    echo_event_id: bool = True
    """Whether the real server echoes the client's ``event_id`` on this error."""

    def as_dict(self, event_id: str | None) -> dict[str, Any]:
        """The ``error`` object of an ``error`` server event."""
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": event_id,
        }


def _quote_list(values: Sequence[str]) -> str:
    """OpenAI's enum wording: 'a', 'b', and 'c' (two values: 'a' and 'b')."""
    quoted = [f"'{v}'" for v in values]
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} and {quoted[1]}"
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def missing(param: str) -> ProviderError:
    """``missing_required_parameter``, e.g. "Missing required parameter: 'item.type'."."""
    return ProviderError(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", param
    )


def invalid_enum(param: str, value: Any, supported: Sequence[str]) -> ProviderError:
    """``invalid_value`` for a value outside an enum, in OpenAI's wording."""
    if len(supported) == 1:
        tail = f"Value must be '{supported[0]}'."
    else:
        tail = f"Supported values are: {_quote_list(supported)}."
    return ProviderError("invalid_value", f"Invalid value: '{value}'. {tail}", param)


_JSON_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def json_type_name(value: Any) -> str:
    """How OpenAI names a JSON value's type in ``invalid_type`` errors."""
    for cls, name in _JSON_TYPE_NAMES.items():
        if type(value) is cls:
            return name
    return "an object"


# The realtime server_error: `code` null, `error.event_id` null, this sentence
# (realtime trace at index id 34909638017).
SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! You can retry "
    "your request, or contact us through our help center at help.openai.com if the error "
    "persists. (Please include the session ID in your message.) We recommend you retry "
    "your request."
)


def server_error() -> ProviderError:
    """A ``server_error`` as the realtime servers send it."""
    return ProviderError(None, SERVER_ERROR_MESSAGE, None, "server_error", echo_event_id=False)


def invalid_type(param: str, expected: str, value: Any) -> ProviderError:
    """``invalid_type``: "Invalid type for 'x': expected a string, but got an integer instead."."""
    return ProviderError(
        "invalid_type",
        f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} instead.",
        param,
    )


# ---------------------------------------------------------------------------
# provider rules
# ---------------------------------------------------------------------------


def provider_event_error(
    event: Any, dialect: Dialect, supported: Sequence[str] | None = None
) -> ProviderError | None:
    """Envelope rules every client event goes through: an object with a known ``type``
    (one of ``supported``, default: every event type of the dialect's SDK)."""
    if not isinstance(event, dict):
        # not documented; OpenAI's invalid_type template applied to the whole event
        return ProviderError(
            "invalid_type",
            f"Invalid type for event: expected an object, but got {json_type_name(event)} instead.",
            None,
        )
    event_type = event.get("type")
    if event_type is None:
        return missing("type")
    if not isinstance(event_type, str):
        return invalid_type("type", "a string", event_type)
    known = CLIENT_EVENT_TYPES[dialect] if supported is None else tuple(supported)
    if event_type not in known:
        return invalid_enum("type", event_type, known)
    return None


def pattern_error(param: str, value: str) -> ProviderError | None:
    """``invalid_value`` for an id outside ``^[a-zA-Z0-9_-]+$``, None when it matches."""
    if _ID_RE.match(value):
        return None
    return ProviderError(
        "invalid_value",
        f"Invalid '{param}': string does not match pattern. Expected a string that matches "
        f"the pattern '{ID_PATTERN}'.",
        param,
    )


def provider_item_error(
    item: Any, dialect: Dialect, *, param: str = "item"
) -> ProviderError | None:
    """The server's stateless checks of one ``conversation.item.create`` item.

    Stateful rules (duplicate id, unknown ``previous_item_id``, a ``function_call_output``
    without its call) need the conversation and live in the emulator.
    """
    if item is None:
        return missing(param)
    if not isinstance(item, dict):
        return invalid_type(param, "an object", item)
    item_id = item.get("id")
    if item_id is not None:
        if not isinstance(item_id, str):
            return invalid_type(f"{param}.id", "a string", item_id)
        if len(item_id) > MAX_ITEM_ID_LENGTH:
            return ProviderError(
                "string_above_max_length",
                f"Invalid '{param}.id': string too long. Expected a string with maximum length "
                f"{MAX_ITEM_ID_LENGTH}, but got a string with length {len(item_id)} instead.",
                f"{param}.id",
            )
        bad_id = pattern_error(f"{param}.id", item_id)
        if bad_id is not None:
            return bad_id
    item_type = item.get("type")
    if item_type is None:
        return missing(f"{param}.type")
    if item_type not in ITEM_TYPES[dialect]:
        return invalid_enum(f"{param}.type", item_type, ITEM_TYPES[dialect])
    if item_type == "message":
        return _message_error(item, dialect, param)
    if item_type == "function_call":
        for field in ("call_id", "name", "arguments"):
            if item.get(field) is None:
                return missing(f"{param}.{field}")
    if item_type == "function_call_output":
        for field in ("call_id", "output"):
            if item.get(field) is None:
                return missing(f"{param}.{field}")
    call_id = item.get("call_id")
    if item_type in ("function_call", "function_call_output") and isinstance(call_id, str):
        return pattern_error(f"{param}.call_id", call_id)
    return None


def _message_error(item: Mapping[str, Any], dialect: Dialect, param: str) -> ProviderError | None:
    role = item.get("role")
    if role is None:
        return missing(f"{param}.role")
    if role not in ROLES:
        # wording follows the server's enum template; the role sentence was not captured
        return invalid_enum(f"{param}.role", role, ROLES)
    content = item.get("content")
    if content is None:
        return missing(f"{param}.content")
    if not isinstance(content, list):
        return invalid_type(f"{param}.content", "an array of objects", content)
    if not content:
        # OpenAI's empty_array wording (REST and realtime share the validator); the
        # realtime sentence for this case was not captured live
        return ProviderError(
            "empty_array",
            f"Invalid '{param}.content': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            f"{param}.content",
        )
    allowed, sentence = _CONTENT_RULES[dialect][role]
    for i, part in enumerate(content):
        part_param = f"{param}.content[{i}]"
        if not isinstance(part, dict):
            return invalid_type(part_param, "an object", part)
        part_type = part.get("type")
        if part_type is None:
            return missing(f"{part_param}.type")
        if part_type not in allowed:
            return ProviderError(
                "invalid_value", f"Invalid value: '{part_type}'. {sentence}", f"{part_param}.type"
            )
        if part_type in _TEXT_PART_TYPES and not isinstance(part.get("text"), str):
            if part.get("text") is None:
                return missing(f"{part_param}.text")
            return invalid_type(f"{part_param}.text", "a string", part.get("text"))
    return None


# ---------------------------------------------------------------------------
# SDK models
# ---------------------------------------------------------------------------


def _models_by_type(union: Any) -> dict[str, type[BaseModel]]:
    """Map each member of an SDK event union to its ``type`` literal."""
    members = typing.get_args(union)
    if members and typing.get_origin(union) is typing.Annotated:
        members = typing.get_args(members[0])
    out: dict[str, type[BaseModel]] = {}
    for model in members:
        field = model.model_fields.get("type")
        if field is None:
            continue
        for literal in typing.get_args(field.annotation):
            out.setdefault(literal, model)
    return out


@lru_cache(maxsize=4)
def client_event_models(dialect: Dialect) -> dict[str, type[BaseModel]]:
    """SDK model per client event type (imported lazily: the SDK modules are large)."""
    if dialect == "beta":
        from openai.types.beta.realtime.realtime_client_event import RealtimeClientEvent as Beta

        return _models_by_type(Beta)
    from openai.types.realtime.realtime_client_event import RealtimeClientEvent as Ga

    return _models_by_type(Ga)


@lru_cache(maxsize=4)
def server_event_models(dialect: Dialect) -> dict[str, type[BaseModel]]:
    """SDK model per server event type."""
    if dialect == "beta":
        from openai.types.beta.realtime.realtime_server_event import RealtimeServerEvent as Beta

        return _models_by_type(Beta)
    from openai.types.realtime.realtime_server_event import RealtimeServerEvent as Ga

    return _models_by_type(Ga)


def _json_path(event: Any, loc: Iterable[int | str]) -> str:
    """Turn a pydantic error location into the server's ``param`` (``item.content[0].type``).

    Union members show up in pydantic locations as class names; they are not keys of
    the event, so they are skipped by walking the event alongside the location.
    """
    parts: list[str] = []
    node = event
    for seg in loc:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
            node = node[seg] if isinstance(node, list) and seg < len(node) else None
            continue
        if isinstance(node, dict) and seg in node:
            parts.append(f".{seg}" if parts else seg)
            node = node[seg]
        elif isinstance(node, dict) and not seg[:1].isupper() and "[" not in seg:
            # a missing field: part of the path, nothing to descend into
            parts.append(f".{seg}" if parts else seg)
            node = None
    return "".join(parts)


def _error_score(err: Any) -> int:
    # A union member whose discriminator fields (type / role) do not match is the wrong
    # member: its errors describe a shape the client never meant.
    loc = err["loc"]
    if err["type"] == "literal_error" and loc and loc[-1] in ("type", "role"):
        depth = sum(1 for seg in loc if isinstance(seg, int) or not str(seg)[:1].isupper())
        if depth <= 2:
            return 100
    return 1


def _best_errors(errors: list[Any]) -> list[Any]:
    """Among the errors of a union, keep those of the member that fits the event best."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for err in errors:
        key = tuple(seg for seg in err["loc"] if isinstance(seg, str) and seg[:1].isupper())[:1]
        groups.setdefault(key, []).append(err)
    return min(groups.values(), key=lambda errs: sum(_error_score(e) for e in errs))


def _pydantic_to_provider(event: Any, err: Any) -> ProviderError:
    param = _json_path(event, err["loc"]) or None
    kind = err["type"]
    if kind == "missing":
        return missing(param or "?")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        supported = [
            s.strip().strip("'") for s in expected.replace(" or ", ", ").split(",") if s.strip()
        ]
        return invalid_enum(param or "?", err.get("input"), supported)
    if kind.endswith("_type") or kind in ("model_type", "model_attributes_type", "list_type"):
        expected = {
            "string_type": "a string",
            "int_type": "an integer",
            "float_type": "a decimal",
            "bool_type": "a boolean",
            "list_type": "an array",
            "dict_type": "an object",
            "model_type": "an object",
            "model_attributes_type": "an object",
        }.get(kind, "a valid value")
        return invalid_type(param or "?", expected, err.get("input"))
    return ProviderError("invalid_value", f"Invalid value for '{param}': {err['msg']}.", param)


def sdk_event_error(event: Mapping[str, Any], dialect: Dialect) -> tuple[ProviderError, str] | None:
    """Validate ``event`` with the SDK model of its type.

    Returns ``None`` when it validates (or the type has no model), else the first
    failure as the server would word it plus pydantic's full report.
    """
    model = client_event_models(dialect).get(str(event.get("type")))
    if model is None:
        return None
    try:
        model.model_validate(event)
    except ValidationError as exc:
        errors = _best_errors(exc.errors())
        return _pydantic_to_provider(event, errors[0]), str(exc)
    return None


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------


def validate_client_event(
    event: Mapping[str, Any] | dict[str, Any],
    dialect: Dialect,
    *,
    provider_rules: bool = True,
) -> None:
    """Check one client event as the realtime server of ``dialect`` would.

    Validates with the ``openai`` SDK model of the event type and, unless
    ``provider_rules`` is false, with the server's own stateless rules (item ``type``
    required, content part types per role, no empty content, ids of at most 32
    characters, known event types).

    Raises:
        ValueError: naming the event, the offending parameter and the server's wording.
    """
    event_dict = dict(event)
    label = f"{event_dict.get('type')!r} event (dialect {dialect!r})"
    if provider_rules:
        envelope = provider_event_error(event_dict, dialect)
        if envelope is not None:
            raise ValueError(f"{label} rejected: [{envelope.code}] {envelope.message}")
        if event_dict.get("type") == "conversation.item.create":
            item_err = provider_item_error(event_dict.get("item"), dialect)
            if item_err is not None:
                raise ValueError(f"{label} rejected: [{item_err.code}] {item_err.message}")
    sdk = sdk_event_error(event_dict, dialect)
    if sdk is not None:
        err, report = sdk
        raise ValueError(
            f"{label} does not validate against the openai SDK model: "
            f"[{err.code}] {err.message}\n{report}"
        )


def validate_server_event(event: Mapping[str, Any], dialect: Dialect) -> None:
    """Check that a server event validates against the SDK model of ``dialect``.

    Raises:
        ValueError: for an unknown server event type or a shape the SDK rejects.
    """
    model = server_event_models(dialect).get(str(event.get("type")))
    if model is None:
        raise ValueError(f"unknown {dialect} server event type {event.get('type')!r}")
    try:
        model.model_validate(dict(event))
    except ValidationError as exc:
        raise ValueError(
            f"{event.get('type')!r} server event ({dialect}) is invalid: {exc}"
        ) from exc
