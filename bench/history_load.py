"""Call-start cost of history on SQLite: load + budget + render + sanitize.

One caller with 10,000 stored turns among 1,000,000 rows (the other rows spread
over ~9,900 other callers), a stored summary and 5 facts. Each iteration does
what the plugin does when a call starts:

    load+select  store.load_facts, compute_history_budget, load_selection (summary +
                 the newest turns, paged, exact o200k counts)
    render       render_history
    sanitize     sanitize_chat_ctx on the rendered items

Scenarios:
    default       BudgetConfig() (max_recent_turns=50): one query for the 51 newest turns
    budget-bound  max_recent_turns=10,000: the token budget decides; load_selection
                  pages through only about as many turns as fit
    load-all      the same, but loading all 10k turns then select_history (what
                  load_selection avoids)
Token-count cache: "warm" = the same caller again in this process (counts cached),
"cold" = cache cleared before each iteration (a caller this process has not seen).
The tokenizer itself is built once before timing (`tokens.warm_up()`, reported).

    .venv/bin/python bench/history_load.py [--rows 1000000] [--iterations 200] [--db PATH]

The database is built once under .bench/ (gitignored) and reused. "cpu" is the
process CPU time of the whole call start (all threads): unlike wall time it does
not grow when other processes compete for the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from livekit_history_plugin.history import tokens
from livekit_history_plugin.history.budget import (
    BudgetConfig,
    compute_history_budget,
    load_selection,
    select_history,
)
from livekit_history_plugin.history.models import Fact, Role, Summary, Turn
from livekit_history_plugin.history.render import REPLAY_MODES, ReplayMode, render_history
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.stores.base import HistoryStore
from livekit_history_plugin.sanitize import sanitize_chat_ctx

TARGET = "caller-target"
TARGET_TURNS = 10_000
TURNS_PER_CALL = 40
MODEL = "gpt-realtime"
INSTRUCTIONS = (
    "You are Maya, the voice assistant of Dr. Weber's dental practice. Help callers book, "
    "move or cancel appointments, answer questions about opening hours and prices, and "
    "keep answers short: this is a phone call."
)
TOOLS = [
    {
        "type": "function",
        "name": "book_appointment",
        "description": "Book an appointment for the caller.",
        "parameters": {
            "type": "object",
            "properties": {"day": {"type": "string"}, "time": {"type": "string"}},
            "required": ["day", "time"],
        },
    }
]
PHRASES = [
    "I'd like to move my appointment to next Tuesday if that's possible.",
    "Sure, I can do that. Which time works best for you?",
    "Around 9:30 in the morning would be great, thanks.",
    "Done: you're booked for Tuesday at 9:30, reference 48213.",
    "Can you remind me what the cleaning costs? Last time it was 85 euros.",
    "It's still 85 euros for a standard cleaning.",
    "Ich hätte gern einen Termin am Freitag, wenn möglich.",
    "Perfect, see you then! 👍",
    "My daughter Lena also needs a check-up; she's 8.",
    "Of course, I've added Lena for the same morning at 10:00.",
]
T0 = datetime(2025, 1, 1, 8, 0, tzinfo=timezone.utc)


def _turns_of(user: str, count: int, rnd: random.Random) -> list[Turn]:
    out = []
    for i in range(count):
        call = i // TURNS_PER_CALL
        out.append(
            Turn(
                user_id=user,
                conversation_id=f"{user}-call-{call}",
                seq=i % TURNS_PER_CALL,
                role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
                text=rnd.choice(PHRASES),
                created_at=T0 + timedelta(hours=6 * call, seconds=15 * (i % TURNS_PER_CALL)),
            )
        )
    return out


async def build(store: HistoryStore, rows: int) -> None:
    rnd = random.Random(42)
    t = time.perf_counter()
    target = _turns_of(TARGET, TARGET_TURNS, rnd)
    others = rows - TARGET_TURNS
    per_user = 100
    batch: list[Turn] = []
    done = 0
    for u in range(others // per_user + 1):
        n = min(per_user, others - u * per_user)
        if n <= 0:
            break
        batch.extend(_turns_of(f"caller-{u:05d}", n, rnd))
        if u % 37 == 18 and target:  # interleave the target's rows among the others
            batch.extend(target[:400])
            target = target[400:]
        if len(batch) >= 20_000:
            done += await store.append(batch)
            batch = []
            print(f"\r  built {done:,} rows", end="", file=sys.stderr, flush=True)
    batch.extend(target)
    done += await store.append(batch)
    print(f"\r  built {done:,} rows in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    last = T0 + timedelta(hours=6 * (TARGET_TURNS // TURNS_PER_CALL))
    await store.save_summary(
        Summary(
            user_id=TARGET,
            text="\n".join(f"2025-03-0{i} caller: {p}" for i, p in enumerate(PHRASES[:6], 1)),
            covers_until=last - timedelta(days=30),
            turn_count=TARGET_TURNS - 480,
        )
    )
    for key, text in [
        ("name", "Anna Weber"),
        ("language", "German or English"),
        ("allergy", "latex"),
        ("preferred_time", "mornings around 9:30"),
        ("children", "Lena (8)"),
    ]:
        await store.save_fact(Fact(user_id=TARGET, key=key, text=text))


@dataclass
class Timings:
    stages: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("select", "render", "sanitize", "total", "cpu")}
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def one_call(
    store: HistoryStore, cfg: BudgetConfig, mode: ReplayMode, load_all: bool, out: Timings
) -> tuple[int, int]:
    c0 = time.process_time()
    t0 = time.perf_counter()
    facts = await store.load_facts(TARGET)
    budget = compute_history_budget(MODEL, INSTRUCTIONS, TOOLS, cfg, facts=facts, mode=mode)
    if load_all:
        turns, summary = await asyncio.gather(
            store.load_latest(TARGET, TARGET_TURNS), store.load_summary(TARGET)
        )
        selection = select_history(turns, summary, budget, mode=mode, cfg=cfg)
    else:
        selection = await load_selection(store, TARGET, budget, mode=mode, cfg=cfg)
    t1 = time.perf_counter()
    rendered = render_history(selection, facts, mode, agent_instructions=INSTRUCTIONS)
    t2 = time.perf_counter()
    clean = sanitize_chat_ctx(rendered.chat_ctx)
    t3 = time.perf_counter()
    out.stages["cpu"].append((time.process_time() - c0) * 1000)
    if len(clean.items) != len(rendered.item_ids):
        raise SystemExit(f"sanitizer dropped rendered history items in {mode} mode")
    for name, a, b in (
        ("select", t0, t1),
        ("render", t1, t2),
        ("sanitize", t2, t3),
        ("total", t0, t3),
    ):
        out.stages[name].append((b - a) * 1000)
    return selection.tokens, len(selection.turns)


async def run(args: argparse.Namespace) -> None:
    db = Path(args.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(f"sqlite:///{db}")
    async with store:
        stats = await store.stats()
        if stats.turns != args.rows or await store.count_turns(TARGET) != TARGET_TURNS:
            if stats.turns:
                raise SystemExit(f"{db} holds {stats.turns:,} rows; delete it to rebuild")
            print(f"building {args.rows:,} rows in {db} ...", file=sys.stderr)
            await build(store, args.rows)
            stats = await store.stats()
        t = time.perf_counter()
        tokens.warm_up()
        print(
            f"{stats.turns:,} rows, {stats.users:,} users; caller {TARGET!r} has "
            f"{await store.count_turns(TARGET):,} turns. tokenizer built in "
            f"{(time.perf_counter() - t) * 1000:.0f} ms (once per process, before timing)\n"
        )
        bound = BudgetConfig(max_recent_turns=TARGET_TURNS)
        scenarios: list[tuple[str, BudgetConfig, bool]] = [
            ("default", BudgetConfig(), False),
            ("budget-bound", bound, False),
            ("load-all", bound, True),
        ]
        header = (
            f"{'scenario':<13}{'mode':<13}{'cache':<6}{'tokens':>7}{'turns':>6}"
            f"{'load+select':>12}{'render':>8}{'sanitize':>9}"
            f"{'total p50':>10}{'total p99':>10}{'cpu p50':>9}"
        )
        print(header + "\n" + "-" * len(header))
        for name, cfg, load_all in scenarios:
            for mode in REPLAY_MODES:
                for cache in ("warm", "cold"):
                    if load_all and cache == "cold":
                        continue
                    timings = Timings()
                    prepare: Callable[[], None] = (
                        tokens.clear_cache if cache == "cold" else (lambda: None)
                    )
                    await one_call(store, cfg, mode, load_all, Timings())  # warm the page cache
                    used = kept = 0
                    runs = max(5, args.iterations // 10) if load_all else args.iterations
                    for _ in range(runs):
                        prepare()
                        used, kept = await one_call(store, cfg, mode, load_all, timings)
                    s = timings.stages
                    print(
                        f"{name:<13}{mode:<13}{cache:<6}{used:>7}{kept:>6}"
                        f"{statistics.median(s['select']):>12.2f}"
                        f"{statistics.median(s['render']):>8.2f}"
                        f"{statistics.median(s['sanitize']):>9.2f}"
                        f"{statistics.median(s['total']):>10.2f}{_pct(s['total'], 0.99):>10.2f}"
                        f"{statistics.median(s['cpu']):>9.2f}"
                    )
        print(
            "\nall times in ms (p50 unless marked); tokens = history tokens replayed, "
            "turns = turns replayed verbatim; goal: default p50 <= 10 ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--db", default=".bench/history_load.db")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
