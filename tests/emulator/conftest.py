"""Fixtures of the emulator tests: a running emulator and a raw websocket client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from livekit_history_plugin.testing import (
    Dialect,
    RealtimeEmulator,
    validate_client_event,
    validate_server_event,
)

RECV_TIMEOUT = 5.0
# the beta dialect on an Azure preview api-version that has conversation.item.retrieve;
# 2024-10-01-preview has not (tests/emulator/test_fidelity.py)
BETA_PATH = "/openai/realtime?api-version=2025-04-01-preview&deployment=gpt-realtime"
BETA_2024_PATH = "/openai/realtime?api-version=2024-10-01-preview&deployment=gpt-realtime"


class RawClient:
    """A bare websocket client speaking JSON events, for exact protocol checks."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, dialect: Dialect) -> None:
        self.ws = ws
        self.dialect = dialect
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send_str(event if isinstance(event, str) else json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), RECV_TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"websocket message {msg.type!r}")
        event: dict[str, Any] = json.loads(msg.data)
        # every event the emulator sends must be one the SDK of its dialect knows
        validate_server_event(event, self.dialect)
        self.events.append(event)
        return event

    async def recv_until(self, event_type: str) -> list[dict[str, Any]]:
        """Receive up to and including the first event of ``event_type``."""
        out: list[dict[str, Any]] = []
        while True:
            event = await self.recv()
            out.append(event)
            if event["type"] == event_type:
                return out

    async def request(self, event: dict[str, Any], until: str) -> list[dict[str, Any]]:
        await self.send(event)
        return await self.recv_until(until)

    async def error_for(self, event: dict[str, Any]) -> dict[str, Any]:
        """Send ``event`` and return the ``error`` object it gets."""
        events = await self.request(event, "error")
        return events[-1]["error"]  # type: ignore[no-any-return]

    async def create(self, item: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
        """Create an item and receive its ack (created / added + done)."""
        event = {"type": "conversation.item.create", "item": item, **extra}
        validate_client_event(event, self.dialect)
        until = "conversation.item.created" if self.dialect == "beta" else "conversation.item.done"
        return await self.request(event, until)


Connect = Callable[..., Awaitable[RawClient]]


@pytest.fixture
async def emulator() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator() as emu:
        yield emu


@pytest.fixture
async def connect(emulator: RealtimeEmulator) -> AsyncIterator[Connect]:
    """``await connect("ga")`` -> a RawClient past ``session.created``."""
    http = aiohttp.ClientSession()
    clients: list[RawClient] = []

    async def _connect(
        dialect: Dialect = "ga",
        *,
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> RawClient:
        if path is None:
            path = BETA_PATH if dialect == "beta" else "/v1/realtime?model=gpt-realtime"
        hdrs = headers if headers is not None else {"Authorization": "Bearer test-key"}
        ws = await http.ws_connect(emulator.base_url.replace("http", "ws", 1) + path, headers=hdrs)
        client = RawClient(ws, dialect)
        clients.append(client)
        created = await client.recv()
        assert created["type"] == "session.created"
        return client

    yield _connect
    for c in clients:
        await c.ws.close()
    await http.close()


def user(text: str, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id is not None:
        item["id"] = item_id
    return item


def assistant(text: str, dialect: Dialect, item_id: str | None = None) -> dict[str, Any]:
    part = "text" if dialect == "beta" else "output_text"
    item: dict[str, Any] = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": part, "text": text}],
    }
    if item_id is not None:
        item["id"] = item_id
    return item
