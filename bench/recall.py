"""Benchmark of recall (`HistoryStore.search_turns`): one caller with 10,000 turns
among 1,000,000 stored turns, on SQLite (FTS5) and PostgreSQL (tsvector + GIN).
Prints a markdown table. Not a test: nothing here asserts on time.

    python bench/recall.py                       # 1,000,000 rows, sqlite + postgresql
    python bench/recall.py --rows 100000 --backends sqlite
    python bench/recall.py --drop-cache          # regenerate the cached data sets

Data: varied turn texts (10-16 words drawn from a 5,200-word vocabulary with a
Zipf distribution, plus an order-like code in 1 turn of 20), one heavy caller
with 10,000 turns, the rest 100 turns per caller. Generated once and cached:
SQLite in `.bench/recall-<rows>.db`, PostgreSQL in schema `lhp_bench_recall_<rows>`
of the local server (`--pg-url`). Bulk loading goes around the store API
(executemany / COPY, the index built once at the end) so it takes a minute,
not hours.

Queries for the heavy caller, three kinds: a code the caller said once
("order R482913"), two mid-frequency words, and a question of common words
("what was my order number"). The baseline is the scan a store without a text
index has to do: every one of the caller's 10,000 turns loaded and matched in
Python (`HistoryStore.search_turns`'s bounded fallback, unbounded here), timed
on a tenth of the queries. "as good as a full scan": the best hit holds as many
of the query's words as the best of all 10,000 turns does (the bounded phases
lose nothing there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit_history_plugin.history.search import query_terms, scan_search, text_words  # noqa: E402
from livekit_history_plugin.history.stores import HistoryStore, open_store  # noqa: E402
from livekit_history_plugin.history.stores.base import to_micros  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
HEAVY_USER = "heavy-caller"
HEAVY_TURNS = 10_000
TURNS_PER_USER = 100
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
COMMON = """I you the my to a and is it for of that on can we have your in me what do this
order number would like need please call time tomorrow appointment delivery address
was there be not with just so okay yes thanks help change book phone email today week""".split()


def vocabulary() -> tuple[list[str], list[float]]:
    words = COMMON + [f"w{i:04d}" for i in range(5_200 - len(COMMON))]
    weights = [1.0 / (rank + 1) ** 1.07 for rank in range(len(words))]
    return words, weights


def layout(rows: int) -> list[tuple[str, int]]:
    users = [(HEAVY_USER, min(HEAVY_TURNS, rows))]
    rest, n = rows - users[0][1], 0
    while rest > 0:
        k = min(TURNS_PER_USER, rest)
        users.append((f"caller-{n:06d}", k))
        rest, n = rest - k, n + 1
    return users


def rows_of(rows: int) -> Iterator[tuple[str, str, int, str, datetime]]:
    """(user, conversation, seq, text, created_at), deterministic."""
    rng = random.Random(7)
    words, weights = vocabulary()
    for user, k in layout(rows):
        for seq in range(k):
            text = " ".join(rng.choices(words, weights, k=rng.randint(10, 16)))
            if rng.random() < 0.05:
                text += f" order R{rng.randint(100_000, 999_999)}"
            conv = f"{user}-call-{seq // 20}"
            yield user, conv, seq, text, T0 + timedelta(seconds=seq * 7)


def heavy_codes(rows: int) -> list[str]:
    return [
        t.rsplit(" ", 1)[1]
        for u, _, _, t, _ in rows_of(min(rows, HEAVY_TURNS))
        if u == HEAVY_USER and " order R" in t
    ]


def queries(rows: int, n: int) -> dict[str, list[str]]:
    rng = random.Random(11)
    words, _ = vocabulary()
    mid = words[200:1_200]
    codes = heavy_codes(rows)
    return {
        "code said once": [f"order {rng.choice(codes)}" for _ in range(n)],
        "two mid-frequency words": [f"{rng.choice(mid)} {rng.choice(mid)}" for _ in range(n)],
        "common words": [
            rng.choice(["what was my order number", "my delivery address", "appointment time"])
            for _ in range(n)
        ],
    }


# -- cached data sets ---------------------------------------------------------------------
def sqlite_cache(rows: int, fresh: bool) -> str:
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"recall-{rows}.db"
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    if path.exists():
        db = sqlite3.connect(path)
        try:
            if db.execute("SELECT count(*) FROM turns").fetchone()[0] >= rows:
                return str(path)
        except sqlite3.Error:
            pass
        finally:
            db.close()
        path.unlink()
    asyncio.run(_create_schema(f"sqlite:///{path}"))
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    db.execute("BEGIN")
    # the index is built once, after the rows: the migration's own 'rebuild'
    db.execute("DROP TRIGGER turns_fts_insert")
    db.executemany(
        "INSERT INTO turns (user_id, conversation_id, seq, idem_key, role, text, created_at, "
        "source, interrupted) VALUES (?, ?, ?, ?, ?, ?, ?, 'voice', 0)",
        (
            (u, c, s, f"{c}:{s}", "user" if s % 2 == 0 else "assistant", t, to_micros(at))
            for u, c, s, t, at in rows_of(rows)
        ),
    )
    db.execute("INSERT INTO turns_fts (turns_fts) VALUES ('rebuild')")
    db.execute("INSERT INTO turns_fts (turns_fts) VALUES ('optimize')")
    db.execute("COMMIT")
    db.close()
    # put the trigger back exactly as the migration made it
    asyncio.run(_restore_sqlite_trigger(str(path)))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("ANALYZE")
    db.close()
    print(f"sqlite: generated {rows:,} rows in {time.perf_counter() - started:.0f} s -> {path}")
    return str(path)


async def _create_schema(url: str) -> None:
    async with open_store(url):
        pass


async def _restore_sqlite_trigger(path: str) -> None:
    from livekit_history_plugin.history.stores.migrations.sqlite import MIGRATIONS

    (trigger,) = [s for m in MIGRATIONS for s in m.statements if "TRIGGER turns_fts_insert" in s]
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(trigger)
    db.close()


async def pg_cache(base_url: str, rows: int, fresh: bool) -> str:
    import asyncpg

    schema = f"lhp_bench_recall_{rows}"
    url = f"{base_url}?schema={schema}"
    conn = await asyncpg.connect(base_url)
    try:
        if fresh:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        table = await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".turns')
        if table is not None:
            if await conn.fetchval(f'SELECT count(*) FROM "{schema}".turns') >= rows:
                return url
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await _create_schema(url)
        started = time.perf_counter()
        await conn.execute(f'DROP INDEX "{schema}".turns_search')
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
                (u, f"{c}:{s}", c, s, "user" if s % 2 == 0 else "assistant", t, at, "voice", False)
                for u, c, s, t, at in rows_of(rows)
            ),
        )
        await conn.execute(f'CREATE INDEX turns_search ON "{schema}".turns USING gin (search)')
        await conn.execute(f'VACUUM ANALYZE "{schema}".turns')
        print(
            f"postgresql: generated {rows:,} rows in {time.perf_counter() - started:.0f} s "
            f"-> schema {schema} (drop: --drop-cache, or DROP SCHEMA {schema} CASCADE)"
        )
    finally:
        await conn.close()
    return url


# -- measuring ---------------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def timed_search(
    store: HistoryStore, qs: list[str], k: int
) -> tuple[list[float], list[set[str]]]:
    """Latencies, and the words of each query's best hit."""
    out, best = [], []
    for q in qs:
        t = time.perf_counter()
        hits = await store.search_turns(HEAVY_USER, q, k)
        out.append(time.perf_counter() - t)
        best.append(text_words(hits[0].turn.text) if hits else set())
    return out, best


async def timed_scan(store: HistoryStore, qs: list[str], k: int) -> tuple[list[float], list[int]]:
    """Latencies of the no-index scan, and the most query words any turn holds."""
    out, most = [], []
    for q in qs:
        t = time.perf_counter()
        turns = await store.load_latest(HEAVY_USER, HEAVY_TURNS)
        scan_search(turns, query_terms(q), k, exclude_conversation_id=None)
        out.append(time.perf_counter() - t)
        terms = set(query_terms(q))
        most.append(max(len(terms & text_words(t.text)) for t in turns))
    return out, most


async def measure(name: str, url: str, rows: int, n: int, k: int) -> list[list[str]]:
    table: list[list[str]] = []
    async with open_store(url) as store:
        if await store.count_turns(HEAVY_USER) != min(HEAVY_TURNS, rows):
            raise SystemExit(f"{name}: cached data does not read back; rerun with --drop-cache")
        for qs in queries(rows, 20).values():  # warm up caches and prepared statements
            await timed_search(store, qs, k)
        for kind, qs in queries(rows, n).items():
            lat, best = await timed_search(store, qs, k)
            few = max(5, n // 10)
            scan, most = await timed_scan(store, qs[:few], k)
            # the best hit holds as many of the query's words as any of the 10k turns
            right = sum(
                len(set(query_terms(q)) & words) == m
                for q, words, m in zip(qs[:few], best[:few], most, strict=True)
            )
            table.append(
                [
                    name,
                    kind,
                    f"{pct(lat, 0.5) * 1e3:.2f}",
                    f"{pct(lat, 0.99) * 1e3:.2f}",
                    f"{right}/{few}",
                    f"{pct(scan, 0.5) * 1e3:.1f}",
                    f"{pct(lat, 0.5) / pct(scan, 0.5):.3f}",
                ]
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--queries", type=int, default=300, help="queries per kind")
    parser.add_argument("-k", type=int, default=5, help="hits per query")
    parser.add_argument("--pg-url", default=os.environ.get("LHP_BENCH_PG_URL", PG_URL))
    parser.add_argument("--drop-cache", action="store_true")
    args = parser.parse_args()
    backends = args.backends.split(",")
    table: list[list[str]] = []
    if "sqlite" in backends:
        path = sqlite_cache(args.rows, args.drop_cache)
        table += asyncio.run(
            measure("SQLite FTS5", f"sqlite:///{path}", args.rows, args.queries, args.k)
        )
    if "postgresql" in backends:
        url = asyncio.run(pg_cache(args.pg_url, args.rows, args.drop_cache))
        table += asyncio.run(measure("PostgreSQL GIN", url, args.rows, args.queries, args.k))
    print(
        f"\nrecall of a caller with {min(HEAVY_TURNS, args.rows):,} turns among "
        f"{args.rows:,} rows, top {args.k}, {args.queries} queries per kind\n"
    )
    head = [
        "backend",
        "query",
        "p50 (ms)",
        "p99 (ms)",
        "best hit as good as a full scan's",
        "scan p50 (ms)",
        "p50 / scan",
    ]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join("---" if i < 2 else "---:" for i in range(len(head))) + " |")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
