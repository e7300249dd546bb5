"""livekit's mirror follows the server's chain whatever order the answers arrive in.

40 items, one of them rejected, answered reversed / shuffled / partly twice, and
the five fault cases: when `update_chat_ctx` returns, `session.chat_ctx` lists
exactly the server's items in the server's order, and still does once every
late answer has arrived.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from livekit.agents import llm

from livekit_history_plugin import ReplayOptions, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.testing import FaultConfig, RealtimeEmulator, RejectRule

pytestmark = pytest.mark.matrix

IDS = [f"f{i:03d}" for i in range(40)]
REJECTED = "f013"
VALID = [i for i in IDS if i != REJECTED]
FAST = ReplayOptions(ack_timeout=0.3, verify_timeout=0.3)
_ACKS = ("conversation.item.created", "conversation.item.added")
# warnings a correct run still logs: livekit's api_version deprecation, our rejection
_EXPECTED_WARNINGS = ("api_version", f"rejected chat item {REJECTED}")


def messages(ids: list[str]) -> list[llm.ChatMessage]:
    return [
        llm.ChatMessage(id=i, role="user" if n % 2 == 0 else "assistant", content=[f"text of {i}"])
        for n, i in enumerate(ids)
    ]


def server_ids(emu: RealtimeEmulator) -> list[str]:
    return emu.last_session.item_ids


def mirror_ids(session: Any) -> list[str]:
    return [item.id for item in session.chat_ctx.items]


def acked(emu: RealtimeEmulator) -> set[str]:
    return {
        e["item"]["id"] for t in _ACKS for e in emu.last_session.sent_of(t) if "item" in e
    }


def unexpected_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith("livekit")
        and not any(ok in r.getMessage() for ok in _EXPECTED_WARNINGS)
    ]


async def replay_40(path: Any, emu: RealtimeEmulator) -> dict[str, Any]:
    """Replay the 40 items; the mirror when the update returns, and once every
    ack the server sent has arrived plus 0.3 s."""
    emu.faults.reject.append(RejectRule.item_id(REJECTED))
    model = wrap_realtime_model(path.build(emu), options=FAST)
    session = model.session()
    await emu.wait_for_session()
    try:
        await session.update_chat_ctx(llm.ChatContext(messages(IDS)))
        at_return = mirror_ids(session)
        server = list(server_ids(emu))
        adapter = adapter_of(session)
        assert adapter is not None
        dropped = {e["item"]["id"] for e in emu.last_session.dropped_acks if "item" in e}
        await emu.wait_until(lambda: acked(emu) | dropped >= set(VALID), 5)
        await asyncio.sleep(0.3)
        return {
            "server": server,
            "at_return": at_return,
            "later": mirror_ids(session),
            "server_later": list(server_ids(emu)),
            "result": adapter.last_result,
            "stats": adapter.order.stats,
        }
    finally:
        await session.aclose()


ORDERINGS: dict[str, Callable[[FaultConfig], None]] = {
    "reversed": lambda f: setattr(f, "reorder_acks", 40),
    "shuffled": lambda f: (setattr(f, "reorder_acks", 40), setattr(f, "reorder_seed", 7)),
    "shuffled-partly-duplicated": lambda f: (
        setattr(f, "reorder_acks", 40),
        setattr(f, "reorder_seed", 11),
        setattr(f, "duplicate_acks", lambda item_id, _ack: int(item_id[1:]) % 3 == 0),
    ),
    "reversed-pairs-duplicated": lambda f: (
        setattr(f, "reorder_acks", 2),
        setattr(f, "duplicate_acks", True),
    ),
}


@pytest.mark.parametrize("ordering", list(ORDERINGS))
async def test_mirror_follows_the_server_whatever_the_ack_order(
    path: Any,
    emulator: RealtimeEmulator,
    ordering: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ORDERINGS[ordering](emulator.faults)
    got = await replay_40(path, emulator)
    assert got["server"] == VALID
    assert got["at_return"] == got["server"]
    assert got["later"] == got["server_later"] == VALID
    assert [r.item_id for r in got["result"].rejected] == [REJECTED]
    # nothing waited out a bound, nothing was sent twice: no stall
    assert got["stats"].forced == 0
    assert got["result"].resends == 0
    assert unexpected_logs(caplog) == []


FAULTS: dict[str, Callable[[FaultConfig], None]] = {
    # the create acks only: a delete probe's own answer must come through
    "dropped": lambda f: setattr(
        f,
        "drop_acks",
        lambda item_id, ack: item_id in ("f005", "f020", "f039")
        and ack["type"] != "conversation.item.deleted",
    ),
    "doubled": lambda f: setattr(f, "duplicate_acks", True),
    "reversed": lambda f: setattr(f, "reorder_acks", 40),
    "no-event-id": lambda f: setattr(f, "error_event_ids", False),
    "delayed-200ms": lambda f: setattr(f, "ack_delay", 0.2),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_cases_end_with_the_mirror_equal_to_the_server(
    path: Any, emulator: RealtimeEmulator, fault: str
) -> None:
    FAULTS[fault](emulator.faults)
    got = await replay_40(path, emulator)
    assert got["server"] == VALID
    assert got["at_return"] == got["server"]
    assert got["later"] == got["server_later"] == VALID
    assert [r.item_id for r in got["result"].rejected] == [REJECTED]


async def test_inserts_between_existing_items_follow_the_chain_when_reversed(
    path: Any, emulator: RealtimeEmulator
) -> None:
    """Anchored inserts whose acks arrive last-first: each names the one it is
    chained to, not yet in the mirror; the mirror ends in the server's order."""
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session = model.session()
    await emulator.wait_for_session()
    head, tail = messages(["first", "last"])
    middle = messages([f"mid_{i}" for i in range(8)])
    try:
        await session.update_chat_ctx(llm.ChatContext([head, tail]))
        emulator.faults.reorder_acks = 8
        await session.update_chat_ctx(llm.ChatContext([head, *middle, tail]))
        at_return = mirror_ids(session)
        adapter = adapter_of(session)
        assert adapter is not None
        stats = adapter.order.stats
    finally:
        await session.aclose()
    want = ["first", *[f"mid_{i}" for i in range(8)], "last"]
    assert server_ids(emulator) == want
    assert at_return == want
    assert stats.forced == 0


# livekit 1.2+ diffs an item whose content changed as delete + create (`to_update`)
HAS_UPDATE_DIFF = "to_update" in getattr(llm.utils.DiffOps, "__annotations__", {})


@pytest.mark.skipif(not HAS_UPDATE_DIFF, reason="livekit < 1.2 does not diff content changes")
async def test_rewritten_item_acked_before_the_delete_of_its_old_copy(
    path: Any, emulator: RealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """An item whose text changed is deleted and created again; answered last-first,
    the new copy's ack comes before the old copy's deletion. The mirror keeps the
    new copy, at its place, and the deletion's ack does not take it away."""
    model = wrap_realtime_model(path.build(emulator), options=FAST)
    session = model.session()
    await emulator.wait_for_session()
    ids = IDS[:6]
    try:
        await session.update_chat_ctx(llm.ChatContext(messages(ids)))
        emulator.faults.reorder_acks = 2  # the delete's ack and the create's, swapped
        changed = messages(ids)
        changed[2] = llm.ChatMessage(id=ids[2], role="user", content=["rewritten"])
        await session.update_chat_ctx(llm.ChatContext(changed))
        at_return = mirror_ids(session)
        text = session.chat_ctx.get_by_id(ids[2]).text_content
        adapter = adapter_of(session)
        assert adapter is not None and adapter.last_result is not None
        result = adapter.last_result
        await emulator.wait_until(
            lambda: len(emulator.last_session.sent_of("conversation.item.deleted")) == 1, 5
        )
        await asyncio.sleep(0.3)
        later = mirror_ids(session)
        kinds = [
            e.type
            for e in emulator.last_session.sent
            if e.type in (*_ACKS, "conversation.item.deleted")
        ]
    finally:
        await session.aclose()
    assert kinds[-2:] == [kinds[-2], "conversation.item.deleted"] and kinds[-2] in _ACKS
    assert server_ids(emulator) == ids
    assert at_return == later == ids
    assert text == "rewritten"
    assert result.deleted == [ids[2]] and result.confirmed == [ids[2]]
    assert unexpected_logs(caplog) == []
