"""Turn any livekit ``ChatContext`` into one the OpenAI / Azure realtime API accepts.

livekit (<= 1.4.3 on the Azure beta path) replays every chat item with
``conversation.item.create``, including its own bookkeeping items
(``agent_handoff``, ``agent_config_update``) which go out as ``{"id": ...}`` with
no ``type`` and are rejected by the server. Other items the server rejects or
cannot use: empty messages, audio it cannot replay, images the dialect cannot
carry, function outputs whose call is not in the conversation.

`sanitize_chat_ctx` is the never-raise layer: it accepts anything (unknown item
classes, garbage attributes, content lists full of ``None``) and returns a new
context holding only items `livekit_history_plugin.dialects` can convert. It
never mutates its input: a changed item is a copy, unchanged items are shared.

Works on every livekit-agents release 1.2.18 ... 1.8.x: item kinds are told
apart by their ``type`` string, and classes that only exist on newer releases
(``AgentHandoff``, ``AgentConfigUpdate``, ``CacheBreakpoint``, non-str
``Instructions``) are looked up with ``getattr``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from livekit.agents import llm

from . import _plugin  # noqa: F401  (registers with livekit)
from .dialects import wire_call_id, wire_item_id
from .log import logger

__all__ = [
    "DROP_REASONS",
    "INSTRUCTION_ITEM_IDS",
    "PART_DROP_REASONS",
    "DroppedItem",
    "DroppedPart",
    "SanitizeResult",
    "sanitize_chat_ctx",
    "sanitize_chat_ctx_report",
]

# --- drop reasons -----------------------------------------------------------------
# whole items
R_AGENT_HANDOFF: Final = "agent_handoff"
R_AGENT_CONFIG_UPDATE: Final = "agent_config_update"
R_MISSING_TYPE: Final = "missing_type"
R_UNKNOWN_TYPE: Final = "unknown_type"
R_UNKNOWN_CLASS: Final = "unknown_item_class"
R_MISSING_ID: Final = "missing_id"
R_DUPLICATE_ID: Final = "duplicate_id"
R_INSTRUCTIONS: Final = "instructions"
R_INVALID_ROLE: Final = "invalid_role"
R_EMPTY_MESSAGE: Final = "empty_message"
R_INVALID_CALL: Final = "invalid_function_call"
R_INVALID_OUTPUT: Final = "invalid_function_call_output"
R_ORPHAN_OUTPUT: Final = "orphan_function_call_output"
R_DUPLICATE_CALL_ID: Final = "duplicate_call_id"
R_UNPROCESSABLE: Final = "unprocessable"

DROP_REASONS: Final[tuple[str, ...]] = (
    R_AGENT_HANDOFF,
    R_AGENT_CONFIG_UPDATE,
    R_MISSING_TYPE,
    R_UNKNOWN_TYPE,
    R_UNKNOWN_CLASS,
    R_MISSING_ID,
    R_DUPLICATE_ID,
    R_INSTRUCTIONS,
    R_INVALID_ROLE,
    R_EMPTY_MESSAGE,
    R_INVALID_CALL,
    R_INVALID_OUTPUT,
    R_ORPHAN_OUTPUT,
    R_DUPLICATE_CALL_ID,
    R_UNPROCESSABLE,
)

# content parts of a kept (or emptied) message
P_IMAGE: Final = "image_not_supported"
P_AUDIO_NO_TRANSCRIPT: Final = "audio_without_transcript"
P_CACHE_BREAKPOINT: Final = "cache_breakpoint"
P_NOT_TEXT: Final = "not_text"
P_EMPTY_TEXT: Final = "empty_text"

PART_DROP_REASONS: Final[tuple[str, ...]] = (
    P_IMAGE,
    P_AUDIO_NO_TRANSCRIPT,
    P_CACHE_BREAKPOINT,
    P_NOT_TEXT,
    P_EMPTY_TEXT,
)

# --- livekit's own instruction items ----------------------------------------------
# livekit keeps the agent instructions in the chat context as a system message with a
# fixed id ("value must not change" in every release): voice.generation
# INSTRUCTIONS_MESSAGE_ID since 1.0; 1.8 adds the per-call ``Instructions.dynamic``
# message (llm.chat_context.DYNAMIC_INSTRUCTIONS_MESSAGE_ID) and the expressive-TTS
# markup guide (voice.generation.EXPRESSIVE_INSTRUCTIONS_MESSAGE_ID). The realtime
# models send instructions through session.update, so replaying these items would
# duplicate them. (ChatContext.copy(exclude_instructions=True) is role-based - it drops
# every system/developer message - which would also drop the user's own system notes.)
_KNOWN_INSTRUCTION_IDS: Final = (
    "lk.agent_task.instructions",
    "lk.agent_task.instructions.dynamic",
    "lk.expressive.instructions",
)
_INSTRUCTION_ID_SOURCES: Final = (
    ("livekit.agents.voice.generation", "INSTRUCTIONS_MESSAGE_ID"),
    ("livekit.agents.llm.chat_context", "DYNAMIC_INSTRUCTIONS_MESSAGE_ID"),
    ("livekit.agents.voice.generation", "EXPRESSIVE_INSTRUCTIONS_MESSAGE_ID"),
)


def _instruction_ids() -> frozenset[str]:
    ids = set(_KNOWN_INSTRUCTION_IDS)
    for module_name, attr in _INSTRUCTION_ID_SOURCES:
        try:
            value = getattr(importlib.import_module(module_name), attr, None)
        except Exception:  # a release without the module must not break the import
            continue
        if isinstance(value, str) and value:
            ids.add(value)
    return frozenset(ids)


INSTRUCTION_ITEM_IDS: Final[frozenset[str]] = _instruction_ids()

_MESSAGE = "message"
_FUNCTION_CALL = "function_call"
_FUNCTION_CALL_OUTPUT = "function_call_output"
_INTERNAL_TYPES: Final = {
    "agent_handoff": R_AGENT_HANDOFF,
    "agent_config_update": R_AGENT_CONFIG_UPDATE,
}
_ROLES: Final = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}

# optional classes, absent on older releases
_CACHE_BREAKPOINT: type | None = getattr(llm, "CacheBreakpoint", None)
_INSTRUCTIONS_OBJ: type | None = getattr(
    importlib.import_module("livekit.agents.llm.chat_context"), "Instructions", None
)
# 1.4.6-1.5.x Instructions is a str subclass (already text); 1.8 made it a plain object
if _INSTRUCTIONS_OBJ is not None and issubclass(_INSTRUCTIONS_OBJ, str):
    _INSTRUCTIONS_OBJ = None

_LOG_ID_CHARS = 80


@dataclass(frozen=True)
class DroppedItem:
    """A chat item left out of the sanitized context."""

    item_id: str | None
    item_type: str | None
    reason: str


@dataclass(frozen=True)
class DroppedPart:
    """A content part removed from a message (the message itself may be kept)."""

    item_id: str
    part_type: str | None
    reason: str


@dataclass(frozen=True)
class SanitizeResult:
    chat_ctx: llm.ChatContext
    dropped: tuple[DroppedItem, ...]
    changed: tuple[str, ...]
    """ids of kept items whose content was rewritten (they are copies)"""
    dropped_parts: tuple[DroppedPart, ...] = ()
    renamed: tuple[tuple[str, str], ...] = ()
    """``(original id, wire id)`` of kept items whose id the API would reject (another
    provider's ``a.b`` / ``x:y``, longer than 32 chars): they are copies under a stable id"""


def sanitize_chat_ctx(
    chat_ctx: llm.ChatContext, *, keep_instructions: bool = False
) -> llm.ChatContext:
    """Return a new ChatContext holding only items the realtime API accepts. Never raises."""
    return sanitize_chat_ctx_report(chat_ctx, keep_instructions=keep_instructions).chat_ctx


def sanitize_chat_ctx_report(
    chat_ctx: llm.ChatContext, *, keep_instructions: bool = False
) -> SanitizeResult:
    """Like `sanitize_chat_ctx`, also telling what was dropped or rewritten and why."""
    run = _Run(keep_instructions=keep_instructions)
    for item in _items_of(chat_ctx):
        try:
            run.add(item)
        except Exception:
            # a bug here must never cost a live call: leave the item out and say so
            item_id = _str_attr(item, "id")
            logger.warning("history sanitizer could not process an item", exc_info=True)
            run.drop(item_id, _str_attr(item, "type"), R_UNPROCESSABLE)
    return SanitizeResult(
        chat_ctx=llm.ChatContext(run.kept),
        dropped=tuple(run.dropped),
        changed=tuple(run.changed),
        dropped_parts=tuple(run.dropped_parts),
        renamed=tuple(run.renamed),
    )


def _items_of(chat_ctx: object) -> list[Any]:
    try:
        items = getattr(chat_ctx, "items", None)
        return list(items) if isinstance(items, Iterable) else []
    except Exception:
        logger.warning("history sanitizer got an unreadable chat context", exc_info=True)
        return []


class _Run:
    """State of one sanitize pass; items are fed in order."""

    def __init__(self, *, keep_instructions: bool) -> None:
        self.keep_instructions = keep_instructions
        self.kept: list[Any] = []
        self.dropped: list[DroppedItem] = []
        self.dropped_parts: list[DroppedPart] = []
        self.changed: list[str] = []
        self.renamed: list[tuple[str, str]] = []
        self._ids: set[str] = set()
        self._call_ids: set[str] = set()
        self._answered_call_ids: set[str] = set()

    def drop(self, item_id: str | None, item_type: str | None, reason: str) -> None:
        self.dropped.append(DroppedItem(item_id=item_id, item_type=item_type, reason=reason))
        logger.debug(
            "history sanitizer dropped %s item %s: %s",
            item_type,
            _short(item_id),
            reason,
        )

    def drop_part(self, item_id: str, part_type: str | None, reason: str) -> None:
        self.dropped_parts.append(DroppedPart(item_id=item_id, part_type=part_type, reason=reason))
        logger.debug(
            "history sanitizer dropped a %s part of item %s: %s",
            part_type,
            _short(item_id),
            reason,
        )

    def add(self, item: Any) -> None:
        raw_type = _safe_getattr(item, "type")
        item_type = raw_type if isinstance(raw_type, str) else None
        item_id = _str_attr(item, "id")

        if raw_type is None:
            return self.drop(item_id, None, R_MISSING_TYPE)
        if item_type in _INTERNAL_TYPES:
            return self.drop(item_id, item_type, _INTERNAL_TYPES[item_type])
        expected_cls = _KIND_CLASSES.get(item_type) if item_type is not None else None
        if expected_cls is None:
            return self.drop(item_id, item_type, R_UNKNOWN_TYPE)
        if not isinstance(item, expected_cls):
            return self.drop(item_id, item_type, R_UNKNOWN_CLASS)
        if not item_id:
            return self.drop(None, item_type, R_MISSING_ID)
        if not self.keep_instructions and item_type == _MESSAGE and item_id in INSTRUCTION_ITEM_IDS:
            return self.drop(item_id, item_type, R_INSTRUCTIONS)

        if item_type == _MESSAGE:
            cleaned, reason = self._clean_message(item, item_id)
        elif item_type == _FUNCTION_CALL:
            cleaned, reason = _clean_function_call(item)
        else:
            cleaned, reason = _clean_function_call_output(item)
        if cleaned is None:
            return self.drop(item_id, item_type, reason)
        cleaned = _with_wire_ids(cleaned, item_type)
        kept_id: str = cleaned.id

        if kept_id in self._ids:
            return self.drop(item_id, item_type, R_DUPLICATE_ID)
        if item_type == _FUNCTION_CALL:
            if cleaned.call_id in self._call_ids:
                return self.drop(item_id, item_type, R_DUPLICATE_CALL_ID)
            self._call_ids.add(cleaned.call_id)
        elif item_type == _FUNCTION_CALL_OUTPUT:
            if cleaned.call_id not in self._call_ids:
                return self.drop(item_id, item_type, R_ORPHAN_OUTPUT)
            if cleaned.call_id in self._answered_call_ids:
                return self.drop(item_id, item_type, R_DUPLICATE_CALL_ID)
            self._answered_call_ids.add(cleaned.call_id)

        self._ids.add(kept_id)
        self.kept.append(cleaned)
        if kept_id != item_id:
            self.renamed.append((item_id, kept_id))
        if cleaned is not item:
            self.changed.append(kept_id)
        return None

    def _clean_message(self, msg: Any, item_id: str) -> tuple[Any, str]:
        role = _safe_getattr(msg, "role")
        new_role = _ROLES.get(role) if isinstance(role, str) else None
        if new_role is None:
            return None, R_INVALID_ROLE

        raw_content = _safe_getattr(msg, "content")
        parts: list[Any]
        if isinstance(raw_content, str):
            parts, content_changed = [raw_content], True
        elif isinstance(raw_content, (list, tuple)):
            parts, content_changed = list(raw_content), not isinstance(raw_content, list)
        else:
            parts, content_changed = [], True

        content: list[Any] = []
        for part in parts:
            text, reason = self._part_to_text(part)
            if text is None:
                self.drop_part(item_id, _part_type(part), reason)
                content_changed = True
                continue
            if text is not part:
                content_changed = True
            content.append(text)

        if not content:
            return None, R_EMPTY_MESSAGE
        if not content_changed and new_role == role:
            return msg, ""
        return msg.model_copy(update={"role": new_role, "content": content}), ""

    @staticmethod
    def _part_to_text(part: Any) -> tuple[str | None, str]:
        """The text a content part is replayed as, or None and why it is dropped."""
        if isinstance(part, str):
            text: Any = part
        elif isinstance(part, llm.AudioContent):
            # recorded audio cannot be replayed as an assistant item (and is not worth
            # re-uploading for a user item); its transcript is what the model needs
            text = _safe_getattr(part, "transcript")
            if not isinstance(text, str) or not text or text.isspace():
                return None, P_AUDIO_NO_TRANSCRIPT
        elif isinstance(part, llm.ImageContent):
            return None, P_IMAGE
        elif _CACHE_BREAKPOINT is not None and isinstance(part, _CACHE_BREAKPOINT):
            return None, P_CACHE_BREAKPOINT
        elif _INSTRUCTIONS_OBJ is not None and isinstance(part, _INSTRUCTIONS_OBJ):
            # what livekit's own realtime converter sends for it (str() = the common text)
            text = str(part)
            if not isinstance(text, str):
                return None, P_NOT_TEXT
        else:
            return None, P_NOT_TEXT
        if not text or text.isspace():
            return None, P_EMPTY_TEXT
        return _valid_unicode(text), ""


def _with_wire_ids(item: Any, item_type: str | None) -> Any:
    """``item``, or a copy whose id / call_id the API accepts (a stable mapping, so a
    call and its output keep agreeing and a replayed item keeps matching its server copy)."""
    update: dict[str, str] = {}
    new_id = wire_item_id(item.id)
    if new_id != item.id:
        update["id"] = new_id
    if item_type in (_FUNCTION_CALL, _FUNCTION_CALL_OUTPUT):
        call_id = wire_call_id(item.call_id)
        if call_id != item.call_id:
            update["call_id"] = call_id
    return item.model_copy(update=update) if update else item


def _clean_function_call(call: Any) -> tuple[Any, str]:
    fields = _string_fields(call, ("call_id", "name", "arguments"))
    if fields is None or not fields["call_id"] or not fields["name"]:
        return None, R_INVALID_CALL
    return _copy_if_changed(call, fields), ""


def _clean_function_call_output(output: Any) -> tuple[Any, str]:
    fields = _string_fields(output, ("call_id", "output"))
    if fields is None or not fields["call_id"]:
        return None, R_INVALID_OUTPUT
    return _copy_if_changed(output, fields), ""


def _string_fields(item: Any, names: tuple[str, ...]) -> dict[str, str] | None:
    values: dict[str, str] = {}
    for name in names:
        value = _safe_getattr(item, name)
        if not isinstance(value, str):
            return None
        values[name] = value
    return values


def _copy_if_changed(item: Any, fields: dict[str, str]) -> Any:
    fixed = {name: _valid_unicode(value) for name, value in fields.items()}
    update = {name: value for name, value in fixed.items() if value is not fields[name]}
    return item.model_copy(update=update) if update else item


def _valid_unicode(text: str) -> str:
    """``text`` itself, or a copy with lone surrogates replaced by U+FFFD.

    A lone surrogate makes the UTF-8 encode of the websocket frame raise mid-call.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # via UTF-16 so a split-but-valid surrogate pair is joined back into its character
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


_KIND_CLASSES: Final[dict[str, type]] = {
    _MESSAGE: llm.ChatMessage,
    _FUNCTION_CALL: llm.FunctionCall,
    _FUNCTION_CALL_OUTPUT: llm.FunctionCallOutput,
}


def _safe_getattr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises is as good as missing
        return None


def _str_attr(obj: Any, name: str) -> str | None:
    value = _safe_getattr(obj, name)
    return value if isinstance(value, str) and value else None


def _part_type(part: Any) -> str | None:
    if part is None:
        return None
    if isinstance(part, str):
        return "text"
    part_type = _safe_getattr(part, "type")
    return part_type if isinstance(part_type, str) else type(part).__name__


def _short(item_id: str | None) -> str:
    if item_id is None:
        return "<no id>"
    return repr(item_id if len(item_id) <= _LOG_ID_CHARS else item_id[:_LOG_ID_CHARS] + "...")
