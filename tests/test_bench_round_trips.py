"""bench/replay.py counts round trips at the emulator (request/response waves), not
wall time / RTT: a pipelined replay is one wave, a send-wait-send loop one per item."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from livekit_history_plugin.testing import RealtimeEmulator, RejectRule

ROOT = Path(__file__).resolve().parents[1]
RTT = 0.2  # long next to a burst's send gaps, so the count does not depend on load


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_replay", ROOT / "bench" / "replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_replay"] = module
    spec.loader.exec_module(module)
    return module


async def _count(bench: ModuleType, path: str, n: int, reject_at: int | None) -> tuple[int, int]:
    ctx = bench.build_ctx(n, reject_at)
    async with RealtimeEmulator() as emu:
        emu.faults.latency = RTT
        if reject_at is not None:
            emu.faults.reject.append(RejectRule.text_contains(bench.MARKER, code="invalid_value"))
        if path == "one-by-one":
            measured = await bench.run_one_by_one(emu, ctx)
        else:
            measured = await bench.run_livekit(emu, ctx, wrapped=path == "wrapped")
        trips = bench.count_round_trips(emu.last_session, measured.t0, measured.t1, RTT)
        return trips, bench.landed(emu, n)


async def test_a_send_wait_send_loop_is_one_round_trip_per_item(bench: ModuleType) -> None:
    assert await _count(bench, "one-by-one", 5, None) == (5, 5)


@pytest.mark.parametrize("reject_at", [None, 4])
async def test_a_wrapped_replay_is_one_round_trip(bench: ModuleType, reject_at: int | None) -> None:
    trips, landed = await _count(bench, "wrapped", 12, reject_at)
    assert trips == 1
    assert landed == (12 if reject_at is None else 11)


async def test_livekit_pipelines_too(bench: ModuleType) -> None:
    trips, _ = await _count(bench, "livekit", 12, None)
    assert trips == 1
