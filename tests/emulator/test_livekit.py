"""The REAL livekit-plugins-openai client against the emulator, on every code path the
installed livekit release has (run in the dev venv and in the matrix venvs)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, llm
from livekit.agents import __version__ as LIVEKIT_VERSION
from livekit.plugins.openai import realtime as lk_realtime

from livekit_history_plugin.testing import RealtimeEmulator, validate_client_event

HAS_BETA_CLASS = hasattr(lk_realtime, "RealtimeModelBeta")  # livekit <= 1.4
RELEASE = tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])
# livekit 1.0 - 1.1: one beta-only class, no `modalities` option (text and audio), no
# AgentSession.run, no reconnect on 1.0, no diff of changed content (DiffOps.to_update)
HAS_MODALITIES = "modalities" in inspect.signature(lk_realtime.RealtimeModel).parameters
HAS_RUN = hasattr(AgentSession, "run")
HAS_RECONNECT = hasattr(llm, "RealtimeSessionReconnectedEvent")
HAS_CONTENT_UPDATE = "to_update" in getattr(llm.utils.DiffOps, "__dataclass_fields__", {})

# (emulator.realtime_model kind, dialect the emulator speaks on it)
PATHS: list[tuple[str, str]]
if RELEASE < (1, 2):
    PATHS = [("azure", "beta"), ("openai", "beta")]
else:
    PATHS = [("azure", "beta"), ("openai", "ga")]
    PATHS += [("openai-beta", "beta")] if HAS_BETA_CLASS else [("azure-ga", "ga")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # an api version in the environment would switch the Azure path under test
    for name in ("OPENAI_API_VERSION", "AZURE_OPENAI_ENDPOINT", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=PATHS, ids=[k for k, _ in PATHS])
def path(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def model(emulator: RealtimeEmulator, path: tuple[str, str]) -> AsyncIterator[Any]:
    # OpenAI refuses the retired beta shape since 2026-05-12 (the emulator too, unless
    # told to serve it): these tests exercise livekit's beta client itself
    emulator.openai_beta = path[0].startswith("openai") and path[1] == "beta"
    m = emulator.realtime_model(path[0], modalities=["text"])  # type: ignore[arg-type]
    yield m
    await m.aclose()


def ctx_of(*items: Any) -> llm.ChatContext:
    return llm.ChatContext(list(items))


def server_view(emulator: RealtimeEmulator) -> list[tuple[str, str, str]]:
    return [(i["id"], str(i.get("role")), _text(i)) for i in emulator.last_session.items]


def _text(item: dict[str, Any]) -> str:
    return " ".join(
        str(p.get("text") or p.get("transcript") or "") for p in item.get("content") or []
    )


def unexpected_errors(session: Any) -> list[str]:
    # livekit <= 1.4 sends response.cancel on interrupt / close even when nothing is
    # active; the server answers "Cancellation failed", which livekit ignores by design
    return [c for c in session.error_codes() if c != "response_cancel_not_active"]


def client_view(session: Any) -> list[tuple[str, str, str]]:
    return [
        (i.id, i.role, " ".join(c for c in i.content if isinstance(c, str)))
        for i in session.chat_ctx.items
    ]


async def test_update_chat_ctx_agrees_with_the_server(
    emulator: RealtimeEmulator, model: Any, path: tuple[str, str]
) -> None:
    session = model.session()
    try:
        s = await emulator.wait_for_session()
        assert s.dialect == path[1]
        ctx = ctx_of(
            llm.ChatMessage(id="m1", role="user", content=["my name is Ada"]),
            llm.ChatMessage(id="m2", role="assistant", content=["hello Ada"]),
            llm.ChatMessage(id="m3", role="user", content=["what is my name?"]),
        )
        await asyncio.wait_for(session.update_chat_ctx(ctx), 10)
        assert server_view(emulator) == client_view(session)
        assert [i for i, _, _ in server_view(emulator)] == ["m1", "m2", "m3"]

        # remove one, edit one, add one
        ctx2 = session.chat_ctx.copy()
        ctx2.items.pop(0)
        ctx2.items[0] = llm.ChatMessage(id="m2", role="assistant", content=["hi Ada!"])
        ctx2.add_message(role="user", content="thanks", id="m4")
        await asyncio.wait_for(session.update_chat_ctx(ctx2), 10)
        assert server_view(emulator) == client_view(session)
        assert server_view(emulator) == [
            ("m2", "assistant", "hi Ada!" if HAS_CONTENT_UPDATE else "hello Ada"),
            ("m3", "user", "what is my name?"),
            ("m4", "user", "thanks"),
        ]
        assert unexpected_errors(s) == []
        for received in s.received:
            validate_client_event(received.event, s.dialect)
    finally:
        await session.aclose()


async def test_generate_reply_sees_the_history(
    emulator: RealtimeEmulator, model: Any, path: tuple[str, str]
) -> None:
    session = model.session()
    try:
        await emulator.wait_for_session()
        ctx = ctx_of(
            llm.ChatMessage(id="m1", role="user", content=["first"]),
            llm.ChatMessage(id="m2", role="assistant", content=["ok"]),
            llm.ChatMessage(id="m3", role="user", content=["second"]),
        )
        await asyncio.wait_for(session.update_chat_ctx(ctx), 10)
        generation = await asyncio.wait_for(session.generate_reply(), 10)
        text = ""
        async for message in generation.message_stream:
            async for chunk in message.text_stream:
                text += chunk
        assert text == "I see 3 earlier messages. Last user message: second"
        [record] = emulator.last_session.responses
        assert record.modalities == (("text",) if HAS_MODALITIES else ("text", "audio"))
        assert [i["id"] for i in record.conversation] == ["m1", "m2", "m3"]
        # livekit (all releases) asks for the reply with metadata.client_event_id
        assert record.metadata == {"client_event_id": record.client_event_id}
        # livekit 1.1 fills in an audio reply's transcript only at response.done; 1.0
        # never does (its mirror keeps the reply's item empty)
        reply = (record.item_id, "assistant", text if RELEASE >= (1, 1) else "")
        await emulator.wait_until(lambda: client_view(session)[3:] == [reply])
        assert len(client_view(session)) == 4
    finally:
        await session.aclose()


async def test_agent_session_text_mode(
    emulator: RealtimeEmulator, model: Any, path: tuple[str, str]
) -> None:
    agent_session: AgentSession = AgentSession(llm=model)
    try:  # not `async with`: AgentSession is no context manager before 1.2
        await agent_session.start(Agent(instructions="You are the test agent."))
        if HAS_RUN:
            result = await asyncio.wait_for(agent_session.run(user_input="hello"), 20)
            messages = [
                e.item
                for e in result.events
                if getattr(getattr(e, "item", None), "role", None) == "assistant"
            ]
            assert [m.text_content for m in messages] == [
                "I see 1 earlier messages. Last user message: hello"
            ]
        else:
            await asyncio.wait_for(agent_session.generate_reply(user_input="hello"), 20)
    finally:
        await agent_session.aclose()
    s = emulator.last_session
    assert s.dialect == path[1]
    assert s.instructions == "You are the test agent."
    assert emulator.responses[-1].instructions == "You are the test agent."
    assert s.texts() == [
        ("user", "hello"),
        ("assistant", "I see 1 earlier messages. Last user message: hello"),
    ]
    assert unexpected_errors(s) == []
    # every event this livekit release sent validates against the SDK models
    assert [f.message for f in emulator.sdk_validation_errors] == []


def test_model_kinds_this_release_lacks(emulator: RealtimeEmulator) -> None:
    missing = "azure-ga" if HAS_BETA_CLASS else "openai-beta"
    with pytest.raises(NotImplementedError):
        emulator.realtime_model(missing)  # type: ignore[arg-type]


@pytest.mark.skipif(not HAS_RECONNECT, reason="livekit 1.0 has no reconnect")
async def test_reconnect_replays_the_conversation(
    emulator: RealtimeEmulator, model: Any, path: tuple[str, str]
) -> None:
    session = model.session()
    reconnected = asyncio.Event()
    session.on("session_reconnected", lambda *_: reconnected.set())
    try:
        first = await emulator.wait_for_session()
        ctx = ctx_of(
            llm.ChatMessage(id="m1", role="user", content=["one"]),
            llm.ChatMessage(id="m2", role="assistant", content=["two"]),
        )
        await asyncio.wait_for(session.update_chat_ctx(ctx), 10)
        # the server drops the socket right after the next client event
        emulator.faults.disconnect_after = len(first.received) + 1
        await session.update_instructions("new instructions")
        second = await emulator.wait_for_session(2, timeout=10)
        await asyncio.wait_for(reconnected.wait(), 10)
        await emulator.wait_until(lambda: second.item_ids == ["m1", "m2"], 10)
        assert first.closed and emulator.faults.disconnect_after is None
        assert unexpected_errors(second) == []
        # and again, as at the server's max session duration
        await emulator.close_all(session_expired=True)
        third = await emulator.wait_for_session(3, timeout=10)
        await emulator.wait_until(lambda: third.item_ids == ["m1", "m2"], 10)
        assert third.instructions == "new instructions"
    finally:
        await session.aclose()


def _beta_sends_handoff_items() -> bool:
    """livekit 1.3 - 1.4.5: the beta session's update_chat_ctx keeps AgentHandoff items
    (1.4.6 filters them, like the GA session always did)."""
    if not HAS_BETA_CLASS or not hasattr(llm, "AgentHandoff"):
        return False
    source = inspect.getsource(lk_realtime.RealtimeSessionBeta.update_chat_ctx)
    return "exclude_handoff" not in source


@pytest.mark.skipif(
    not _beta_sends_handoff_items(),
    reason="needs a livekit release whose beta session sends AgentHandoff items (1.3 - 1.4.5)",
)
async def test_documented_bug_handoff_item_on_azure_beta(emulator: RealtimeEmulator) -> None:
    """livekit <= 1.4 `with_azure` sends AgentHandoff items without `type`: Azure answers
    missing_required_parameter, and the next item, anchored on it, is refused too."""
    model = emulator.realtime_model("azure", modalities=["text"])
    session = model.session()
    update: asyncio.Task[None] | None = None
    try:
        s = await emulator.wait_for_session()
        ctx = ctx_of(
            llm.ChatMessage(id="m1", role="user", content=["hi"]),
            llm.AgentHandoff(id="h1", old_agent_id="a", new_agent_id="b"),
            llm.ChatMessage(id="m2", role="assistant", content=["hello from b"]),
        )
        # livekit never settles the refused items: its update stalls until its own 5 s timeout
        update = asyncio.ensure_future(session.update_chat_ctx(ctx))
        await emulator.wait_until(lambda: len(s.errors) >= 2, 10)
        assert [
            (e["error"]["code"], e["error"]["param"], e["error"]["message"]) for e in s.errors
        ] == [
            ("missing_required_parameter", "item.type", "Missing required parameter: 'item.type'."),
            (
                "item_create_invalid_previous_item_id",
                None,
                "Error adding item: the previous item with id 'h1' does not exist.",
            ),
        ]
        assert emulator.typeless_items == 1
        assert s.item_ids == ["m1"]  # the valid assistant message was lost
        typeless = s.received_of("conversation.item.create")[1]
        with pytest.raises(ValueError, match="item.type"):
            validate_client_event(typeless, "beta")
    finally:
        if update is not None:
            update.cancel()
            await asyncio.gather(update, return_exceptions=True)
        await session.aclose()
        await model.aclose()
