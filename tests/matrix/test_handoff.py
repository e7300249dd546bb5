"""The handoff flow as users write it (seed 004), on a real AgentSession.

Agent A talks, then hands off to agent B with `chat_ctx=self.chat_ctx`; B's
`on_enter` adds a system message to a copy of its chat context and calls
`update_chat_ctx`. On the Azure beta path of livekit <= 1.4.3 this sends typeless
`agent_handoff` / `agent_config_update` items and stalls 5 s; wrapped, it must
send no typeless item, raise no error and not stall.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession

from livekit_history_plugin import wrap_realtime_model
from livekit_history_plugin.testing import RealtimeEmulator

pytestmark = pytest.mark.matrix


class AgentB(Agent):
    def __init__(self, chat_ctx: Any) -> None:
        super().__init__(instructions="You are the specialist.", chat_ctx=chat_ctx)
        self.entered = asyncio.Event()
        self.update_seconds: float | None = None
        self.error: BaseException | None = None

    async def on_enter(self) -> None:
        ctx = self.chat_ctx.copy()
        ctx.add_message(role="system", content="The caller was transferred to the specialist.")
        t0 = time.perf_counter()
        try:
            await self.update_chat_ctx(ctx)
        except BaseException as e:  # recorded for the assertion below
            self.error = e
        finally:
            self.update_seconds = time.perf_counter() - t0
            self.entered.set()


async def _run_handoff(model: Any) -> tuple[AgentB, AgentSession]:
    session: AgentSession = AgentSession(llm=model)
    agent_a = Agent(instructions="You are the greeter.")
    await session.start(agent_a)
    await session.run(user_input="hello, I need the specialist")
    agent_b = AgentB(chat_ctx=agent_a.chat_ctx)
    session.update_agent(agent_b)
    await asyncio.wait_for(agent_b.entered.wait(), 15)
    return agent_b, session


async def test_handoff_then_update_chat_ctx_is_safe(path: Any, emulator: RealtimeEmulator) -> None:
    model = wrap_realtime_model(path.build(emulator))
    agent_b, session = await _run_handoff(model)
    try:
        result = await session.run(user_input="what did I ask for?")
        assert result is not None
        server_texts = [text for _role, text in emulator.last_session.texts()]
    finally:
        await session.aclose()
    assert agent_b.error is None, agent_b.error
    assert agent_b.update_seconds is not None and agent_b.update_seconds < 1.0
    assert emulator.typeless_items == 0
    # livekit's own update_tools sends a response.cancel with no active response
    # on the beta class; the API answers it with an error livekit ignores
    item_errors = [c for c in emulator.last_session.error_codes() if c != "response_cancel_not_active"]
    assert item_errors == []
    assert "The caller was transferred to the specialist." in server_texts
    assert "hello, I need the specialist" in server_texts
