"""Benchmark of the history stores: append and load-latest latency with a large
history, and throughput with 100 concurrent sessions. Prints a markdown table.

    python bench/stores.py                 # 1,000,000 stored turns per backend
    python bench/stores.py --quick         # 50,000
    python bench/stores.py --rows 200000 --backends sqlite,redis

Data: one heavy caller with 10,000 turns, the rest spread over callers with 100
turns each. Bulk loading goes around the store API (executemany / COPY /
pipelined HSET+ZADD in the store's own layout) so it takes seconds, not
minutes. PostgreSQL and Redis use a private schema / key prefix, dropped at the
end. Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from livekit_history_plugin.history.models import Role, Turn
from livekit_history_plugin.history.stores import HistoryStore, open_store
from livekit_history_plugin.history.stores.base import to_micros

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
HEAVY_USER = "heavy-caller"
HEAVY_TURNS = 10_000
TURNS_PER_USER = 100
TEXT = "I'd like to move my appointment to Thursday afternoon if that's possible."


@dataclass
class Result:
    backend: str
    rows: int
    bulk_s: float = 0.0
    lat: dict[str, list[float]] = field(default_factory=dict)
    throughput: float = 0.0
    notes: list[str] = field(default_factory=list)


def layout(rows: int) -> list[tuple[str, int]]:
    """(user, turns) for the whole data set."""
    users = [(HEAVY_USER, min(HEAVY_TURNS, rows))]
    rest = rows - users[0][1]
    n = 0
    while rest > 0:
        k = min(TURNS_PER_USER, rest)
        users.append((f"caller-{n:06d}", k))
        rest -= k
        n += 1
    return users


def rows_of(rows: int) -> Any:
    """Yield (user, conv, seq, created_at) in a realistic interleaving."""
    for user, k in layout(rows):
        for seq in range(k):
            conv = f"{user}-call-{seq // 20}"
            yield user, conv, seq % 20 + (seq // 20) * 20, T0 + timedelta(seconds=seq * 7)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


# -- bulk loading, per backend ------------------------------------------------------------


def bulk_sqlite(path: str, rows: int) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO turns (user_id, conversation_id, seq, idem_key, role, text, created_at, "
        "source, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, 'voice', 0)",
        (
            (u, c, s, f"{c}:{s}", "user" if s % 2 == 0 else "assistant", TEXT, to_micros(at))
            for u, c, s, at in rows_of(rows)
        ),
    )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


async def bulk_postgres(url: str, schema: str, rows: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.split("?")[0])
    try:
        await conn.copy_records_to_table(
            "turns",
            schema_name=schema,
            columns=[
                "user_id",
                "idem_key",
                "conversation_id",
                "seq",
                "role",
                "text",
                "created_at",
                "source",
                "interrupted",
            ],
            records=(
                (
                    u,
                    f"{c}:{s}",
                    c,
                    s,
                    "user" if s % 2 == 0 else "assistant",
                    TEXT,
                    at,
                    "voice",
                    False,
                )
                for u, c, s, at in rows_of(rows)
            ),
        )
        await conn.execute(f'ANALYZE "{schema}".turns')
    finally:
        await conn.close()


async def bulk_redis(url: str, prefix: str, rows: int) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url.split("?")[0])
    try:
        pipe = client.pipeline(transaction=False)
        data: dict[str, dict[str, str]] = {}
        order: dict[str, dict[str, int]] = {}

        async def send() -> None:
            # one HSET and one ZADD per caller: 2 commands per 100 turns, not per turn
            for u in data:
                pipe.hset(f"{prefix}:turns:{u}", mapping=data[u])
                pipe.zadd(f"{prefix}:order:{u}", order[u])
            await pipe.execute()
            data.clear()
            order.clear()

        for n, (u, c, s, at) in enumerate(rows_of(rows), start=1):
            key = f"{c}:{s}"
            record = {
                "user_id": u,
                "conversation_id": c,
                "seq": s,
                "role": "user" if s % 2 == 0 else "assistant",
                "text": TEXT,
                "created_at": at.isoformat(),
                "source": "voice",
                "agent_id": None,
                "item_id": None,
                "interrupted": False,
            }
            data.setdefault(u, {})[key] = json.dumps(record)
            order.setdefault(u, {})[f"{c}\x00{s:019d}\x00{key}"] = to_micros(at)
            if n % 20_000 == 0:
                await send()
        await send()
    finally:
        await client.aclose()


# -- measurements ---------------------------------------------------------------------------


def new_turn(user: str, seq: int) -> Turn:
    return Turn(
        user_id=user,
        conversation_id=f"{user}-bench",
        seq=seq,
        role=Role.USER if seq % 2 == 0 else Role.ASSISTANT,
        text=TEXT,
    )


async def measure(
    store: HistoryStore, result: Result, rows: int, samples: int, seconds: float
) -> None:
    users = [u for u, _ in layout(rows)]
    rng = random.Random(1)
    counter = iter(range(10**9))

    async def append() -> None:
        await store.append([new_turn(rng.choice(users), next(counter))])

    # the bulk load must be readable through the store, or we would time empty loads
    heavy = min(HEAVY_TURNS, rows)
    got = await store.load_latest(HEAVY_USER, 50)
    if await store.count_turns(HEAVY_USER) != heavy or len(got) != min(50, heavy):
        raise SystemExit(f"{result.backend}: bulk-loaded data does not read back")
    # warm up connections / caches / prepared statements
    for _ in range(50):
        await append()
        await store.load_latest(rng.choice(users), 50)

    result.lat["append"] = await timed(append, samples)
    result.lat["latest50"] = await timed(
        lambda: store.load_latest(rng.choice(users[1:] or users), 50), samples
    )
    result.lat["heavy50"] = await timed(lambda: store.load_latest(HEAVY_USER, 50), samples)
    result.lat["heavy_all"] = await timed(
        lambda: store.load_latest(HEAVY_USER, HEAVY_TURNS + 10_000), max(10, samples // 20)
    )
    result.throughput = await sessions(store, users, seconds)


async def sessions(store: HistoryStore, users: list[str], seconds: float) -> float:
    """100 concurrent sessions, each: append one turn, load latest 50, repeat."""
    deadline = time.perf_counter() + seconds
    ops = 0

    async def session(n: int) -> None:
        nonlocal ops
        user = users[(n * 37) % len(users)]
        seq = 10**6
        while time.perf_counter() < deadline:
            await store.append([new_turn(user, seq + n * 10**5)])
            await store.load_latest(user, 50)
            seq += 1
            ops += 2

    start = time.perf_counter()
    await asyncio.gather(*(session(n) for n in range(100)))
    return ops / (time.perf_counter() - start)


# -- drivers ---------------------------------------------------------------------------------


async def bench_sqlite(rows: int, samples: int, seconds: float, workdir: str) -> Result:
    result = Result("sqlite", rows)
    path = os.path.join(workdir, "bench.db")
    async with open_store(f"sqlite:///{path}"):
        pass  # schema
    t = time.perf_counter()
    await asyncio.to_thread(bulk_sqlite, path, rows)
    result.bulk_s = time.perf_counter() - t
    async with open_store(f"sqlite:///{path}") as store:
        await measure(store, result, rows, samples, seconds)
    size = await asyncio.to_thread(os.path.getsize, path)
    result.notes.append(f"file {size / 1e6:.0f} MB, WAL, synchronous=NORMAL")
    return result


async def bench_postgres(rows: int, samples: int, seconds: float, base: str) -> Result:
    import asyncpg

    result = Result("postgresql", rows)
    schema = f"lhp_bench_{os.getpid()}"
    url = f"{base}?schema={schema}&pool_max=20"
    try:
        async with open_store(url):
            pass
        t = time.perf_counter()
        await bulk_postgres(base, schema, rows)
        result.bulk_s = time.perf_counter() - t
        async with open_store(url) as store:
            await measure(store, result, rows, samples, seconds)
        conn = await asyncpg.connect(base)
        commit = await conn.fetchval("SHOW synchronous_commit")
        await conn.close()
        result.notes.append(f"pool_max=20, synchronous_commit={commit}")
    finally:
        conn = await asyncpg.connect(base)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return result


async def bench_redis(rows: int, samples: int, seconds: float, base: str) -> Result:
    import redis.asyncio as redis

    result = Result("redis", rows)
    prefix = f"lhpbench{os.getpid()}"
    url = f"{base}?prefix={prefix}"
    client = redis.Redis.from_url(base)
    try:
        t = time.perf_counter()
        await bulk_redis(base, prefix, rows)
        result.bulk_s = time.perf_counter() - t
        async with open_store(url) as store:
            await measure(store, result, rows, samples, seconds)
        info = await client.info("memory")
        aof = (await client.config_get("appendonly")).get("appendonly")
        result.notes.append(f"used_memory {info['used_memory_human']}, appendonly={aof}")
    finally:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=5_000):
            batch.append(key)
            if len(batch) >= 5_000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
        await client.aclose()
    return result


async def sqlite_driver_comparison(workdir: str, n: int = 2_000) -> dict[str, float]:
    """Append p50 of the same transaction through aiosqlite (one hop per
    statement) and through a dedicated thread (one hop per transaction), as
    SqliteStore does."""
    from concurrent.futures import ThreadPoolExecutor

    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, u TEXT, k TEXT, x TEXT, UNIQUE (u, k))"
    insert = "INSERT INTO t (u, k, x) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
    out: dict[str, float] = {}
    try:
        import aiosqlite
    except ImportError:
        aiosqlite = None
    if aiosqlite is not None:
        db = await aiosqlite.connect(os.path.join(workdir, "aio.db"), isolation_level=None)
        for pragma in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", ddl):
            await db.execute(pragma)

        async def aio_append(i: list[int] = [0]) -> None:  # noqa: B006 - a counter
            i[0] += 1
            await db.execute("BEGIN IMMEDIATE")
            await db.executemany(insert, [("u", str(i[0]), TEXT)])
            await db.execute("COMMIT")

        out["aiosqlite"] = pct(await timed(aio_append, n), 0.5)
        await db.close()

    ex = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()
    conn: sqlite3.Connection = await loop.run_in_executor(
        ex, lambda: sqlite3.connect(os.path.join(workdir, "thr.db"), isolation_level=None)
    )
    for pragma in ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", ddl):
        await loop.run_in_executor(ex, conn.execute, pragma)
    counter = [0]

    def txn() -> None:
        counter[0] += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, [("u", str(counter[0]), TEXT)])
        conn.execute("COMMIT")

    out["sqlite3 + thread"] = pct(await timed(lambda: loop.run_in_executor(ex, txn), n), 0.5)
    await loop.run_in_executor(ex, conn.close)
    ex.shutdown()
    return out


def ms(x: float) -> str:
    return f"{x * 1e3:.2f}"


def table(results: list[Result]) -> str:
    head = (
        "| backend | stored turns | bulk load | append p50 / p99 (ms) | latest-50 p50 / p99 (ms) "
        "| 10k-turn caller: latest-50 p50 / p99 (ms) | 10k-turn caller: all 10k p50 / p99 (ms) "
        "| 100 sessions (ops/s) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in results:

        def cell(k: str, r: Result = r) -> str:
            return f"{ms(pct(r.lat[k], 0.5))} / {ms(pct(r.lat[k], 0.99))}"

        lines.append(
            f"| {r.backend} | {r.rows:,} | {r.bulk_s:.1f} s | {cell('append')} | "
            f"{cell('latest50')} | {cell('heavy50')} | {cell('heavy_all')} | {r.throughput:,.0f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="50,000 rows, fewer samples")
    ap.add_argument("--backends", default="sqlite,postgresql,redis")
    ap.add_argument("--samples", type=int, default=1_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of the 100-session run")
    ap.add_argument(
        "--pg",
        default=os.environ.get("LHP_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument(
        "--redis", default=os.environ.get("LHP_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = ap.parse_args()
    rows, samples, seconds = args.rows, args.samples, args.seconds
    if args.quick:
        rows, samples, seconds = 50_000, 300, 3.0
    rows = max(rows, 1)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="lhp-bench-") as workdir:
        for backend in args.backends.split(","):
            print(f"# {backend}: loading {rows:,} turns...", file=sys.stderr, flush=True)
            try:
                if backend == "sqlite":
                    results.append(await bench_sqlite(rows, samples, seconds, workdir))
                elif backend == "postgresql":
                    results.append(await bench_postgres(rows, samples, seconds, args.pg))
                elif backend == "redis":
                    results.append(await bench_redis(rows, samples, seconds, args.redis))
                else:
                    raise SystemExit(f"unknown backend {backend}")
            except (OSError, ConnectionError) as e:
                print(f"# {backend}: skipped ({e})", file=sys.stderr)
        drivers = await sqlite_driver_comparison(workdir)
    print(table(results))
    print()
    for r in results:
        print(f"- {r.backend}: {'; '.join(r.notes)}")
    print(
        "- SQLite driver, append p50 on an empty WAL file: "
        + ", ".join(f"{k} {ms(v)} ms" for k, v in drivers.items())
    )
    print(
        f"- Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    asyncio.run(main())
