"""The agents of `examples/voice_agent.py`, which the offline demo runs too.

A `Greeter` that hands order questions off to a `Specialist` (returning it from
its `transfer_to_specialist` tool), both with the `remember_preference` tool that
stores a durable fact for every later call through `HistoryPlugin.remember`.
`CallState` is the per-call data the tools reach via `RunContext.userdata`.

They live in the package (not in the example) so `livekit-history demo` runs them
from an installed wheel; this module needs only livekit-agents and the plugin
(no typer, no rich). Copy them into your own worker as a starting point.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.agents import Agent, RunContext, function_tool, llm

from .history.plugin import HistoryPlugin, LoadedHistory
from .history.render import base_instructions

__all__ = [
    "GREETER_INSTRUCTIONS",
    "ORDERS",
    "SPECIALIST_GREETING",
    "SPECIALIST_INSTRUCTIONS",
    "CallState",
    "Greeter",
    "Specialist",
    "remember_preference",
    "save_preference",
]

GREETER_INSTRUCTIONS = (
    "You are the greeter of Acme's order hotline. Greet the caller, by name if you know it. "
    "For anything about an order, call transfer_to_specialist. When the caller states a "
    "lasting preference (how to reach them, language, ...), call remember_preference."
)
SPECIALIST_INSTRUCTIONS = (
    "You are Acme's order specialist. Look orders up with check_order and give their status "
    "in one or two short sentences. When the caller states a lasting preference, call "
    "remember_preference."
)
SPECIALIST_GREETING = "Introduce yourself as the order specialist and answer the order question."

# an order system, for the specialist's tool
ORDERS = {"4711": "shipped yesterday; it arrives tomorrow before noon"}


@dataclass
class CallState:
    """Per-call data the tools reach through `RunContext.userdata`."""

    history: HistoryPlugin
    user_id: str
    loaded: LoadedHistory | None = None
    # the instructions `history.load()` was given (the first agent's own)
    loaded_for: str = GREETER_INSTRUCTIONS

    def instructions_for(self, agent_instructions: str) -> str:
        """Another agent's instructions with what `load()` added for the first one:
        the caller's facts and, in `instructions` mode, the history block."""
        loaded = self.loaded
        if loaded is None:
            return agent_instructions
        first = base_instructions(self.loaded_for, loaded.facts, loaded.mode)
        block = loaded.instructions[len(first) :] if loaded.instructions.startswith(first) else ""
        return base_instructions(agent_instructions, loaded.facts, loaded.mode) + block


async def save_preference(state: CallState, key: str, preference: str) -> str:
    """Store a durable fact; it is in the instructions of every later call."""
    fact = await state.history.remember(state.user_id, key, preference)
    return f"Saved for every later call: {fact.key} = {fact.text}"


@function_tool
async def remember_preference(context: RunContext[CallState], key: str, preference: str) -> str:
    """Remember a lasting preference of the caller for all later calls.

    Args:
        key: a short name for it, e.g. "contact" or "language"
        preference: the preference in one sentence, e.g. "Prefers text messages over calls."
    """
    return await save_preference(context.userdata, key, preference)


class Specialist(Agent):
    """The order specialist; it takes over the conversation from the greeter."""

    def __init__(self, *, instructions: str, chat_ctx: llm.ChatContext | None = None) -> None:
        super().__init__(instructions=instructions, chat_ctx=chat_ctx, tools=[remember_preference])

    async def on_enter(self) -> None:
        self.session.generate_reply(instructions=SPECIALIST_GREETING)

    @function_tool
    async def check_order(self, order_id: str) -> str:
        """Look up the delivery status of an order.

        Args:
            order_id: the order number the caller gave
        """
        status = ORDERS.get(order_id.strip().lstrip("#"))
        return f"Order {order_id}: {status}." if status else f"There is no order {order_id}."


class Greeter(Agent):
    """The first agent of every call; hands order questions to the `Specialist`."""

    def __init__(
        self, *, instructions: str = GREETER_INSTRUCTIONS, chat_ctx: llm.ChatContext | None = None
    ) -> None:
        super().__init__(instructions=instructions, chat_ctx=chat_ctx, tools=[remember_preference])

    def handoff(self, state: CallState) -> Specialist:
        """The specialist, with this conversation and the caller's facts (and history)."""
        return Specialist(
            instructions=state.instructions_for(SPECIALIST_INSTRUCTIONS), chat_ctx=self.chat_ctx
        )

    @function_tool
    async def transfer_to_specialist(self, context: RunContext[CallState]) -> tuple[Agent, str]:
        """Transfer the caller to the order specialist, for anything about an order."""
        return self.handoff(context.userdata), "Transferring you to our order specialist."
