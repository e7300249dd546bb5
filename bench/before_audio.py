"""Caller audio vs. history at call start, on the emulator with network latency.

A caller with 50 stored turns calls N times. Each call is a real livekit
AgentSession on the strict emulator (every server reply `--latency` late); the
caller talks from the first moment: as soon as livekit creates the realtime
session, 20 ms frames of speech are pushed into it in real time for
`--talk-ms`. Measured per call:

    history acked   session.start() -> the server acknowledged the last history
                    item (items / packed modes) or the instructions carrying it
                    (instructions mode)
    frames early    20 ms frames whose audio reached the server before that:
                    what the server's VAD hears, and may answer, without the history
    frames ahead    20 ms frames the server received before the last history item
    frames held     frames the audio gate held (wrapped model only)
    delay           per frame spoken before the history was acknowledged: spoken ->
                    reached the server (the cost of holding)

Variants: the plugin (`HistoryPlugin.attach`: wrapped model, audio gate) and
livekit's native path (same history in `Agent(chat_ctx=...)`, model not
wrapped), each in the packed and items replay modes.

    .venv/bin/python bench/before_audio.py [--calls 20] [--turns 50] [--latency 0.05]
        [--kind openai|azure] [--talk-ms 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from livekit import rtc
from livekit.agents import Agent, AgentSession

from livekit_history_plugin import __version__
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.history.models import Role, Turn
from livekit_history_plugin.history.plugin import (
    HistoryConfig,
    HistoryPlugin,
    LoadedHistory,
    watch_sessions,
)
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.testing import EmulatorSession, RealtimeEmulator, RejectRule

SAMPLE_RATE = 24_000
FRAME_MS = 20
FRAME_BYTES = SAMPLE_RATE * FRAME_MS // 1000 * 2  # pcm16 mono
USER = "bench-caller"
INSTRUCTIONS = "You are Maya, the voice assistant of a dental practice."
Mode = Literal["items", "packed", "instructions"]


REJECT_MARKER = "PLEASE-REJECT"
REJECTED_TURN = 10


@dataclass(frozen=True)
class Scenario:
    title: str
    code: str | None = None  # the server refuses history turn REJECTED_TURN with it
    once: bool = False  # only the first time (a transient failure)


SCENARIOS = [
    Scenario("clean"),
    Scenario(
        f"the server fails history turn {REJECTED_TURN} once (server_error, transient)",
        "server_error",
        once=True,
    ),
    Scenario(f"the server refuses history turn {REJECTED_TURN} (invalid_value)", "invalid_value"),
]


@dataclass(frozen=True)
class Variant:
    name: str
    mode: Mode
    plugin: bool  # HistoryPlugin.attach (wrapped model) vs livekit native
    gate: bool = True  # the audio gate of the wrapped model


@dataclass
class CallStats:
    acked_ms: float | None
    frames_early: int  # reached the server before the history was acknowledged
    frames_ahead: int  # reached the server before the history itself (server order)
    frames_held: int
    # per frame spoken before the history was acknowledged: spoken -> at the server
    holds_ms: list[float] = field(default_factory=list)
    gate_reason: str | None = None
    missing: int = 0  # history items that should be on the server and are not


def _frame() -> rtc.AudioFrame:
    samples = FRAME_BYTES // 2
    return rtc.AudioFrame(
        data=b"\x01\x00" * samples,
        sample_rate=SAMPLE_RATE,
        num_channels=1,
        samples_per_channel=samples,
    )


def _history(turns: int) -> list[Turn]:
    t0 = datetime.now(timezone.utc) - timedelta(days=3)
    return [
        Turn(
            user_id=USER,
            conversation_id=f"old-{i // 10}",
            seq=i % 10,
            role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
            text=(
                f"Turn {i}: I'd like to move my cleaning to Thursday afternoon, if possible."
                if i % 2 == 0
                else f"Turn {i}: Of course, Thursday at 3 pm is free; shall I book it?"
            )
            + (f" {REJECT_MARKER}" if i == REJECTED_TURN else ""),
            created_at=t0 + timedelta(seconds=15 * i),
            item_id=f"old-{i}",
        )
        for i in range(turns)
    ]


def _append_arrivals(s: EmulatorSession) -> list[tuple[float, int]]:
    """(receive time, cumulative audio bytes) of every input_audio_buffer.append."""
    out: list[tuple[float, int]] = []
    total = 0
    for r in s.received:
        if r.type == "input_audio_buffer.append":
            total += len(base64.b64decode(r.event["audio"]))
            out.append((r.t, total))
    return out


def _arrival_of_frame(arrivals: Sequence[tuple[float, int]], index: int) -> float | None:
    """When the append completing frame `index` (0-based) reached the server."""
    end = (index + 1) * FRAME_BYTES
    return next((t for t, total in arrivals if total >= end), None)


def _history_received_at(s: EmulatorSession, loaded: LoadedHistory) -> float | None:
    """When the server received the last history item (or the instructions holding it)."""
    wanted = set(loaded.item_ids)
    times = [
        r.t
        for r in s.received
        if (
            r.type == "conversation.item.create" and (r.event.get("item") or {}).get("id") in wanted
        )
        or (
            not wanted
            and r.type == "session.update"
            and "earlier_conversation" in str((r.event.get("session") or {}).get("instructions"))
        )
    ]
    return max(times) if times else None


def _history_acked_at(
    s: EmulatorSession, loaded: LoadedHistory, scenario: Scenario
) -> float | None:
    if loaded.item_ids:
        wanted = _expected_items(s, loaded, scenario)
        acks = [
            sent.t
            for sent in s.sent
            if sent.type in ("conversation.item.created", "conversation.item.added")
            and (sent.event.get("item") or {}).get("id") in wanted
        ]
        return max(acks) if len(acks) >= len(wanted) else None
    for sent in s.sent:  # instructions mode: the session.updated carrying the history
        if sent.type == "session.updated" and "earlier_conversation" in str(
            sent.event.get("session", {}).get("instructions")
        ):
            return sent.t
    return None


async def one_call(
    emu: RealtimeEmulator,
    url: str,
    variant: Variant,
    scenario: Scenario,
    kind: str,
    talk_frames: int,
) -> CallStats:
    loop = asyncio.get_running_loop()
    gate = HistoryConfig().audio_gate_timeout if variant.gate else None
    plugin = HistoryPlugin(url, HistoryConfig(mode=variant.mode, audio_gate_timeout=gate))
    loaded = await plugin.load(USER, instructions=INSTRUCTIONS)
    model = emu.realtime_model(kind, modalities=["text"])  # type: ignore[arg-type]
    session: AgentSession[Any] = AgentSession(llm=model)
    if variant.plugin:
        plugin.attach(session, user_id=USER)
    pushed: list[float] = []
    rt_sessions: list[Any] = []
    talkers: list[asyncio.Task[None]] = []

    async def talk(rt: Any) -> None:
        start = loop.time()
        for i in range(talk_frames):
            pushed.append(loop.time())
            rt.push_audio(_frame())
            # real-time pacing without drift
            await asyncio.sleep(max(0.0, start + (i + 1) * FRAME_MS / 1000 - loop.time()))

    def on_session(rt: Any) -> None:
        rt_sessions.append(rt)
        talkers.append(asyncio.ensure_future(talk(rt)))

    watch_sessions(model, on_session)
    if scenario.code is not None:
        emu.faults.reject = [
            RejectRule.text_contains(REJECT_MARKER, code=scenario.code, once=scenario.once)
        ]
    connected = len(emu.sessions)
    t0 = loop.time()
    await session.start(Agent(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx))
    await asyncio.gather(*talkers)
    s = await emu.wait_for_session(connected + 1, timeout=10)
    total = talk_frames * FRAME_BYTES
    await emu.wait_until(lambda: _bytes(s) >= total, 10)

    acked = _history_acked_at(s, loaded, scenario)
    received = _history_received_at(s, loaded)
    arrivals = _append_arrivals(s)
    early = ahead = 0
    holds: list[float] = []
    for i, pushed_at in enumerate(pushed):
        arrived = _arrival_of_frame(arrivals, i)
        if arrived is None:
            continue
        if acked is not None and arrived < acked:
            early += 1
        if received is not None and arrived < received:
            ahead += 1
        if acked is not None and pushed_at < acked:
            holds.append((arrived - pushed_at) * 1000)
    adapter = adapter_of(rt_sessions[0]) if rt_sessions else None
    stats = CallStats(
        acked_ms=(acked - t0) * 1000 if acked is not None else None,
        frames_early=early,
        frames_ahead=ahead,
        frames_held=adapter.audio_gate.frames_held if adapter is not None else 0,
        holds_ms=holds,
        gate_reason=adapter.audio_gate.reason if adapter is not None else None,
        missing=len(_expected_items(s, loaded, scenario) - set(s.item_ids)),
    )
    await session.aclose()
    await model.aclose()
    await plugin.aclose()
    return stats


def _expected_items(s: EmulatorSession, loaded: LoadedHistory, scenario: Scenario) -> set[str]:
    """History items a correct replay lands: all but the one the server refuses for good."""
    if scenario.code is None or scenario.once:
        return set(loaded.item_ids)
    refused = {
        str((r.event.get("item") or {}).get("id"))
        for r in s.received
        if r.type == "conversation.item.create"
        and REJECT_MARKER in str((r.event.get("item") or {}).get("content"))
    }
    return set(loaded.item_ids) - refused


def _bytes(s: EmulatorSession) -> int:
    return sum(
        len(base64.b64decode(r.event["audio"]))
        for r in s.received
        if r.type == "input_audio_buffer.append"
    )


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


VARIANTS = [
    Variant("plugin packed", "packed", True),
    Variant("plugin items", "items", True),
    Variant("plugin items, gate off", "items", True, gate=False),
    Variant("native packed", "packed", False),
    Variant("native items", "items", False),
]
HEADER = (
    f"{'variant':<24} {'history acked ms':>17} {'frames ahead':>13} {'frames early':>13} "
    f"{'frames held':>12} {'delay ms':>15} {'gate':>9} {'missing':>8}"
)
SUBHEADER = (
    f"{'':<24} {'p50 / p99':>17} {'p50 / max':>13} {'p50 / max':>13} {'p50 / max':>12} "
    f"{'p50 / p99':>15} {'':>9} {'max':>8}"
)


def _row(name: str, results: Sequence[CallStats]) -> str:
    acked = [r.acked_ms for r in results if r.acked_ms is not None]
    early = [float(r.frames_early) for r in results]
    ahead = [float(r.frames_ahead) for r in results]
    held = [float(r.frames_held) for r in results]
    holds = [h for r in results for h in r.holds_ms]
    reasons = {r.gate_reason for r in results if r.gate_reason}
    never = len(results) - len(acked)
    return (
        f"{name:<24} "
        f"{_pct(acked, 50):>7.0f} / {_pct(acked, 99):>7.0f} "
        f"{_pct(ahead, 50):>5.0f} / {max(ahead):>5.0f} "
        f"{_pct(early, 50):>5.0f} / {max(early):>5.0f} "
        f"{_pct(held, 50):>5.0f} / {max(held):>4.0f} "
        f"{_pct(holds, 50):>6.0f} / {_pct(holds, 99):>6.0f} "
        f"{','.join(sorted(reasons)) or '-':>9} "
        f"{max(r.missing for r in results):>8}"
        + (f"  ({never} calls: history never fully acked)" if never else "")
    )


async def run(args: argparse.Namespace) -> None:
    logging.getLogger("livekit").setLevel(logging.CRITICAL)
    logging.getLogger("livekit.plugins.history").setLevel(logging.ERROR)
    talk_frames = args.talk_ms // FRAME_MS
    print(
        f"livekit-history-plugin {__version__}, livekit-agents {_lk_version()}, "
        f"{args.kind} path; {args.calls} calls per row, {args.turns} stored turns; "
        f"server latency {args.latency * 1000:.0f} ms; the caller talks "
        f"{args.talk_ms} ms from the realtime session's creation ({FRAME_MS} ms frames)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'history.db'}"
        async with open_store(url) as store:
            await store.append(_history(args.turns))
        for scenario in SCENARIOS:
            print(f"\n{scenario.title}\n{HEADER}\n{SUBHEADER}\n" + "-" * len(HEADER))
            for variant in VARIANTS:
                if scenario.code is not None and variant.mode == "packed":
                    continue  # one packed item: refusing it refuses the whole history
                async with RealtimeEmulator() as emu:
                    emu.faults.latency = args.latency
                    results = [
                        await one_call(emu, url, variant, scenario, args.kind, talk_frames)
                        for _ in range(args.calls)
                    ]
                print(_row(variant.name, results), flush=True)
    print(
        "\nhistory acked: session.start() -> the server acknowledged the last history item.\n"
        "frames ahead: 20 ms caller frames the server received before the last history item "
        "(its VAD\n  can answer those without the history).\n"
        "frames early: frames the server received before it acknowledged the history.\n"
        "frames held: frames the audio gate held.\n"
        "delay: for frames spoken before the history was acknowledged, how much later each "
        "reached\n  the server (livekit sends audio in 100 ms chunks: up to 80 ms without any "
        "gate).\n"
        "missing: history items that never landed (the one refused for good not counted)."
    )


def _lk_version() -> str:
    from livekit.agents import __version__ as v

    return str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency, seconds")
    parser.add_argument("--kind", choices=["openai", "azure"], default="openai")
    parser.add_argument("--talk-ms", type=int, default=600)
    args = parser.parse_args()
    if args.calls < 1 or args.turns < 0:
        sys.exit("--calls must be >= 1 and --turns >= 0")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
