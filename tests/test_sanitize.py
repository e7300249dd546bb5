"""sanitize_chat_ctx: property tests over arbitrary chat contexts, and one example per rule.

Runs unchanged on every livekit release of the matrix (1.2.18 ... 1.8.x): classes that
only exist on newer releases are looked up with getattr and their strategies skipped.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import rtc
from livekit.agents import llm
from openai.types import realtime as ga_sdk
from openai.types.beta import realtime as beta_sdk
from pydantic import BaseModel

from livekit_history_plugin import sanitize as sanitize_mod
from livekit_history_plugin.dialects import create_item_event, valid_wire_id, wire_item_id
from livekit_history_plugin.sanitize import (
    DROP_REASONS,
    INSTRUCTION_ITEM_IDS,
    PART_DROP_REASONS,
    DroppedItem,
    DroppedPart,
    SanitizeResult,
    sanitize_chat_ctx,
    sanitize_chat_ctx_report,
)
from livekit_history_plugin.testing import validate_client_event

AgentHandoff: Any = getattr(llm, "AgentHandoff", None)  # livekit >= 1.3
AgentConfigUpdate: Any = getattr(llm, "AgentConfigUpdate", None)  # livekit >= 1.4.3
CacheBreakpoint: Any = getattr(llm, "CacheBreakpoint", None)  # livekit >= 1.8
Instructions: Any = getattr(
    importlib.import_module("livekit.agents.llm.chat_context"), "Instructions", None
)  # livekit >= 1.4.6 (a str subclass until 1.5, a plain object since 1.8)
generation = importlib.import_module("livekit.agents.voice.generation")

KEPT_TYPES = {"message", "function_call", "function_call_output"}
WIRE_ROLES = {"user", "assistant", "system"}
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _frame() -> rtc.AudioFrame:
    return rtc.AudioFrame.create(24000, 1, 240)


def msg(item_id: str, role: str, *content: Any) -> llm.ChatMessage:
    return llm.ChatMessage(id=item_id, role=role, content=list(content))  # type: ignore[arg-type]


def raw_msg(item_id: Any, role: Any, content: Any) -> llm.ChatMessage:
    """A message pydantic would refuse: what model_construct / attribute writes can leave."""
    return llm.ChatMessage.model_construct(id=item_id, type="message", role=role, content=content)


def call(item_id: str, call_id: str, name: str = "lookup", arguments: str = "{}") -> Any:
    return llm.FunctionCall(id=item_id, call_id=call_id, name=name, arguments=arguments)


def output(item_id: str, call_id: str, out: str = "ok") -> Any:
    return llm.FunctionCallOutput(id=item_id, call_id=call_id, output=out, is_error=False)


def report(*items: Any, keep_instructions: bool = False) -> SanitizeResult:
    return sanitize_chat_ctx_report(
        llm.ChatContext(list(items)), keep_instructions=keep_instructions
    )


def reasons(result: SanitizeResult) -> list[tuple[str | None, str]]:
    return [(d.item_id, d.reason) for d in result.dropped]


def ids(ctx: llm.ChatContext) -> list[str]:
    return [item.id for item in ctx.items]


class Bogus:
    """An item of a class livekit does not know."""

    def __init__(self, item_type: Any, item_id: Any = "bogus") -> None:
        self.type = item_type
        self.id = item_id


class Exploding:
    """Every attribute read raises."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name} for you")


class ExplodingType:
    id = "boom"

    @property
    def type(self) -> str:
        raise RuntimeError("type is broken")


# --- snapshot: a deep, comparable picture of a context, to prove nothing was mutated ----


def snapshot(value: Any, _depth: int = 0, *, with_ids: bool = True) -> Any:
    """Containers carry their identity too (``with_ids``): replacing a list counts as a change."""
    if _depth > 20:
        return ("deep",)

    def sub(v: Any) -> Any:
        return snapshot(v, _depth + 1, with_ids=with_ids)

    if isinstance(value, BaseModel):
        return (type(value).__name__, {k: sub(v) for k, v in vars(value).items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, id(value) if with_ids else 0, [sub(v) for v in value])
    if isinstance(value, dict):
        return ("dict", id(value) if with_ids else 0, {repr(k): sub(v) for k, v in value.items()})
    if isinstance(value, rtc.AudioFrame):
        return ("frame", bytes(value.data))
    if isinstance(value, (str, bytes, int, bool, type(None))):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", repr(value))
    if hasattr(value, "__dict__"):
        return ("obj", type(value).__name__, id(value), sub(vars(value)))
    return ("obj", type(value).__name__, id(value))


def ctx_snapshot(ctx: llm.ChatContext) -> Any:
    return (id(ctx.items), [id(item) for item in ctx.items], snapshot(ctx.items))


# --- strategies ---------------------------------------------------------------------

HUGE = "x" * 1_000_000  # for example tests; strategies use a shorter one to keep reports readable
LONG = "y" * 20_000
item_ids = st.sampled_from(
    ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "item_" + "z" * 200, *sorted(INSTRUCTION_ITEM_IDS)]
)
call_ids = st.sampled_from(["c1", "c2", "c3", "call_" + "q" * 60])
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\n\t ", "hello", "\ud800", "a\udc00b", "\ud83d\ude00"]),
    st.just(LONG),
)


def _instructions_parts() -> list[st.SearchStrategy[Any]]:
    if Instructions is None:
        return []
    if issubclass(Instructions, str):  # 1.4.6 - 1.5.x
        return [st.builds(lambda t: Instructions(t, text=t + "!"), texts)]
    return [st.builds(lambda t: Instructions(t), texts)]  # 1.8+: not a str


content_parts = st.one_of(
    texts,
    st.builds(
        lambda t: llm.AudioContent(frame=[_frame()], transcript=t),
        st.one_of(st.none(), texts),
    ),
    st.just(llm.ImageContent(image="https://example.com/cat.png")),
    *([st.just(CacheBreakpoint())] if CacheBreakpoint is not None else []),
    *_instructions_parts(),
)
roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "", None, 7])


garbage_parts = st.sampled_from([None, 3, 1.5, b"bytes", ["nested"], {"text": "dict"}, object()])
wire_roles = st.sampled_from(["user", "assistant", "system", "developer"])


@st.composite
def messages(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # plain text, validated by livekit's model
        parts = draw(st.lists(texts, max_size=3))
        return llm.ChatMessage(id=draw(item_ids), role=draw(wire_roles), content=parts)
    if kind == 1:  # any content livekit itself can hold (audio, images, markers ...)
        return raw_msg(draw(item_ids), draw(wire_roles), draw(st.lists(content_parts, max_size=4)))
    parts = draw(st.lists(st.one_of(content_parts, garbage_parts), max_size=4))
    content = draw(st.one_of(st.just(parts), st.just(tuple(parts)), texts, st.none(), st.just(5)))
    item_id = draw(st.one_of(item_ids, st.sampled_from([None, "", 5])))
    return raw_msg(item_id, draw(roles), content)


garbage_str = st.one_of(texts, st.sampled_from([None, 5, b"x"]))


@st.composite
def function_calls(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)):
        return call(draw(item_ids), draw(call_ids), draw(st.sampled_from(["lookup", "book"])))
    return llm.FunctionCall.model_construct(
        id=draw(item_ids),
        type="function_call",
        call_id=draw(st.one_of(call_ids, garbage_str)),
        name=draw(st.one_of(st.just("lookup"), garbage_str)),
        arguments=draw(st.one_of(st.just("{}"), garbage_str)),
    )


@st.composite
def function_outputs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)):
        return output(draw(item_ids), draw(call_ids), draw(texts))
    return llm.FunctionCallOutput.model_construct(
        id=draw(item_ids),
        type="function_call_output",
        call_id=draw(st.one_of(call_ids, garbage_str)),
        output=draw(garbage_str),
        is_error=False,
    )


def _internal_items() -> list[st.SearchStrategy[Any]]:
    found: list[st.SearchStrategy[Any]] = []
    if AgentHandoff is not None:
        found.append(st.builds(lambda i: AgentHandoff(id=i, new_agent_id="agent_b"), item_ids))
    if AgentConfigUpdate is not None:
        found.append(st.builds(lambda i: AgentConfigUpdate(id=i, instructions="x"), item_ids))
    return found


bogus_items = st.one_of(
    st.builds(
        Bogus,
        st.sampled_from(
            [None, "", "message", "function_call", "agent_handoff", "agent_config_update", "?", 5]
        ),
        st.one_of(item_ids, st.none()),
    ),
    st.sampled_from([None, 42, "a string item", {"type": "message", "id": "d1"}]),
    st.builds(Exploding),
    st.builds(ExplodingType),
)

# weighted towards the items a real context holds; the rest is there to be dropped
chat_items = st.one_of(
    messages(),
    messages(),
    messages(),
    function_calls(),
    function_calls(),
    function_outputs(),
    function_outputs(),
    bogus_items,
    *_internal_items(),
)


@st.composite
def call_with_output(draw: st.DrawFn) -> list[Any]:
    """A tool round trip as livekit records it: the call, then its output."""
    n = draw(st.integers(0, 99))
    return [call(f"fc{n}", f"call{n}"), output(f"fo{n}", f"call{n}", draw(texts))]


@st.composite
def chat_contexts(draw: st.DrawFn) -> llm.ChatContext:
    chunks = draw(
        st.lists(st.one_of(chat_items.map(lambda i: [i]), call_with_output()), max_size=12)
    )
    return llm.ChatContext([item for chunk in chunks for item in chunk])


# --- properties ---------------------------------------------------------------------


def _is_subsequence(sub: list[Any], full: list[Any]) -> bool:
    it = iter(full)
    return all(any(x == y for y in it) for x in sub)


def _source_ids(ctx: llm.ChatContext) -> list[Any]:
    """Source ids as the sanitizer keeps them: ids the API rejects map to wire ids."""
    out: list[Any] = []
    for item in ctx.items:
        item_id = getattr(item, "id", None) if not isinstance(item, Exploding) else None
        out.append(wire_item_id(item_id) if isinstance(item_id, str) and item_id else item_id)
    return out


def check_output(ctx: llm.ChatContext, result: SanitizeResult, *, keep_instructions: bool) -> None:
    out = result.chat_ctx
    assert out is not ctx
    out_ids = ids(out)
    assert len(set(out_ids)) == len(out_ids), "duplicate ids survived"
    assert _is_subsequence(out_ids, _source_ids(ctx)), "order changed or ids invented"
    assert len(out.items) + len(result.dropped) == len(ctx.items)
    assert all(d.reason in DROP_REASONS for d in result.dropped)
    assert all(p.reason in PART_DROP_REASONS for p in result.dropped_parts)
    assert set(result.changed) <= set(out_ids)
    # every id the server sees matches ^[a-zA-Z0-9_-]+$, at most 32 chars (D6)
    assert all(valid_wire_id(i) for i in out_ids)
    assert {new for _old, new in result.renamed} <= set(result.changed)

    called: set[str] = set()
    answered: set[str] = set()
    for item in out.items:
        assert item.type in KEPT_TYPES
        assert isinstance(item, (llm.ChatMessage, llm.FunctionCall, llm.FunctionCallOutput))
        assert isinstance(item.id, str) and item.id
        if item.type == "message":
            assert item.role in WIRE_ROLES
            assert isinstance(item.content, list) and item.content
            for part in item.content:
                assert isinstance(part, str) and part.strip()
                part.encode("utf-8")  # no lone surrogates
            if not keep_instructions:
                assert item.id not in INSTRUCTION_ITEM_IDS
        elif item.type == "function_call":
            assert item.call_id and item.call_id not in called
            assert valid_wire_id(item.call_id)
            assert isinstance(item.name, str) and isinstance(item.arguments, str)
            called.add(item.call_id)
        else:
            assert item.call_id in called, "function_call_output before/without its call"
            assert item.call_id not in answered
            assert isinstance(item.output, str)
            answered.add(item.call_id)
        # the result holds real livekit items, not just look-alikes
        type(item).model_validate(item.model_dump())


@SETTINGS
@given(ctx=chat_contexts(), keep_instructions=st.booleans())
def test_property_sanitize(ctx: llm.ChatContext, keep_instructions: bool) -> None:
    before = ctx_snapshot(ctx)
    result = sanitize_chat_ctx_report(ctx, keep_instructions=keep_instructions)
    assert ctx_snapshot(ctx) == before, "input was mutated"
    check_output(ctx, result, keep_instructions=keep_instructions)

    # idempotent: a second pass keeps the very same items and reports nothing
    again = sanitize_chat_ctx_report(result.chat_ctx, keep_instructions=keep_instructions)
    assert [id(i) for i in again.chat_ctx.items] == [id(i) for i in result.chat_ctx.items]
    assert again.dropped == () and again.changed == () and again.dropped_parts == ()
    plain = sanitize_chat_ctx(ctx, keep_instructions=keep_instructions)
    assert snapshot(plain.items, with_ids=False) == snapshot(result.chat_ctx.items, with_ids=False)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(ctx=chat_contexts())
def test_property_output_converts_and_validates_with_sdk(ctx: llm.ChatContext) -> None:
    """Whatever went in, every item that comes out makes an event the SDK models accept."""
    previous: str | None = None
    for item in sanitize_chat_ctx(ctx).items:
        for dialect, model in (
            ("beta", beta_sdk.ConversationItemCreateEvent),
            ("ga", ga_sdk.ConversationItemCreateEvent),
        ):
            event = create_item_event(
                item, dialect=dialect, event_id="evt_1", previous_item_id=previous
            )
            assert model.model_validate(event).model_dump(mode="json", exclude_unset=True) == event
        previous = item.id


# --- one example per rule ---------------------------------------------------------


@pytest.mark.skipif(AgentHandoff is None, reason="livekit < 1.3 has no AgentHandoff")
def test_drops_agent_handoff() -> None:
    r = report(msg("m1", "user", "hi"), AgentHandoff(id="h1", new_agent_id="b"))
    assert ids(r.chat_ctx) == ["m1"]
    assert r.dropped == (DroppedItem("h1", "agent_handoff", "agent_handoff"),)


@pytest.mark.skipif(AgentConfigUpdate is None, reason="livekit < 1.4.3 has no AgentConfigUpdate")
def test_drops_agent_config_update() -> None:
    r = report(AgentConfigUpdate(id="u1", instructions="new"), msg("m1", "user", "hi"))
    assert ids(r.chat_ctx) == ["m1"]
    assert r.dropped == (DroppedItem("u1", "agent_config_update", "agent_config_update"),)


def test_drops_internal_types_by_type_string_on_any_release() -> None:
    # what an AgentHandoff looks like to code that cannot import the class (livekit 1.2)
    r = report(Bogus("agent_handoff", "h1"), Bogus("agent_config_update", "u1"))
    assert reasons(r) == [("h1", "agent_handoff"), ("u1", "agent_config_update")]


def test_drops_missing_and_unknown_types() -> None:
    r = report(
        Bogus(None, "a"),
        object(),
        None,
        ExplodingType(),
        Exploding(),
        Bogus("reasoning", "b"),
        Bogus(5, "c"),
        Bogus("", "d"),
        {"type": "message", "id": "e"},
        msg("m1", "user", "kept"),
    )
    assert ids(r.chat_ctx) == ["m1"]
    assert reasons(r) == [
        ("a", "missing_type"),
        (None, "missing_type"),
        (None, "missing_type"),
        ("boom", "missing_type"),
        (None, "missing_type"),
        ("b", "unknown_type"),
        ("c", "unknown_type"),
        ("d", "unknown_type"),
        (None, "missing_type"),
    ]
    assert r.dropped[5].item_type == "reasoning" and r.dropped[6].item_type is None


def test_drops_lookalikes_of_kept_types() -> None:
    r = report(Bogus("message", "a"), Bogus("function_call", "b"))
    assert reasons(r) == [("a", "unknown_item_class"), ("b", "unknown_item_class")]


def test_drops_items_without_id() -> None:
    r = report(raw_msg(None, "user", ["a"]), raw_msg("", "user", ["b"]), raw_msg(5, "user", ["c"]))
    assert r.chat_ctx.items == []
    assert reasons(r) == [(None, "missing_id")] * 3


def test_drops_empty_messages() -> None:
    r = report(
        msg("a", "user"),
        msg("b", "assistant", "", "  \n"),
        raw_msg("c", "user", None),
        raw_msg("d", "user", [None, 4]),
        msg("e", "assistant", llm.AudioContent(frame=[_frame()], transcript=None)),
        msg("f", "user", llm.ImageContent(image="https://example.com/x.png")),
        msg("g", "user", "kept"),
    )
    assert ids(r.chat_ctx) == ["g"]
    assert {reason for _, reason in reasons(r)} == {"empty_message"}
    assert [p.reason for p in r.dropped_parts] == [
        "empty_text",
        "empty_text",
        "not_text",
        "not_text",
        "audio_without_transcript",
        "image_not_supported",
    ]


def test_removes_livekit_instruction_item_as_livekit_writes_it() -> None:
    ctx = llm.ChatContext([msg("m1", "user", "hi")])
    generation.update_instructions(ctx, instructions="You are a bot.", add_if_missing=True)
    assert ctx.items[0].id == generation.INSTRUCTIONS_MESSAGE_ID  # livekit's own marker
    r = sanitize_chat_ctx_report(ctx)
    assert ids(r.chat_ctx) == ["m1"]
    assert reasons(r) == [(generation.INSTRUCTIONS_MESSAGE_ID, "instructions")]
    kept = sanitize_chat_ctx_report(ctx, keep_instructions=True)
    # kept, under a wire id: the real server refuses the dots of livekit's marker id
    wire = wire_item_id(generation.INSTRUCTIONS_MESSAGE_ID)
    assert ids(kept.chat_ctx) == [wire, "m1"]
    assert kept.renamed == ((generation.INSTRUCTIONS_MESSAGE_ID, wire),)


@pytest.mark.skipif(
    Instructions is None
    or issubclass(Instructions, str)
    # 1.6 - 1.7 have a non-str Instructions without it
    or "dynamic" not in inspect.signature(Instructions).parameters,
    reason="Instructions.dynamic exists since livekit 1.8",
)
def test_removes_dynamic_instructions_message() -> None:
    ctx = llm.ChatContext([msg("m1", "user", "hi")])
    generation.update_instructions(
        ctx, instructions=Instructions("static", dynamic="caller: +33"), add_if_missing=True
    )
    assert len(ctx.items) == 3
    r = sanitize_chat_ctx_report(ctx)
    assert ids(r.chat_ctx) == ["m1"]
    assert [reason for _, reason in reasons(r)] == ["instructions", "instructions"]


@pytest.mark.skipif(
    not hasattr(generation, "update_expressive_instructions"), reason="livekit >= 1.8"
)
def test_removes_expressive_instructions_message() -> None:
    ctx = llm.ChatContext([msg("m1", "user", "hi")])
    generation.update_expressive_instructions(ctx, text="use <expr/> tags")
    r = sanitize_chat_ctx_report(ctx)
    assert ids(r.chat_ctx) == ["m1"]


def test_instruction_ids_include_this_release_constants() -> None:
    assert generation.INSTRUCTIONS_MESSAGE_ID in INSTRUCTION_ITEM_IDS
    assert "lk.agent_task.instructions" in INSTRUCTION_ITEM_IDS
    chat_context = importlib.import_module("livekit.agents.llm.chat_context")
    for module, name in (
        (chat_context, "DYNAMIC_INSTRUCTIONS_MESSAGE_ID"),
        (generation, "EXPRESSIVE_INSTRUCTIONS_MESSAGE_ID"),
    ):
        if hasattr(module, name):
            assert getattr(module, name) in INSTRUCTION_ITEM_IDS


def test_keeps_user_system_messages_that_are_not_livekit_instructions() -> None:
    # unlike ChatContext.copy(exclude_instructions=True), which drops every system message
    r = report(msg("note", "system", "caller was transferred"), msg("m1", "user", "hi"))
    assert ids(r.chat_ctx) == ["note", "m1"] and r.dropped == ()
    assert ids(llm.ChatContext(list(r.chat_ctx.items)).copy(exclude_instructions=True)) == ["m1"]


def test_orphan_function_outputs_are_dropped_calls_without_output_kept() -> None:
    r = report(
        output("o0", "c1"),  # before its call
        call("f1", "c1"),
        output("o1", "c1"),
        output("o2", "nope"),  # no call at all
        call("f2", "c2"),  # no output: valid on the server, kept
    )
    assert ids(r.chat_ctx) == ["f1", "o1", "f2"]
    assert reasons(r) == [
        ("o0", "orphan_function_call_output"),
        ("o2", "orphan_function_call_output"),
    ]


def test_output_of_a_dropped_call_is_an_orphan() -> None:
    bad_call = llm.FunctionCall.model_construct(
        id="f1", type="function_call", call_id="c1", name=None, arguments="{}"
    )
    r = report(bad_call, output("o1", "c1"))
    assert reasons(r) == [("f1", "invalid_function_call"), ("o1", "orphan_function_call_output")]


def test_invalid_function_items() -> None:
    r = report(
        llm.FunctionCall.model_construct(
            id="f1", type="function_call", call_id="", name="n", arguments="{}"
        ),
        llm.FunctionCall.model_construct(
            id="f2", type="function_call", call_id="c", name="n", arguments={"a": 1}
        ),
        call("f3", "c3"),
        llm.FunctionCallOutput.model_construct(
            id="o1", type="function_call_output", call_id="c3", output=None, is_error=False
        ),
    )
    assert reasons(r) == [
        ("f1", "invalid_function_call"),
        ("f2", "invalid_function_call"),
        ("o1", "invalid_function_call_output"),
    ]


def test_duplicate_call_ids_keep_the_first() -> None:
    r = report(call("f1", "c1"), call("f2", "c1"), output("o1", "c1"), output("o2", "c1"))
    assert ids(r.chat_ctx) == ["f1", "o1"]
    assert reasons(r) == [("f2", "duplicate_call_id"), ("o2", "duplicate_call_id")]


def test_duplicate_ids_keep_the_first_valid() -> None:
    r = report(
        msg("a", "user", "first"),
        msg("a", "assistant", "second"),
        call("a", "c1"),
        msg("b", "user"),  # empty: dropped, so it does not claim the id
        msg("b", "user", "real b"),
    )
    assert [(i.id, i.content) for i in r.chat_ctx.items] == [("a", ["first"]), ("b", ["real b"])]
    assert reasons(r) == [("a", "duplicate_id"), ("a", "duplicate_id"), ("b", "empty_message")]


def test_invalid_roles_are_dropped() -> None:
    r = report(raw_msg("a", "tool", ["x"]), raw_msg("b", None, ["x"]), raw_msg("c", 3, ["x"]))
    assert reasons(r) == [("a", "invalid_role"), ("b", "invalid_role"), ("c", "invalid_role")]


def test_developer_becomes_system_in_a_copy() -> None:
    original = msg("d1", "developer", "rules")
    r = report(original)
    (out,) = r.chat_ctx.items
    assert out.role == "system" and out.content == ["rules"] and out is not original
    assert original.role == "developer"
    assert r.changed == ("d1",)


def test_assistant_audio_becomes_its_transcript() -> None:
    audio = llm.AudioContent(frame=[_frame()], transcript="Bonjour !")
    original = msg("a1", "assistant", audio, "and text")
    r = report(original)
    (out,) = r.chat_ctx.items
    assert out.content == ["Bonjour !", "and text"]
    assert original.content[0] is audio  # input untouched
    assert r.changed == ("a1",) and r.dropped_parts == ()


def test_user_audio_becomes_its_transcript_too() -> None:
    r = report(msg("u1", "user", llm.AudioContent(frame=[_frame()], transcript="hello")))
    assert r.chat_ctx.items[0].content == ["hello"]


def test_images_are_dropped_with_a_reason() -> None:
    r = report(msg("u1", "user", "look", llm.ImageContent(image="https://example.com/x.png")))
    assert r.chat_ctx.items[0].content == ["look"]
    assert r.dropped_parts == (DroppedPart("u1", "image_content", "image_not_supported"),)
    assert r.changed == ("u1",)


def test_non_string_parts_are_dropped() -> None:
    r = report(raw_msg("u1", "user", ["a", None, 3, b"b", {"text": "c"}, ["d"]]))
    assert r.chat_ctx.items[0].content == ["a"]
    assert [p.reason for p in r.dropped_parts] == ["not_text"] * 5


def test_content_that_is_a_bare_string_or_tuple() -> None:
    r = report(raw_msg("u1", "user", "bare"), raw_msg("u2", "user", ("t1", "t2")))
    assert [i.content for i in r.chat_ctx.items] == [["bare"], ["t1", "t2"]]
    assert r.changed == ("u1", "u2")


def test_lone_surrogates_are_replaced() -> None:
    r = report(
        msg("u1", "user", "a\ud800b", "ok \ud83d\ude00"), call("f1", "c1", arguments="\udc00")
    )
    message, fcall = r.chat_ctx.items
    assert message.content == ["a\ufffdb", "ok \U0001f600"]
    assert fcall.arguments == "\ufffd"
    assert r.changed == ("u1", "f1")


def test_huge_text_is_kept_unchanged() -> None:
    original = msg("u1", "user", HUGE)
    r = report(original)
    assert r.chat_ctx.items[0] is original and r.changed == ()


@pytest.mark.skipif(CacheBreakpoint is None, reason="livekit >= 1.8")
def test_cache_breakpoints_are_dropped() -> None:
    r = report(msg("s1", "system", "static", CacheBreakpoint()))
    assert r.chat_ctx.items[0].content == ["static"]
    assert r.dropped_parts[0].reason == "cache_breakpoint"


@pytest.mark.skipif(Instructions is None, reason="livekit >= 1.4.6")
def test_instructions_objects_in_content_become_text() -> None:
    if issubclass(Instructions, str):  # 1.4.6-1.5: already text, kept as is
        part = Instructions("voice variant", text="text variant")
        original = msg("s1", "system", part)
        r = report(original)
        assert r.chat_ctx.items[0] is original
    else:  # 1.8: not a str, rendered as livekit's realtime converter does (str())
        original = raw_msg("s1", "system", [Instructions("common", audio="a")])
        r = report(original)
        assert r.chat_ctx.items[0].content == ["common"]
        assert r.changed == ("s1",)


def test_unchanged_items_are_shared_and_order_kept() -> None:
    items = [
        msg("m1", "user", "a"),
        call("f1", "c1"),
        output("o1", "c1"),
        msg("m2", "assistant", "b"),
    ]
    r = report(*items)
    assert [id(i) for i in r.chat_ctx.items] == [id(i) for i in items]
    assert r.dropped == () and r.changed == ()


def test_read_only_context_is_accepted() -> None:
    ro_cls = importlib.import_module("livekit.agents.llm.chat_context")._ReadOnlyChatContext
    ro = ro_cls([msg("m1", "user", "a"), msg("m2", "user")])
    out = sanitize_chat_ctx(ro)
    assert ids(out) == ["m1"] and not out.readonly
    out.items.append(msg("m3", "user", "c"))  # a normal, writable context


def test_unreadable_context_gives_an_empty_one() -> None:
    class NoItems:
        @property
        def items(self) -> Any:
            raise RuntimeError("gone")

    assert sanitize_chat_ctx(NoItems()).items == []  # type: ignore[arg-type]
    assert sanitize_chat_ctx(None).items == []  # type: ignore[arg-type]


def test_internal_error_drops_the_item_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(sanitize_mod, "_clean_function_call", broken)
    r = report(msg("m1", "user", "a"), call("f1", "c1"))
    assert ids(r.chat_ctx) == ["m1"]
    assert reasons(r) == [("f1", "unprocessable")]


def test_one_debug_line_per_drop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="livekit.plugins.history")
    r = report(
        Bogus("agent_handoff", "h1"),
        msg("m1", "user", "kept", llm.ImageContent(image="https://example.com/x.png")),
        output("o1", "zz"),
    )
    lines = [rec for rec in caplog.records if rec.name == "livekit.plugins.history"]
    assert (len(r.dropped), len(r.dropped_parts)) == (2, 1)
    assert len(lines) == 3 and all(rec.levelno == logging.DEBUG for rec in lines)
    messages = [rec.getMessage() for rec in lines]
    assert "agent_handoff" in messages[0] and "'h1'" in messages[0]
    assert "image_not_supported" in messages[1] and "'m1'" in messages[1]
    assert "orphan_function_call_output" in messages[2]


def test_drop_reasons_are_documented() -> None:
    assert len(set(DROP_REASONS)) == len(DROP_REASONS) == 15
    assert set(PART_DROP_REASONS) == {
        "image_not_supported",
        "audio_without_transcript",
        "cache_breakpoint",
        "not_text",
        "empty_text",
    }


def test_ids_the_server_refuses_are_mapped_to_stable_wire_ids() -> None:
    # D6: item.id must match ^[a-zA-Z0-9_-]+$ (livekit/agents#1717), call ids too
    # (livekit/agents#5652); ids such as these come from stored history of another provider
    ctx = llm.ChatContext(
        [
            msg("a.b", "user", "hi"),
            llm.FunctionCall(id="x:y", call_id="fc/1", name="lookup", arguments="{}"),
            llm.FunctionCallOutput(id="out 1", call_id="fc/1", output="ok", is_error=False),
            msg("ok_id-1", "assistant", "done"),
        ]
    )
    first = sanitize_chat_ctx_report(ctx)
    second = sanitize_chat_ctx_report(ctx)
    out = first.chat_ctx.items
    assert [i.id for i in out] == [i.id for i in second.chat_ctx.items]  # stable
    assert all(valid_wire_id(i.id) for i in out)
    assert out[3].id == "ok_id-1" and out[3] is ctx.items[3]
    call, output = out[1], out[2]
    assert isinstance(call, llm.FunctionCall) and isinstance(output, llm.FunctionCallOutput)
    assert call.call_id == output.call_id != "fc/1" and valid_wire_id(call.call_id)
    assert dict(first.renamed) == {"a.b": out[0].id, "x:y": call.id, "out 1": output.id}
    for item in out:
        event = create_item_event(item, dialect="ga", event_id="e1", previous_item_id=None)
        validate_client_event(event, "ga")
