"""Which adapter a session gets, and what happens outside the tested releases.

The dispatch is pure (`compat.releases.dispatch`): its unit tests fake the
version strings and session classes. The rest runs on the installed release's
real livekit client against the emulator: every path gets its full adapter; a
faked untested release or an unknown session class runs sanitizer-only with
exactly one warning and nothing half-installed; and what 1.0 - 1.1 do
differently (no reconnect on 1.0, the text-mode recovery's silent audio item).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

import pytest
from livekit.agents import llm
from matrix_helpers import HAS_RECONNECT

from livekit_history_plugin import compat, wrap_realtime_model
from livekit_history_plugin.compat import (
    TESTED_RELEASES,
    SanitizerOnly,
    adapter_of,
    sanitizer_only_of,
)
from livekit_history_plugin.compat.releases import (
    AGENTS,
    PLUGIN,
    ROUTES,
    dispatch,
    parse_release,
)
from livekit_history_plugin.testing import RealtimeEmulator

pytestmark = pytest.mark.matrix

PLUGIN_SESSION = ("livekit.plugins.openai.realtime.realtime_model", "RealtimeSession")
BETA_SESSION = ("livekit.plugins.openai.realtime.realtime_model_beta", "RealtimeSessionBeta")
AGENTS_SESSION = ("livekit.agents.llm._realtime.openai", "RealtimeSession")


def fake_class(module: str, name: str, bases: tuple[type, ...] = (), **attrs: Any) -> type:
    return type(name, bases, {"__module__": module, "__qualname__": name, **attrs})


def versions(release: str) -> dict[str, str]:
    return {AGENTS: release, PLUGIN: release}


# -- the pure dispatch -----------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "where", "adapter"),
    [
        ("1.0.0", PLUGIN_SESSION, compat.Pre12SessionAdapter),
        ("1.0.23", PLUGIN_SESSION, compat.Pre12SessionAdapter),
        ("1.1.7", PLUGIN_SESSION, compat.Pre12SessionAdapter),
        ("1.2.18", PLUGIN_SESSION, compat.GAPre15SessionAdapter),
        ("1.2.18", BETA_SESSION, compat.BetaSessionAdapter),
        ("1.4.6", BETA_SESSION, compat.BetaSessionAdapter),
        ("1.4.6", PLUGIN_SESSION, compat.GAPre15SessionAdapter),
        ("1.5.17", PLUGIN_SESSION, compat.UnifiedSessionAdapter),
        ("1.7.1", PLUGIN_SESSION, compat.UnifiedSessionAdapter),
        ("1.8.0", PLUGIN_SESSION, compat.UnifiedSessionAdapter),
        ("1.8.9", AGENTS_SESSION, compat.UnifiedSessionAdapter),
    ],
)
def test_each_tested_session_class_gets_its_adapter(
    release: str, where: tuple[str, str], adapter: type
) -> None:
    found = dispatch(fake_class(*where), versions(release))
    assert found.adapter is adapter and found.reason == ""


@pytest.mark.parametrize("release", ["1.9.0", "2.0.0", "0.12.21", "", "not-a-version"])
def test_a_release_outside_the_tested_ones_gets_no_adapter(release: str) -> None:
    found = dispatch(fake_class(*PLUGIN_SESSION), versions(release))
    assert found.adapter is None
    assert "outside the releases this plugin is tested on (1.0 - 1.8.x)" in found.reason


def test_the_beta_class_on_a_release_without_it_gets_no_adapter() -> None:
    # RealtimeSessionBeta exists in 1.2 - 1.4 only; a 1.5 one is not the class we read
    found = dispatch(fake_class(*BETA_SESSION), versions("1.5.17"))
    assert found.adapter is None and "1.5.17" in found.reason


def test_plugin_version_decides_for_plugin_classes() -> None:
    # livekit-agents 1.8.9 with livekit-plugins-openai 1.4.6: the session is 1.4.6 code
    found = dispatch(fake_class(*PLUGIN_SESSION), {AGENTS: "1.8.9", PLUGIN: "1.4.6"})
    assert found.adapter is compat.GAPre15SessionAdapter


def test_an_unknown_session_class_gets_no_adapter() -> None:
    found = dispatch(
        fake_class("livekit.plugins.google.realtime", "RealtimeSession"), versions("1.8.9")
    )
    assert found.adapter is None
    assert (
        found.reason
        == "unknown realtime session class livekit.plugins.google.realtime.RealtimeSession"
    )


def test_a_subclass_that_overrides_a_replaced_method_gets_no_adapter() -> None:
    base = fake_class(*AGENTS_SESSION, _create_update_chat_ctx_events=lambda self, ctx: [])
    sub = fake_class(
        "livekit.agents.inference.realtime.openai",
        "RealtimeSession",
        (base,),
        _create_update_chat_ctx_events=lambda self, ctx: [],
    )
    found = dispatch(sub, versions("1.8.9"))
    assert found.adapter is None
    assert "overrides _create_update_chat_ctx_events" in found.reason


def test_a_subclass_that_keeps_the_replaced_methods_gets_the_adapter() -> None:
    base = fake_class(*AGENTS_SESSION, truncate=lambda self: None)
    sub = fake_class("myapp.voice", "LoggingSession", (base,), interrupt=lambda self: None)
    assert dispatch(sub, versions("1.8.9")).adapter is compat.UnifiedSessionAdapter


def test_every_tested_release_has_a_route() -> None:
    for release in TESTED_RELEASES:
        assert any(r.covers(parse_release(release)) for r in ROUTES), release


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("1.8.9", (1, 8, 9)), ("2.0.0rc1", (2, 0, 0)), ("1.10", (1, 10)), ("", ()), ("x", ())],
)
def test_parse_release(text: str, parsed: tuple[int, ...]) -> None:
    assert parse_release(text) == parsed


class _NotRealtime:
    """Has a session() like 1.8's GPT-Live DuplexModel, but is no RealtimeModel."""

    def session(self) -> Any:
        raise AssertionError("never called")


@pytest.mark.parametrize("thing", [object(), _NotRealtime()], ids=["object", "duplex-like"])
def test_wrapping_something_that_is_not_a_realtime_model_is_refused(thing: Any) -> None:
    with pytest.raises(TypeError, match="needs a livekit realtime model"):
        wrap_realtime_model(thing)


async def test_sanitizer_only_on_a_session_without_update_chat_ctx_wraps_nothing() -> None:
    class Bare:
        pass

    session = Bare()
    wrapping = compat.install(session, versions=versions("1.8.9"))
    assert isinstance(wrapping, SanitizerOnly) and sanitizer_only_of(session) is wrapping
    assert "unknown realtime session class" in wrapping.reason
    assert wrapping.reason.endswith("it has no update_chat_ctx, so nothing is wrapped")
    assert not hasattr(session, "update_chat_ctx")


# -- on the installed release's real client ---------------------------------------


def sanitizer_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "sanitizer-only" in r.getMessage()]


def mixed_ctx() -> llm.ChatContext:
    """Items livekit's own update cannot send safely, whatever the release."""
    items: list[Any] = [
        llm.ChatMessage(id="u1", role="user", content=["hello"]),
        llm.ChatMessage(id="empty", role="assistant", content=[]),
        llm.FunctionCallOutput(id="orphan", call_id="nowhere", output="{}", is_error=False),
        llm.ChatMessage(id="a1", role="assistant", content=["hi there"]),
    ]
    handoff = getattr(llm, "AgentHandoff", None)
    if handoff is not None:
        kwargs: dict[str, Any] = {"id": "handoff", "old_agent_id": "a", "new_agent_id": "b"}
        if "old_agent" in getattr(handoff, "model_fields", {}):
            kwargs.update(old_agent=None, new_agent=None)
        items.insert(1, handoff(**kwargs))
    return llm.ChatContext(items)


async def test_every_path_of_this_release_gets_its_full_adapter(
    path: Any, emulator: RealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="livekit.plugins.history")
    model = wrap_realtime_model(path.build(emulator))
    session = model.session()
    try:
        adapter = adapter_of(session)
        assert adapter is not None and adapter.dialect == path.dialect
        assert sanitizer_only_of(session) is None
    finally:
        await session.aclose()
    assert sanitizer_warnings(caplog) == []


async def test_an_untested_release_runs_sanitizer_only_with_one_warning(
    path: Any,
    emulator: RealtimeEmulator,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.WARNING, logger="livekit.plugins.history")
    monkeypatch.setattr(compat, "installed_versions", lambda: versions("1.9.0"))
    model = wrap_realtime_model(path.build(emulator))
    assert len(sanitizer_warnings(caplog)) == 1  # said at wrap time, before any call
    first, second = model.session(), model.session()
    try:
        await emulator.wait_until(lambda: len(emulator.sessions) == 2, 5)
        for session in (first, second):
            assert adapter_of(session) is None
            assert isinstance(sanitizer_only_of(session), SanitizerOnly)
            # nothing of the adapter is on the session: livekit's own handlers run
            assert "_create_update_chat_ctx_events" not in vars(session)
        await asyncio.wait_for(second.update_chat_ctx(mixed_ctx()), 10)
        server = [item["id"] for item in emulator.last_session.items]
    finally:
        await first.aclose()
        await second.aclose()
    warnings = sanitizer_warnings(caplog)
    assert len(warnings) == 1
    assert "livekit-agents 1.9.0 is outside the releases" in warnings[0]
    assert server == ["u1", "a1"]  # what livekit sent is what the sanitizer kept
    assert emulator.typeless_items == 0


async def test_an_unknown_session_class_runs_sanitizer_only_with_one_warning(
    path: Any, emulator: RealtimeEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="livekit.plugins.history")
    model = path.build(emulator)
    make_session = model.session

    def custom_session() -> Any:
        session = make_session()
        base = type(session)

        def build_events(self: Any, *args: Any, **kwargs: Any) -> Any:
            return base._create_update_chat_ctx_events(self, *args, **kwargs)

        # an application subclass that changes how livekit builds its events
        session.__class__ = type(
            "CustomSession", (base,), {"_create_update_chat_ctx_events": build_events}
        )
        return session

    model.session = custom_session
    wrap_realtime_model(model)
    assert sanitizer_warnings(caplog) == []  # the class is known only once a session exists
    sessions = [model.session(), model.session()]
    try:
        assert all(isinstance(sanitizer_only_of(s), SanitizerOnly) for s in sessions)
        assert all(adapter_of(s) is None for s in sessions)
    finally:
        for s in sessions:
            await s.aclose()
    warnings = sanitizer_warnings(caplog)
    assert len(warnings) == 1
    assert "CustomSession overrides _create_update_chat_ctx_events" in warnings[0]


# -- what livekit 1.0 - 1.1 do differently -----------------------------------------


@pytest.mark.skipif(HAS_RECONNECT, reason="this release reconnects (test_acceptance.py)")
async def test_without_reconnect_a_server_close_ends_the_session(
    path: Any, emulator: RealtimeEmulator
) -> None:
    """livekit 1.0 has no reconnect path, so there is nothing to replay: a server
    close ends the session with an unrecoverable error, and the wrapped session
    opens no new connection and sends nothing more."""
    model = wrap_realtime_model(path.build(emulator))
    session = model.session()
    errors: list[Any] = []
    ended = asyncio.Event()

    def on_error(ev: Any) -> None:
        errors.append(ev)
        if not ev.recoverable:
            ended.set()

    session.on("error", on_error)
    try:
        await emulator.wait_for_session()
        await session.update_chat_ctx(
            llm.ChatContext([llm.ChatMessage(id="u1", role="user", content=["hi"])])
        )
        await emulator.close_all()
        await asyncio.wait_for(ended.wait(), 10)
    finally:
        # its main task ended with that error; closing re-raises it
        with contextlib.suppress(Exception):
            await session.aclose()
    assert len(emulator.sessions) == 1
    assert [e.recoverable for e in errors] == [False]


def _release_module(session: Any) -> Any:
    return sys.modules[type(session).__module__]


async def test_text_mode_recovery_adds_livekits_silent_item_and_drops_it_later(
    path: Any, emulator: RealtimeEmulator
) -> None:
    """livekit 1.0 - 1.1 recover from a text-only answer with
    `update_chat_ctx(ctx, _add_mock_audio=True)`: the wrapped update takes it,
    appends livekit's own silent user audio item, and deletes it on the next update."""
    model = wrap_realtime_model(path.build(emulator))
    session = model.session()
    if not hasattr(_release_module(session), "_create_mock_audio_item"):
        await session.aclose()
        pytest.skip("this release has no text-mode recovery (livekit 1.2+)")
    ctx = llm.ChatContext([llm.ChatMessage(id="u1", role="user", content=["hi"])])
    try:
        await emulator.wait_for_session()
        await session.update_chat_ctx(ctx, _add_mock_audio=True)
        after_recovery = [item["id"] for item in emulator.last_session.items]
        mirror = [item.id for item in session.chat_ctx.items]
        await session.update_chat_ctx(ctx)
        after_next = [item["id"] for item in emulator.last_session.items]
        errors = emulator.last_session.error_codes()
    finally:
        await session.aclose()
    assert after_recovery[0] == "u1" and len(after_recovery) == 2
    assert after_recovery[1].startswith("lk_mock_audio_item_")
    assert mirror == after_recovery
    assert after_next == ["u1"]
    assert errors == []
