"""livekit chat items <-> the JSON of the realtime API's conversation items, per dialect.

Two dialects are on the wire:

* ``beta``: the OpenAI beta realtime API, which livekit's pre-1.5 ``realtime_model_beta``
  speaks, and Azure OpenAI's legacy deployments (``api_version=...``), which livekit 1.5+
  still serves in the old flat format. Assistant text parts are ``text``; the server acks a
  created item with ``conversation.item.created``.
* ``ga``: the GA realtime API (OpenAI, Azure ``/v1/realtime``). Assistant text parts are
  ``output_text``; the ack is ``conversation.item.added``.

User and system text parts are ``input_text`` in both. These are the shapes of
``openai.types.beta.realtime.ConversationItem`` and ``openai.types.realtime.ConversationItem``.

`item_to_wire` only takes sanitized items (see `livekit_history_plugin.sanitize`) and raises
`ValueError` on anything else: the sanitizer is the layer that never raises.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any, Final, Literal, get_args

from livekit.agents import llm

from . import _plugin  # noqa: F401  (registers with livekit)
from .log import logger

__all__ = [
    "DIALECTS",
    "ITEM_CREATED_ACK",
    "ID_PATTERN",
    "MAX_CALL_ID_CHARS",
    "MAX_ITEM_ID_CHARS",
    "Dialect",
    "create_item_event",
    "delete_item_event",
    "item_to_wire",
    "session_update_without_voice",
    "supports_retrieve",
    "text_part_type",
    "valid_wire_id",
    "wire_call_id",
    "wire_item_id",
    "wire_item_to_livekit",
]

Dialect = Literal["beta", "ga"]
DIALECTS: Final[tuple[Dialect, ...]] = get_args(Dialect)

ITEM_CREATED_ACK: Final[dict[Dialect, str]] = {
    "beta": "conversation.item.created",
    "ga": "conversation.item.added",
}

_ROLES: Final = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}

_TEXT_PART: Final[dict[Dialect, dict[str, str]]] = {
    "beta": {"user": "input_text", "system": "input_text", "assistant": "text"},
    "ga": {"user": "input_text", "system": "input_text", "assistant": "output_text"},
}

# OpenAI caps call_id at 32 characters. Longer ids (another provider's, replayed after a
# fallback swap) are hashed the way livekit 1.8's realtime converter does it, so a call and
# its output, and livekit's own later events for them, agree on the id.
MAX_CALL_ID_CHARS: Final = 32
# Item ids: at most 32 characters ("Invalid 'item.id': string too long. Expected a string
# with maximum length 32") matching this pattern (livekit/agents#1717: `invalid_value`,
# param `item.id`); call ids follow the same pattern (livekit/agents#5652). Ids from
# stored history or another provider (`a.b`, `x:y`, `fc/1`) are mapped to a stable hash.
MAX_ITEM_ID_CHARS: Final = 32
ID_PATTERN: Final = re.compile(r"^[a-zA-Z0-9_-]+$")
_ITEM_ID_PREFIX: Final = "item_"

# content part types whose text a livekit message keeps when read back from the server
_TEXT_PARTS_IN: Final = frozenset({"input_text", "text", "output_text"})
_AUDIO_PARTS_IN: Final = frozenset({"input_audio", "audio", "output_audio"})


def text_part_type(role: str, dialect: Dialect) -> str:
    """The content part type a text of ``role`` is sent as in ``dialect``."""
    table = _TEXT_PART.get(dialect)
    if table is None:
        raise ValueError(f"unknown realtime dialect {dialect!r}, expected one of {DIALECTS}")
    wire_role = _ROLES.get(role)
    if wire_role is None:
        raise ValueError(f"unsupported message role {role!r}")
    return table[wire_role]


def valid_wire_id(value: str, max_chars: int = MAX_ITEM_ID_CHARS) -> bool:
    """Whether the realtime API accepts ``value`` as an item / call id."""
    return len(value) <= max_chars and ID_PATTERN.match(value) is not None


def wire_call_id(call_id: str) -> str:
    """``call_id`` as sent on the wire: unchanged when the API accepts it (at most 32
    chars of ``[a-zA-Z0-9_-]``), else a stable 32-char hash (livekit 1.8's own for long ids)."""
    if valid_wire_id(call_id, MAX_CALL_ID_CHARS):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:MAX_CALL_ID_CHARS]


def wire_item_id(item_id: str) -> str:
    """``item_id`` as sent on the wire: unchanged when the API accepts it, else a stable
    ``item_`` + hash id of 32 characters (the same one every time, so a replayed item
    keeps matching its server copy)."""
    if valid_wire_id(item_id):
        return item_id
    digest = hashlib.sha256(item_id.encode()).hexdigest()
    return _ITEM_ID_PREFIX + digest[: MAX_ITEM_ID_CHARS - len(_ITEM_ID_PREFIX)]


# Azure's api-version=2024-10-01-preview reference (MicrosoftDocs/azure-ai-docs
# articles/ai-services/openai/realtime-audio-reference.md, 12/12/2024) lists nine client
# events and no conversation.item.retrieve; the beta retrieve event first appears in the
# openai SDK between 1.65.0 and 1.70.0 (about March 2025), and the Foundry reference of
# 01/29/2026 (articles/ai-foundry/openai/realtime-audio-reference.md) lists it. Later
# preview versions (2025-04-01-preview) are not confirmed either way: only the version
# documented without it is taken to lack it (the same rule as `providers`), and the
# engine falls back to a delete probe if a retrieve is answered as an unknown event.
_LAST_API_VERSION_WITHOUT_RETRIEVE: Final = "2024-10-01-preview"


def supports_retrieve(api_version: str | None) -> bool:
    """Whether a realtime endpoint answers ``conversation.item.retrieve``: GA (no
    api-version) and later previews do; Azure 2024-10-01-preview and older do not."""
    if not api_version:
        return True
    return api_version > _LAST_API_VERSION_WITHOUT_RETRIEVE


def session_update_without_voice(event: Any) -> dict[str, Any]:
    """A ``session.update`` client event (livekit's pydantic model or dict) as a dict
    without its voice, in either dialect (beta ``session.voice``, GA
    ``session.audio.output.voice``).

    Once assistant audio exists the server refuses a voice change with
    ``cannot_update_voice`` and discards the whole update (openai-agents-python#1661,
    openai-python#2607; 2026-09-18 capture, probe 7d); restating settings must not risk it.
    """
    dump = getattr(event, "model_dump", None)
    if callable(dump):
        data: dict[str, Any] = dump(by_alias=True, exclude_unset=True, exclude_defaults=False)
    else:
        data = copy.deepcopy(dict(event))
    session = data.get("session")
    if isinstance(session, dict):
        session.pop("voice", None)
        audio = session.get("audio")
        output = audio.get("output") if isinstance(audio, dict) else None
        if isinstance(output, dict):
            output.pop("voice", None)
    return data


def item_to_wire(item: llm.ChatItem, dialect: Dialect) -> dict[str, Any]:
    """The ``item`` object of ``conversation.item.create`` for a sanitized livekit item.

    Raises ValueError for anything the sanitizer would have removed or rewritten.
    """
    if dialect not in _TEXT_PART:
        raise ValueError(f"unknown realtime dialect {dialect!r}, expected one of {DIALECTS}")
    item_type = getattr(item, "type", None)
    item_id = _required_str(item, "id", item_type)
    if not item_id:
        raise ValueError(f"{item_type} item has an empty id")
    item_id = wire_item_id(item_id)

    if item_type == "message" and isinstance(item, llm.ChatMessage):
        return _message_to_wire(item, item_id, dialect)
    if item_type == "function_call" and isinstance(item, llm.FunctionCall):
        return {
            "id": item_id,
            "type": "function_call",
            "call_id": wire_call_id(_required_call_id(item, item_type)),
            "name": _required_str(item, "name", item_type),
            "arguments": _required_str(item, "arguments", item_type),
        }
    if item_type == "function_call_output" and isinstance(item, llm.FunctionCallOutput):
        return {
            "id": item_id,
            "type": "function_call_output",
            "call_id": wire_call_id(_required_call_id(item, item_type)),
            "output": _required_str(item, "output", item_type),
        }
    raise ValueError(
        f"cannot send a {type(item).__name__} item of type {item_type!r} as a conversation "
        "item; only sanitized message/function_call/function_call_output items are "
        "convertible (run sanitize_chat_ctx first)"
    )


def create_item_event(
    item: llm.ChatItem,
    *,
    dialect: Dialect,
    event_id: str,
    previous_item_id: str | None,
) -> dict[str, Any]:
    """A ``conversation.item.create`` client event; ``previous_item_id=None`` appends."""
    _check_event_id(event_id)
    event: dict[str, Any] = {
        "type": "conversation.item.create",
        "event_id": event_id,
    }
    if previous_item_id is not None:
        if not isinstance(previous_item_id, str) or not previous_item_id:
            raise ValueError(f"previous_item_id must be a non-empty str, got {previous_item_id!r}")
        event["previous_item_id"] = previous_item_id
    event["item"] = item_to_wire(item, dialect)
    return event


def delete_item_event(item_id: str, *, event_id: str) -> dict[str, Any]:
    """A ``conversation.item.delete`` client event (same shape in both dialects)."""
    _check_event_id(event_id)
    if not isinstance(item_id, str) or not item_id:
        raise ValueError(f"item_id must be a non-empty str, got {item_id!r}")
    return {"type": "conversation.item.delete", "event_id": event_id, "item_id": item_id}


def wire_item_to_livekit(item: dict[str, Any]) -> llm.ChatItem | None:
    """The livekit item for a server-sent conversation item (an ack), either dialect.

    Returns None for item types livekit has no equivalent for (mcp_*, reasoning, ...)
    and for malformed items; it never raises on server input.
    """
    if not isinstance(item, dict):
        return None
    item_type = item.get("type")
    if item_type not in ("message", "function_call", "function_call_output"):
        return None
    try:
        converted, why = _wire_to_livekit(item, item_type)
    except Exception as e:  # a livekit model refusing the values: still not worth a crash
        converted, why = None, str(e)
    if converted is None:
        logger.debug("cannot map a server %s item to a livekit item: %s", item_type, why)
    return converted


# --- helpers ----------------------------------------------------------------------


def _message_to_wire(msg: llm.ChatMessage, item_id: str, dialect: Dialect) -> dict[str, Any]:
    role = _ROLES.get(msg.role) if isinstance(msg.role, str) else None
    if role is None:
        raise ValueError(f"message {item_id!r} has unsupported role {msg.role!r}")
    content = msg.content
    if not isinstance(content, list) or not content:
        raise ValueError(f"message {item_id!r} has no content (run sanitize_chat_ctx first)")
    part_type = _TEXT_PART[dialect][role]
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, str):
            raise ValueError(
                f"message {item_id!r} has a {type(part).__name__} content part; only text "
                "can be sent (run sanitize_chat_ctx first)"
            )
        parts.append({"type": part_type, "text": _plain(part, f"message {item_id!r} text")})
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "status": "completed",
        "content": parts,
    }


def _wire_to_livekit(item: dict[str, Any], item_type: str) -> tuple[llm.ChatItem | None, str]:
    item_id = item.get("id")
    if not isinstance(item_id, str) or not item_id:
        return None, "no id"
    if item_type == "message":
        return _wire_message_to_livekit(item, item_id)
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        return None, "no call_id"
    if item_type == "function_call":
        name, arguments = item.get("name"), item.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            return None, "name/arguments missing"
        return llm.FunctionCall(id=item_id, call_id=call_id, name=name, arguments=arguments), ""
    output = item.get("output")
    if not isinstance(output, str):
        return None, "output missing"
    return llm.FunctionCallOutput(id=item_id, call_id=call_id, output=output, is_error=False), ""


def _wire_message_to_livekit(item: dict[str, Any], item_id: str) -> tuple[llm.ChatItem | None, str]:
    role = item.get("role")
    if role not in ("user", "assistant", "system"):
        return None, f"role {role!r}"
    raw_parts = item.get("content")
    content: list[Any] = []
    for part in raw_parts if isinstance(raw_parts, list) else ():
        if not isinstance(part, dict):
            continue
        part_type = part.get("type")
        text = part.get("text")
        transcript = part.get("transcript")
        image_url = part.get("image_url")
        if part_type in _TEXT_PARTS_IN and isinstance(text, str):
            content.append(text)
        elif part_type in _AUDIO_PARTS_IN and isinstance(transcript, str):
            # the transcript may still be pending (null or "") when the item is first acked
            if transcript:
                content.append(transcript)
        elif part_type == "input_image" and isinstance(image_url, str):
            content.append(llm.ImageContent(image=image_url))
    return llm.ChatMessage(id=item_id, role=role, content=content), ""


def _required_str(item: Any, name: str, item_type: object) -> str:
    value = getattr(item, name, None)
    if not isinstance(value, str):
        raise ValueError(f"{item_type} item needs a str {name!r}, got {type(value).__name__}")
    return _plain(value, f"{item_type} {name}")


def _required_call_id(item: Any, item_type: object) -> str:
    call_id = _required_str(item, "call_id", item_type)
    if not call_id:
        raise ValueError(f"{item_type} item has an empty call_id")
    return call_id


def _plain(value: str, what: str) -> str:
    """An exact ``str`` (livekit 1.4.6-1.5 ``Instructions`` is a str subclass) that UTF-8 can
    encode, so the event is plain JSON and the websocket send cannot fail on it."""
    text = str.__str__(value)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what} is not valid unicode ({e.reason}); sanitize it first") from e
    return text


def _check_event_id(event_id: object) -> None:
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"event_id must be a non-empty str, got {event_id!r}")
