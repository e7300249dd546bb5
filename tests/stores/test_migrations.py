"""Schema versions: fresh databases, upgrades from v1, refusing newer schemas,
concurrent migrators on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from livekit_history_plugin.history.models import Role, Turn
from livekit_history_plugin.history.stores import StoreError, open_store
from livekit_history_plugin.history.stores import postgres as pg_store
from livekit_history_plugin.history.stores import sqlite as sqlite_store
from livekit_history_plugin.history.stores.migrations import postgres as pg_migrations
from livekit_history_plugin.history.stores.migrations import sqlite as sqlite_migrations
from livekit_history_plugin.history.stores.redis import LAYOUT_VERSION

from .helpers import T0, PostgresBackend, RedisBackend, SqliteBackend, turn

SQLITE_ALL = [m.version for m in sqlite_migrations.MIGRATIONS]
PG_ALL = [m.version for m in pg_migrations.MIGRATIONS]

# -- SQLite ----------------------------------------------------------------------------------


def sqlite_versions(path: Path) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        db.close()


def sqlite_indexes(path: Path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'turns'"
        )
        return {r[0] for r in rows}
    finally:
        db.close()


async def test_sqlite_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with SqliteBackend(str(path)).store():
        pass
    assert sqlite_versions(path) == [m.version for m in sqlite_migrations.MIGRATIONS]
    assert {"turns_idem", "turns_latest", "turns_created_at"} <= sqlite_indexes(path)


async def test_sqlite_upgrade_from_v1_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL) STRICT"
    )
    db.execute("BEGIN")
    sqlite_store.apply_migrations(db, 0, 1)
    db.execute("COMMIT")
    # a row as the v1 release wrote it (no `interrupted` column yet)
    db.execute(
        "INSERT INTO turns (user_id, conversation_id, seq, idem_key, role, text, created_at, source)"
        " VALUES ('u1', 'c1', 0, 'c1:0', 'user', 'from v1', 1767268800000000, 'voice')"
    )
    db.close()
    assert sqlite_versions(path) == [1]
    assert "turns_latest" not in sqlite_indexes(path)

    async with SqliteBackend(str(path)).store() as store:
        got = await store.load_latest("u1", 10)
        await store.append([turn(seq=1, at=10)])
        assert [t.seq for t in await store.load_latest("u1", 10)] == [0, 1]
    assert got == [
        Turn(
            user_id="u1", conversation_id="c1", seq=0, role=Role.USER, text="from v1", created_at=T0
        )
    ]
    assert got[0].interrupted is False
    assert sqlite_versions(path) == SQLITE_ALL
    assert "turns_latest" in sqlite_indexes(path)


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    async with SqliteBackend(str(path)).store():
        pass
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99, newer than .* upgrade the plugin"):
        await open_store(f"sqlite:///{path}").open()


async def test_sqlite_concurrent_openers_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    stores = [SqliteBackend(str(path)).store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        await s.close()
    assert sqlite_versions(path) == SQLITE_ALL


# -- PostgreSQL ------------------------------------------------------------------------------


async def pg_versions(b: PostgresBackend) -> list[int]:
    rows = await b.run(
        lambda c: c.fetch(f'SELECT version FROM "{b.schema}".schema_version ORDER BY 1')
    )
    return [r[0] for r in rows]


async def pg_indexes(b: PostgresBackend) -> set[str]:
    rows = await b.run(
        lambda c: c.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = $1", b.schema)
    )
    return {r[0] for r in rows}


async def test_pg_fresh_schema_gets_every_migration(pg_backend: PostgresBackend) -> None:
    async with pg_backend.store():
        pass
    assert await pg_versions(pg_backend) == [m.version for m in pg_migrations.MIGRATIONS]
    assert {"turns_pkey", "turns_latest", "turns_created_at"} <= await pg_indexes(pg_backend)


async def test_pg_upgrade_from_v1_keeps_rows(pg_backend: PostgresBackend) -> None:
    b = pg_backend
    q = f'"{b.schema}"'

    async def make_v1(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {q}")
            await conn.execute(
                f"CREATE TABLE {q}.schema_version (version integer PRIMARY KEY, "
                "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await pg_store.apply_migrations(conn, b.schema, 0, 1)
            await conn.execute(
                f"INSERT INTO {q}.turns (user_id, idem_key, conversation_id, seq, role, text, "
                "created_at, source) VALUES ('u1', 'c1:0', 'c1', 0, 'user', 'from v1', $1, 'voice')",
                T0,
            )

    await b.run(make_v1)
    assert await pg_versions(b) == [1]
    async with b.store() as store:
        got = await store.load_latest("u1", 10)
    assert [(t.text, t.interrupted, t.created_at) for t in got] == [("from v1", False, T0)]
    assert await pg_versions(b) == PG_ALL
    assert "turns_latest" in await pg_indexes(b)


async def test_pg_refuses_a_newer_schema(pg_backend: PostgresBackend) -> None:
    async with pg_backend.store():
        pass
    await pg_backend.run(
        lambda c: c.execute(
            f"INSERT INTO \"{pg_backend.schema}\".schema_version VALUES (99, 'future', now())"
        )
    )
    with pytest.raises(StoreError, match="version 99, newer than .* upgrade the plugin"):
        await pg_backend.store().open()


async def test_pg_concurrent_migrations_are_serialized(pg_backend: PostgresBackend) -> None:
    """Two workers migrating at once: one waits on the advisory lock, both end up
    with the same, once-applied schema."""
    import asyncpg

    b = pg_backend
    holder = await asyncpg.connect(b.base_url)
    try:
        # hold the migration lock so both openers are provably inside the race
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", pg_store._lock_key(b.schema))
        stores = [b.store(), b.store()]
        opens = [asyncio.create_task(s.open()) for s in stores]

        waiting = 0

        key = pg_store._lock_key(b.schema) & 0xFFFFFFFFFFFFFFFF

        async def count_waiters() -> None:
            nonlocal waiting
            # waiters on *our* lock only: other suites may use advisory locks too
            waiting = await holder.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid::text::bigint = $1 AND objid::text::bigint = $2",
                key >> 32,
                key & 0xFFFFFFFF,
            )

        async def both_waiting() -> bool:
            await count_waiters()
            return waiting >= 2

        deadline = asyncio.get_running_loop().time() + 20
        while not await both_waiting():
            assert asyncio.get_running_loop().time() < deadline, "openers never reached the lock"
            assert not any(t.done() for t in opens), [t.exception() for t in opens if t.done()]
            await asyncio.sleep(0.02)
        await holder.execute("COMMIT")
        await asyncio.gather(*opens)
        for s in stores:
            await s.close()
    finally:
        await holder.close()
    assert await pg_versions(b) == PG_ALL


async def test_pg_many_workers_opening_at_once(pg_backend: PostgresBackend) -> None:
    stores = [pg_backend.store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    await asyncio.gather(*(s.append([turn(seq=i)]) for i, s in enumerate(stores)))
    assert await stores[0].count_turns("u1") == 4
    for s in stores:
        await s.close()
    assert await pg_versions(pg_backend) == PG_ALL


# -- Redis ------------------------------------------------------------------------------------


async def test_redis_layout_version_is_recorded_and_newer_refused(
    redis_backend: RedisBackend,
) -> None:
    b = redis_backend
    async with b.store():
        pass
    assert await b.run(lambda r: r.get(f"{b.prefix}:schema")) == str(LAYOUT_VERSION).encode()
    await b.run(lambda r: r.set(f"{b.prefix}:schema", "7"))
    with pytest.raises(StoreError, match="layout v7, newer than"):
        await b.store().open()


# -- v3: full-text index and fact provenance over rows written before it ----------------------


async def test_sqlite_upgrade_from_v2_indexes_old_turns_for_recall(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
        "applied_at INTEGER NOT NULL) STRICT"
    )
    db.execute("BEGIN")
    sqlite_store.apply_migrations(db, 0, 2)
    db.execute("COMMIT")
    # rows as the v2 release wrote them
    for user, seq, text in [("u1", 0, "my order number is 4417"), ("u2", 0, "order 4417 too")]:
        db.execute(
            "INSERT INTO turns (user_id, conversation_id, seq, idem_key, role, text, created_at, "
            "source, interrupted) VALUES (?, 'c1', ?, ?, 'user', ?, 1767268800000000, 'voice', 0)",
            (user, seq, f"c1:{seq}", text),
        )
    db.execute("INSERT INTO facts VALUES ('u1', 'diet', 'Is vegan.', 1767268800000000)")
    db.close()
    assert sqlite_versions(path) == [1, 2]

    async with SqliteBackend(str(path)).store() as store:
        hits = await store.search_turns("u1", "order number", 5)
        facts = await store.load_facts("u1")
        # and rows written after the upgrade are indexed by the triggers
        await store.append([turn("u1", "c2", 0, at=60, text="new order 9911")])
        later = await store.search_turns("u1", "9911", 5)
    assert [(h.turn.user_id, h.turn.text) for h in hits] == [("u1", "my order number is 4417")]
    assert [(f.key, f.origin, f.source_turn_ids) for f in facts] == [("diet", "author", [])]
    assert [h.turn.text for h in later] == ["new order 9911"]
    assert sqlite_versions(path) == SQLITE_ALL
    db = sqlite3.connect(path)
    try:
        # the index agrees with its content table
        db.execute("INSERT INTO turns_fts (turns_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        db.close()


async def test_pg_upgrade_from_v2_indexes_old_turns_for_recall(pg_backend: PostgresBackend) -> None:
    b = pg_backend
    q = f'"{b.schema}"'

    async def make_v2(conn: Any) -> None:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {q}")
            await conn.execute(
                f"CREATE TABLE {q}.schema_version (version integer PRIMARY KEY, "
                "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            await pg_store.apply_migrations(conn, b.schema, 0, 2)
            for user, text in [("u1", "my order number is 4417"), ("u2", "order 4417 too")]:
                await conn.execute(
                    f"INSERT INTO {q}.turns (user_id, idem_key, conversation_id, seq, role, text, "
                    "created_at, source) VALUES ($1, 'c1:0', 'c1', 0, 'user', $2, $3, 'voice')",
                    user,
                    text,
                    T0,
                )
            await conn.execute(
                f"INSERT INTO {q}.facts VALUES ('u1', 'diet', 'Is vegan.', $1)", T0
            )

    await b.run(make_v2)
    assert await pg_versions(b) == [1, 2]
    async with b.store() as store:
        hits = await store.search_turns("u1", "order number", 5)
        facts = await store.load_facts("u1")
    assert [(h.turn.user_id, h.turn.text) for h in hits] == [("u1", "my order number is 4417")]
    assert [(f.key, f.origin, f.source_turn_ids) for f in facts] == [("diet", "author", [])]
    assert await pg_versions(b) == PG_ALL
    assert "turns_search" in await pg_indexes(b)
