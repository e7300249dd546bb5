"""Real outages: a throwaway PostgreSQL cluster / Redis server is crashed and
restarted under a HistoryWriter. Turns submitted meanwhile are buffered,
retried with backoff and land exactly once; overflow is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import pytest

from livekit_history_plugin.history.stores import StoreUnavailableError, open_store
from livekit_history_plugin.history.writer import HistoryWriter

from .helpers import turn, wait_until
from .servers import TempPostgres, TempRedis

LOGGER = "livekit.plugins.history"


class Server(Protocol):
    url: str

    def start(self) -> None: ...
    def crash(self) -> None: ...
    def destroy(self) -> None: ...


@pytest.fixture(params=["postgresql", "redis"], scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    s: Server = TempPostgres() if request.param == "postgresql" else TempRedis()
    try:
        s.start()
        yield s
    finally:
        s.destroy()


def store_url(server: Server, tag: str) -> str:
    if server.url.startswith("redis"):
        return f"{server.url}?prefix=fault{tag}"
    return f"{server.url}?schema=fault_{tag}&pool_max=3"


async def test_writer_rides_out_a_server_crash(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    if not _up(server):  # a previous test may have left it down
        server.start()
    async with open_store(store_url(server, "crash")) as store:
        writer = HistoryWriter(store, retry_base=0.02, retry_max=0.25)
        for i in range(10):
            writer.submit(turn(seq=i))
        assert await writer.flush(20)
        assert writer.written == 10

        server.crash()
        for i in range(10, 30):
            writer.submit(turn(seq=i))  # never raises, never blocks
        await wait_until(lambda: writer.last_error is not None, what="writer to see the outage")
        assert isinstance(writer.last_error, StoreUnavailableError)
        await wait_until(lambda: _attempts(caplog) >= 3, what="a few retries")
        assert writer.written == 10 and writer.pending == 20 and writer.dropped == 0
        with pytest.raises(StoreUnavailableError):  # direct calls fail fast and clearly
            await store.load_latest("u1", 5)

        server.start()
        assert await writer.flush(60)
        assert (writer.written, writer.pending, writer.dropped) == (30, 0, 0)
        assert writer.last_error is None
        got = await store.load_latest("u1", 100)
        assert [t.seq for t in got] == list(range(30))  # all of them, once, in order
        assert await store.count_turns("u1") == 30
        await writer.aclose()

    failing = [r for r in caplog.records if "history store failing" in r.getMessage()]
    recovered = [r for r in caplog.records if "recovered after" in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING
    assert "20 turns buffered" in failing[0].getMessage()
    assert len(recovered) == 1


async def test_overflow_while_the_server_is_down(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    if not _up(server):  # a previous test may have left it down
        server.start()
    async with open_store(store_url(server, "overflow")) as store:
        writer = HistoryWriter(store, max_buffer=8, retry_base=0.02, retry_max=0.25)
        server.crash()
        for i in range(20):
            writer.submit(turn(seq=i))
        assert (writer.pending, writer.dropped) == (8, 12)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "buffer full" in errors[0].getMessage()
        assert "DROPPED" in errors[0].getMessage()

        server.start()
        assert await writer.flush(60)
        # the accepted turns are the ones kept
        assert [t.seq for t in await store.load_latest("u1", 100)] == list(range(8))
        assert (writer.written, writer.dropped) == (8, 12)
        await writer.aclose()
    assert "12 turns were dropped during the overflow" in caplog.text


def _attempts(caplog: pytest.LogCaptureFixture) -> int:
    return sum("still failing" in r.getMessage() for r in caplog.records) + 1


def _up(server: Server) -> bool:
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(server.url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
        return True
    except OSError:
        return False
