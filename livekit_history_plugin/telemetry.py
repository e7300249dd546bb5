"""Spans of the history plugin in livekit's own OpenTelemetry traces.

livekit-agents (1.1 and later) traces every session with its tracer
`livekit.agents.telemetry.tracer`: what LiveKit Cloud shows per session and what
any OTel exporter given to `livekit.agents.telemetry.set_tracer_provider`
receives. Our spans go through that same tracer, so they land in the same
trace, under the span that is current where the work happens (livekit's
`agent_session` / `start_agent_activity`, the job's entrypoint), else under the
running session's root span:

    history.load      what was loaded for the caller, from which kind of store
    chat_ctx.replay   one chat-context update: items sent / confirmed /
                      rejected (with codes, one event per rejection) / resent,
                      per-item ack latency p50 and max, round trips
    audio_gate        how long caller audio was held, how many frames
    history.record    a call's turns written at its end, retries, failures

Content - turn text, instructions, the server's rejection messages, the user
id (like livekit's `lk.pii.participant_identity`) - goes only into attributes
with a `pii` segment (`lk.pii.*`): livekit 1.8's span processor drops those
before every exporter not granted PII (`set_tracer_provider(...,
allow_pii=False)`) and everywhere when the project enables redaction, and the
LiveKit Cloud collector honours the same marker (livekit's
`telemetry/trace_types.py`). Everything else is counts, codes, ids and times.

Releases without the tracer (livekit-agents 1.0.x) get no spans and no error:
nothing here imports OpenTelemetry itself, and a failing exporter never
reaches the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .log import logger
from .replay.report import ReplayReport

__all__ = [
    "ATTR",
    "available",
    "emit_span",
    "record_audio_gate",
    "record_history_write",
    "record_load",
    "record_replay",
]

# attribute names; the `lk.pii.` ones carry content and are redactable
ATTR = {
    "store": "lk.history.store",
    "mode": "lk.history.mode",
    "turns": "lk.history.turns",
    "tokens": "lk.history.tokens",
    "budget": "lk.history.budget",
    "summary_used": "lk.history.summary_used",
    "facts": "lk.history.facts",
    "summarized_turns": "lk.history.summarized_turns",
    "load_failed": "lk.history.load_failed",
    "conversation_id": "lk.history.conversation_id",
    "turns_written": "lk.history.turns_written",
    "retries": "lk.history.write_retries",
    "failures": "lk.history.write_failures",
    "late_turns": "lk.history.late_turns",
    "user_id": "lk.pii.history.user_id",
    "turn_texts": "lk.pii.history.turns",
    "summary_text": "lk.pii.history.summary",
    # livekit's own name for agent instructions (trace_types.ATTR_INSTRUCTIONS)
    "instructions": "lk.pii.instructions",
    "dialect": "lk.replay.dialect",
    "items_sent": "lk.replay.items_sent",
    "items_confirmed": "lk.replay.items_confirmed",
    "items_rejected": "lk.replay.items_rejected",
    "rejected_codes": "lk.replay.rejected_codes",
    "rejected_item_ids": "lk.replay.rejected_item_ids",
    "rejected_messages": "lk.pii.replay.rejected_messages",
    "resends": "lk.replay.resends",
    "deleted": "lk.replay.deleted",
    "delete_failed": "lk.replay.delete_failed",
    "events_sent": "lk.replay.events_sent",
    "dropped_by_sanitizer": "lk.replay.dropped_by_sanitizer",
    "ack_p50": "lk.replay.ack_latency_p50",
    "ack_max": "lk.replay.ack_latency_max",
    "acked": "lk.replay.items_acked",
    "round_trips": "lk.replay.round_trips",
    "aborted": "lk.replay.aborted",
    "item_id": "lk.replay.item_id",
    "error_code": "error.type",
    "gate_held": "lk.audio_gate.held",
    "gate_audio_held": "lk.audio_gate.audio_held",
    "gate_frames_held": "lk.audio_gate.frames_held",
    "gate_frames_dropped": "lk.audio_gate.frames_dropped",
    "gate_reason": "lk.audio_gate.reason",
    "gate_timeout": "lk.audio_gate.timeout",
}

Attributes = dict[str, Any]


def _tracer() -> Any | None:
    try:
        from livekit.agents.telemetry import tracer
    except ImportError:  # livekit-agents 1.0.x: no telemetry package
        return None
    return tracer


def available() -> bool:
    """Whether this livekit release has the tracer our spans go through."""
    return _tracer() is not None


def _parent_context() -> Any | None:
    """None (the ambient context) when a span is current; else the running
    session's root span context where livekit exposes it (1.8), so work on a
    task started outside the session (our reconnect replay) still nests."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    if trace.get_current_span().get_span_context().is_valid:
        return None
    try:
        from livekit.agents.telemetry.session_context import session_root_context
    except ImportError:
        return None
    try:
        return session_root_context()
    except Exception:  # a job context in an unexpected state: ambient is fine
        return None


def _clean(attributes: Mapping[str, Any]) -> Attributes:
    """OTel attribute values: no None, sequences as lists of one type."""
    out: Attributes = {}
    for key, value in attributes.items():
        if value is None:
            continue
        out[key] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def emit_span(
    name: str,
    attributes: Mapping[str, Any],
    *,
    start_ns: int,
    end_ns: int,
    events: Sequence[tuple[str, Mapping[str, Any]]] = (),
    content: Callable[[], Mapping[str, Any]] | None = None,
) -> None:
    """One finished span on livekit's tracer (no-op without it); never raises.

    `content` (the `lk.pii.*` attributes) is built only for a span that records:
    with no tracer provider set, a call start does not serialize every turn for
    nothing. Setting it after the start is safe for redaction, which livekit's
    span processor applies in `on_end`."""
    tracer = _tracer()
    if tracer is None:
        return
    try:
        span = tracer.start_span(
            name, context=_parent_context(), attributes=_clean(attributes), start_time=start_ns
        )
    except Exception:  # telemetry must never break a call
        logger.debug("could not emit the %s span", name, exc_info=True)
        return
    try:
        if content is not None and span.is_recording():
            span.set_attributes(_clean(content()))
        for event_name, event_attributes in events:
            span.add_event(event_name, _clean(event_attributes), timestamp=end_ns)
    except Exception:
        logger.debug("could not fill the %s span", name, exc_info=True)
    finally:
        span.end(end_time=max(end_ns, start_ns))


@contextmanager
def _never_raises(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:
        logger.debug("could not record %s telemetry", what, exc_info=True)


def replay_attributes(report: ReplayReport) -> Attributes:
    """The `chat_ctx.replay` attributes of a report (no content)."""
    return {
        ATTR["dialect"]: report.dialect or None,
        ATTR["items_sent"]: report.items_sent,
        ATTR["items_confirmed"]: report.confirmed,
        ATTR["items_rejected"]: len(report.rejected),
        ATTR["rejected_codes"]: [r.code for r in report.rejected],
        ATTR["rejected_item_ids"]: [r.item_id for r in report.rejected],
        ATTR["resends"]: report.resends,
        ATTR["deleted"]: report.deleted,
        ATTR["delete_failed"]: report.delete_failed,
        ATTR["events_sent"]: report.events_sent,
        ATTR["dropped_by_sanitizer"]: report.dropped_by_sanitizer,
        ATTR["acked"]: report.confirmed_by.get("ack", 0),
        ATTR["ack_p50"]: report.ack_latency_p50_s,
        ATTR["ack_max"]: report.ack_latency_max_s,
        ATTR["round_trips"]: report.round_trips,
        ATTR["aborted"]: report.aborted,
    }


def record_replay(report: ReplayReport, *, start_ns: int) -> None:
    """The `chat_ctx.replay` span of one settled update."""
    with _never_raises("replay"):
        attributes = replay_attributes(report)
        if report.rejected:
            attributes[ATTR["rejected_messages"]] = [r.message for r in report.rejected]
        events = [
            ("chat_item_rejected", {ATTR["item_id"]: r.item_id, ATTR["error_code"]: r.code})
            for r in report.rejected
        ]
        end_ns = start_ns + int(report.duration_s * 1e9)
        emit_span("chat_ctx.replay", attributes, start_ns=start_ns, end_ns=end_ns, events=events)


def record_load(
    attributes: Mapping[str, Any],
    *,
    user_id: str,
    turns: Sequence[tuple[str, str]],
    summary: str | None,
    instructions: str,
    start_ns: int,
    end_ns: int,
) -> None:
    """The `history.load` span: `attributes` are the counts (see `ATTR`), the
    rest is content and goes under `lk.pii.*` only."""
    def content() -> Attributes:
        return {
            ATTR["user_id"]: user_id,
            ATTR["turn_texts"]: json.dumps(
                [{"role": role, "text": text} for role, text in turns], ensure_ascii=False
            ),
            ATTR["summary_text"]: summary,
            ATTR["instructions"]: instructions,
        }

    with _never_raises("load"):
        emit_span("history.load", attributes, start_ns=start_ns, end_ns=end_ns, content=content)


def record_audio_gate(
    *,
    held_s: float,
    audio_held_s: float,
    frames_held: int,
    frames_dropped: int,
    reason: str,
    timeout: float | None,
    start_ns: int,
) -> None:
    """The `audio_gate` span: from closing the gate to letting audio through."""
    with _never_raises("audio gate"):
        attributes = {
            ATTR["gate_held"]: held_s,
            ATTR["gate_audio_held"]: audio_held_s,
            ATTR["gate_frames_held"]: frames_held,
            ATTR["gate_frames_dropped"]: frames_dropped,
            ATTR["gate_reason"]: reason,
            ATTR["gate_timeout"]: timeout,
        }
        end_ns = start_ns + int(held_s * 1e9)
        emit_span("audio_gate", attributes, start_ns=start_ns, end_ns=end_ns)


def record_history_write(
    *,
    store: str,
    user_id: str,
    conversation_id: str,
    turns_written: int,
    retries: int,
    failures: int,
    late_turns: int,
    start_ns: int,
    end_ns: int,
) -> None:
    """The `history.record` span: a call's recording, closed and flushed."""
    with _never_raises("record"):
        attributes = {
            ATTR["store"]: store,
            ATTR["conversation_id"]: conversation_id,
            ATTR["turns_written"]: turns_written,
            ATTR["retries"]: retries,
            ATTR["failures"]: failures,
            ATTR["late_turns"]: late_turns,
            ATTR["user_id"]: user_id,
        }
        emit_span("history.record", attributes, start_ns=start_ns, end_ns=end_ns)
