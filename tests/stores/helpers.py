"""Shared helpers of the store tests: server checks, per-backend namespaces and
raw (driver-level) access used to plant hostile rows and to check deletions."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from livekit_history_plugin.history.models import Role, Turn
from livekit_history_plugin.history.stores import HistoryStore, open_store
from livekit_history_plugin.history.stores.base import to_micros

PG_URL = os.environ.get("LHP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LHP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
HERE = Path(__file__).parent
PROC = HERE / "proc.py"

_reachable: dict[str, str | None] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_server(kind: str, url: str) -> None:
    """Skip (or, with env CI set, fail) when the server at url is unreachable."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (5432 if kind == "postgresql" else 6379)
    key = f"{host}:{port}"
    if key not in _reachable:
        try:
            socket.create_connection((host, port), timeout=2).close()
            _reachable[key] = None
        except OSError as e:
            _reachable[key] = str(e)
    reason = _reachable[key]
    if reason is None:
        return
    msg = f"{kind} server not reachable at {key} ({reason})"
    if in_ci():
        pytest.fail(f"{msg}; CI is set, so store tests fail instead of skipping", pytrace=False)
    pytest.skip(msg)


def turn(
    user: str = "u1",
    conv: str = "c1",
    seq: int = 0,
    *,
    at: datetime | float | None = None,
    text: str | None = None,
    role: Role | None = None,
    **kw: Any,
) -> Turn:
    """A turn; `at` is a datetime or seconds after T0 (default: seq seconds)."""
    if at is None:
        at = float(seq)
    created = at if isinstance(at, datetime) else T0 + timedelta(seconds=at)
    return Turn(
        user_id=user,
        conversation_id=conv,
        seq=seq,
        role=role or (Role.USER if seq % 2 == 0 else Role.ASSISTANT),
        text=text if text is not None else f"{user}/{conv}/{seq}",
        created_at=created,
        **kw,
    )


def spoken_key(t: Turn) -> tuple[datetime, str, int, str]:
    return (t.created_at, t.conversation_id, t.seq, t.idempotency_key)


async def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll a condition (state owned by another task or process) until true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_proc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROC), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def popen_proc(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROC), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Backend:
    """One engine in a private namespace, with raw access to its storage."""

    kind: str
    url: str

    def store(self) -> HistoryStore:
        return open_store(self.url)

    async def raw_turn(
        self,
        user_id: str,
        *,
        conv: str = "c1",
        seq: int = 0,
        role: str = "user",
        text: str = "raw",
        created_at: datetime = T0,
        key: str | None = None,
    ) -> None:
        """Store a row bypassing every check of the store (role/text unvalidated)."""
        raise NotImplementedError

    async def raw_rows_of(self, user_id: str) -> int:
        """Rows or keys anywhere in the namespace that belong to the user."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        raise NotImplementedError

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        raise NotImplementedError


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"  # absolute path -> four slashes

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    async def raw_turn(
        self,
        user_id: str,
        *,
        conv: str = "c1",
        seq: int = 0,
        role: str = "user",
        text: str = "raw",
        created_at: datetime | int = T0,
        key: str | None = None,
    ) -> None:
        micros = created_at if isinstance(created_at, int) else to_micros(created_at)
        db = self.connect()
        try:
            db.execute(
                "INSERT INTO turns (user_id, conversation_id, seq, idem_key, role, text, "
                "created_at, source) VALUES (?, ?, ?, ?, ?, ?, ?, 'voice')",
                (user_id, conv, seq, key or f"{conv}:{seq}", role, text, micros),
            )
        finally:
            db.close()

    async def raw_rows_of(self, user_id: str) -> int:
        db = self.connect()
        try:
            return sum(
                db.execute(f"SELECT count(*) FROM {t} WHERE user_id = ?", (user_id,)).fetchone()[0]
                for t in ("turns", "summaries", "facts")
            )
        finally:
            db.close()

    async def cleanup(self) -> None:
        pass


class PostgresBackend(Backend):
    kind = "postgresql"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.schema = f"lhp_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        sep = "&" if "?" in base_url else "?"
        self.url = f"{base_url}{sep}schema={self.schema}"

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self.base_url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    async def raw_turn(
        self,
        user_id: str,
        *,
        conv: str = "c1",
        seq: int = 0,
        role: str = "user",
        text: str = "raw",
        created_at: datetime | str = T0,
        key: str | None = None,
    ) -> None:
        s = self.schema

        async def fn(conn: Any) -> None:
            await conn.execute(
                f'INSERT INTO "{s}".turns (user_id, idem_key, conversation_id, seq, role, text, '
                "created_at, source) VALUES ($1, $2, $3, $4, $5, $6, $7::text::timestamptz, 'voice')",
                user_id,
                key or f"{conv}:{seq}",
                conv,
                seq,
                role,
                text,
                created_at if isinstance(created_at, str) else created_at.isoformat(),
            )

        await self.run(fn)

    async def raw_rows_of(self, user_id: str) -> int:
        s = self.schema

        async def fn(conn: Any) -> int:
            total = 0
            for t in ("turns", "summaries", "facts"):
                total += await conn.fetchval(
                    f'SELECT count(*) FROM "{s}".{t} WHERE user_id = $1', user_id
                )
            return total

        result: int = await self.run(fn)
        return result

    async def cleanup(self) -> None:
        await self.run(lambda conn: conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))


class RedisBackend(Backend):
    kind = "redis"

    def __init__(self, base_url: str, prefix: str | None = None, query: str = "") -> None:
        self.base_url = base_url
        self.prefix = prefix or f"lhptest{os.getpid()}x{uuid.uuid4().hex[:10]}"
        self.url = f"{base_url}?prefix={self.prefix}{query}"

    async def run(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        import redis.asyncio as redis

        client = redis.Redis.from_url(self.base_url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    async def raw_entry(
        self, user_id: str, member: bytes, payload: bytes | None, score: float
    ) -> None:
        """A zset member and (unless None) its hash value, exactly as given."""
        p = self.prefix
        idem = member.split(b"\x00", 2)[-1]

        async def fn(r: Any) -> None:
            await r.zadd(f"{p}:order:{user_id}", {member: score})
            if payload is not None:
                await r.hset(f"{p}:turns:{user_id}", idem, payload)

        await self.run(fn)

    async def raw_turn(
        self,
        user_id: str,
        *,
        conv: str = "c1",
        seq: int = 0,
        role: str = "user",
        text: str = "raw",
        created_at: datetime = T0,
        key: str | None = None,
        record_user: str | None = None,
    ) -> None:
        key = key or f"{conv}:{seq}"
        payload = json.dumps(
            {
                "user_id": record_user or user_id,
                "conversation_id": conv,
                "seq": seq,
                "role": role,
                "text": text,
                "created_at": created_at.isoformat(),
            }
        ).encode()
        member = f"{conv}\x00{seq:019d}\x00{key}".encode()
        await self.raw_entry(user_id, member, payload, to_micros(created_at))

    async def keys(self) -> list[bytes]:
        async def fn(r: Any) -> list[bytes]:
            return [k async for k in r.scan_iter(match=f"{self.prefix}:*", count=1000)]

        result: list[bytes] = await self.run(fn)
        return result

    async def raw_rows_of(self, user_id: str) -> int:
        suffix = f":{user_id}".encode()
        heads = [f"{self.prefix}:{k}:".encode() for k in ("order", "turns", "summary", "facts")]
        return sum(
            1
            for k in await self.keys()
            if any(k.startswith(h) and k[len(h) :] == suffix[1:] for h in heads)
        )

    async def cleanup(self) -> None:
        keys = await self.keys()
        if keys:
            await self.run(lambda r: r.delete(*keys))
