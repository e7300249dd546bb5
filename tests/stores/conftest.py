"""Fixtures for the store tests: one `backend` per engine, each in its own
namespace (temp file / PostgreSQL schema / Redis key prefix), cleaned up after.

Servers: PostgreSQL at LHP_TEST_PG_URL (default postgresql://postgres@127.0.0.1:5432/test)
and Redis at LHP_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). When one is
unreachable its tests skip - or FAIL when env CI is set, so CI can never pass
by silently skipping a backend.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from .helpers import (
    PG_URL,
    REDIS_URL,
    Backend,
    PostgresBackend,
    RedisBackend,
    SqliteBackend,
    require_server,
)


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[Backend]:
    b = await make_backend(request.param, tmp_path)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
async def pg_backend(tmp_path: object) -> AsyncIterator[Backend]:
    b = await make_backend("postgresql", tmp_path)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
async def redis_backend(tmp_path: object) -> AsyncIterator[Backend]:
    b = await make_backend("redis", tmp_path)
    try:
        yield b
    finally:
        await b.cleanup()


@pytest.fixture
async def sqlite_backend(tmp_path: object) -> AsyncIterator[Backend]:
    b = await make_backend("sqlite", tmp_path)
    try:
        yield b
    finally:
        await b.cleanup()


async def make_backend(kind: str, tmp_path: object) -> Backend:
    if kind == "sqlite":
        return SqliteBackend(os.path.join(str(tmp_path), "history.db"))
    if kind == "postgresql":
        require_server("postgresql", PG_URL)
        return PostgresBackend(PG_URL)
    require_server("redis", REDIS_URL)
    return RedisBackend(REDIS_URL)
