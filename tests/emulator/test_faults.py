"""The fault knobs, over a raw websocket: reject rules, dropped / duplicated / reordered /
late acks, errors without event_id, disconnects, close_all and latency."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from livekit_history_plugin.testing import FaultConfig, RealtimeEmulator, RejectRule

from .conftest import Connect, user

DIALECTS = ["beta", "ga"]


def ack_ids(events: list[dict[str, Any]], ack_type: str) -> list[str]:
    return [e["item"]["id"] for e in events if e["type"] == ack_type]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reject_rule(emulator: RealtimeEmulator, connect: Connect, dialect: Any) -> None:
    emulator.faults.reject.append(
        RejectRule.text_contains("SECRET", code="invalid_value", message="nope", param="item")
    )
    c = await connect(dialect)
    err = await c.error_for(
        {"type": "conversation.item.create", "event_id": "r1", "item": user("a SECRET")}
    )
    assert err == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "nope",
        "param": "item",
        "event_id": "r1",
    }
    await c.create(user("fine", "ok"))
    assert emulator.last_session.item_ids == ["ok"]


async def test_reject_rule_once_and_by_id(emulator: RealtimeEmulator, connect: Connect) -> None:
    emulator.faults.reject = [RejectRule.item_id("flaky", once=True, code="server_error")]
    c = await connect("ga")
    err = await c.error_for({"type": "conversation.item.create", "item": user("x", "flaky")})
    assert err["code"] == "server_error"
    await c.create(user("x", "flaky"))  # the transient rule is gone
    assert emulator.faults.reject == []
    rule = emulator.reject_text("boom")
    assert emulator.faults.reject == [rule]


async def test_custom_match_sees_item_and_event(
    emulator: RealtimeEmulator, connect: Connect
) -> None:
    emulator.faults.reject.append(
        RejectRule(match=lambda item, event: event.get("previous_item_id") == "root")
    )
    c = await connect("ga")
    await c.create(user("first", "a"))
    err = await c.error_for(
        {"type": "conversation.item.create", "previous_item_id": "root", "item": user("x")}
    )
    assert err["message"] == "The item was rejected by an emulator reject rule."


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_drop_acks(emulator: RealtimeEmulator, connect: Connect, dialect: Any) -> None:
    emulator.faults.drop_acks = lambda item_id, ack: item_id == "lost"
    c = await connect(dialect)
    await c.send({"type": "conversation.item.create", "item": user("x", "lost")})
    events = await c.create(user("y", "seen"))
    ack_type = "conversation.item.created" if dialect == "beta" else "conversation.item.added"
    assert ack_ids(events, ack_type) == ["seen"]
    session = emulator.last_session
    assert session.item_ids == ["lost", "seen"]  # the server applied it
    assert [a["item"]["id"] for a in session.dropped_acks][:1] == ["lost"]


async def test_drop_delete_acks(emulator: RealtimeEmulator, connect: Connect) -> None:
    c = await connect("ga")
    await c.create(user("x", "a"))
    emulator.faults.drop_acks = True
    await c.send({"type": "conversation.item.delete", "item_id": "a"})
    events = await c.request({"type": "conversation.item.retrieve", "item_id": "a"}, "error")
    assert "conversation.item.deleted" not in [e["type"] for e in events]
    assert emulator.last_session.dropped_acks[-1] == {
        "type": "conversation.item.deleted",
        "item_id": "a",
        "event_id": emulator.last_session.dropped_acks[-1]["event_id"],
    }


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_duplicate_acks(connect: Connect, emulator: RealtimeEmulator, dialect: Any) -> None:
    emulator.faults.duplicate_acks = True
    c = await connect(dialect)
    await c.send({"type": "conversation.item.create", "item": user("x", "twice")})
    await c.send({"type": "conversation.item.create", "item": user("y", "next")})
    ack_type = "conversation.item.created" if dialect == "beta" else "conversation.item.done"
    events: list[dict[str, Any]] = []
    while len(ack_ids(events, ack_type)) < 4:
        events.append(await c.recv())
    assert ack_ids(events, ack_type) == ["twice", "twice", "next", "next"]
    assert len({e["event_id"] for e in events}) == len(events)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reorder_acks(connect: Connect, emulator: RealtimeEmulator, dialect: Any) -> None:
    emulator.faults.reorder_acks = 3
    emulator.faults.reorder_flush_s = 30  # only a full window or another event releases them
    c = await connect(dialect)
    ack_type = "conversation.item.created" if dialect == "beta" else "conversation.item.added"
    for i in range(3):
        await c.send({"type": "conversation.item.create", "item": user(str(i), f"i{i}")})
    events: list[dict[str, Any]] = []
    while len(ack_ids(events, ack_type)) < 3:
        events.append(await c.recv())
    assert ack_ids(events, ack_type) == ["i2", "i1", "i0"]
    # a partial window is released by the next non-create event, still reversed
    for i in range(3, 5):
        await c.send({"type": "conversation.item.create", "item": user(str(i), f"i{i}")})
    events = await c.request(
        {"type": "conversation.item.retrieve", "item_id": "i0"}, "conversation.item.retrieved"
    )
    assert ack_ids(events, ack_type) == ["i4", "i3"]
    assert emulator.last_session.item_ids == [f"i{i}" for i in range(5)]


async def test_reorder_flushes_a_partial_window_on_its_own(
    connect: Connect, emulator: RealtimeEmulator
) -> None:
    emulator.faults.reorder_acks = 10
    emulator.faults.reorder_flush_s = 0.3
    c = await connect("beta")
    for i in range(2):
        await c.send({"type": "conversation.item.create", "item": user(str(i), f"i{i}")})
    events = [await c.recv(), await c.recv()]
    assert ack_ids(events, "conversation.item.created") == ["i1", "i0"]


async def test_ack_delay_lets_other_events_overtake(
    connect: Connect, emulator: RealtimeEmulator
) -> None:
    emulator.faults.ack_delay = 0.5
    c = await connect("beta")
    await c.send({"type": "conversation.item.create", "item": user("x", "slow")})
    events = await c.request(
        {"type": "conversation.item.retrieve", "item_id": "slow"}, "conversation.item.created"
    )
    assert [e["type"] for e in events] == [
        "conversation.item.retrieved",
        "conversation.item.created",
    ]
    session = emulator.last_session
    create_at = session.received[0].t
    ack = next(s for s in session.sent if s.type == "conversation.item.created")
    assert ack.due == pytest.approx(create_at + 0.5)
    assert ack.t >= ack.due


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_errors_without_event_id(
    connect: Connect, emulator: RealtimeEmulator, dialect: Any
) -> None:
    emulator.faults.error_event_ids = False
    c = await connect(dialect)
    err = await c.error_for(
        {"type": "conversation.item.create", "event_id": "mine", "item": {"id": "t"}}
    )
    assert err["code"] == "missing_required_parameter"
    assert err["event_id"] is None
    assert emulator.last_session.items == []  # still rejected


async def test_disconnect_after(connect: Connect, emulator: RealtimeEmulator) -> None:
    emulator.faults.disconnect_after = 2
    c = await connect("ga")
    await c.create(user("one", "a"))
    await c.send({"type": "conversation.item.create", "item": user("two", "b")})
    msg = await asyncio.wait_for(c.ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    session = emulator.last_session
    await emulator.wait_until(lambda: session.closed)
    assert emulator.faults.disconnect_after is None  # fires once
    assert len(session.received) == 2
    c2 = await connect("ga")  # the next connection is a fresh conversation
    await c2.create(user("again", "a"))
    assert emulator.last_session is not session and emulator.last_session.item_ids == ["a"]


async def test_close_all_with_session_expired(connect: Connect, emulator: RealtimeEmulator) -> None:
    clients = [await connect("ga"), await connect("beta")]
    await emulator.close_all(session_expired=True)
    for c in clients:
        events = await c.recv_until("error")
        assert events[-1]["error"]["code"] == "session_expired"
        assert (
            events[-1]["error"]["message"] == "Your session hit the maximum duration of 60 minutes."
        )
        msg = await asyncio.wait_for(c.ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await emulator.wait_until(lambda: not emulator.active_sessions)


async def test_latency_does_not_serialize(connect: Connect) -> None:
    """200 events sent at once are all answered ~latency after their receipt, in order."""
    async with RealtimeEmulator(faults=FaultConfig(latency=0.3)) as emu:
        # the fixture's emulator is not this one: connect by hand
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                emu.base_url.replace("http", "ws") + "/v1/realtime?model=gpt-realtime",
                headers={"Authorization": "Bearer k"},
            )
            for i in range(200):
                await ws.send_json(
                    {"type": "conversation.item.create", "item": user(str(i), f"i{i:03d}")}
                )
            acks: list[str] = []
            while len(acks) < 200:
                event = await asyncio.wait_for(ws.receive_json(), 10)
                if event["type"] == "conversation.item.added":
                    acks.append(event["item"]["id"])
            await ws.close()
        session = emu.last_session
        assert acks == [f"i{i:03d}" for i in range(200)]
        received = {r.event["item"]["id"]: r.t for r in session.received}
        for s in session.sent:
            if s.type == "conversation.item.added":
                assert s.due == pytest.approx(received[s.event["item"]["id"]] + 0.3)
                assert s.t >= s.due
        # every reply was due within one latency of the last receipt: nothing queued behind
        last_due = max(s.due for s in session.sent)
        assert last_due <= max(received.values()) + 0.3 + 1e-6


def test_fault_config_validates() -> None:
    faults = FaultConfig()
    with pytest.raises(ValueError):
        faults.latency = -1
    faults.drop_acks = lambda item_id, ack: True
    assert faults.selects(faults.drop_acks, "x", {})
    faults.drop_acks = False
    assert not faults.selects(faults.drop_acks, "x", {})
