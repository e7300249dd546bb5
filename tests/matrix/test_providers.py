"""OpenAI-protocol providers and their quirks, on the real livekit clients.

Each quirk of `livekit_history_plugin.providers` is switched on in the emulator
(`ProviderQuirks`) on every path of the release, then the real provider
packages livekit ships (livekit-plugins-xai, LiveKit Inference) run against
the emulator configured as that provider. Every valid item lands once and in
order, the mirror equals the server when the update returns, nothing waits
out a timeout (counted, not timed) and a normal answer logs nothing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import AgentSession, llm
from livekit.agents import __version__ as LIVEKIT_VERSION

from livekit_history_plugin import ReplayOptions, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.providers import (
    AZURE_PREVIEW_2024_10,
    EMPTY_DELETED_ITEM_ID,
    NULL_PREVIOUS_ITEM_ID,
    SERVER_REPLACES_ITEM_IDS,
    XAI,
    Provider,
)
from livekit_history_plugin.testing import ProviderQuirks, RealtimeEmulator, RejectRule

pytestmark = pytest.mark.matrix

FAST = ReplayOptions(ack_timeout=0.3, verify_timeout=0.3)
IDS = [f"p{i:03d}" for i in range(40)]
REJECTED = "p017"
VALID = [i for i in IDS if i != REJECTED]
_EXPECTED_WARNINGS = ("api_version", f"rejected chat item {REJECTED}")

RELEASE = tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])
# livekit-plugins-xai exists from 1.3.7 on, one release per livekit release
XAI_RELEASED = RELEASE >= (1, 3)
HAS_XAI = importlib.util.find_spec("livekit.plugins.xai") is not None


def _has_inference_realtime() -> bool:
    try:
        return importlib.util.find_spec("livekit.agents.inference.realtime") is not None
    except ModuleNotFoundError:  # no livekit.agents.inference at all (livekit < 1.2)
        return False


# LiveKit Inference speaks the OpenAI protocol through livekit's own session from 1.8
HAS_INFERENCE_REALTIME = _has_inference_realtime()


def messages(ids: list[str]) -> list[llm.ChatMessage]:
    return [
        llm.ChatMessage(id=i, role="user" if n % 2 == 0 else "assistant", content=[f"text of {i}"])
        for n, i in enumerate(ids)
    ]


def mirror_ids(session: Any) -> list[str]:
    return [item.id for item in session.chat_ctx.items]


def unexpected_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith("livekit")
        and not any(ok in r.getMessage() for ok in _EXPECTED_WARNINGS)
    ]


async def replay(
    model: Any, emu: RealtimeEmulator, steps: list[list[str]], provider: Provider | None = None
) -> dict[str, Any]:
    """Run one update per step (each the full desired context); what the mirror
    and the server hold after each, and the adapter's counts. `provider`: the
    quirks the emulator was given, on a path whose session class does not tell."""
    session = wrap_realtime_model(model, options=FAST).session()
    await emu.wait_for_session()
    out: dict[str, Any] = {"mirrors": [], "servers": [], "results": []}
    try:
        adapter = adapter_of(session)
        assert adapter is not None, "the full adapter must be installed"
        if provider is not None:
            adapter.use_provider(provider)
        for ids in steps:
            await session.update_chat_ctx(llm.ChatContext(messages(ids)))
            out["mirrors"].append(mirror_ids(session))
            out["servers"].append(list(emu.last_session.item_ids))
            out["results"].append(adapter.last_result)
        out["adapter"] = adapter
        out["received"] = [r.type for r in emu.last_session.received]
    finally:
        await session.aclose()
    return out


def assert_clean(got: dict[str, Any], want: list[list[str]]) -> None:
    assert got["servers"] == want
    assert got["mirrors"] == want  # at the moment each update returned
    for result in got["results"]:
        # nothing timed out, nothing was checked or sent twice: no stall
        assert all(r.code != "ack_timeout" for r in result.rejected)
        assert not result.delete_failed
        assert result.resends == 0
    assert got["adapter"].order.stats.forced == 0


# -- each quirk on every path of the release -----------------------------------


async def test_null_previous_item_id(
    path: Any, emulator: RealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Acks that never name a predecessor, answered last-first: appended items
    follow the send order, inserts their anchors."""
    emulator.quirks = ProviderQuirks(null_previous_item_id=True)
    emulator.faults.reorder_acks = 40
    emulator.faults.reject.append(RejectRule.item_id(REJECTED))
    model = path.build(emulator)
    inserted = [*VALID[:10], "ins_a", "ins_b", *VALID[10:]]
    steps = [IDS, [*IDS[:10], "ins_a", "ins_b", *IDS[10:]]]
    got = await replay(model, emulator, steps, provider=XAI)
    assert_clean(got, [VALID, inserted])
    assert [r.item_id for r in got["results"][0].rejected] == [REJECTED]
    assert unexpected_logs(caplog) == []


async def test_empty_deleted_item_id(
    path: Any, emulator: RealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Deletions acked with `item_id: ""`: settled by their ack (no timeout, no
    ghost left in the mirror), even when the acks come back reversed."""
    emulator.quirks = ProviderQuirks(empty_deleted_item_id=True)
    model = path.build(emulator)
    first = IDS[:12]
    kept = [i for n, i in enumerate(first) if n % 3]
    session = wrap_realtime_model(model, options=FAST).session()
    await emulator.wait_for_session()
    try:
        adapter = adapter_of(session)
        assert adapter is not None
        # the emulator's quirk on a path whose session class does not tell
        adapter.use_provider(XAI)
        await session.update_chat_ctx(llm.ChatContext(messages(first)))
        emulator.faults.reorder_acks = 4
        await session.update_chat_ctx(llm.ChatContext(messages(kept)))
        mirror, result = mirror_ids(session), adapter.last_result
        deleted_acks = emulator.last_session.sent_of("conversation.item.deleted")
    finally:
        await session.aclose()
    assert emulator.last_session.item_ids == kept
    assert mirror == kept
    assert result is not None and sorted(result.deleted) == sorted(set(first) - set(kept))
    assert not result.delete_failed
    assert deleted_acks and all(e["item_id"] == "" for e in deleted_acks)
    assert unexpected_logs(caplog) == []


async def test_no_retrieve_where_the_server_has_none(path: Any, emulator: RealtimeEmulator) -> None:
    """A lost ack on a server without conversation.item.retrieve: it is never
    sent; the item lands once, in order."""
    emulator.quirks = ProviderQuirks(no_retrieve=True)
    emulator.faults.drop_acks = lambda item_id, ack: (
        item_id in ("p005", IDS[-1]) and ack["type"] != "conversation.item.deleted"
    )
    model = path.build(emulator)
    session = wrap_realtime_model(model, options=FAST).session()
    await emulator.wait_for_session()
    try:
        adapter = adapter_of(session)
        assert adapter is not None
        # the emulator's quirk on a path whose session class does not tell
        adapter.use_provider(AZURE_PREVIEW_2024_10)
        await session.update_chat_ctx(llm.ChatContext(messages(IDS)))
        mirror, result = mirror_ids(session), adapter.last_result
    finally:
        await session.aclose()
    received = [r.type for r in emulator.last_session.received]
    assert emulator.last_session.item_ids == IDS
    assert mirror == IDS
    assert result is not None and not result.rejected
    assert "conversation.item.retrieve" not in received


# -- the provider packages livekit ships -----------------------------------------


def xai_model(emu: RealtimeEmulator) -> Any:
    from livekit.plugins import xai

    return xai.realtime.RealtimeModel(api_key="test-key", base_url=emu.openai_base_url)


needs_xai = pytest.mark.skipif(
    not XAI_RELEASED, reason="livekit-plugins-xai has no release for livekit < 1.3"
)


@needs_xai
def test_xai_plugin_is_installed_where_it_exists() -> None:
    # the matrix installs livekit-plugins-xai of the same release; a missing one
    # would turn every xAI test below into a skip
    assert HAS_XAI


@needs_xai
@pytest.mark.skipif(not HAS_XAI, reason="livekit-plugins-xai not installed")
async def test_xai_out_of_order_acks_and_deletes(caplog: pytest.LogCaptureFixture) -> None:
    async with RealtimeEmulator(quirks=ProviderQuirks.of("xai")) as emu:
        emu.faults.reorder_acks = 40
        emu.faults.reject.append(RejectRule.item_id(REJECTED))
        kept = [i for n, i in enumerate(IDS) if n % 4]
        got = await replay(xai_model(emu), emu, [IDS, kept])
    adapter = got["adapter"]
    assert adapter.provider is XAI
    assert adapter.provider.has(NULL_PREVIOUS_ITEM_ID) and adapter.provider.has(EMPTY_DELETED_ITEM_ID)
    want_kept = [i for i in kept if i != REJECTED]
    assert_clean(got, [VALID, want_kept])
    assert sorted(got["results"][1].deleted) == sorted(set(VALID) - set(kept))
    assert unexpected_logs(caplog) == []


@needs_xai
@pytest.mark.skipif(not HAS_XAI, reason="livekit-plugins-xai not installed")
async def test_history_plugin_attach_wraps_an_xai_model(tmp_path: Path) -> None:
    from livekit_history_plugin import HistoryPlugin

    async with RealtimeEmulator(quirks=ProviderQuirks.of("xai")) as emu:
        model = xai_model(emu)
        history = HistoryPlugin(f"sqlite:///{tmp_path / 'history.db'}")
        try:
            agent_session: AgentSession[Any] = AgentSession(llm=model)
            history.attach(agent_session, user_id="caller-1")
            session = model.session()
            try:
                adapter = adapter_of(session)
                assert adapter is not None and adapter.provider is XAI
                await emu.wait_for_session()
                await session.update_chat_ctx(llm.ChatContext(messages(IDS[:6])))
                assert mirror_ids(session) == emu.last_session.item_ids == IDS[:6]
            finally:
                await session.aclose()
        finally:
            await history.aclose()


@pytest.mark.skipif(
    not HAS_INFERENCE_REALTIME, reason="LiveKit Inference realtime exists from livekit 1.8"
)
async def test_livekit_inference_xai_model(caplog: pytest.LogCaptureFixture) -> None:
    from livekit.agents import inference

    async with RealtimeEmulator(quirks=ProviderQuirks.of("xai")) as emu:
        emu.faults.reorder_acks = 40
        emu.faults.reject.append(RejectRule.item_id(REJECTED))
        model = inference.RealtimeModel(
            "xai/grok-voice-latest",
            api_key="test-key",
            api_secret="test-secret-" + "s" * 32,
            base_url=emu.openai_base_url,
        )
        got = await replay(model, emu, [IDS])
        await asyncio.sleep(0)
    assert got["adapter"].provider.name == "LiveKit Inference (xAI)"
    assert_clean(got, [VALID])
    assert unexpected_logs(caplog) == []


async def test_server_replaces_item_ids(
    path: Any, emulator: RealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """The server keeps every item under an id of its own and echoes no event_id
    (StepFun): each ack is matched to our create by content and order, the
    mirror holds the server's ids in the server's order, and the next update
    neither deletes nor re-creates what is there."""
    emulator.quirks = ProviderQuirks.of("stepfun")
    emulator.faults.error_event_ids = False
    # an item error names the item's field, so an error without event_id is still ours
    emulator.faults.reject.append(RejectRule.item_id(REJECTED, param="item.content"))
    session = wrap_realtime_model(path.build(emulator), options=FAST).session()
    await emulator.wait_for_session()
    try:
        adapter = adapter_of(session)
        assert adapter is not None
        # a provider with this quirk has no session class of its own in livekit
        quirks = adapter.provider.quirks | {SERVER_REPLACES_ITEM_IDS}
        adapter.use_provider(Provider("StepFun", "-", quirks))
        await session.update_chat_ctx(llm.ChatContext(messages(IDS[:20])))
        first = (mirror_ids(session), list(emulator.last_session.item_ids), adapter.last_result)
        sent_before = len(emulator.last_session.received)
        await session.update_chat_ctx(llm.ChatContext(messages(IDS[:24])))
        second = (mirror_ids(session), list(emulator.last_session.item_ids), adapter.last_result)
        later = emulator.last_session.received[sent_before:]
        texts = [text for _role, text in emulator.last_session.texts()]
    finally:
        await session.aclose()
    want = [i for i in IDS[:24] if i != REJECTED]
    mirror, server, result = first
    assert mirror == server and len(server) == 20 - 1 and not set(server) & set(IDS)
    assert result.confirmed == [i for i in IDS[:20] if i != REJECTED]
    assert [r.item_id for r in result.rejected] == [REJECTED]
    mirror, server, result = second
    assert mirror == server and texts == [f"text of {i}" for i in want]
    # the second update created the 4 new items only (and tried the rejected one
    # again); anchors to items of the same burst are resent once their server id is known
    creates = {r.event["item"]["id"] for r in later if r.type == "conversation.item.create"}
    # (where retrieve is missing, the engine checks an anonymous error with a probe item)
    assert {i for i in creates if not i.startswith("lhp_probe")} == {*IDS[20:24], REJECTED}
    assert not [r for r in later if r.type == "conversation.item.delete"]
    assert unexpected_logs(caplog) == []
