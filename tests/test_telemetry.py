"""Our spans in livekit's own tracer, on the real livekit client against the emulator:
`chat_ctx.replay` with the rejected item's code and per-item ack latencies,
`audio_gate`, the adapter's `ReplayReport` and its log lines, content only in
`lk.pii.*` attributes, and no error on a release without the tracer."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit import rtc
from livekit.agents import __version__ as LIVEKIT_VERSION
from livekit.agents import llm
from livekit.plugins import openai as lk_openai

from livekit_history_plugin import ReplayOptions, telemetry, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.replay.engine import ItemConfirmed, ItemRejected, ReplayResult
from livekit_history_plugin.replay.report import ReplayTimings
from livekit_history_plugin.testing import RealtimeEmulator, RejectRule
from livekit_history_plugin.testing.spans import (
    TRACING_AVAILABLE,
    allow_pii_supported,
    capture_spans,
    content_outside_pii,
    spans_named,
)

needs_tracer = pytest.mark.skipif(
    not TRACING_AVAILABLE, reason="this livekit release has no livekit.agents.telemetry tracer"
)
FAST = ReplayOptions(ack_timeout=0.5, verify_timeout=0.5)
IDS = [f"item_{i:02d}" for i in range(12)]
REJECTED = "item_04"
LATENCY = 0.02
# the path every release has: livekit 1.0 - 1.1 reach OpenAI only with a shape it refuses
ANY_RELEASE_KIND = "azure"
RELEASE = tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])
# livekit 1.0 - 1.1 always ask for text and audio (no `modalities` option)
TEXT = (
    {"modalities": ["text"]}
    if "modalities" in inspect.signature(lk_openai.realtime.RealtimeModel).parameters
    else {}
)


def text_of(item_id: str) -> str:
    return f"the caller said something private in {item_id}"


def chat(ids: list[str]) -> llm.ChatContext:
    return llm.ChatContext(
        [
            llm.ChatMessage(
                id=i, role="user" if n % 2 == 0 else "assistant", content=[text_of(i)]
            )
            for n, i in enumerate(ids)
        ]
    )


async def replay(emu: RealtimeEmulator, kind: str, ids: list[str], options: ReplayOptions) -> Any:
    """One wrapped update of `ids`; the session's adapter once it settled."""
    model = wrap_realtime_model(emu.realtime_model(kind, **TEXT), options=options)
    session = model.session()
    await emu.wait_for_session()
    try:
        await session.update_chat_ctx(chat(ids))
        adapter = adapter_of(session)
        assert adapter is not None
        return adapter
    finally:
        await session.aclose()
        await model.aclose()


@pytest.fixture
async def emulator() -> Any:
    async with RealtimeEmulator() as emu:
        yield emu


@pytest.fixture(autouse=True)
async def livekit_http_context() -> AsyncIterator[None]:
    """livekit 1.0 - 1.1 models find their aiohttp session only in a job's http
    context (1.2+ create one outside a job); give each test one, as a job would."""
    from livekit.agents.utils import http_context

    if RELEASE >= (1, 2) or http_context._ContextVar.get(None) is not None:
        yield
        return
    http_context._new_session_ctx()
    try:
        yield
    finally:
        await http_context._close_http_ctx()


@needs_tracer
@pytest.mark.parametrize("kind", ["azure", "openai"])
async def test_one_rejection_is_one_replay_span_with_its_code_and_ack_latencies(
    emulator: RealtimeEmulator, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.faults.latency = LATENCY
    emulator.faults.reject.append(RejectRule.item_id(REJECTED, code="invalid_value"))
    caplog.set_level(logging.INFO, logger="livekit.plugins.history")
    with capture_spans() as exporter:
        adapter = await replay(emulator, kind, IDS, FAST)

    (span,) = spans_named(exporter, "chat_ctx.replay")
    a = dict(span.attributes)
    assert a["lk.replay.items_sent"] == 12
    assert a["lk.replay.items_confirmed"] == 11
    assert a["lk.replay.items_rejected"] == 1
    assert list(a["lk.replay.rejected_codes"]) == ["invalid_value"]
    assert list(a["lk.replay.rejected_item_ids"]) == [REJECTED]
    assert a["lk.replay.resends"] == 0
    assert a["lk.replay.items_acked"] == 11
    # every reply of the emulator comes LATENCY after the request it answers
    assert a["lk.replay.ack_latency_p50"] >= LATENCY
    assert a["lk.replay.ack_latency_max"] >= a["lk.replay.ack_latency_p50"]
    assert a["lk.replay.round_trips"] >= 1.0
    assert a["lk.replay.dialect"] == ("beta" if kind == "azure" else "ga")
    (event,) = span.events
    assert event.name == "chat_item_rejected"
    assert dict(event.attributes) == {"lk.replay.item_id": REJECTED, "error.type": "invalid_value"}
    assert span.end_time > span.start_time

    # the adapter's report says the same
    report = adapter.last_report
    assert report is not None and list(adapter.reports) == [report]
    assert (report.items_sent, report.confirmed) == (12, 11)
    assert [(r.item_id, r.code) for r in report.rejected] == [(REJECTED, "invalid_value")]
    assert report.ack_latency_p50_s == a["lk.replay.ack_latency_p50"]
    assert report.ack_latency_max_s == a["lk.replay.ack_latency_max"]

    # one INFO line with the figures; the rejection itself is a WARNING
    ours = [r for r in caplog.records if r.name == "livekit.plugins.history"]
    info = [r for r in ours if r.levelno == logging.INFO and "replayed" in r.getMessage()]
    assert len(info) == 1
    assert "12 sent, 11 confirmed, 1 rejected (invalid_value x1)" in info[0].getMessage()
    assert "ack p50" in info[0].getMessage()
    warnings = [r for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and REJECTED in warnings[0].getMessage()

    # the rejection message and the item texts only under lk.pii.*
    assert content_outside_pii(exporter, [text_of(i) for i in IDS]) == []
    assert list(a["lk.pii.replay.rejected_messages"]) == [report.rejected[0].message]


@needs_tracer
async def test_the_replay_span_is_a_child_of_the_current_livekit_span(
    emulator: RealtimeEmulator,
) -> None:
    from livekit.agents.telemetry import tracer

    with capture_spans() as exporter:
        model = wrap_realtime_model(emulator.realtime_model("openai", **TEXT))
        session = model.session()
        await emulator.wait_for_session()
        try:
            with tracer.start_as_current_span("start_agent_activity"):
                await session.update_chat_ctx(chat(IDS[:3]))
        finally:
            await session.aclose()
            await model.aclose()
    (parent,) = spans_named(exporter, "start_agent_activity")
    (span,) = spans_named(exporter, "chat_ctx.replay")
    assert span.parent is not None
    assert span.parent.span_id == parent.context.span_id
    assert span.context.trace_id == parent.context.trace_id


@needs_tracer
async def test_audio_gate_span_counts_the_held_frames(emulator: RealtimeEmulator) -> None:
    emulator.faults.latency = LATENCY
    options = FAST.model_copy(update={"audio_gate_timeout": 5.0})
    with capture_spans() as exporter:
        model = wrap_realtime_model(
            emulator.realtime_model("openai", **TEXT), options=options
        )
        session = model.session()
        await emulator.wait_for_session()
        try:
            samples = 480  # 20 ms at 24 kHz
            frame = rtc.AudioFrame(
                data=b"\x01\x00" * samples,
                sample_rate=24_000,
                num_channels=1,
                samples_per_channel=samples,
            )
            for _ in range(3):
                session.push_audio(frame)
            await session.update_chat_ctx(chat(IDS[:4]))
        finally:
            await session.aclose()
            await model.aclose()
    (span,) = spans_named(exporter, "audio_gate")
    a = dict(span.attributes)
    assert a["lk.audio_gate.frames_held"] == 3
    assert a["lk.audio_gate.audio_held"] == pytest.approx(0.06)
    assert a["lk.audio_gate.reason"] == "replayed"
    assert a["lk.audio_gate.timeout"] == 5.0
    assert 0 < a["lk.audio_gate.held"] < 5.0
    assert a["lk.audio_gate.frames_dropped"] == 0


@needs_tracer
async def test_pii_is_dropped_by_livekit_for_an_exporter_without_pii(
    emulator: RealtimeEmulator,
) -> None:
    if not allow_pii_supported():
        pytest.skip("livekit < 1.8 filters lk.pii.* at the LiveKit Cloud collector only")
    emulator.faults.reject.append(RejectRule.item_id(REJECTED, code="invalid_value"))
    with capture_spans(allow_pii=False) as exporter:
        await replay(emulator, "openai", IDS, FAST)
    (span,) = spans_named(exporter, "chat_ctx.replay")
    keys = set(span.attributes)
    assert not [k for k in keys if "pii" in k.split(".")]
    assert span.attributes["lk.replay.items_rejected"] == 1


async def test_without_an_exporter_the_replay_reports_and_nothing_breaks(
    emulator: RealtimeEmulator,
) -> None:
    # on every release, tracer or not: the report is built and the call goes on
    emulator.faults.reject.append(RejectRule.item_id(REJECTED, code="invalid_value"))
    adapter = await replay(emulator, ANY_RELEASE_KIND, IDS, FAST)
    report = adapter.last_report
    assert report is not None
    assert (report.items_sent, report.confirmed, len(report.rejected)) == (12, 11, 1)
    assert report.ack_latency_p50_s is not None and report.ack_latency_p50_s > 0
    assert telemetry.available() is TRACING_AVAILABLE


def test_timings_measure_each_items_first_send_to_its_own_ack() -> None:
    now = [0.0]
    timings = ReplayTimings(clock=lambda: now[0])
    for item_id in ("a", "b", "c"):
        timings.sent({"type": "conversation.item.create", "item": {"id": item_id}})
    now[0] = 0.1
    timings.settled(ItemConfirmed("a", None, {}, "ack"))
    now[0] = 0.2
    timings.settled(ItemRejected("b", "invalid_value", "no"))
    # a re-sent item's latency runs from its first send
    timings.sent({"type": "conversation.item.create", "item": {"id": "c"}})
    now[0] = 0.4
    timings.settled(ItemConfirmed("c", "a", {}, "ack"))
    result = ReplayResult(confirmed=["a", "c"], rejected=[ItemRejected("b", "invalid_value", "no")])
    result.resends = 1
    report = timings.report(result, dialect="ga")
    assert report.items_sent == 3
    assert report.ack_latency_p50_s == pytest.approx(0.25)
    assert report.ack_latency_max_s == pytest.approx(0.4)
    assert report.duration_s == pytest.approx(0.4)
    assert report.round_trips == pytest.approx(4.0)
    assert report.rejected_codes == {"invalid_value": 1}
    assert report.summary().startswith("3 sent, 2 confirmed, 1 rejected (invalid_value x1)")


def test_inferred_confirmations_are_not_ack_latencies() -> None:
    now = [0.0]
    timings = ReplayTimings(clock=lambda: now[0])
    timings.sent({"type": "conversation.item.create", "item": {"id": "a"}})
    now[0] = 3.0
    timings.settled(ItemConfirmed("a", None, {}, "retrieved"))
    report = timings.report(ReplayResult(confirmed=["a"]))
    assert report.ack_latency_p50_s is None and report.round_trips is None
    assert report.confirmed_by == {"retrieved": 1}


async def test_a_release_without_the_tracer_replays_and_reports(
    emulator: RealtimeEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # livekit-agents 1.0.x has no livekit.agents.telemetry: importing it fails
    monkeypatch.setitem(sys.modules, "livekit.agents.telemetry", None)
    assert telemetry.available() is False
    emulator.faults.reject.append(RejectRule.item_id(REJECTED, code="invalid_value"))
    adapter = await replay(emulator, ANY_RELEASE_KIND, IDS, FAST)
    assert adapter.last_report is not None
    assert [r.item_id for r in adapter.last_report.rejected] == [REJECTED]
    assert [i["id"] for i in emulator.last_session.items] == [i for i in IDS if i != REJECTED]
