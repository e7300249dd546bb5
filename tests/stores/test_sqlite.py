"""SQLite-specific behaviour: query plans, durability across kill -9, a full
disk, lock contention, the in-memory form."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from livekit_history_plugin.history.stores import StoreError, StoreUnavailableError, open_store
from livekit_history_plugin.history.stores.migrations.sqlite import MIGRATIONS
from livekit_history_plugin.history.stores.sqlite import (
    LATEST_BEFORE_SQL,
    LATEST_SQL,
    SqliteStore,
)

from .helpers import SqliteBackend, popen_proc, run_proc, turn


def plan(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    return "\n".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize("analyze", [False, True])
async def test_latest_n_is_an_index_range_scan(tmp_path: Path, analyze: bool) -> None:
    b = SqliteBackend(str(tmp_path / "h.db"))
    async with b.store() as store:
        for u in range(20):
            await store.append([turn(user=f"u{u}", conv=f"c{i % 3}", seq=i) for i in range(50)])
    db = b.connect()
    if analyze:
        db.execute("ANALYZE")
    for sql, params in ((LATEST_SQL, ("u3", 10)), (LATEST_BEFORE_SQL, ("u3", 0, 10))):
        p = plan(db, sql, params)
        assert "SEARCH turns USING INDEX turns_latest (user_id=?" in p, p
        assert "TEMP B-TREE" not in p, p  # no sort: rows come out of the index in order
    db.close()


async def test_file_is_wal_with_schema(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with open_store(f"sqlite:///{path}?synchronous=full&busy_timeout=100&readers=1") as s:
        await s.append([turn()])
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == [m.version for m in MIGRATIONS]
    db.close()


async def test_memory_store_is_private_and_works() -> None:
    a, b = open_store("sqlite://:memory:"), open_store("sqlite://:memory:")
    async with a, b:
        await a.append([turn(seq=i) for i in range(3)])
        assert len(await a.load_latest("u1", 10)) == 3
        assert await b.load_latest("u1", 10) == []
        assert (await a.stats()).turns == 3
    async with a:
        assert await a.count_turns("u1") == 0  # gone at close


async def test_write_lock_held_elsewhere_is_retryable(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with SqliteStore(str(path), busy_timeout_ms=50) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailableError, match="database is locked"):
            await store.append([turn()])
        # readers are not blocked by a writer (WAL)
        assert await store.load_latest("u1", 10) == []
        other.execute("ROLLBACK")
        other.close()
        assert await store.append([turn()]) == 1


async def test_not_a_database_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 500)
    with pytest.raises(StoreError, match=r"junk\.db: open failed: file is not a database"):
        await open_store(f"sqlite:///{path}").open()
    with pytest.raises(StoreError, match="unable to open database file"):
        await open_store(f"sqlite:///{tmp_path}/missing-dir/h.db").open()


def test_kill_9_right_after_a_reported_write_keeps_it(tmp_path: Path) -> None:
    """A turn the writer reported as written survives the process dying at once."""
    path = tmp_path / "h.db"
    url = f"sqlite:///{path}"
    child = popen_proc("written", url, "u1")
    reported: list[str] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            reported.append(line.split()[1])
            if len(reported) == 25:
                os.kill(child.pid, signal.SIGKILL)  # no cleanup, no close, no checkpoint
                break
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert len(reported) == 25
    db = sqlite3.connect(path)
    stored = {r[0] for r in db.execute("SELECT idem_key FROM turns WHERE user_id = 'u1'")}
    db.close()
    assert set(reported) <= stored


def test_disk_full_raises_store_error_and_keeps_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    url = f"sqlite:///{path}"
    result = run_proc("diskfull", url, str(512 * 1024))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    errors = [line for line in lines if line.startswith("error ")]
    assert len(errors) == 1, lines[-5:]
    assert "StoreError" in errors[0] and str(path) in errors[0]
    assert "disk is full" in errors[0] or "disk I/O error" in errors[0]
    committed = max(int(line.split()[1]) for line in lines if line.startswith("ok "))
    assert committed > 0
    assert lines[-1] == "readable 5"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM turns").fetchone()[0] == committed
    db.close()


def _open_fresh(path: str, start: float) -> str:
    import asyncio
    import time as _time

    from livekit_history_plugin.history.stores import open_store

    async def go() -> None:
        async with open_store(f"sqlite:///{path}"):
            pass

    while _time.time() < start:
        pass
    try:
        asyncio.run(go())
        return "ok"
    except Exception as e:  # reported to the parent, which asserts on it
        return f"{type(e).__name__}: {e}"


def test_workers_opening_a_fresh_file_together_all_succeed(tmp_path: Path) -> None:
    """SQLite refuses a concurrent switch into WAL mode with SQLITE_BUSY at once,
    without its busy handler (about 1 in 15 opens failed here before the retry)."""
    import multiprocessing
    import time as _time

    ctx = multiprocessing.get_context("fork")
    results: list[str] = []
    with ctx.Pool(4) as pool:
        for i in range(10):
            path = str(tmp_path / f"fresh{i}.db")
            start = _time.time() + 0.2
            results += pool.starmap(_open_fresh, [(path, start)] * 4)
    assert results == ["ok"] * 40
