"""Time to the agent's first reply: what remembering the caller costs at call start.

Each call is a real livekit AgentSession (text mode) on the strict emulator,
every server reply `--latency` late (50 ms round trip by default). Timed per
call, from the start of the entrypoint to the first reply:

    livekit alone   AgentSession(llm=model); session.start(Agent(...));
                    session.run(user_input=...) until the agent's reply is committed
    history         the same, after `HistoryPlugin.load` (inside the timing) and
                    `HistoryPlugin.attach` (wrapped model, audio gate, recorder)

The emulator runs in its own process (as the real service runs elsewhere), so
its own work - it validates every client event with the openai SDK models -
does not count as the client's; `--in-process-emulator` runs it in this one.

Rows: livekit alone; history with 0, 50 and 10,000 stored turns (SQLite, and
PostgreSQL when `--pg` is reachable); and an LLM summarizer whose every answer
takes `--summary-seconds` (a real livekit `llm.LLM`): each timed call starts
after an untimed call of the same caller, once a summary job is waiting on the
LLM. One HistoryPlugin per row, made before the
first call (as a worker process would at startup; the tokenizer is not warmed
up by hand). The 10,000-turn caller's summary is brought up to date before
timing (as earlier calls' post-call jobs would have). Other rows wait for their
post-call jobs between calls. Rows take turns call by call, so a busy moment of
a shared machine hits every row alike.

    .venv/bin/python bench/call_start.py [--calls 20] [--latency 0.05]
        [--summary-seconds 2] [--pg postgresql://postgres@127.0.0.1/test] [--no-pg]
        [--in-process-emulator]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from livekit.agents import Agent, AgentSession, llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions

from livekit_history_plugin import __version__
from livekit_history_plugin.history.models import Role, Turn
from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.stores.base import HistoryStore, StoreError
from livekit_history_plugin.testing import RealtimeEmulator

INSTRUCTIONS = "You are Maya, the voice assistant of a dental practice."
USER_INPUT = "Hi, it's me again. Can we pick up where we left off?"
TURN_TEXTS = (
    "I'd like to move my cleaning to Thursday afternoon, if possible.",
    "Of course, Thursday at 3 pm is free; shall I book it for you?",
)


class SlowLLM(llm.LLM):
    """A livekit LLM whose every answer takes `seconds` (a slow summarizer provider)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0
        self._asked = asyncio.Event()

    async def wait_for_calls(self, n: int) -> None:
        """Until the summarizer has asked this LLM `n` times."""
        while self.calls < n:
            self._asked.clear()
            await self._asked.wait()

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: Any = NOT_GIVEN,
        tool_choice: Any = NOT_GIVEN,
        extra_kwargs: Any = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.calls += 1
        self._asked.set()
        return _SlowStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class _SlowStream(llm.LLMStream):
    def __init__(self, owner: SlowLLM, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._seconds = owner.seconds

    async def _run(self) -> None:
        await asyncio.sleep(self._seconds)
        delta = llm.ChoiceDelta(role="assistant", content="The caller moves cleanings a lot.")
        self._event_ch.send_nowait(llm.ChatChunk(id="summary", delta=delta))


@dataclass(frozen=True)
class Row:
    name: str
    store: str | None  # None: livekit alone
    turns: int
    slow_summary: bool = False


@dataclass
class CallResult:
    ms: float
    load_ms: float  # of which HistoryPlugin.load
    cpu_ms: float  # this process's CPU time (all threads) over the same span
    replayed: int
    stale: bool
    pending: bool


def _history(user: str, n: int) -> list[Turn]:
    t0 = datetime.now(timezone.utc) - timedelta(days=30)
    return [
        Turn(
            user_id=user,
            conversation_id=f"old-{i // 20}",
            seq=i % 20,
            role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
            text=f"Turn {i}: {TURN_TEXTS[i % 2]}",
            created_at=t0 + timedelta(seconds=15 * i),
            item_id=f"old-{user}-{i}",
        )
        for i in range(n)
    ]


async def _seed(url: str, user: str, n: int) -> None:
    async with open_store(url) as store:
        turns = _history(user, n)
        for i in range(0, len(turns), 1000):
            await store.append(turns[i : i + 1000])


ModelFactory = Callable[[], Any]


async def one_call(new_model: ModelFactory, plugin: HistoryPlugin | None, user: str) -> CallResult:
    loop = asyncio.get_running_loop()
    replied: asyncio.Future[float] = loop.create_future()

    def on_item(ev: Any) -> None:
        item = ev.item
        if getattr(item, "role", None) == "assistant" and not replied.done():
            replied.set_result(time.perf_counter())

    t0, c0 = time.perf_counter(), time.process_time()
    loaded = None
    if plugin is not None:
        loaded = await plugin.load(user, instructions=INSTRUCTIONS)
    t_loaded = time.perf_counter()
    model = new_model()
    session: AgentSession[Any] = AgentSession(llm=model)
    session.on("conversation_item_added", on_item)
    recorder = plugin.attach(session, user_id=user) if plugin is not None else None
    agent = (
        Agent(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx)
        if loaded is not None
        else Agent(instructions=INSTRUCTIONS)
    )
    await session.start(agent)
    run = asyncio.ensure_future(session.run(user_input=USER_INPUT))
    t1 = await asyncio.wait_for(replied, 30)
    c1 = time.process_time()
    await asyncio.wait_for(run, 30)
    await session.aclose()
    if recorder is not None:
        await recorder.aclose()  # its turns written; the post-call jobs queued
    await model.aclose()
    return CallResult(
        ms=(t1 - t0) * 1000,
        load_ms=(t_loaded - t0) * 1000,
        cpu_ms=(c1 - c0) * 1000,
        replayed=len(loaded.turns) if loaded is not None else 0,
        stale=loaded.summary_stale if loaded is not None else False,
        pending=loaded.summary_pending if loaded is not None else False,
    )


@dataclass
class Setup:
    row: Row
    user: str
    url: str | None
    plugin: HistoryPlugin | None
    results: list[CallResult]
    slow: SlowLLM | None = None


async def set_up(args: argparse.Namespace, row: Row, url: str | None) -> Setup:
    user = f"bench-{row.turns}-{uuid.uuid4().hex[:8]}"
    if url is None:
        return Setup(row, user, None, None, [])
    await _seed(url, user, row.turns)
    slow = SlowLLM(args.summary_seconds) if row.slow_summary else None
    cfg = HistoryConfig(summarizer=slow, summary_timeout=args.summary_seconds * 5)
    if row.turns > 50:
        # steady state: earlier calls' post-call jobs brought the summary up to date
        async with HistoryPlugin(url, HistoryConfig()) as warm:
            await warm.load(user, instructions=INSTRUCTIONS, summarize_now=True)
    return Setup(row, user, url, HistoryPlugin(url, cfg), [], slow)


async def one_round(new_model: ModelFactory, setups: Sequence[Setup]) -> None:
    """One call of every row, in turn, so a busy moment of the machine hits all rows."""
    for s in setups:
        if s.slow is not None:
            # an untimed call, then the timed one once a summary job waits on the slow LLM
            asked = s.slow.calls
            await one_call(new_model, s.plugin, s.user)
            await s.slow.wait_for_calls(asked + 1)
            s.results.append(await one_call(new_model, s.plugin, s.user))
            continue
        s.results.append(await one_call(new_model, s.plugin, s.user))
        if s.plugin is not None:
            await s.plugin.wait_post_call(s.user)


async def tear_down(s: Setup) -> None:
    if s.plugin is not None:
        await s.plugin.aclose()
    if s.url is not None:
        async with open_store(s.url) as store:
            await store.delete_user(s.user)


@contextlib.asynccontextmanager
async def emulator(args: argparse.Namespace) -> AsyncIterator[ModelFactory]:
    """Realtime models pointed at an emulator with `args.latency` (own process by default)."""
    if args.in_process_emulator:
        async with RealtimeEmulator() as emu:
            emu.faults.latency = args.latency
            yield lambda: emu.realtime_model("openai", modalities=["text"])
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve-emulator",
        "--latency",
        str(args.latency),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    where = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
    from livekit.plugins.openai import realtime

    try:
        yield lambda: realtime.RealtimeModel(**where, modalities=["text"])
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)


async def serve_emulator(latency: float) -> None:
    """The emulator process: print how to reach it, serve until stdin closes."""
    async with RealtimeEmulator() as emu:
        emu.faults.latency = latency
        print(json.dumps(emu.openai_kwargs()), flush=True)
        await asyncio.to_thread(sys.stdin.read)


HEADER = (
    "| variant | store | stored turns | p50 ms | p95 ms | p50 - livekit ms | paired - livekit ms "
    "| p50 / livekit | load() ms p50 | cpu ms p50 | 1st call ms | replayed turns "
    "| stale / pending |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def _line(s: Setup, livekit: Setup) -> str:
    results = s.results
    times = [r.ms for r in results]
    base = _pct([r.ms for r in livekit.results], 50)
    # each call minus livekit's call of the same round: a slow minute hits both
    paired = [r.ms - b.ms for r, b in zip(results, livekit.results, strict=True)]
    p50, p95 = _pct(times, 50), _pct(times, 95)
    stale = sum(r.stale for r in results)
    pending = sum(r.pending for r in results)
    cells = [
        s.row.name,
        s.row.store or "-",
        f"{s.row.turns:,}" if s.row.store else "-",
        f"{p50:.1f}",
        f"{p95:.1f}",
        f"{p50 - base:+.1f}",
        f"{_pct(paired, 50):+.1f}",
        f"{p50 / base:.2f}",
        f"{_pct([r.load_ms for r in results], 50):.1f}" if s.plugin is not None else "-",
        f"{_pct([r.cpu_ms for r in results], 50):.1f}",
        f"{times[0]:.0f}",
        f"{_pct([float(r.replayed) for r in results], 50):.0f}",
        f"{stale} / {pending}",
    ]
    return "| " + " | ".join(cells) + " |"


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def _reachable(url: str) -> bool:
    store: HistoryStore = open_store(url)
    try:
        await asyncio.wait_for(store.open(), 5)
    except (StoreError, OSError, asyncio.TimeoutError, ImportError):
        return False
    await store.close()
    return True


async def run(args: argparse.Namespace) -> None:
    logging.getLogger("livekit").setLevel(logging.CRITICAL)
    logging.getLogger("livekit.plugins.history").setLevel(logging.ERROR)
    from livekit.agents import __version__ as lk_version

    with tempfile.TemporaryDirectory() as tmp:
        stores = {"SQLite": f"sqlite:///{Path(tmp) / 'history.db'}"}
        if args.pg and await _reachable(args.pg):
            stores["PostgreSQL"] = args.pg
        rows = [Row("livekit alone", None, 0)]
        for name in stores:
            rows += [Row("history", name, n) for n in (0, 50, 10_000)]
        rows += [Row(f"history, LLM summary {args.summary_seconds:g} s", "SQLite", 50, True)]
        rows += [Row(f"history, LLM summary {args.summary_seconds:g} s", "SQLite", 10_000, True)]
        print(
            f"livekit-history-plugin {__version__}, livekit-agents {lk_version}; "
            f"{args.calls} calls per row; server round trip {args.latency * 1000:.0f} ms; "
            "session.start -> first reply (load() included for history rows); emulator "
            + ("in this process" if args.in_process_emulator else "in its own process")
        )
        setups = [
            await set_up(args, row, stores[row.store] if row.store is not None else None)
            for row in rows
        ]
        async with emulator(args) as new_model:
            for _ in range(args.calls):
                await one_round(new_model, setups)
        for s in setups:
            await tear_down(s)
        print(HEADER)
        for s in setups:
            print(_line(s, setups[0]))
    print(
        "\nRows take turns: round i runs call i of every row (a busy moment of the machine "
        "hits all rows).\npaired: median over rounds of (this row's call - livekit's call "
        "of the same round).\n1st: the row's first call (store connection, caches cold).\n"
        "LLM summary rows: each timed call starts after an untimed call of the same caller, "
        "once a\n  summary job is waiting on the slow LLM.\n"
        "cpu: this process's CPU time over the call's span, all threads (the emulator runs "
        "elsewhere);\n  unlike wall time it does not grow when other processes take the cores.\n"
        "stored turns: before the first call (each call adds 2). replayed: verbatim turns, "
        "median.\nstale / pending: calls that started while older turns were not in the summary "
        "yet / while a summary job was queued or running."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency, seconds")
    parser.add_argument("--summary-seconds", type=float, default=2.0)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1/test")
    parser.add_argument("--no-pg", dest="pg", action="store_const", const=None)
    parser.add_argument("--in-process-emulator", action="store_true")
    parser.add_argument("--serve-emulator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulator:
        asyncio.run(serve_emulator(args.latency))
        return
    if args.calls < 1:
        sys.exit("--calls must be >= 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
