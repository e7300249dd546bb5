"""The offline demo: two calls of one caller with the agents of `examples/voice_agent.py`.

`run_demo()` plays two calls of the same caller on a real livekit
`AgentSession` (text mode, `session.run(user_input=...)`) against the bundled
realtime emulator and a SQLite store, and shows what call 1 recorded, what was
replayed into call 2 item by item with the server's acknowledgements, and that
call 2's reply knows call 1. No credentials, no network: `livekit-history demo`
or `python examples/voice_agent.py demo`.

The agents are `example_agents`' (the example worker's): a `Greeter` that hands
off to a `Specialist`, both with the `remember_preference` tool. The emulator's
scripted "model" calls those real tools (`reply_with_tool`), so the handoff and
the fact go through livekit's own tool execution, as with a real realtime
model. Asked in call 2 which order the caller asked about last time, it
answers from what the server holds besides the question
(`orders_before_this_question`): only the replayed history names the order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from livekit.agents import AgentSession, llm
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from .example_agents import (
    GREETER_INSTRUCTIONS,
    ORDERS,
    SPECIALIST_INSTRUCTIONS,
    CallState,
    Greeter,
    Specialist,
    remember_preference,
    save_preference,
)
from .history.models import Role, Turn
from .history.plugin import HistoryConfig, HistoryPlugin, LoadedHistory
from .history.render import FACTS_TAG, HISTORY_TAG, ReplayMode
from .history.tokens import message_tokens

if TYPE_CHECKING:
    from .testing import ConversationView, EmulatorSession, RealtimeEmulator
    from .testing.emulator import ReplyFn

__all__ = [
    # the agents, from `example_agents` (imported from here by earlier releases)
    "GREETER_INSTRUCTIONS",
    "SPECIALIST_INSTRUCTIONS",
    "CallState",
    "Greeter",
    "Specialist",
    "remember_preference",
    "save_preference",
    # the demo
    "DemoResult",
    "orders_before_this_question",
    "run_demo",
]

DemoProvider = Literal["azure", "openai"]

# what the demo caller says
CALL_1_FIRST = "Hi, this is Ada. Where is my order 4711?"
CALL_1_SECOND = "Please text me when it arrives, I don't like phone calls."
PREFERENCE = ("contact", "Prefers a text message over a phone call.")
# the question of call 2: only the history of call 1 says which order it was
CALL_2_FIRST = "Hi, it's Ada again. Which order did I ask about last time?"
CALL_1_ORDER = "4711"

_PROVIDER_LABEL = {
    "azure": "Azure OpenAI, legacy api-version (beta dialect)",
    "openai": "OpenAI Realtime GA (ga dialect)",
}
_ACKS = ("conversation.item.created", "conversation.item.added")
# livekit's update_tools on the beta class cancels a response that is not active;
# the API answers with this error and livekit ignores it
_HARMLESS_ERRORS = frozenset({"response_cancel_not_active"})


# -- the emulator's "model" ------------------------------------------------------------------------


@dataclass
class _Seen:
    """History item ids of the current call, so the demo can show what was replayed."""

    history_ids: set[str] = field(default_factory=set)


_ORDER_NUMBER = re.compile(r"\border\s+(?:number\s+)?#?(\d{3,})", re.IGNORECASE)
_FACT_LINE = re.compile(r'^- (".*?"): (".*")$', re.MULTILINE)
_HISTORY_BLOCK = re.compile(rf"<{HISTORY_TAG}>(.*?)</{HISTORY_TAG}>", re.DOTALL)


def _facts_in(instructions: str | None) -> list[str]:
    if not instructions or f"<{FACTS_TAG}>" not in instructions:
        return []
    block = instructions.split(f"<{FACTS_TAG}>", 1)[1].split(f"</{FACTS_TAG}>", 1)[0]
    return [json.loads(v) for _k, v in _FACT_LINE.findall(block)]


def orders_before_this_question(view: ConversationView) -> list[str]:
    """Order numbers in what the server holds besides the caller's current question:
    the earlier conversation items and the history block of the instructions.

    The scripted model answers CALL_2_FIRST from these alone, so its answer
    knows call 1's order only if the replayed history reached the server.
    """
    messages = view.messages()
    earlier = [view.text_of(m) for m in messages[:-1]]  # the last one is the question
    if view.instructions:
        earlier += _HISTORY_BLOCK.findall(view.instructions)
    found: list[str] = []
    for text in earlier:
        for number in _ORDER_NUMBER.findall(text):
            if number not in found:
                found.append(number)
    return found


def _returning_caller_answer(view: ConversationView) -> str:
    orders = orders_before_this_question(view)
    known = (
        f"Last time you asked about order {orders[-1]}."
        if orders
        else "I have no record of an earlier order."
    )
    facts = _facts_in(view.instructions)
    noted = f" Noted from earlier calls: {' '.join(facts)}" if facts else ""
    return f"Welcome back! {known}{noted}"


def _scripted_answer(view: ConversationView) -> str:
    """The "model" of the demo: it answers from what the server holds, and never
    quotes conversation items back (a quoted history block would be recorded
    and replayed again, nested, on every later call)."""
    if view.last_user_text == CALL_2_FIRST:
        return _returning_caller_answer(view)
    asked = _ORDER_NUMBER.findall(view.last_user_text or "")
    if asked:
        status = ORDERS.get(asked[-1])
        return f"Order {asked[-1]}: {status}." if status else f"There is no order {asked[-1]}."
    return "Understood. Anything else I can do for you?"


def _demo_reply(seen: _Seen) -> ReplyFn:
    """The scripted model: it calls the agents' real tools, as a realtime model would,
    and otherwise answers with `_scripted_answer`."""
    from .testing import reply_with_tool

    key, preference = PREFERENCE
    remembering = reply_with_tool(
        "remember_preference",
        lambda view: view.last_user_text == CALL_1_SECOND,
        arguments={"key": key, "preference": preference},
        otherwise=_scripted_answer,
    )
    return reply_with_tool(
        "transfer_to_specialist",
        lambda view: view.last_user_text == CALL_1_FIRST,
        otherwise=remembering,
    )


# -- running the demo ---------------------------------------------------------------------------


@dataclass
class ReplayedItem:
    """One history item of call 2 and the server's answer to it."""

    item_id: str
    role: str
    text: str
    tokens: int
    ack: str | None  # the ack event type, None when the server did not acknowledge it
    previous_item_id: str | None
    ack_ms: float | None


@dataclass
class DemoResult:
    ok: bool
    checks: list[tuple[str, bool]]
    recorded: list[Turn]
    replayed: list[ReplayedItem]
    reply: str
    seconds: float
    store_url: str


class _Transcript:
    """Prints the committed messages of a call as they happen."""

    def __init__(self, console: Console, session: AgentSession[Any]) -> None:
        self.console = console
        self.session = session
        self.messages: list[tuple[str, str, str]] = []  # (role, agent, text)
        self.changed = asyncio.Event()
        # from livekit 1.5 handoff items mark the switch exactly; a reply the old
        # agent commits after its tool handed off is still the old agent's
        self._handed_to: str | None = None
        session.on("conversation_item_added", self._on_item)

    def _agent(self) -> str:
        if self._handed_to is not None:
            return self._handed_to
        try:
            return type(self.session.current_agent).__name__.lower()
        except RuntimeError:
            return "agent"

    def _on_item(self, ev: Any) -> None:
        item = ev.item
        if getattr(item, "type", None) == "agent_handoff":
            old, new = getattr(item, "old_agent_id", None), getattr(item, "new_agent_id", None)
            self._handed_to = str(new) if new else None
            if old:  # the session's first agent is announced as a handoff from nobody
                self.console.print(f"   [dim]… handoff {escape(old)} → {escape(str(new))}[/dim]")
            return
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        agent = self._agent()
        self.messages.append((item.role, agent, text))
        who = "[bold]caller[/bold]" if item.role == "user" else f"[cyan]{agent}[/cyan]"
        self.console.print(f"   {who} › {escape(text)}")
        self.changed.set()

    async def wait_for_reply_of(self, agent: str, timeout: float = 10.0) -> None:
        async def waiter() -> None:
            while not any(r == "assistant" and a == agent for r, a, _ in self.messages):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(waiter(), timeout)


@contextmanager
def _quiet_livekit(verbose: bool) -> Iterator[None]:
    """livekit's own warnings (e.g. the deprecated Azure api_version) are noise here."""
    if verbose:
        yield
        return
    lk = logging.getLogger("livekit")
    ours = logging.getLogger("livekit.plugins.history")
    saved = (lk.level, ours.level)
    lk.setLevel(logging.ERROR)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.WARNING)  # ours still speak
    try:
        yield
    finally:
        lk.setLevel(saved[0])
        ours.setLevel(saved[1])


def _replayed(session: EmulatorSession, loaded: LoadedHistory) -> list[ReplayedItem]:
    from .testing import ConversationView

    wanted = set(loaded.item_ids)
    acks: dict[str, tuple[str, str | None, float]] = {}
    for sent in session.sent:
        item = sent.event.get("item")
        if sent.type in _ACKS and isinstance(item, dict) and item.get("id") in wanted:
            acks.setdefault(item["id"], (sent.type, sent.event.get("previous_item_id"), sent.t))
    out: list[ReplayedItem] = []
    for received in session.received:
        event = received.event
        if received.type != "conversation.item.create" or not isinstance(event, dict):
            continue
        item = event.get("item") or {}
        if item.get("id") not in wanted:
            continue
        text = ConversationView.text_of(item)
        role = str(item.get("role"))
        ack = acks.get(item["id"])
        out.append(
            ReplayedItem(
                item_id=item["id"],
                role=role,
                text=text,
                tokens=message_tokens(role, text),
                ack=ack[0] if ack else None,
                previous_item_id=ack[1] if ack else None,
                ack_ms=(ack[2] - received.t) * 1000 if ack else None,
            )
        )
    return out


def _recorded_table(turns: list[Turn]) -> Table:
    table = Table(title="Recorded in call 1 (read back from the store)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("speaker")
    table.add_column("agent", style="cyan")
    table.add_column("text", overflow="fold")
    for t in turns:
        speaker = {Role.USER: "caller", Role.ASSISTANT: "agent", Role.SYSTEM: "note"}[t.role]
        table.add_row(str(t.seq), speaker, escape(t.agent_id or ""), escape(t.text))
    return table


def _replayed_table(items: list[ReplayedItem], dialect: str) -> Table:
    table = Table(
        title=f"Replayed into call 2: conversation.item.create → server ack ({dialect} dialect)",
        title_justify="left",
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("item sent", overflow="fold", min_width=24, ratio=1)
    table.add_column("tokens", justify="right", no_wrap=True)
    table.add_column("server ack", no_wrap=True)
    number = {it.item_id: n for n, it in enumerate(items, 1)}
    for n, it in enumerate(items, 1):
        text = it.text if len(it.text) <= 60 else it.text[:57] + "..."
        if it.ack is None:
            ack = "[red]no ack[/red]"
        else:
            after = (
                "first"
                if it.previous_item_id is None
                else f"after #{number.get(it.previous_item_id, '?')}"
            )
            ms = f", {it.ack_ms:.1f} ms" if it.ack_ms is not None else ""
            ack = f"[green]{it.ack}[/green]\n[dim]{after}{ms}[/dim]"
        table.add_row(
            str(n),
            it.role,
            f"{escape(text)}\n[dim]{it.item_id}[/dim]",
            str(it.tokens),
            ack,
        )
    return table


@dataclass
class _Call:
    """One running call, as the demo's scripts see it."""

    session: AgentSession[CallState]
    greeter: Greeter
    state: CallState
    loaded: LoadedHistory
    server: EmulatorSession
    transcript: _Transcript
    console: Console


async def _call(
    emu: RealtimeEmulator,
    history: HistoryPlugin,
    user_id: str,
    provider: DemoProvider,
    console: Console,
    seen: _Seen,
    script: Callable[[_Call], Awaitable[None]],
) -> _Call:
    """One call: load the history, attach, start the greeter, run `script`, hang up."""
    loaded = await history.load(user_id, instructions=GREETER_INSTRUCTIONS)
    seen.history_ids = set(loaded.item_ids)
    state = CallState(history=history, user_id=user_id, loaded=loaded)
    model = emu.realtime_model(provider, modalities=["text"])
    session: AgentSession[CallState] = AgentSession(llm=model, userdata=state)
    recorder = history.attach(session, user_id=user_id)  # before start
    connections = len(emu.sessions)
    try:
        transcript = _Transcript(console, session)
        greeter = Greeter(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx)
        await session.start(greeter)
        server = await emu.wait_for_session(connections + 1)
        await _history_on_server(emu, server, loaded)
        call = _Call(session, greeter, state, loaded, server, transcript, console)
        await script(call)
    finally:
        await session.aclose()
        await recorder.aclose()
        await model.aclose()
    return call


async def _history_on_server(
    emu: RealtimeEmulator, server: EmulatorSession, loaded: LoadedHistory
) -> None:
    """Wait until the server has the history items and the instructions, as the
    audio gate does before the caller is heard."""
    await emu.wait_until(lambda: set(loaded.item_ids) <= set(server.item_ids), 10)
    try:
        await emu.wait_until(lambda: server.instructions == loaded.instructions, 5)
    except TimeoutError:
        pass  # a livekit release may word them differently; the checks will tell


async def _call_1(call: _Call) -> None:
    # the model calls transfer_to_specialist: a real tool call and handoff
    await call.session.run(user_input=CALL_1_FIRST)
    await call.transcript.wait_for_reply_of("specialist")
    # ... then remember_preference, which stores a durable fact
    await call.session.run(user_input=CALL_1_SECOND)
    for fact in await call.state.history.facts(call.state.user_id):
        call.console.print(
            f"   [magenta]tool remember_preference[/magenta] → saved for every later call: "
            f"{escape(fact.key)} = {escape(fact.text)}"
        )


async def _call_2(call: _Call) -> None:
    loaded, console = call.loaded, call.console
    console.print(
        f"   history.load(): {len(loaded.turns)} turns, "
        f"{'a summary, ' if loaded.summary else ''}{_plural(len(loaded.facts), 'fact')}, "
        f"{loaded.tokens} tokens of a {loaded.budget:,}-token budget"
    )
    if loaded.item_ids:
        console.print(_replayed_table(_replayed(call.server, loaded), call.server.dialect))
    else:
        console.print("   instructions mode: the history is in the session instructions below")
    console.print(
        Panel(
            escape(call.server.instructions or ""),
            title="call 2 session instructions (session.update)",
            title_align="left",
        )
    )
    await call.session.run(user_input=CALL_2_FIRST)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _header(console: Console, rows: list[tuple[str, str]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for k, v in rows:
        grid.add_row(k, escape(v))
    console.print(Panel(grid, title="livekit-history-plugin offline demo", title_align="left"))


async def run_demo(
    *,
    db_path: Path | None = None,
    user_id: str = "demo-caller",
    provider: DemoProvider = "azure",
    mode: ReplayMode = "items",
    console: Console | None = None,
    verbose: bool = False,
    forget_history: bool = False,
) -> DemoResult:
    """Two calls of `user_id`; the second remembers the first. See the module doc.

    `forget_history` deletes call 1's turns before call 2 (the facts stay): then
    call 2 cannot know call 1's order and the demo's checks fail, which shows
    they test the replayed history and nothing else.
    """
    from .testing import RealtimeEmulator  # the worker in examples/ never loads the emulator

    console = console or Console()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lhp-demo-") as tmp, _quiet_livekit(verbose):
        path = db_path if db_path is not None else Path(tmp) / "history.db"
        store_url = f"sqlite:///{path.resolve()}"
        seen = _Seen()
        async with RealtimeEmulator(reply=_demo_reply(seen)) as emu:
            note = "" if mode == "packed" else " (the plugin's default is packed: one item)"
            _header(
                console,
                [
                    ("caller", user_id),
                    ("store", store_url + ("" if db_path else " (temporary)")),
                    ("realtime API", f"local emulator {emu.base_url}, {_PROVIDER_LABEL[provider]}"),
                    ("agents", "Greeter → Specialist (handoff); tool remember_preference"),
                    ("replay mode", mode + note),
                ],
            )
            history = HistoryPlugin(store_url, HistoryConfig(store_url=store_url, mode=mode))
            try:
                await history.open()
                result = await _two_calls(
                    emu, history, user_id, provider, console, seen, forget_history
                )
            finally:
                await history.aclose()
    result.seconds = time.perf_counter() - started
    _footer(console, result)
    return result


async def _two_calls(
    emu: RealtimeEmulator,
    history: HistoryPlugin,
    user_id: str,
    provider: DemoProvider,
    console: Console,
    seen: _Seen,
    forget_history: bool,
) -> DemoResult:
    before = await history.store.count_turns(user_id)
    stored = "nothing stored yet" if not before else f"{_plural(before, 'turn')} stored before"
    console.rule(f"[bold]Call 1[/bold]: {stored}", align="left")
    call_1 = await _call(emu, history, user_id, provider, console, seen, _call_1)
    recorded = (await history.store.load_latest(user_id, before + 1_000))[before:]
    console.print(_recorded_table(recorded))
    facts = await history.facts(user_id)
    for f in facts:
        console.print(f"   durable fact [cyan]{escape(f.key)}[/cyan]: {escape(f.text)}")
    if forget_history:
        await _forget_turns(history, user_id)
        console.print("   [yellow]--forget-history: every stored turn deleted, facts kept[/yellow]")

    console.rule("[bold]Call 2[/bold]: same caller, new session", align="left")
    call_2 = await _call(emu, history, user_id, provider, console, seen, _call_2)
    replies = [text for role, _agent, text in call_2.transcript.messages if role == "assistant"]
    checks = _checks(emu, call_1, call_2, recorded, replies)
    return DemoResult(
        ok=all(ok for _, ok in checks),
        checks=checks,
        recorded=recorded,
        replayed=_replayed(call_2.server, call_2.loaded),
        reply=replies[-1] if replies else "",
        seconds=0.0,
        store_url=history.store.url,
    )


async def _forget_turns(history: HistoryPlugin, user_id: str) -> None:
    facts = await history.facts(user_id)
    await history.store.delete_user(user_id)
    for fact in facts:
        await history.store.save_fact(fact)


def _outside_history(instructions: str | None) -> str:
    return _HISTORY_BLOCK.sub("", instructions or "")


def _checks(
    emu: RealtimeEmulator,
    call_1: _Call,
    call_2: _Call,
    recorded: list[Turn],
    replies: list[str],
) -> list[tuple[str, bool]]:
    replayed = _replayed(call_2.server, call_2.loaded)
    agents = {t.agent_id for t in recorded}
    errors = [
        code
        for s in (call_1.server, call_2.server)
        for code in s.error_codes()
        if code not in _HARMLESS_ERRORS
    ]
    fact_text = PREFERENCE[1]
    return [
        (
            f"call 1 recorded {len(recorded)} turns, by the greeter and the specialist",
            len(recorded) >= 4 and {"greeter", "specialist"} <= agents,
        ),
        _replay_check(call_2, replayed),
        (
            f"{sum(len(s.received) for s in emu.sessions)} client events valid for the openai "
            "SDK models; no typeless item, no server error",
            emu.typeless_items == 0 and not errors and not emu.sdk_validation_errors,
        ),
        (
            "the remembered preference is in call 2's instructions",
            fact_text in (call_2.server.instructions or ""),
        ),
        _knows_call_1(call_2, replies[-1] if replies else ""),
    ]


def _knows_call_1(call_2: _Call, reply: str) -> tuple[str, bool]:
    """The order number of call 1 is nowhere in call 2 but in the replayed history
    (not in the question, not in the agent's instructions or facts): a reply
    naming it was answered from that history."""
    only_in_history = CALL_1_ORDER not in CALL_2_FIRST + _outside_history(
        call_2.server.instructions
    )
    return (
        f"call 2's reply names order {CALL_1_ORDER}, which only call 1's replayed history holds",
        only_in_history and f"order {CALL_1_ORDER}" in reply,
    )


def _replay_check(call_2: _Call, replayed: list[ReplayedItem]) -> tuple[str, bool]:
    if not call_2.loaded.item_ids:  # instructions mode: the history rides in the instructions
        return (
            "call 2's session instructions carry the earlier conversation",
            f"<{HISTORY_TAG}>" in (call_2.server.instructions or ""),
        )
    return (
        f"call 2 replayed {_plural(len(replayed), 'history item')}, each acknowledged by the server",
        len(replayed) == len(call_2.loaded.item_ids) and all(r.ack for r in replayed),
    )


def _footer(console: Console, result: DemoResult) -> None:
    console.rule("[bold]Result[/bold]", align="left")
    for text, ok in result.checks:
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        console.print(f" {mark} {escape(text)}")
    verdict = "[green]call 2 remembered call 1[/green]" if result.ok else "[red]demo FAILED[/red]"
    console.print(f" {verdict} in {result.seconds:.1f} s (store {escape(result.store_url)})")
