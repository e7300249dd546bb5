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
takes `--summary-seconds` (a real livekit `llm.LLM`): each call starts right
after the previous one ended, while that call's summary job is still waiting
for the LLM. One HistoryPlugin per row, made before the first call (as a worker
process would at startup) - the tokenizer is NOT warmed up by hand: the plugin
builds it in a background thread. The 10,000-turn caller's summary is brought
up to date before timing (as earlier calls' post-call jobs would have). Other
rows wait for the post-call jobs between calls, so each call starts idle.

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

    t0 = time.perf_counter()
    loaded = None
    if plugin is not None:
        loaded = await plugin.load(user, instructions=INSTRUCTIONS)
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
    await asyncio.wait_for(run, 30)
    await session.aclose()
    if recorder is not None:
        await recorder.aclose()  # its turns written; the post-call jobs queued
    await model.aclose()
    return CallResult(
        ms=(t1 - t0) * 1000,
        replayed=len(loaded.turns) if loaded is not None else 0,
        stale=loaded.summary_stale if loaded is not None else False,
        pending=loaded.summary_pending if loaded is not None else False,
    )


async def run_row(args: argparse.Namespace, row: Row, url: str | None) -> list[CallResult]:
    plugin = None
    slow = SlowLLM(args.summary_seconds) if row.slow_summary else None
    user = f"bench-{row.turns}-{uuid.uuid4().hex[:8]}"
    if url is not None:
        await _seed(url, user, row.turns)
        cfg = HistoryConfig(summarizer=slow, summary_timeout=args.summary_seconds * 5)
        plugin = HistoryPlugin(url, cfg)
        if row.turns > 50:
            # steady state: earlier calls' post-call jobs brought the summary up to date
            async with HistoryPlugin(url, HistoryConfig()) as warm:
                await warm.load(user, instructions=INSTRUCTIONS, summarize_now=True)
    results: list[CallResult] = []
    async with emulator(args) as new_model:
        for _ in range(args.calls):
            results.append(await one_call(new_model, plugin, user))
            if plugin is not None and not row.slow_summary:
                await plugin.wait_post_call(user)
    if plugin is not None:
        await plugin.aclose()
        if url is not None:
            async with open_store(url) as store:
                await store.delete_user(user)
    return results


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
        header = (
            f"{'variant':<28} {'store':<11} {'turns':>6} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p50 - livekit':>14} {'p50 / livekit':>14} {'1st ms':>7} {'replayed':>9} {'stale/pending':>14}"
        )
        print(header + "\n" + "-" * len(header))
        base = None
        for row in rows:
            url = stores[row.store] if row.store is not None else None
            results = await run_row(args, row, url)
            times = [r.ms for r in results]
            p50, p95 = _pct(times, 50), _pct(times, 95)
            base = p50 if base is None else base
            stale = sum(r.stale for r in results)
            pending = sum(r.pending for r in results)
            print(
                f"{row.name:<28} {row.store or '-':<11} "
                f"{row.turns if row.store else '-':>6} {p50:>8.1f} {p95:>8.1f} "
                f"{p50 - base:>+14.1f} {p50 / base:>14.2f} {times[0]:>7.0f} "
                f"{_pct([r.replayed for r in results], 50):>9.0f} "
                f"{f'{stale}/{pending}':>14}",
                flush=True,
            )
    print(
        "\n1st: the row's first call (its plugin was just made; the first history row "
        "waits for the tokenizer\n  the plugin began building in the background).\n"
        "turns: stored before the first call (each call adds 2). replayed: verbatim turns, "
        "median.\nstale/pending: calls that started while older turns were not in the summary "
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
