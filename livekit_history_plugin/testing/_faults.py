"""Fault knobs of the realtime emulator: rejections, lost / duplicated / reordered /
late acknowledgements, errors without ``event_id``, disconnects and latency.

A :class:`FaultConfig` lives on each emulator (``emulator.faults``) and is read on
every client event, so a test can change it at any time.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AckMatch",
    "DuplicateIds",
    "FaultConfig",
    "ItemMatch",
    "RejectRule",
    "ScriptedAnswer",
    "item_text",
]

DuplicateIds = Literal["reject", "ignore", "append"]
"""What a ``conversation.item.create`` with an id already in the conversation gets."""

T = TypeVar("T")

ItemMatch = Callable[[dict[str, Any], dict[str, Any]], bool]
"""``(item, client_event) -> bool`` for a ``conversation.item.create``."""

AckMatch = Callable[[str, dict[str, Any]], bool]
"""``(item_id, ack_event) -> bool``; acks are ``conversation.item.created`` (beta),
``conversation.item.added`` + ``conversation.item.done`` (ga, one unit) and
``conversation.item.deleted``."""


def item_text(item: dict[str, Any]) -> str:
    """All text an item carries (message text / transcripts, call arguments, outputs)."""
    parts: list[str] = []
    for part in item.get("content") or ():
        if isinstance(part, dict):
            for key in ("text", "transcript"):
                value = part.get(key)
                if isinstance(value, str):
                    parts.append(value)
    for key in ("arguments", "output", "name"):
        value = item.get(key)
        if isinstance(value, str):
            parts.append(value)
    return "\n".join(parts)


class RejectRule(BaseModel):
    """Reject every ``conversation.item.create`` whose item ``match`` selects.

    The server answers an ``error`` event shaped like the real ones and does not add the
    item; built-in provider rules run first, so a malformed item keeps its own error.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    match: ItemMatch
    code: str = "invalid_value"
    message: str = "The item was rejected by an emulator reject rule."
    param: str | None = None
    type: str = "invalid_request_error"
    once: bool = False
    """Drop the rule after its first rejection (a transient failure)."""

    @classmethod
    def text_contains(cls, marker: str, **kwargs: Any) -> RejectRule:
        """Reject the items whose text (see :func:`item_text`) contains ``marker``."""
        return cls(match=lambda item, _event: marker in item_text(item), **kwargs)

    @classmethod
    def item_id(cls, item_id: str, **kwargs: Any) -> RejectRule:
        """Reject the item with this id."""
        return cls(match=lambda item, _event: item.get("id") == item_id, **kwargs)


class ScriptedAnswer(BaseModel):
    """Answer one client event with recorded server events (a conformance fixture).

    ``on``: the client event type; ``match``: dotted paths of the event and the values
    they must hold (``{"item.id": "m2"}``). ``events`` are sent instead of the emulator's
    own answer; in their strings ``{event_id}``, ``{item.id}``, ``{item.call_id}``,
    ``{previous_item_id}``, ``{item_id}`` and ``{tail}`` (the last item before the event)
    are filled in, and a value that is exactly ``"{event_id}"`` takes the client's
    ``event_id`` as is. ``apply``: the server still performs the event (e.g. inserts the
    item) and only its answer is replaced.
    """

    on: str
    match: dict[str, Any] = Field(default_factory=dict)
    events: list[dict[str, Any]]
    apply: bool = False
    once: bool = True

    def selects(self, event: dict[str, Any]) -> bool:
        if event.get("type") != self.on:
            return False
        return all(_dotted(event, path) == value for path, value in self.match.items())


def _dotted(event: dict[str, Any], path: str) -> Any:
    node: Any = event
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


class FaultConfig(BaseModel):
    """Runtime-adjustable faults of one emulator (all off by default)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True)

    reject: list[RejectRule] = Field(default_factory=list)
    """Extra rejection rules for ``conversation.item.create``."""

    drop_acks: AckMatch | bool = False
    """Never send the selected acks (the server still applies the change)."""

    duplicate_acks: AckMatch | bool = False
    """Send the selected acks twice."""

    reorder_acks: int = Field(default=0, ge=0)
    """Hold acks and release each window of this many in reverse order (0/1: off).
    A window that does not fill is released after ``reorder_flush_s``, or as soon as a
    client event other than an item create / delete arrives."""

    reorder_flush_s: float = Field(default=0.05, ge=0)

    reorder_seed: int | None = None
    """With ``reorder_acks``: release each window shuffled with this seed instead of
    reversed (answers from several workers, or a proxy)."""

    def release_order(self, held: list[T]) -> list[T]:
        """The order a window of held acks goes out in."""
        if self.reorder_seed is None:
            return held[::-1]
        shuffled = list(held)
        random.Random(self.reorder_seed).shuffle(shuffled)
        return shuffled

    ack_delay: float = Field(default=0.0, ge=0)
    """Seconds each ack is sent late; other events overtake it."""

    error_event_ids: bool | None = None
    """None: as the real servers (``server_error`` and ``invalid_tool_call_id`` carry
    ``error.event_id: null``, the others echo the client's); True: every error echoes it
    (the old optimistic shape); False: none does (the rejection itself still happens)."""

    duplicate_ids: DuplicateIds | None = None
    """A create whose id exists: "reject" (``item_create_duplicate_item_id``), "ignore"
    or "append" (acked with ``previous_item_id`` == its own id; "append" adds a second
    copy). None: per model (see ``RealtimeEmulator``)."""

    stale_anchors: bool = False
    """Acks of appended items name the tail item deleted within ``stale_anchor_s`` as
    their ``previous_item_id`` (OpenAI does, about 400 ms after a delete: livekit/agents
    PR #6964); the item itself still lands at the tail."""

    stale_anchor_s: float = Field(default=0.4, ge=0)

    rate_limited_responses: int = Field(default=0, ge=0)
    """The next this-many ``response.create`` fail as rate-limited: ``response.done`` with
    status failed, then ``rate_limits.updated`` with nothing remaining (livekit/agents
    PR #2967; swigerb/SonicAIDriveThru docs/rate_limit_recovery.md)."""

    scripted: list[ScriptedAnswer] = Field(default_factory=list)
    """Recorded answers replacing the emulator's own for matching client events."""

    refuse_any_voice_after_audio: bool = False
    """Refuse a ``session.update`` naming any voice (changed or not) once assistant audio
    exists. The real rule (``cannot_update_voice``) is confirmed for a changed voice only."""

    disconnect_after: int | None = Field(default=None, ge=1)
    """Close the websocket once a session has received this many client events (once:
    the knob resets to None when it fires)."""

    latency: float = Field(default=0.0, ge=0)
    """Round-trip latency: every reply is sent ``latency`` seconds after the client event
    it answers was received, without serializing events."""

    hold_responses: bool = False
    """Keep responses active after ``response.created`` until ``release_responses()``
    (to exercise ``response.cancel`` and ``conversation_already_has_active_response``)."""

    def selects(self, knob: AckMatch | bool, item_id: str, ack: dict[str, Any]) -> bool:
        """Whether an ack knob (``True`` / predicate) applies to this ack."""
        if isinstance(knob, bool):
            return knob
        return bool(knob(item_id, ack))
