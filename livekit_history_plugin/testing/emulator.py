"""A strict local emulator of the OpenAI / Azure OpenAI Realtime API (websocket).

The real ``livekit-plugins-openai`` client can be pointed at it (``RealtimeModel(base_url=
emulator.openai_base_url, ...)`` or ``RealtimeModel.with_azure(**emulator.azure_kwargs())``),
and it rejects what the real services reject, with their codes, params and wording.

URL shapes (as built by livekit's ``process_base_url``):

* ``/openai/realtime?api-version=...&deployment=...`` -- Azure legacy / preview: **beta**;
* ``/openai/v1/realtime?model=...`` -- Azure GA: **ga**;
* ``/v1/realtime?model=...`` (or ``/realtime``) -- OpenAI: **ga**. The retired beta shape
  (``OpenAI-Beta: realtime=v1``) is refused as OpenAI refuses it since 2026-05-12, unless
  the emulator is built with ``openai_beta=True``.

It answers with the shapes the real servers send, per provider and api-version (each
rule names its source; README "Real-server fidelity" lists them); the older, optimistic
shapes are only behind explicit knobs (``FaultConfig``, ``openai_beta``).

Everything the server does is recorded per connection (:class:`EmulatorSession`), and
the emulator never sleeps per event: replies are queued with a due time (receive time +
``faults.latency`` [+ ``faults.ack_delay`` for acks]) and one sender task per
connection writes them out in due order.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import inspect
import json
import random
import socket
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import WSMsgType, web

from ..dialects import supports_retrieve
from ..log import logger
from ._faults import DuplicateIds, FaultConfig, RejectRule, ScriptedAnswer
from ._quirks import (
    ProviderQuirks,
    ack_previous,
    deleted_item_id,
    retrieve_refusal,
    server_item_id,
)
from .validate import (
    AZURE_2024_10_EVENTS,
    AZURE_GA_EVENTS,
    CLIENT_EVENT_TYPES,
    OPENAI_GA_EVENTS,
    Dialect,
    ProviderError,
    invalid_type,
    provider_event_error,
    provider_item_error,
    sdk_event_error,
    server_error,
)

__all__ = [
    "ConversationView",
    "EmulatorSession",
    "FunctionCallReply",
    "RealtimeEmulator",
    "ReceivedEvent",
    "ResponseRecord",
    "SdkValidationFailure",
    "SentEvent",
    "client_events_of",
    "default_reply",
    "duplicate_ids_of",
    "reply_with_tool",
]

ReplyFn = Callable[["ConversationView"], "str | FunctionCallReply"]
"""A scripted model: the conversation it sees -> a text reply or a tool call."""
ModelKind = Literal["azure", "azure-ga", "openai", "openai-beta"]
Provider = Literal["openai", "azure"]

# What a create with an existing id gets, per model family (README D4):
# gpt-4o-realtime-preview acks and ignores it, gpt-realtime-1.5 acks it with
# previous_item_id == its own id and appends a second copy (steelburn/speaches
# tests/realtime/realtime_conversation_test.py, run against OpenAI; speaches commit
# f9d0e6a); gpt-realtime-2.1 on Azure GA and OpenAI since Aug 2026 reject it
# (swigerb/SonicAIDriveThru tests/conformance/README.md; livekit/agents PR #6964).
_DUPLICATES_BY_MODEL: tuple[tuple[str, DuplicateIds], ...] = (
    ("gpt-4o-realtime-preview", "ignore"),
    ("gpt-4o-mini-realtime-preview", "ignore"),
    ("gpt-realtime-1.5", "append"),
)


def duplicate_ids_of(model: str) -> DuplicateIds:
    """How the real ``model`` answers a create whose id already exists."""
    for prefix, mode in _DUPLICATES_BY_MODEL:
        if model.startswith(prefix):
            return mode
    return "reject"


def client_events_of(provider: Provider, dialect: Dialect, api_version: str | None) -> tuple[str, ...]:
    """The client event types an endpoint accepts, in the order its error lists them."""
    if dialect == "ga":
        return OPENAI_GA_EVENTS if provider == "openai" else AZURE_GA_EVENTS
    if provider == "azure" and not supports_retrieve(api_version):
        return AZURE_2024_10_EVENTS
    # later previews and OpenAI's retired beta: the beta SDK's event union
    return CLIENT_EVENT_TYPES["beta"]

SAMPLE_RATE = 24000
_BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # pcm16 mono
_MIN_COMMIT_MS = 100.0
# 100 ms of pcm16 silence: the audio delta of an audio response
_SILENCE_100MS = base64.b64encode(bytes(_BYTES_PER_MS * 100)).decode()
_ALNUM = string.ascii_letters + string.digits
_rng = random.Random()

# events whose SDK validation failure is a rejection (session.update / response.create
# failures are only recorded unless strict_session: older livekit releases send fields
# the newest SDK models do not know, and the service accepts them)
_REJECT_ON_SDK_FAILURE = frozenset(
    {
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
    }
)
_REORDERED_EVENTS = frozenset({"conversation.item.create", "conversation.item.delete"})


def _new_id(prefix: str) -> str:
    return prefix + "".join(_rng.choices(_ALNUM, k=21))


def _b64_len(data: str) -> int:
    """Decoded length of base64 text without decoding it."""
    return len(data) * 3 // 4 - data[-2:].count("=") if data else 0


def _part_text(part: Mapping[str, Any]) -> str | None:
    for key in ("text", "transcript"):
        value = part.get(key)
        if isinstance(value, str):
            return value
    return None


def _public_item(item: dict[str, Any]) -> dict[str, Any]:
    """An item as the server echoes it: audio bytes are not sent back."""
    content = item.get("content")
    if not isinstance(content, list) or not any(
        isinstance(p, dict) and "audio" in p for p in content
    ):
        return item
    return {
        **item,
        "content": [
            {k: v for k, v in p.items() if k != "audio"} if isinstance(p, dict) else p
            for p in content
        ],
    }


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------


@dataclass
class ReceivedEvent:
    """A client event as received (``event`` is None when the text was not JSON)."""

    t: float
    """``loop.time()`` at receipt (monotonic seconds)."""
    event: Any
    raw: str | None = None
    """The raw text, kept only when it did not parse."""

    @property
    def type(self) -> str | None:
        """The event ``type`` (None when missing / unparseable)."""
        if isinstance(self.event, dict):
            value = self.event.get("type")
            return value if isinstance(value, str) else None
        return None


@dataclass
class SentEvent:
    """A server event as written to the websocket."""

    t: float
    """``loop.time()`` when written."""
    event: dict[str, Any]
    due: float = 0.0
    """When it was scheduled for: receive time + latency (+ ack delay)."""

    @property
    def type(self) -> str:
        """The event ``type``."""
        return str(self.event.get("type"))


@dataclass
class SdkValidationFailure:
    """A client event the ``openai`` SDK models of its dialect do not accept."""

    session_id: str
    dialect: Dialect
    event_type: str
    event_id: str | None
    message: str
    """The failure worded as the server words it (``[code] message``)."""
    report: str
    """pydantic's full report."""
    rejected: bool
    """Whether the emulator rejected the event for it (item events, strict session)."""


@dataclass(frozen=True)
class ConversationView:
    """What the model "knows" when a response is generated: passed to ``reply``."""

    dialect: Dialect
    items: tuple[dict[str, Any], ...]
    """The conversation at response time (or the response's own ``input``)."""
    instructions: str | None
    session: Mapping[str, Any]
    response: Mapping[str, Any]
    """The ``response`` parameters of ``response.create``."""

    def messages(self, role: str | None = None) -> list[dict[str, Any]]:
        """Message items, optionally of one role."""
        return [
            i
            for i in self.items
            if i.get("type") == "message" and (role is None or i.get("role") == role)
        ]

    @staticmethod
    def text_of(item: Mapping[str, Any]) -> str:
        """An item's text (texts and transcripts of its parts, joined)."""
        parts = item.get("content") or ()
        return " ".join(t for p in parts if isinstance(p, dict) and (t := _part_text(p)))

    @property
    def last_user_text(self) -> str | None:
        """Text of the last user message, if any."""
        users = self.messages("user")
        return self.text_of(users[-1]) if users else None

    def texts(self) -> list[tuple[str, str]]:
        """``(role, text)`` of every message, in order."""
        return [(str(m.get("role")), self.text_of(m)) for m in self.messages()]


@dataclass(frozen=True)
class FunctionCallReply:
    """A reply that makes the model call a tool instead of answering with text.

    ``arguments`` is a dict (JSON-encoded on the wire) or the JSON text itself;
    ``call_id`` defaults to a fresh ``call_...`` id.
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    call_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("FunctionCallReply.name must be a non-empty string")
        if not isinstance(self.arguments, (dict, str)):
            raise TypeError("FunctionCallReply.arguments must be a dict or a JSON string")

    def arguments_json(self) -> str:
        """The arguments as the JSON text the API streams."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


def default_reply(view: ConversationView) -> str:
    """Summarize what the model saw, so tests can assert history reached the server."""
    last = view.last_user_text
    return (
        f"I see {len(view.messages())} earlier messages. "
        f"Last user message: {last if last is not None else '<none>'}"
    )


def _called_since_last_user(view: ConversationView, name: str) -> bool:
    """Whether ``name`` was already called after the last user message."""
    for item in reversed(view.items):
        if item.get("type") == "message" and item.get("role") == "user":
            return False
        if item.get("type") == "function_call" and item.get("name") == name:
            return True
    return False


def reply_with_tool(
    name: str,
    when: Callable[[ConversationView], bool],
    *,
    arguments: dict[str, Any] | str | Callable[[ConversationView], dict[str, Any] | str] = "{}",
    otherwise: ReplyFn = default_reply,
) -> ReplyFn:
    """A reply function calling tool ``name`` when ``when(view)`` holds, else ``otherwise``.

    The tool is called at most once per user turn: the response livekit requests after
    sending the tool's output gets ``otherwise``'s reply, not a second call.
    """

    def reply(view: ConversationView) -> str | FunctionCallReply:
        if when(view) and not _called_since_last_user(view, name):
            args = arguments(view) if callable(arguments) else arguments
            return FunctionCallReply(name, args)
        return otherwise(view)

    return reply


@dataclass
class ResponseRecord:
    """One generated response."""

    id: str
    client_event_id: str | None
    metadata: Any
    modalities: tuple[str, ...]
    """Output modalities used (``output_modalities`` in ga, ``modalities`` in beta)."""
    audio: bool
    conversation: tuple[dict[str, Any], ...]
    """Snapshot of the conversation (or the response input) at response time."""
    instructions: str | None
    text: str
    item_id: str
    out_of_band: bool
    created_at: float
    status: str = "in_progress"
    function_call: FunctionCallReply | None = None
    """The tool call the response made (its ``text`` is then empty)."""


@dataclass(order=True)
class _Outgoing:
    due: float
    seq: int
    event: dict[str, Any] = field(compare=False)


@dataclass
class _HeldResponse:
    record: ResponseRecord
    params: dict[str, Any]
    events: list[dict[str, Any]]
    item: dict[str, Any] | None


# ---------------------------------------------------------------------------
# one connection
# ---------------------------------------------------------------------------


class EmulatorSession:
    """One websocket connection to the emulator and the server state behind it."""

    def __init__(
        self,
        emulator: RealtimeEmulator,
        ws: web.WebSocketResponse,
        dialect: Dialect,
        *,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        model: str,
        provider: Provider = "openai",
    ) -> None:
        self.emulator = emulator
        self.dialect: Dialect = dialect
        self.provider: Provider = provider
        self.api_version: str | None = query.get("api-version") or None
        self.client_events = client_events_of(provider, dialect, self.api_version)
        """Client event types this endpoint accepts (others get ``invalid_value``)."""
        self.id = _new_id("sess_")
        self.path = path
        self.query = dict(query)
        self.headers = {
            k: v for k, v in headers.items() if k.lower() not in ("authorization", "api-key")
        }
        """Handshake headers, credentials removed."""
        self.model = model
        self.connected_at = asyncio.get_running_loop().time()
        self.received: list[ReceivedEvent] = []
        self.sent: list[SentEvent] = []
        self.errors: list[dict[str, Any]] = []
        """Error events sent, in order."""
        self.responses: list[ResponseRecord] = []
        self.dropped_acks: list[dict[str, Any]] = []
        self.truncations: dict[str, int] = {}
        """item id -> ``audio_end_ms`` of its last truncation."""
        self.audio_appends = 0
        self.first_audio_at: float | None = None
        self.closed = False
        self.assistant_audio = False
        """Whether an assistant audio response exists (the voice is then frozen)."""
        self.session_config: dict[str, Any] = _default_session(dialect, self.id, model)
        self.conversation_id = _new_id("conv_")

        self._ws = ws
        self._items: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._call_ids: Counter[str] = Counter()
        self._audio_bytes = 0
        self._heap: list[_Outgoing] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._close_requested = False
        self._graceful_close = False
        self._base = self.connected_at
        self._held_acks: list[list[dict[str, Any]]] = []
        self._reorder_timer: asyncio.TimerHandle | None = None
        self._held_response: _HeldResponse | None = None
        # the tail item deleted last and when, for FaultConfig.stale_anchors
        self._deleted_tail: tuple[str, float] | None = None
        # while a scripted answer replaces the emulator's own: what it would have sent
        self._capture: list[dict[str, Any]] | None = None

    # -- state -------------------------------------------------------------

    @property
    def items(self) -> list[dict[str, Any]]:
        """The server conversation, in order (item dicts with ids; a second copy of an
        id, appended by a ``duplicate_ids="append"`` model, is listed twice)."""
        return [self._items[i] for i in self._order]

    @property
    def item_ids(self) -> list[str]:
        """Ids of the conversation items, in order."""
        return list(self._order)

    def item(self, item_id: str) -> dict[str, Any] | None:
        """One conversation item by id."""
        return self._items.get(item_id)

    def texts(self) -> list[tuple[str, str]]:
        """``(role, text)`` of every message item, in order."""
        return [
            (str(i.get("role")), ConversationView.text_of(i))
            for i in self.items
            if i.get("type") == "message"
        ]

    def received_of(self, event_type: str) -> list[dict[str, Any]]:
        """Client events of one type, in order."""
        return [r.event for r in self.received if r.type == event_type]

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        """Server events of one type actually sent, in order."""
        return [s.event for s in self.sent if s.type == event_type]

    def error_codes(self) -> list[str]:
        """Codes of the error events sent, in order."""
        return [str(e["error"].get("code")) for e in self.errors]

    @property
    def instructions(self) -> str | None:
        """The session instructions currently in effect."""
        value = self.session_config.get("instructions")
        return value if isinstance(value, str) else None

    # -- output ------------------------------------------------------------

    def _queue(self, event: dict[str, Any], *, delay: float = 0.0) -> None:
        if self._capture is not None:
            self._capture.append(event)
            return
        event.setdefault("event_id", _new_id("event_"))
        self._seq += 1
        heapq.heappush(self._heap, _Outgoing(self._base + delay, self._seq, event))
        self._wake.set()

    def _error(self, err: ProviderError, client_event: Any) -> None:
        event_id = None
        echo = self.emulator.faults.error_event_ids
        if echo is None:
            echo = err.echo_event_id
        if echo and isinstance(client_event, dict):
            raw = client_event.get("event_id")
            event_id = raw if isinstance(raw, str) else None
        self._queue(
            {"type": "error", "event_id": _new_id("event_"), "error": err.as_dict(event_id)}
        )

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._heap[0].due - loop.time()
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                continue
            out = heapq.heappop(self._heap)
            try:
                await self._ws.send_str(json.dumps(out.event))
            except (ConnectionError, RuntimeError):
                return
            self.sent.append(SentEvent(loop.time(), out.event, out.due))
            if out.event["type"] == "error":
                self.errors.append(out.event)
                self.emulator.errors_by_code[str(out.event["error"].get("code"))] += 1
            self.emulator._notify()

    # -- acks and their faults ---------------------------------------------

    def _ack(self, item_id: str, events: list[dict[str, Any]], client_type: str) -> None:
        faults = self.emulator.faults
        for e in events:
            e.setdefault("event_id", _new_id("event_"))
        first = events[0]
        if faults.selects(faults.drop_acks, item_id, first):
            self.dropped_acks.extend(events)
            return
        units = [events]
        if faults.selects(faults.duplicate_acks, item_id, first):
            units.append([{**e, "event_id": _new_id("event_")} for e in events])
        for unit in units:
            if faults.reorder_acks > 1 and client_type in _REORDERED_EVENTS:
                self._hold_ack(unit)
            else:
                for e in unit:
                    self._queue(e, delay=faults.ack_delay)

    def _hold_ack(self, unit: list[dict[str, Any]]) -> None:
        faults = self.emulator.faults
        self._held_acks.append(unit)
        if len(self._held_acks) >= faults.reorder_acks:
            self._flush_reorder()
        elif self._reorder_timer is None:
            loop = asyncio.get_running_loop()
            self._reorder_timer = loop.call_later(faults.reorder_flush_s, self._flush_reorder)

    def _flush_reorder(self) -> None:
        if self._reorder_timer is not None:
            self._reorder_timer.cancel()
            self._reorder_timer = None
        held, self._held_acks = self._held_acks, []
        self._base = max(self._base, asyncio.get_running_loop().time())
        for unit in self.emulator.faults.release_order(held):
            for e in unit:
                self._queue(e, delay=self.emulator.faults.ack_delay)

    # -- input -------------------------------------------------------------

    def _on_text(self, raw: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        faults = self.emulator.faults
        self._base = now + faults.latency
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            self.received.append(ReceivedEvent(now, None, raw))
            # the realtime wording (2026-09-18 capture, index id 69522944037); the
            # capture elides the sentence after the first one
            self._error(
                ProviderError("invalid_json", "Invalid event: failed to parse JSON value."),
                None,
            )
            self._after_event()
            return
        self.received.append(ReceivedEvent(now, event))
        try:
            self._dispatch(event)
        except Exception:  # a bug in the emulator must not look like a protocol answer
            logger.exception("realtime emulator failed to handle a client event")
            self._error(server_error(), event)
        self._after_event()

    def _on_binary(self, data: bytes) -> None:
        if self.emulator.decode_binary_frames:
            self._on_text(data.decode("utf-8", "replace"))
            return
        # real servers refuse binary frames (2026-09-18 capture, index id 69522944037)
        loop = asyncio.get_running_loop()
        self._base = loop.time() + self.emulator.faults.latency
        self.received.append(ReceivedEvent(loop.time(), None, None))
        self._error(
            ProviderError(
                "invalid_event",
                "Expected a text WebSocket message; binary frames are not supported.",
            ),
            None,
        )
        self._after_event()

    def _after_event(self) -> None:
        faults = self.emulator.faults
        if faults.disconnect_after is not None and len(self.received) >= faults.disconnect_after:
            faults.disconnect_after = None
            self._close_requested = True
        self.emulator._notify()

    def _dispatch(self, event: Any) -> None:
        envelope = provider_event_error(event, self.dialect, self.client_events)
        if envelope is not None:
            self._error(envelope, event)
            return
        event_type: str = event["type"]
        if self._held_acks and event_type not in _REORDERED_EVENTS:
            self._flush_reorder()
        sdk_error = self._sdk_check(event)
        handler = getattr(self, "_on_" + event_type.replace(".", "_"))
        scripted = self._scripted_for(event)
        if scripted is None:
            handler(event, sdk_error)
            return
        tail = self._order[-1] if self._order else None
        if scripted.apply:
            self._capture = []
            try:
                handler(event, sdk_error)
            finally:
                self._capture = None
        for answer in scripted.events:
            self._queue(_fill(answer, event, tail))

    def _scripted_for(self, event: dict[str, Any]) -> ScriptedAnswer | None:
        faults = self.emulator.faults
        for answer in faults.scripted:
            if answer.selects(event):
                if answer.once:
                    faults.scripted = [a for a in faults.scripted if a is not answer]
                return answer
        return None

    def _sdk_check(self, event: dict[str, Any]) -> ProviderError | None:
        emulator = self.emulator
        if not emulator.sdk_validation:
            return None
        result = sdk_event_error(event, self.dialect)
        if result is None:
            return None
        err, report = result
        event_type = event["type"]
        rejected = event_type in _REJECT_ON_SDK_FAILURE or emulator.strict_session
        raw_id = event.get("event_id")
        emulator.sdk_validation_errors.append(
            SdkValidationFailure(
                session_id=self.id,
                dialect=self.dialect,
                event_type=event_type,
                event_id=raw_id if isinstance(raw_id, str) else None,
                message=f"[{err.code}] {err.message}",
                report=report,
                rejected=rejected,
            )
        )
        return err if rejected else None

    # -- session -----------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any], sdk_error: ProviderError | None) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        update = event.get("session")
        if not isinstance(update, dict):
            self._error(invalid_type("session", "an object", update), event)
            return
        if self._voice_frozen(update):
            # openai-agents-python#1661 / openai-python#2607; a refused update is
            # discarded whole (2026-09-18 capture, probe 7d)
            self._error(
                ProviderError(
                    "cannot_update_voice",
                    "Cannot update a conversation's voice if assistant audio is present.",
                ),
                event,
            )
            return
        _merge(self.session_config, update)
        self.session_config["id"] = self.id
        self.session_config["object"] = "realtime.session"
        self._queue({"type": "session.updated", "session": _jsonable(self.session_config)})

    def _voice_of(self, session: Mapping[str, Any]) -> Any:
        if self.dialect == "beta":
            return session.get("voice")
        audio = session.get("audio")
        output = audio.get("output") if isinstance(audio, Mapping) else None
        return output.get("voice") if isinstance(output, Mapping) else None

    def _voice_frozen(self, update: Mapping[str, Any]) -> bool:
        voice = self._voice_of(update)
        if voice is None or not self.assistant_audio:
            return False
        if self.emulator.faults.refuse_any_voice_after_audio:
            return True
        return bool(voice != self._voice_of(self.session_config))

    def _on_session_close(self, event: dict[str, Any], sdk_error: ProviderError | None) -> None:
        # listed by OpenAI GA and Azure GA; the server ends the session normally
        self._close_requested = True
        self._graceful_close = True

    def _on_session_input_audio_buffer_append(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        self._on_input_audio_buffer_append(event, None)

    def _on_transcription_session_update(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        # Not documented: a conversation session refuses transcription-session updates.
        self._error(
            ProviderError(
                "invalid_value",
                "transcription_session.update is only supported on transcription sessions.",
                "type",
            ),
            event,
        )

    # -- conversation items --------------------------------------------------

    def _insert(self, item: dict[str, Any], previous_item_id: str | None) -> str | None:
        """Insert after ``previous_item_id`` (None: append, "root": first).

        Returns the id of the item now before it (None at the head).
        """
        item_id = item["id"]
        self._items[item_id] = item
        if previous_item_id is None or (self._order and self._order[-1] == previous_item_id):
            before = self._order[-1] if self._order else None
            self._order.append(item_id)
        elif previous_item_id == "root":
            before = None
            self._order.insert(0, item_id)
        else:
            index = self._order.index(previous_item_id)
            before = previous_item_id
            self._order.insert(index + 1, item_id)
        if item.get("type") == "function_call" and isinstance(item.get("call_id"), str):
            self._call_ids[item["call_id"]] += 1
        return before

    def _remove(self, item_id: str) -> None:
        was_tail = bool(self._order) and self._order[-1] == item_id
        if was_tail:
            self._order.pop()
        else:
            self._order.remove(item_id)
        if was_tail:
            self._deleted_tail = (item_id, asyncio.get_running_loop().time())
        if item_id in self._order:
            return  # a second copy (duplicate_ids="append") is still there
        item = self._items.pop(item_id)
        call_id = item.get("call_id")
        if item.get("type") == "function_call" and isinstance(call_id, str):
            self._call_ids[call_id] -= 1
            if self._call_ids[call_id] <= 0:
                del self._call_ids[call_id]

    def _stale_anchor(self, before: str | None) -> str | None:
        faults = self.emulator.faults
        deleted = self._deleted_tail
        if not faults.stale_anchors or deleted is None:
            return before
        item_id, at = deleted
        if asyncio.get_running_loop().time() - at > faults.stale_anchor_s:
            return before
        return item_id

    @property
    def duplicate_ids(self) -> DuplicateIds:
        """What this session does with a create whose id exists."""
        return self.emulator.faults.duplicate_ids or duplicate_ids_of(self.model)

    def _duplicate_create(self, item: dict[str, Any], event: dict[str, Any]) -> None:
        item_id = item["id"]
        mode = self.duplicate_ids
        if mode == "reject":
            # live-verified wording (gpt-realtime GA), param null
            self._error(
                ProviderError(
                    "item_create_duplicate_item_id",
                    f"Error adding item: an item with id '{item_id}' already exists.",
                ),
                event,
            )
            return
        stored = _stored_item(item, item_id)
        if mode == "append":
            self._order.append(item_id)  # a second copy at the end, same id
        # acked either way, naming the item itself as its predecessor
        self._ack(item_id, self._item_acks(stored, item_id), event["type"])

    def _item_acks(self, item: dict[str, Any], before: str | None) -> list[dict[str, Any]]:
        public = _public_item(item)
        before = ack_previous(self.emulator.quirks, before)
        if self.dialect == "beta":
            return [
                {"type": "conversation.item.created", "previous_item_id": before, "item": public}
            ]
        return [
            {"type": "conversation.item.added", "previous_item_id": before, "item": public},
            {"type": "conversation.item.done", "previous_item_id": before, "item": public},
        ]

    def _on_conversation_item_create(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        item = event.get("item")
        if isinstance(item, dict) and "type" not in item:
            self.emulator.typeless_items += 1
        err = provider_item_error(item, self.dialect) or sdk_error
        if err is not None:
            self._error(err, event)
            return
        assert isinstance(item, dict)
        item_id = server_item_id(self.emulator.quirks, item.get("id")) or _new_id("item_")
        if item_id in self._items:
            self._duplicate_create({**item, "id": item_id}, event)
            return
        previous = event.get("previous_item_id")
        if previous == "":
            previous = None  # the API treats an empty previous_item_id as "append"
        if previous is not None and previous != "root" and previous not in self._items:
            self._error(
                ProviderError(
                    "item_create_invalid_previous_item_id",
                    f"Error adding item: the previous item with id '{previous}' does not exist.",
                ),
                event,
            )
            return
        call_id = item.get("call_id")
        if item["type"] == "function_call_output" and call_id not in self._call_ids:
            # livekit/agents#3344: this sentence, `param` null and `error.event_id` null
            # although the client sent one
            self._error(
                ProviderError(
                    "invalid_tool_call_id",
                    f"Tool call ID '{call_id}' not found in conversation.",
                    None,
                    echo_event_id=False,
                ),
                event,
            )
            return
        if self._apply_reject_rules(item, event):
            return
        stored = _stored_item(item, item_id)
        before = self._insert(stored, previous)
        if previous is None:
            before = self._stale_anchor(before)
        self._ack(item_id, self._item_acks(stored, before), event["type"])

    def _apply_reject_rules(self, item: dict[str, Any], event: dict[str, Any]) -> bool:
        faults = self.emulator.faults
        for rule in list(faults.reject):
            if rule.match(item, event):
                if rule.once:
                    faults.reject = [r for r in faults.reject if r is not rule]
                self._error(_rule_error(rule), event)
                return True
        return False

    def _on_conversation_item_delete(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        item_id = event["item_id"]
        if item_id not in self._items:
            # wording and null param as the real API answers (checked against OpenAI)
            self._error(
                ProviderError(
                    "item_delete_invalid_item_id",
                    f"Error deleting item: the item with id '{item_id}' does not exist.",
                ),
                event,
            )
            return
        self._remove(item_id)
        gone = deleted_item_id(self.emulator.quirks, item_id)
        self._ack(item_id, [{"type": "conversation.item.deleted", "item_id": gone}], event["type"])

    def _on_conversation_item_retrieve(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        refusal = retrieve_refusal(self.emulator.quirks, self.dialect, event)
        if refusal is not None:
            self._error(refusal, event)
            return
        item = self._items.get(event["item_id"])
        if item is None:
            self._error(
                ProviderError(
                    "item_retrieve_invalid_item_id",
                    f"Error retrieving item: the item with id '{event['item_id']}' does not exist.",
                ),
                event,
            )
            return
        self._queue({"type": "conversation.item.retrieved", "item": item})

    def _on_conversation_item_truncate(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        item_id = event["item_id"]
        item = self._items.get(item_id)
        if item is None:
            # same template as delete / retrieve (the truncate sentence was not captured)
            self._error(
                ProviderError(
                    "item_truncate_invalid_item_id",
                    f"Error truncating item: the item with id '{item_id}' does not exist.",
                ),
                event,
            )
            return
        index = event["content_index"]
        content = item.get("content") or []
        part = content[index] if 0 <= index < len(content) else None
        if (
            item.get("role") != "assistant"
            or not isinstance(part, dict)
            or part.get("type") not in ("audio", "output_audio")
        ):
            # wording not documented; the documented rule: only assistant audio truncates
            self._error(
                ProviderError(
                    "invalid_value",
                    "Only the audio content of an assistant message can be truncated.",
                    "content_index",
                ),
                event,
            )
            return
        # truncating drops the server-side transcript, so no unheard text stays in context
        new_content = list(content)
        new_content[index] = {**part, "transcript": None}
        self._items[item_id] = {**item, "content": new_content}
        self.truncations[item_id] = int(event["audio_end_ms"])
        self._queue(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": index,
                "audio_end_ms": event["audio_end_ms"],
            }
        )

    # -- audio input -----------------------------------------------------------

    def _on_input_audio_buffer_append(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        if self.first_audio_at is None:
            self.first_audio_at = self.received[-1].t
        self.audio_appends += 1
        self._audio_bytes += _b64_len(event["audio"])

    def _on_input_audio_buffer_commit(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        buffered_ms = self._audio_bytes / _BYTES_PER_MS
        if buffered_ms < _MIN_COMMIT_MS:
            self._error(
                ProviderError(
                    "input_audio_buffer_commit_empty",
                    "Error committing input audio buffer: buffer too small. Expected at least "
                    f"100ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
                ),
                event,
            )
            return
        self._audio_bytes = 0
        item: dict[str, Any] = {
            "id": _new_id("item_"),
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        before = self._insert(item, None)
        self._queue(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": before,
                "item_id": item["id"],
            }
        )
        self._ack(item["id"], self._item_acks(item, before), event["type"])

    def _on_input_audio_buffer_clear(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        self._audio_bytes = 0
        self._queue({"type": "input_audio_buffer.cleared"})

    def _on_output_audio_buffer_clear(
        self, event: dict[str, Any], sdk_error: ProviderError | None
    ) -> None:
        # A WebRTC/SIP event; acknowledged as a no-op (the websocket buffer is the client's).
        last = self.responses[-1].id if self.responses else ""
        self._queue({"type": "output_audio_buffer.cleared", "response_id": last})

    # -- responses ---------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any], sdk_error: ProviderError | None) -> None:
        if sdk_error is not None:
            self._error(sdk_error, event)
            return
        if self._held_response is not None:
            active = self._held_response.record.id
            self._error(
                ProviderError(
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {active}. "
                    "Wait until the response is finished before creating a new one.",
                ),
                event,
            )
            return
        params = event.get("response") or {}
        if not isinstance(params, dict):
            self._error(invalid_type("response", "an object", params), event)
            return
        faults = self.emulator.faults
        if faults.rate_limited_responses:
            faults.rate_limited_responses -= 1
            self._respond_rate_limited(event, params)
            return
        self._respond(event, params)

    def _response_modalities(self, params: Mapping[str, Any]) -> list[str]:
        key = "modalities" if self.dialect == "beta" else "output_modalities"
        value = params.get(key) or self.session_config.get(key)
        if not isinstance(value, list) or not value:
            value = ["text", "audio"] if self.dialect == "beta" else ["audio"]
        return [str(v) for v in value]

    def _response_input(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        given = params.get("input")
        if not isinstance(given, list):
            return tuple(self._items[i] for i in self._order)
        out: list[dict[str, Any]] = []
        for entry in given:
            if not isinstance(entry, dict):
                continue
            if entry.get("type") == "item_reference" and entry.get("id") in self._items:
                out.append(self._items[entry["id"]])
            elif entry.get("type") != "item_reference":
                out.append(entry)
        return tuple(out)

    def _respond(self, event: dict[str, Any], params: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        modalities = self._response_modalities(params)
        audio = "audio" in modalities
        out_of_band = params.get("conversation") == "none"
        conversation = self._response_input(params)
        instructions = params.get("instructions")
        if not isinstance(instructions, str):
            instructions = self.instructions
        view = ConversationView(
            dialect=self.dialect,
            items=conversation,
            instructions=instructions,
            session=self.session_config,
            response=params,
        )
        failed = False
        text, call = "", None
        try:
            answer = self.emulator.reply(view)
            if isinstance(answer, FunctionCallReply):
                call = answer
            elif isinstance(answer, str):
                text = answer
            else:
                raise TypeError(
                    f"reply must return str or FunctionCallReply, not {type(answer).__name__}"
                )
        except Exception:
            logger.exception("realtime emulator reply function failed")
            failed = True
        raw_id = event.get("event_id")
        record = ResponseRecord(
            id=_new_id("resp_"),
            client_event_id=raw_id if isinstance(raw_id, str) else None,
            metadata=params.get("metadata"),
            modalities=tuple(modalities),
            audio=audio,
            conversation=conversation,
            instructions=instructions,
            text=text,
            item_id=_new_id("item_"),
            out_of_band=out_of_band,
            created_at=loop.time(),
            function_call=call,
        )
        self.responses.append(record)
        response_obj = self._response_object(record, params, "in_progress")
        self._queue({"type": "response.created", "response": response_obj})
        if failed:
            self._finish_failed(record, params)
            return
        events, item = self._response_events(record, params)
        held = _HeldResponse(record, params, events, item)
        if self.emulator.faults.hold_responses:
            self._held_response = held
            return
        self._complete(held)

    def _response_object(
        self, record: ResponseRecord, params: Mapping[str, Any], status: str
    ) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "object": "realtime.response",
            "id": record.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": None if record.out_of_band else self.conversation_id,
            "metadata": record.metadata,
            "usage": None,
        }
        if self.dialect == "beta":
            obj["modalities"] = list(record.modalities)
            obj["voice"] = self.session_config.get("voice", "alloy")
            obj["output_audio_format"] = "pcm16"
            obj["max_output_tokens"] = params.get("max_response_output_tokens", "inf")
        else:
            obj["output_modalities"] = list(record.modalities)
            obj["max_output_tokens"] = params.get("max_output_tokens", "inf")
            voice = self.session_config.get("audio", {}).get("output", {}).get("voice", "alloy")
            obj["audio"] = {
                "output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "voice": voice}
            }
        return obj

    def _output_item_opening(
        self, record: ResponseRecord, in_progress: dict[str, Any], before: str | None
    ) -> list[dict[str, Any]]:
        """`response.output_item.added`, then the item's ack unless out of band."""
        events: list[dict[str, Any]] = [
            {
                "type": "response.output_item.added",
                "response_id": record.id,
                "output_index": 0,
                "item": in_progress,
            }
        ]
        if not record.out_of_band:
            beta = self.dialect == "beta"
            events.append(
                {
                    "type": "conversation.item.created" if beta else "conversation.item.added",
                    "previous_item_id": before,
                    "item": in_progress,
                }
            )
        return events

    def _output_item_closing(
        self,
        record: ResponseRecord,
        params: Mapping[str, Any],
        done_item: dict[str, Any],
        before: str | None,
    ) -> list[dict[str, Any]]:
        """ga's `conversation.item.done`, `response.output_item.done`, `response.done`,
        `rate_limits.updated`: the order of two recorded GA captures (2026-09-18, index
        id 69522944037; C++ SIP bridge, index id 40270074935)."""
        events: list[dict[str, Any]] = []
        if not record.out_of_band and self.dialect != "beta":
            events.append(
                {"type": "conversation.item.done", "previous_item_id": before, "item": done_item}
            )
        events.append(
            {
                "type": "response.output_item.done",
                "response_id": record.id,
                "output_index": 0,
                "item": done_item,
            }
        )
        final = self._response_object(record, params, "completed")
        final["output"] = [done_item]
        final["usage"] = _usage(record)
        events.append({"type": "response.done", "response": final})
        events.append(_rate_limits(remaining=True))
        return events

    def _response_events(
        self, record: ResponseRecord, params: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        if record.function_call is not None:
            return self._function_call_events(record, params, record.function_call)
        beta = self.dialect == "beta"
        rid, iid = record.id, record.item_id
        where = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        in_progress: dict[str, Any] = {
            "id": iid,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        text = record.text
        if record.audio:
            final_part = {"type": "audio" if beta else "output_audio", "transcript": text}
            part_added = {"type": "audio", "transcript": ""}
            part_done = {"type": "audio", "transcript": text}
        else:
            final_part = {"type": "text" if beta else "output_text", "text": text}
            part_added = {"type": "text", "text": ""}
            part_done = {"type": "text", "text": text}
        done_item = {**in_progress, "status": "completed", "content": [final_part]}

        before = self._order[-1] if self._order else None
        events = self._output_item_opening(record, in_progress, before)
        events.append({"type": "response.content_part.added", **where, "part": part_added})
        if record.audio:
            transcript_delta = (
                "response.audio_transcript.delta"
                if beta
                else "response.output_audio_transcript.delta"
            )
            for chunk in _chunks(text):
                events.append({"type": transcript_delta, **where, "delta": chunk})
            audio_prefix = "response.audio" if beta else "response.output_audio"
            events.append({"type": f"{audio_prefix}.delta", **where, "delta": _SILENCE_100MS})
            events.append({"type": f"{audio_prefix}.done", **where})
            events.append(
                {"type": transcript_delta[: -len("delta")] + "done", **where, "transcript": text}
            )
        else:
            text_prefix = "response.text" if beta else "response.output_text"
            for chunk in _chunks(text):
                events.append({"type": f"{text_prefix}.delta", **where, "delta": chunk})
            events.append({"type": f"{text_prefix}.done", **where, "text": text})
        events.append({"type": "response.content_part.done", **where, "part": part_done})
        events.extend(self._output_item_closing(record, params, done_item, before))
        return events, (None if record.out_of_band else done_item)

    def _function_call_events(
        self, record: ResponseRecord, params: Mapping[str, Any], call: FunctionCallReply
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """What the API streams for a tool call: the item, its arguments, the done events.

        Same shape in both dialects but for the item ack (``conversation.item.created`` in
        beta; ``.added`` + ``.done`` in ga) and ``name`` on ``arguments.done`` (ga only).
        """
        beta = self.dialect == "beta"
        rid, iid = record.id, record.item_id
        call_id = call.call_id or _new_id("call_")[:21]
        arguments = call.arguments_json()
        in_progress: dict[str, Any] = {
            "id": iid,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call.name,
            "call_id": call_id,
            "arguments": "",
        }
        done_item = {**in_progress, "status": "completed", "arguments": arguments}
        where = {"response_id": rid, "item_id": iid, "output_index": 0, "call_id": call_id}
        before = self._order[-1] if self._order else None
        events = self._output_item_opening(record, in_progress, before)
        for chunk in _chunks(arguments):
            events.append(
                {"type": "response.function_call_arguments.delta", **where, "delta": chunk}
            )
        args_done: dict[str, Any] = {
            "type": "response.function_call_arguments.done",
            **where,
            "arguments": arguments,
        }
        if not beta:
            args_done["name"] = call.name
        events.append(args_done)
        events.extend(self._output_item_closing(record, params, done_item, before))
        return events, (None if record.out_of_band else done_item)

    def _complete(self, held: _HeldResponse) -> None:
        if held.item is not None:
            self._insert(held.item, None)
        held.record.status = "completed"
        if held.record.audio and held.record.function_call is None:
            self.assistant_audio = True
        for e in held.events:
            self._queue(e)

    def _finish_failed(self, record: ResponseRecord, params: Mapping[str, Any]) -> None:
        record.status = "failed"
        final = self._response_object(record, params, "failed")
        final["status_details"] = {
            "type": "failed",
            "error": {"type": "server_error", "code": None},
        }
        self._queue({"type": "response.done", "response": final})
        self._queue(_rate_limits(remaining=True))

    def _respond_rate_limited(self, event: dict[str, Any], params: dict[str, Any]) -> None:
        """A rate-limited response: created, then failed (livekit/agents PR #2967;
        SonicAIDriveThru docs/rate_limit_recovery.md). The fields of
        `status_details.error` were not captured; the SDK's shape is used."""
        raw_id = event.get("event_id")
        record = ResponseRecord(
            id=_new_id("resp_"),
            client_event_id=raw_id if isinstance(raw_id, str) else None,
            metadata=params.get("metadata"),
            modalities=tuple(self._response_modalities(params)),
            audio=False,
            conversation=(),
            instructions=None,
            text="",
            item_id="",
            out_of_band=params.get("conversation") == "none",
            created_at=asyncio.get_running_loop().time(),
            status="failed",
        )
        self.responses.append(record)
        self._queue({"type": "response.created", "response": self._response_object(record, params, "in_progress")})
        final = self._response_object(record, params, "failed")
        final["status_details"] = {
            "type": "failed",
            "error": {"type": "rate_limit_error", "code": "rate_limit_exceeded"},
        }
        self._queue({"type": "response.done", "response": final})
        self._queue(_rate_limits(remaining=False))

    def release_responses(self) -> None:
        """Finish the response held by ``faults.hold_responses`` (sent at once)."""
        held, self._held_response = self._held_response, None
        if held is not None:
            self._base = asyncio.get_running_loop().time()
            self._complete(held)
            self.emulator._notify()

    def _on_response_cancel(self, event: dict[str, Any], sdk_error: ProviderError | None) -> None:
        held = self._held_response
        wanted = event.get("response_id")
        if held is None or (wanted and wanted != held.record.id):
            self._error(
                ProviderError(
                    "response_cancel_not_active", "Cancellation failed: no active response found"
                ),
                event,
            )
            return
        self._held_response = None
        held.record.status = "cancelled"
        final = self._response_object(held.record, held.params, "cancelled")
        final["status_details"] = {"type": "cancelled", "reason": "client_cancelled"}
        final["usage"] = _usage(held.record, output=False)
        self._queue({"type": "response.done", "response": final})
        self._queue(_rate_limits(remaining=True))

    # -- lifecycle -----------------------------------------------------------------

    def _start(self) -> None:
        self._sender = asyncio.ensure_future(self._send_loop())
        self._base = self.connected_at + self.emulator.faults.latency
        self._queue({"type": "session.created", "session": _jsonable(self.session_config)})

    async def close(self, *, code: int = 1000, message: str = "") -> None:
        """Close this websocket from the server side."""
        if self.closed:
            return
        self._close_requested = True
        await self._ws.close(code=code, message=message.encode())

    async def _shutdown(self) -> None:
        self.closed = True
        if self._reorder_timer is not None:
            self._reorder_timer.cancel()
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except (asyncio.CancelledError, Exception):
                pass


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _chunks(text: str, parts: int = 4) -> list[str]:
    """A few deltas per reply (the client must join them), never an empty list."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _rate_limits(*, remaining: bool) -> dict[str, Any]:
    """`rate_limits.updated`, sent after every `response.done` (GA captures)."""
    return {
        "type": "rate_limits.updated",
        "rate_limits": [
            {"name": "requests", "limit": 5000, "remaining": 4999 if remaining else 0,
             "reset_seconds": 0.012},
            {"name": "tokens", "limit": 400000, "remaining": 395000 if remaining else 0,
             "reset_seconds": 0.75},
        ],
    }


def _usage(record: ResponseRecord, *, output: bool = True) -> dict[str, Any]:
    input_tokens = sum(len(ConversationView.text_of(i)) // 4 + 1 for i in record.conversation)
    produced = record.function_call.arguments_json() if record.function_call else record.text
    out_tokens = len(produced) // 4 + 1 if output else 0
    audio_tokens = out_tokens if record.audio else 0
    return {
        "total_tokens": input_tokens + out_tokens,
        "input_tokens": input_tokens,
        "output_tokens": out_tokens,
        "input_token_details": {
            "cached_tokens": 0,
            "text_tokens": input_tokens,
            "audio_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
        },
        "output_token_details": {"text_tokens": out_tokens, "audio_tokens": audio_tokens},
    }


def _stored_item(item: dict[str, Any], item_id: str) -> dict[str, Any]:
    stored = dict(item)
    stored["id"] = item_id
    stored["object"] = "realtime.item"
    stored["status"] = "completed"
    content = item.get("content")
    if isinstance(content, list):
        stored["content"] = [dict(p) if isinstance(p, dict) else p for p in content]
    return stored


def _fill(template: Any, event: dict[str, Any], tail: str | None) -> Any:
    """A scripted event with the client event's values filled in (a fresh copy)."""
    raw_item = event.get("item")
    item: dict[str, Any] = raw_item if isinstance(raw_item, dict) else {}
    values = {
        "{event_id}": event.get("event_id"),
        "{item.id}": item.get("id"),
        "{item.call_id}": item.get("call_id"),
        "{previous_item_id}": event.get("previous_item_id"),
        "{item_id}": event.get("item_id"),
        "{tail}": tail,
    }
    if isinstance(template, dict):
        return {k: _fill(v, event, tail) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, event, tail) for v in template]
    if isinstance(template, str):
        if template in values:
            return values[template]
        for key, value in values.items():
            if key in template:
                template = template.replace(key, str(value))
    return template


def _rule_error(rule: RejectRule) -> ProviderError:
    return ProviderError(rule.code, rule.message, rule.param, rule.type)


def _merge(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _default_session(dialect: Dialect, session_id: str, model: str) -> dict[str, Any]:
    expires_at = int(time.time()) + 3600
    turn_detection = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "create_response": True,
        "interrupt_response": True,
    }
    if dialect == "beta":
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "expires_at": expires_at,
            "modalities": ["text", "audio"],
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "input_audio_noise_reduction": None,
            "turn_detection": turn_detection,
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "speed": 1.0,
            "tracing": None,
        }
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "expires_at": expires_at,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": pcm,
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": turn_detection,
            },
            "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
        },
    }


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------


class RealtimeEmulator:
    """A strict OpenAI / Azure OpenAI Realtime API on 127.0.0.1 (ephemeral port).

    Use as ``async with RealtimeEmulator() as emu:`` (or ``await emu.start()`` /
    ``await emu.aclose()``), then point livekit at ``emu.openai_base_url`` /
    ``emu.azure_kwargs()``, or build the model with :meth:`realtime_model`.

    Args:
        reply: every scripted reply, from the conversation the model sees: its text, or
            a :class:`FunctionCallReply` to make the model call a tool (see
            :func:`reply_with_tool`); defaults to :func:`default_reply`.
        faults: the fault knobs (``emu.faults`` can be changed at any time).
        strict_session: also reject ``session.update`` / ``response.create`` events
            the SDK models do not accept (by default they are only recorded, since
            older livekit releases send fields the newest SDK models do not know).
        api_key: the key :meth:`azure_kwargs` / :meth:`openai_kwargs` hand out.
        api_keys: keys accepted (``api-key`` header or ``Authorization: Bearer``);
            None accepts any non-empty key. A missing key is refused with HTTP 401.
        model: the model sessions report (Azure paths name a deployment instead).
        host / port: where to listen (default 127.0.0.1, an ephemeral port).
        sdk_validation: validate client events with the ``openai`` SDK models.
        openai_beta: serve OpenAI's retired beta shape (``OpenAI-Beta: realtime=v1``) as
            it was; by default it is refused with ``beta_api_shape_disabled`` and close
            4000, as OpenAI does since 2026-05-12.
        models: model names the OpenAI path knows (None: any); another one is refused
            after the upgrade with ``invalid_model`` and close 4000.
        decode_binary_frames: process binary frames as text (the real servers refuse
            them with ``invalid_event``).
    """

    def __init__(
        self,
        *,
        reply: ReplyFn | None = None,
        faults: FaultConfig | None = None,
        strict_session: bool = False,
        api_key: str = "emulator-key",
        api_keys: Iterable[str] | None = None,
        model: str = "gpt-realtime",
        host: str = "127.0.0.1",
        port: int = 0,
        sdk_validation: bool = True,
        openai_beta: bool = False,
        models: Iterable[str] | None = None,
        decode_binary_frames: bool = False,
        quirks: ProviderQuirks | None = None,
    ) -> None:
        self.quirks = quirks or ProviderQuirks()
        """Provider quirks reproduced (``ProviderQuirks.of("xai")``); off: OpenAI."""
        self.openai_beta = openai_beta
        self.models = frozenset(models) if models is not None else None
        self.decode_binary_frames = decode_binary_frames
        self.reply: ReplyFn = reply or default_reply
        self.faults = faults or FaultConfig()
        self.strict_session = strict_session
        self.api_key = api_key
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self.model = model
        self.host = host
        self.sdk_validation = sdk_validation
        self.sessions: list[EmulatorSession] = []
        self.typeless_items = 0
        """``conversation.item.create`` events whose item had no ``type``."""
        self.errors_by_code: Counter[str] = Counter()
        self.sdk_validation_errors: list[SdkValidationFailure] = []
        self.rejected_connections: list[tuple[int, str]] = []
        """``(http status, path)`` of websocket handshakes refused before the upgrade."""
        self.refused_connections: list[tuple[int, str, str]] = []
        """``(close code, error code, path)`` of connections upgraded, then refused."""
        self._port = port
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._changed: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> RealtimeEmulator:
        """Bind 127.0.0.1:ephemeral and start serving."""
        if self._runner is not None:
            return self
        self._changed = asyncio.Event()
        if self.sdk_validation:
            _warm_sdk_models()
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self

    async def aclose(self) -> None:
        """Close every connection and stop the server."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self.close_all(code=1001)
        await runner.cleanup()
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def __aenter__(self) -> RealtimeEmulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the Azure endpoint)."""
        return f"http://{self.host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` (OpenAI's ``base_url``)."""
        return self.base_url + "/v1"

    def azure_kwargs(
        self,
        *,
        api_version: str | None = "2024-10-01-preview",
        azure_deployment: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of ``RealtimeModel.with_azure`` for this emulator.

        With ``api_version`` livekit speaks the legacy (beta) dialect on
        ``/openai/realtime``; without it (livekit >= 1.5) Azure GA on ``/openai/v1/realtime``.
        """
        kwargs: dict[str, Any] = {
            "azure_endpoint": self.base_url,
            "api_key": self.api_key,
            "azure_deployment": azure_deployment or self.model,
        }
        if api_version is not None:
            kwargs["api_version"] = api_version
        return kwargs

    def openai_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``RealtimeModel(...)`` (OpenAI GA) for this emulator."""
        return {"base_url": self.openai_base_url, "api_key": self.api_key}

    def realtime_model(self, kind: ModelKind = "openai", **kwargs: Any) -> Any:
        """Build a livekit realtime model pointed at this emulator.

        ``kind``: ``"azure"`` (``with_azure`` + api_version: beta), ``"azure-ga"``
        (``with_azure`` without api_version: livekit >= 1.5), ``"openai"`` (GA) or
        ``"openai-beta"`` (``RealtimeModelBeta``: livekit <= 1.4). Extra keyword arguments
        go to the model (e.g. ``modalities=["text"]``).

        livekit 1.0 - 1.1 have no ``modalities`` option (they always ask for text and
        audio: it is left out) and, outside a job process, no aiohttp session of their
        own (one owned by the emulator is lent). Their ``"openai"`` model speaks beta.
        """
        from livekit.plugins.openai import realtime

        beta_cls = getattr(realtime, "RealtimeModelBeta", None)
        if kind == "azure":
            return realtime.RealtimeModel.with_azure(
                **self.azure_kwargs(), **self._release_kwargs(realtime.RealtimeModel, kwargs)
            )
        if kind == "azure-ga":
            if beta_cls is not None:
                raise NotImplementedError("Azure GA needs livekit-plugins-openai >= 1.5")
            return realtime.RealtimeModel.with_azure(
                **self.azure_kwargs(api_version=None), **kwargs
            )
        if kind == "openai-beta":
            if beta_cls is None:
                raise NotImplementedError(
                    "RealtimeModelBeta exists in livekit-plugins-openai <= 1.4"
                )
            # OpenAI refuses it since 2026-05-12 unless this emulator serves it (openai_beta)
            return beta_cls(**self.openai_kwargs(), **kwargs)
        return realtime.RealtimeModel(
            **self.openai_kwargs(), **self._release_kwargs(realtime.RealtimeModel, kwargs)
        )

    def _release_kwargs(self, model_cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        params = inspect.signature(model_cls).parameters
        if "modalities" in params:
            return kwargs
        # livekit 1.0 - 1.1 (both options arrived in 1.2)
        out = {k: v for k, v in kwargs.items() if k != "modalities"}
        from livekit.agents.utils import http_context

        if "http_session" not in out and http_context._ContextVar.get(None) is None:
            asyncio.get_running_loop()  # (RuntimeError outside a loop, as livekit would)
            if self._http is None or self._http.closed:
                self._http = aiohttp.ClientSession()
            out["http_session"] = self._http
        return out

    # -- observation -------------------------------------------------------------

    @property
    def last_session(self) -> EmulatorSession:
        """The most recent connection."""
        if not self.sessions:
            raise LookupError("no client has connected to the emulator")
        return self.sessions[-1]

    @property
    def active_sessions(self) -> list[EmulatorSession]:
        """Connections still open."""
        return [s for s in self.sessions if not s.closed]

    @property
    def responses(self) -> list[ResponseRecord]:
        """Every response of every connection, in order."""
        return [r for s in self.sessions for r in s.responses]

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            changed.set()
            self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; it is re-checked on every emulator event.

        Raises:
            TimeoutError: when it does not hold within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            changed = self._changed
            remaining = deadline - loop.time()
            if changed is None or remaining <= 0:
                raise TimeoutError(f"emulator condition not met within {timeout}s")
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_for_session(self, count: int = 1, timeout: float = 5.0) -> EmulatorSession:
        """Wait until ``count`` connections were made; return the ``count``-th."""
        await self.wait_until(lambda: len(self.sessions) >= count, timeout)
        return self.sessions[count - 1]

    # -- control -----------------------------------------------------------------

    async def close_all(
        self, *, code: int = 1000, session_expired: bool = False, session_minutes: int = 60
    ) -> None:
        """Close every open websocket from the server side (e.g. max session duration).

        With ``session_expired`` each connection first gets the error the service sends
        at its limit (``session_expired``): 60 minutes today, 30 in 2025 ("Your session
        hit the maximum duration of 30 minutes."), 15 in Oct 2024
        (openai/openai-realtime-api-beta#23).
        """
        sessions = self.active_sessions
        for s in sessions:
            if session_expired:
                s._base = asyncio.get_running_loop().time()
                s._error(
                    ProviderError(
                        "session_expired",
                        f"Your session hit the maximum duration of {session_minutes} minutes.",
                        echo_event_id=False,
                    ),
                    None,
                )
        if session_expired:
            await self.wait_until(lambda: all(s.closed or not s._heap for s in sessions), 5.0)
        await asyncio.gather(*(s.close(code=code) for s in sessions), return_exceptions=True)

    def release_responses(self) -> None:
        """Finish every response held by ``faults.hold_responses``."""
        for s in self.active_sessions:
            s.release_responses()

    def reject_text(self, marker: str, **kwargs: Any) -> RejectRule:
        """Add (and return) a rule rejecting items whose text contains ``marker``."""
        rule = RejectRule.text_contains(marker, **kwargs)
        self.faults.reject = [*self.faults.reject, rule]
        return rule

    # -- HTTP / websocket ---------------------------------------------------------

    def _route(self, request: web.Request) -> tuple[Dialect, str, Provider, _Refusal | None]:
        """The endpoint a handshake names, or an HTTP error (Azure, unknown paths); an
        OpenAI handshake the server refuses is upgraded first (see `_Refusal`)."""
        path = request.path.rstrip("/")
        query = request.query
        if path == "/openai/realtime":
            if not query.get("api-version"):
                raise _http_error(
                    400, "Missing required query parameter: 'api-version'.", "api-version"
                )
            if not query.get("deployment"):
                raise _http_error(
                    400, "Missing required query parameter: 'deployment'.", "deployment"
                )
            # Azure names a deployment; the session reports the model behind it
            return "beta", self.model, "azure", None
        if path == "/openai/v1/realtime":
            if not query.get("model"):
                raise _http_error(400, "Missing required parameter: 'model'.", "model")
            return "ga", self.model, "azure", None  # Azure GA: `model` is the deployment name
        if path in ("/v1/realtime", "/realtime"):
            return self._route_openai(request)
        raise web.HTTPNotFound(
            text=json.dumps({"error": {"code": "404", "message": "Resource not found"}}),
            content_type="application/json",
        )

    def _route_openai(self, request: web.Request) -> tuple[Dialect, str, Provider, _Refusal | None]:
        # OpenAI upgrades first and refuses in-band: an error, then a close
        # (2026-09-18 capture, index id 69522944037)
        model = request.query.get("model") or ""
        beta_header = request.headers.get("OpenAI-Beta", "").replace(" ", "")
        beta = "realtime=v1" in beta_header.split(",")
        dialect: Dialect = "beta" if beta else "ga"
        if self._openai_key_refused(request):
            refusal = _Refusal("invalid_api_key", "Incorrect API key provided.", 3000)
        elif not model:
            refusal = _Refusal("missing_model", "Missing required parameter: 'model'.", 4000)
        elif self.models is not None and model not in self.models:
            refusal = _Refusal(
                "invalid_model",
                f"The model '{model}' does not exist or you do not have access to it.",
                4000,
            )
        elif beta and not self.openai_beta:
            # removed on 2026-05-12 (Natively-AI-assistant PR #270); wording from
            # infinitocloud/asterisk_to_openai_rt_community#4
            refusal = _Refusal(
                "beta_api_shape_disabled",
                "The Realtime Beta API is no longer supported. Please use /v1/realtime for "
                "the GA API.",
                4000,
            )
        else:
            refusal = None
        return dialect, model, "openai", refusal

    def _openai_key_refused(self, request: web.Request) -> bool:
        key = _request_key(request)
        return bool(key) and self.api_keys is not None and key not in self.api_keys

    def _authorize(self, request: web.Request) -> None:
        key = _request_key(request)
        if not key:
            raise web.HTTPUnauthorized(
                text=json.dumps(
                    {
                        "error": {
                            "message": "You didn't provide an API key. You need to provide your API "
                            "key in an Authorization header using Bearer auth (i.e. Authorization: "
                            "Bearer YOUR_KEY).",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
                content_type="application/json",
            )
        openai_path = request.path.rstrip("/") in ("/v1/realtime", "/realtime")
        if self.api_keys is not None and key not in self.api_keys and not openai_path:
            # Azure refuses a bad key with HTTP 401 before the upgrade (SonicAIDriveThru)
            raise web.HTTPUnauthorized(
                text=json.dumps(
                    {
                        "error": {
                            "message": "Incorrect API key provided.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    }
                ),
                content_type="application/json",
            )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authorize(request)
            dialect, model, provider, refusal = self._route(request)
        except web.HTTPException as exc:
            self.rejected_connections.append((exc.status, request.path_qs))
            self._notify()
            raise
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024, autoping=True)
        if not ws.can_prepare(request).ok:
            raise _http_error(400, "Expected a websocket upgrade request.", None)
        await ws.prepare(request)
        if refusal is not None:
            await self._refuse(ws, refusal, request.path_qs)
            return ws
        session = EmulatorSession(
            self,
            ws,
            dialect,
            path=request.path,
            query=request.query,
            headers=request.headers,
            model=model,
            provider=provider,
        )
        self.sessions.append(session)
        session._start()
        self._notify()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    session._on_text(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    session._on_binary(msg.data)
                else:
                    break
                if session._close_requested:
                    break
        finally:
            await session._shutdown()
            if not ws.closed:
                abnormal = session._close_requested and not session._graceful_close
                await ws.close(code=1011 if abnormal else 1000)
            self._notify()
        return ws


    async def _refuse(self, ws: web.WebSocketResponse, refusal: _Refusal, path: str) -> None:
        error = ProviderError(refusal.code, refusal.message, None)
        event = {"type": "error", "event_id": _new_id("event_"), "error": error.as_dict(None)}
        self.refused_connections.append((refusal.close_code, refusal.code, path))
        self._notify()
        try:
            await ws.send_str(json.dumps(event))
            await ws.close(code=refusal.close_code, message=refusal.code.encode())
        except (ConnectionError, RuntimeError):
            pass


@dataclass(frozen=True)
class _Refusal:
    """An upgraded connection the server refuses: one error event, then a close."""

    code: str
    message: str
    close_code: int


def _request_key(request: web.Request) -> str | None:
    key = request.headers.get("api-key")
    auth = request.headers.get("Authorization", "")
    if not key and auth.lower().startswith("bearer "):
        key = auth[7:].strip()
    return key or None


def _http_error(status: int, message: str, param: str | None) -> web.HTTPException:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        }
    )
    cls: type[web.HTTPException] = web.HTTPBadRequest if status == 400 else web.HTTPNotFound
    return cls(text=body, content_type="application/json")


_warmed = False


def _warm_sdk_models() -> None:
    """Build the SDK models once, at start-up, rather than inside the first event."""
    global _warmed
    if _warmed:
        return
    _warmed = True
    from .validate import client_event_models

    sample = {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": []},
    }
    for dialect in ("beta", "ga"):
        for model in client_event_models(dialect).values():
            try:
                model.model_validate(sample)
            except Exception:
                pass
