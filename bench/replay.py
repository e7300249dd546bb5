"""Replay benchmark: 200 chat items at an emulated 50 ms round trip.

Compares, on the real livekit-plugins-openai client against the bundled
emulator (latency applied to every reply, without serializing them):

- wrapped:    `update_chat_ctx` of a model wrapped by `wrap_realtime_model`
- livekit:    livekit's own `update_chat_ctx`
- one-by-one: the loop users write (send a create, wait for its ack, next)

and again with one item rejected at position 100. Prints a markdown table.
Not a test: run `python bench/replay.py [--items 200] [--rtt 0.05] [--runs 5]`.

"round trips" is counted at the emulator, not derived from the time: a client
event opens a new wave when the server had already written a reply to the
current wave before it arrived AND the client had been silent for at least
half the RTT (it was waiting for that reply). A pipelined burst is one wave; a
send-wait-send loop is one wave per item. "time / RTT" is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from livekit.agents import __version__ as livekit_version
from livekit.agents import llm

from livekit_history_plugin import wrap_realtime_model
from livekit_history_plugin.dialects import item_to_wire
from livekit_history_plugin.testing import RealtimeEmulator, RejectRule
from livekit_history_plugin.testing.emulator import EmulatorSession

MARKER = "BENCH-REJECT"


def count_round_trips(session: EmulatorSession, t0: float, t1: float, rtt: float) -> int:
    """Request/response waves of the client between loop times t0 and t1 (see the module doc)."""
    received = [r.t for r in session.received if t0 <= r.t <= t1]
    written = sorted(s.t for s in session.sent if s.t >= t0)
    waves = 0
    wave_start = previous = None
    for t in received:
        if wave_start is None or previous is None:
            waves, wave_start = 1, t
        else:
            replied = bisect.bisect_left(written, wave_start) < bisect.bisect_left(written, t)
            waited = t - previous >= rtt / 2
            if replied and waited:
                waves, wave_start = waves + 1, t
        previous = t
    return waves


class Measured:
    """Wall time and the loop-time window of one replay."""

    def __init__(self, elapsed: float, t0: float, t1: float) -> None:
        self.elapsed, self.t0, self.t1 = elapsed, t0, t1


def build_ctx(n: int, reject_at: int | None) -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    for i in range(n):
        role = "user" if i % 2 == 0 else "assistant"
        text = f"{MARKER} {i}" if i == reject_at else f"turn {i}: " + "words " * 12
        ctx.add_message(role=role, content=text, id=f"bench_{i:04d}")
    return ctx


async def run_livekit(emu: RealtimeEmulator, ctx: llm.ChatContext, wrapped: bool) -> Measured:
    model = emu.realtime_model("openai", modalities=["text"])
    if wrapped:
        model = wrap_realtime_model(model)
    session = model.session()
    await emu.wait_for_session(count=len(emu.sessions) + 1)
    await asyncio.sleep(0.2)  # let session.update settle, as a live call would
    loop = asyncio.get_running_loop()
    t0, start = loop.time(), time.perf_counter()
    try:
        await session.update_chat_ctx(ctx)
    except Exception:
        pass
    measured = Measured(time.perf_counter() - start, t0, loop.time())
    await session.aclose()
    await model.aclose()
    return measured


async def run_one_by_one(emu: RealtimeEmulator, ctx: llm.ChatContext) -> Measured:
    """What users write by hand: one create, wait for its ack (or error), next."""
    async with aiohttp.ClientSession() as http:
        url = emu.openai_base_url.replace("http", "ws") + "/realtime?model=gpt-realtime"
        async with http.ws_connect(url, headers={"Authorization": "Bearer test"}) as ws:
            await ws.receive()  # session.created
            loop = asyncio.get_running_loop()
            t0, start = loop.time(), time.perf_counter()
            for i, item in enumerate(ctx.items):
                event = {
                    "type": "conversation.item.create",
                    "event_id": f"evt_{i}",
                    "item": item_to_wire(item, "ga"),
                }
                await ws.send_str(json.dumps(event))
                while True:
                    msg = json.loads((await ws.receive()).data)
                    if msg["type"] in ("conversation.item.added", "error"):
                        break
            return Measured(time.perf_counter() - start, t0, loop.time())


def landed(emu: RealtimeEmulator, n: int) -> int:
    ids = {f"bench_{i:04d}" for i in range(n)}
    return sum(1 for item in emu.last_session.items if item["id"] in ids)


async def measure(
    name: str,
    runner: Callable[[RealtimeEmulator], Awaitable[Measured]],
    *,
    rtt: float,
    runs: int,
    n: int,
    reject: bool,
) -> dict[str, Any]:
    times: list[float] = []
    counts: list[int] = []
    trips: list[int] = []
    for _ in range(runs):
        async with RealtimeEmulator() as emu:
            emu.faults.latency = rtt
            if reject:
                emu.faults.reject.append(RejectRule.text_contains(MARKER, code="invalid_value"))
            measured = await runner(emu)
            times.append(measured.elapsed)
            counts.append(landed(emu, n))
            trips.append(count_round_trips(emu.last_session, measured.t0, measured.t1, rtt))
    median = statistics.median(times)
    return {
        "name": name,
        "median_s": median,
        "p_max_s": max(times),
        "round_trips": statistics.median(trips),
        "time_per_rtt": median / rtt,
        "landed": min(counts),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--rtt", type=float, default=0.05)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    n = args.items
    rows: list[tuple[str, dict[str, Any]]] = []
    for scenario, reject_at in (("clean", None), (f"1 rejected at {n // 2}", n // 2)):
        ctx = build_ctx(n, reject_at)
        common = dict(rtt=args.rtt, runs=args.runs, n=n, reject=reject_at is not None)
        rows.append((scenario, await measure(
            "livekit", lambda e, c=ctx: run_livekit(e, c, wrapped=False), **common)))
        rows.append((scenario, await measure(
            "wrapped", lambda e, c=ctx: run_livekit(e, c, wrapped=True), **common)))
        rows.append((scenario, await measure(
            "one-by-one", lambda e, c=ctx: run_one_by_one(e, c), **common)))

    valid = {"clean": n, f"1 rejected at {n // 2}": n - 1}
    print(f"\nlivekit-agents {livekit_version}, {n} items, emulated RTT {args.rtt * 1000:.0f} ms, "
          f"median of {args.runs} runs\n")
    print(
        "| scenario | path | time (s) | round trips (counted) | time / RTT "
        "| valid items landed | time / livekit |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    native = {s: r["median_s"] for s, r in rows if r["name"] == "livekit"}
    for scenario, r in rows:
        ratio = r["median_s"] / native[scenario]
        print(
            f"| {scenario} | {r['name']} | {r['median_s']:.3f} | {r['round_trips']:g} | "
            f"{r['time_per_rtt']:.1f} | {r['landed']}/{valid[scenario]} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
