"""Recorded server answers replayed through the adapter on the REAL livekit client:
the emulator answers the chosen client events with the recorded events (fixtures), and
the replay must end the way the real server's answer calls for, with livekit's mirror
equal to the server id for id."""

from __future__ import annotations

from typing import Any

import pytest
from livekit.agents import __version__ as LIVEKIT_VERSION
from livekit.agents import llm
from livekit.plugins import openai as lk_openai

from livekit_history_plugin import ReplayOptions, wrap_realtime_model
from livekit_history_plugin.compat import adapter_of
from livekit_history_plugin.testing import FaultConfig, RealtimeEmulator, ScriptedAnswer

from .conftest import cases, resolve

RELEASE = tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])
REPLAYS = list(cases("replays"))
OPTIONS = ReplayOptions(ack_timeout=0.5, verify_timeout=0.5)


def chat_items(specs: list[dict[str, Any]]) -> list[llm.ChatItem]:
    items: list[llm.ChatItem] = []
    for spec in specs:
        kind = spec.get("type", "message")
        if kind == "message":
            items.append(llm.ChatMessage(id=spec["id"], role=spec["role"], content=[spec["text"]]))
        elif kind == "function_call":
            items.append(
                llm.FunctionCall(
                    id=spec["id"], call_id=spec["call_id"], name=spec["name"], arguments=spec["arguments"]
                )
            )
        else:
            items.append(
                llm.FunctionCallOutput(
                    id=spec["id"], call_id=spec["call_id"], output=spec["output"], is_error=False
                )
            )
    return items


def build_model(emu: RealtimeEmulator, case: dict[str, Any]) -> Any:
    endpoint = case["endpoint"]
    if endpoint == "openai-ga":
        return lk_openai.realtime.RealtimeModel(
            **emu.openai_kwargs(), model=emu.model, modalities=["text"]
        )
    if endpoint == "azure-legacy":
        kwargs = emu.azure_kwargs(api_version=case.get("api_version", "2024-10-01-preview"))
        return lk_openai.realtime.RealtimeModel.with_azure(**kwargs, modalities=["text"])
    if RELEASE < (1, 5):
        pytest.skip("Azure GA needs livekit-plugins-openai >= 1.5")
    return lk_openai.realtime.RealtimeModel.with_azure(
        **emu.azure_kwargs(api_version=None), modalities=["text"]
    )


def faults_of(case: dict[str, Any], data: dict[str, Any]) -> FaultConfig:
    knobs = dict(case.get("faults", {}))
    dropped = set(knobs.pop("drop_acks", ()))
    faults = FaultConfig(**knobs)
    if dropped:
        faults.drop_acks = lambda item_id, ack: (
            item_id in dropped and ack["type"] != "conversation.item.deleted"
        )
    return faults


def server_ids(emu: RealtimeEmulator) -> list[str]:
    return emu.last_session.item_ids


def mirror_ids(session: Any) -> list[str]:
    return [item.id for item in session.chat_ctx.items]


@pytest.mark.parametrize(("case", "data"), [(c, d) for _, c, d in REPLAYS], ids=[i for i, _, _ in REPLAYS])
async def test_recorded_answer_through_livekit(case: dict[str, Any], data: dict[str, Any]) -> None:
    expect = case["expect"]
    async with RealtimeEmulator(model=case.get("model", "gpt-realtime")) as emu:
        model = wrap_realtime_model(build_model(emu, case), options=OPTIONS)
        session = model.session()
        errors: list[Any] = []
        session.on("error", errors.append)
        try:
            await emu.wait_for_session()
            if "existing" in case:
                await session.update_chat_ctx(llm.ChatContext(chat_items(case["existing"])))
                await emu.wait_until(lambda: mirror_ids(session) == server_ids(emu), 3)
            emu.faults = faults_of(case, data)
            emu.faults.scripted = [ScriptedAnswer(**resolve(a, data)) for a in case.get("answers", ())]
            await session.update_chat_ctx(llm.ChatContext(chat_items(case["history"])))
            await emu.wait_until(lambda: mirror_ids(session) == server_ids(emu), 3)
            adapter = adapter_of(session)
            assert adapter is not None and adapter.last_result is not None
            result = adapter.last_result
            conn = emu.last_session
            assert server_ids(emu) == expect["server"]
            assert {r.item_id: r.code for r in result.rejected} == expect["rejected"]
            for key in ("resends", "verifications"):
                if key in expect:
                    assert getattr(result, key) == expect[key], key
            if "confirmed" in expect:
                assert sorted(result.confirmed) == sorted(expect["confirmed"])
            if expect.get("no_retrieve"):
                assert conn.received_of("conversation.item.retrieve") == []
                assert "invalid_value" not in conn.error_codes()
            if "livekit_errors" in expect:
                assert len(errors) == expect["livekit_errors"], errors
            ack_type = "conversation.item.created" if conn.dialect == "beta" else "conversation.item.added"
            for item_id, prev in expect.get("acked_after", {}).items():
                acks = [e for e in conn.sent_of(ack_type) if e["item"]["id"] == item_id]
                assert acks and acks[0]["previous_item_id"] == prev
            # no probe item is left behind
            assert not any(i.startswith("lhp_probe_") for i in server_ids(emu))
        finally:
            await session.aclose()
            await model.aclose()


async def test_anchor_probe_never_reaches_the_agent_context() -> None:
    # D5 in an AgentSession: livekit 1.8 adds server-initiated items appended after the
    # agent's last item to the agent's context as placeholders; the check item anchored
    # to that last item must reach neither it, nor the mirror, nor the server for good
    from livekit.agents import Agent, AgentSession

    history = [llm.ChatMessage(id=f"h{i}", role="user", content=[f"turn {i}"]) for i in range(3)]
    async with RealtimeEmulator() as emu:
        emu.faults.drop_acks = lambda item_id, ack: item_id == "h2"
        kwargs = emu.azure_kwargs(api_version="2024-10-01-preview")
        model = wrap_realtime_model(
            lk_openai.realtime.RealtimeModel.with_azure(**kwargs, modalities=["text"]), options=OPTIONS
        )
        agent = Agent(instructions="You are the test agent.", chat_ctx=llm.ChatContext(list(history)))
        async with AgentSession(llm=model) as agent_session:
            await agent_session.start(agent)
            conn = emu.last_session
            await emu.wait_until(lambda: not any(i.startswith("lhp_probe_") for i in conn.item_ids), 5)
            assert conn.item_ids == ["h0", "h1", "h2"]
            probes = [e for e in conn.received_of("conversation.item.create") if e["item"]["id"].startswith("lhp_probe_")]
            assert len(probes) == 1 and probes[0]["previous_item_id"] == "h2"
            assert [i.id for i in agent.chat_ctx.items if i.id.startswith("lhp_probe_")] == []
            rt = agent_session.current_agent.realtime_llm_session
            assert [i.id for i in rt.chat_ctx.items] == ["h0", "h1", "h2"]
        await model.aclose()
