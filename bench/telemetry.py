"""What the replay's report and span cost: a wrapped 200-item update on the real
livekit client against the emulator, with livekit's tracer exporting nowhere
(the default: no provider) and with an SDK provider and an in-memory exporter
(what any exporter costs on the event loop, minus its network).

Prints a markdown table; the last column is the time against no provider, and
the ack latency the report measured (its p50 tracks the emulated round trip).
Not a test: run `python bench/telemetry.py [--items 200] [--rtt 0.05] [--runs 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from livekit.agents import __version__ as livekit_version
from livekit.agents import llm

from livekit_history_plugin import wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.testing import RealtimeEmulator
from livekit_history_plugin.testing.spans import capture_spans, spans_named


def build_ctx(n: int) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        ctx.add_message(role=role, content=f"turn {i}: " + "words " * 12, id=f"bench_{i:04d}")
    return ctx


async def one_run(rtt: float, n: int, exporting: bool) -> tuple[float, float | None, int]:
    """(seconds for the update, the report's ack p50, chat_ctx.replay spans exported)"""
    spans: Callable[[], AbstractContextManager[Any]] = capture_spans if exporting else nullcontext
    async with RealtimeEmulator() as emu:
        emu.faults.latency = rtt
        model = wrap_realtime_model(emu.realtime_model("openai", modalities=["text"]))
        session = model.session()
        await emu.wait_for_session()
        await asyncio.sleep(0.2)  # let session.update settle, as a live call would
        with spans() as exporter:
            t0 = time.perf_counter()
            await session.update_chat_ctx(build_ctx(n))
            elapsed = time.perf_counter() - t0
        adapter = adapter_of(session)
        report = adapter.last_report if adapter is not None else None
        await session.aclose()
        await model.aclose()
    exported = len(spans_named(exporter, "chat_ctx.replay")) if exporter is not None else 0
    return elapsed, report.ack_latency_p50_s if report else None, exported


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rtt", type=float, default=0.05)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    configs = (("no provider", False), ("SDK provider + in-memory exporter", True))
    results: dict[str, list[tuple[float, float | None, int]]] = {name: [] for name, _ in configs}
    for _ in range(args.runs):
        # interleaved, so a change in machine load hits both alike
        for name, exporting in configs:
            results[name].append(await one_run(args.rtt, args.items, exporting))
    rows: list[tuple[str, float, float, int]] = []
    for name, runs in results.items():
        p50s = [p for _, p, _ in runs if p is not None]
        rows.append(
            (
                name,
                statistics.median(t for t, _, _ in runs),
                statistics.median(p50s) if p50s else float("nan"),
                sum(e for _, _, e in runs),
            )
        )
    base = rows[0][1]
    print(
        f"livekit-agents {livekit_version}, {args.items} items, {args.rtt * 1000:.0f} ms "
        f"emulated round trip, median of {args.runs} runs\n"
    )
    print("| tracer | update (s) | report ack p50 (ms) | replay spans exported | time / no provider |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, median, p50, exported in rows:
        print(f"| {name} | {median:.3f} | {p50 * 1000:.0f} | {exported} | {median / base:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
