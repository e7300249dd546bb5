"""Child process of the memory tests: one call in a fresh interpreter.

memory_call.py tell STORE_URL USER TEXT...
    a call saying each TEXT (no tool is called); the plugin closes, which runs
    the post-call steps (summary, fact capture). Prints one JSON line: the
    facts captured and the turns recorded.
memory_call.py ask STORE_URL USER QUERY TEXT
    a call whose agent has the recall tool; the emulator's scripted model calls
    it with QUERY when the caller says TEXT. Prints one JSON line: the
    instructions the model had, the tool's output, the agent's reply, errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from history_helpers import (
    AGENT_INSTRUCTIONS,
    DEFAULT_KIND,
    protocol_errors,
    user_turn,
    user_turn_with_tool_reply,
)
from livekit.agents import Agent, AgentSession

from livekit_history_plugin.history.plugin import HistoryPlugin
from livekit_history_plugin.history.recall import RECALL_TOOL_NAME
from livekit_history_plugin.testing import ConversationView, RealtimeEmulator, reply_with_tool


async def _say(session: AgentSession[Any], text: str, *, tool_called: bool = False) -> str:
    turn = user_turn_with_tool_reply if tool_called else user_turn
    result: Any = await turn(session, text, 30)
    reply = ""
    if not hasattr(result, "events"):  # livekit 1.0 - 1.1: a SpeechHandle
        message = result.chat_message
        return (message.text_content or "") if message is not None else ""
    for ev in result.events:
        item = getattr(ev, "item", None)
        if item is not None and getattr(item, "role", None) == "assistant":
            reply = item.text_content or ""
    return reply


async def tell(url: str, user: str, texts: list[str]) -> None:
    plugin = HistoryPlugin(url)
    async with RealtimeEmulator() as emu:
        loaded = await plugin.load(user, instructions=AGENT_INSTRUCTIONS)
        model = emu.realtime_model(DEFAULT_KIND, modalities=["text"])  # type: ignore[arg-type]
        session: AgentSession[Any] = AgentSession(llm=model)
        recorder = plugin.attach(session, user_id=user)
        await session.start(Agent(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx))
        for text in texts:
            await _say(session, text)
        await session.aclose()
        await recorder.aclose()
        await model.aclose()
        tool_calls = [r.function_call for r in emu.responses if r.function_call is not None]
    await plugin.aclose()  # waits for the post-call steps
    captured = [f.model_dump(mode="json") for r in plugin.captured for f in r.saved]
    out = {
        "captured": captured,
        "recorded": [[t.role.value, t.text] for t in recorder.turns],
        "tool_calls": len(tool_calls),
    }
    print(json.dumps(out), flush=True)


async def ask(url: str, user: str, query: str, text: str) -> None:
    plugin = HistoryPlugin(url)
    async with RealtimeEmulator() as emu:

        def asked(view: ConversationView) -> bool:
            return view.last_user_text == text

        emu.reply = reply_with_tool(RECALL_TOOL_NAME, asked, arguments={"query": query})
        loaded = await plugin.load(user, instructions=AGENT_INSTRUCTIONS)
        model = emu.realtime_model(DEFAULT_KIND, modalities=["text"])  # type: ignore[arg-type]
        session: AgentSession[Any] = AgentSession(llm=model)
        recorder = plugin.attach(session, user_id=user)
        tool = plugin.recall_tool(user, exclude_conversation_id=recorder.conversation_id)
        agent = Agent(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx, tools=[tool])
        await session.start(agent)
        reply = await _say(session, text, tool_called=True)
        s = emu.sessions[0]
        outputs = [i.get("output") for i in s.items if i.get("type") == "function_call_output"]
        calls = [i.get("name") for i in s.items if i.get("type") == "function_call"]
        out = {
            "loaded_instructions": loaded.instructions,
            "response_instructions": [r.instructions for r in emu.responses],
            "tool_calls": calls,
            "tool_outputs": outputs,
            "reply": reply,
            "errors": protocol_errors(s),
            "rejected": [f.message for f in emu.sdk_validation_errors if f.rejected],
        }
        await session.aclose()
        await recorder.aclose()
        await model.aclose()
    await plugin.aclose()
    print(json.dumps(out), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "tell":
        asyncio.run(tell(argv[1], argv[2], argv[3:]))
    elif argv[0] == "ask":
        asyncio.run(ask(argv[1], argv[2], argv[3], argv[4]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
