"""Compat adapters: the only code that touches livekit private attributes.

`wrap_realtime_model(model)` returns the same model object; every session it
creates from then on has the safe chat-context replay installed by the adapter
of its livekit code path (`releases.ROUTES`). A session no adapter is known to
fit — a livekit minor outside the tested ones, an unknown session class, a
subclass overriding what the adapter replaces, a session missing a name the
adapter needs — runs sanitizer-only (`degraded.py`), and the model logs one
warning saying why. Nothing is ever half-installed.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from livekit.agents import __version__ as _LIVEKIT_VERSION
from livekit.agents import llm

from .. import _plugin  # noqa: F401  (registers with livekit)
from ..log import logger
from ..providers import fork_package, reviewed_subclass
from ._adapter import ReplayOptions, SessionAdapter, adapter_of
from .beta import BetaSessionAdapter
from .degraded import SanitizerOnly, sanitizer_only_of
from .ga_pre15 import GAPre15SessionAdapter
from .pre12 import Pre12SessionAdapter
from .releases import (
    AGENTS,
    PLUGIN,
    SUPPORTED,
    TESTED_RELEASES,
    Dispatch,
    dispatch,
    parse_release,
    supported_range_text,
)
from .unified import UnifiedSessionAdapter

__all__ = [
    "ReplayOptions",
    "SessionAdapter",
    "BetaSessionAdapter",
    "GAPre15SessionAdapter",
    "Pre12SessionAdapter",
    "UnifiedSessionAdapter",
    "SanitizerOnly",
    "TESTED_RELEASES",
    "Dispatch",
    "adapter_of",
    "sanitizer_only_of",
    "dispatch_session",
    "installed_versions",
    "install",
    "replay_options_of",
    "wrap_realtime_model",
]

M = TypeVar("M")
_WRAPPED = "_lhp_wrapped"
_OPTIONS = "_lhp_options"
_WARNED = "_lhp_degraded_warned"

LIVEKIT_VERSION = parse_release(_LIVEKIT_VERSION)

# names every full adapter reads or replaces on the session instance
_NEEDED = ("_remote_chat_ctx", "update_chat_ctx", "truncate", "push_audio", "send_event", "on")


def installed_versions() -> dict[str, str]:
    """The installed livekit-agents and livekit-plugins-openai versions."""
    try:
        from livekit.plugins.openai import __version__ as plugin
    except ImportError:  # only livekit-agents installed (another provider's model)
        plugin = ""
    return {AGENTS: _LIVEKIT_VERSION, PLUGIN: plugin}


def dispatch_session(session: Any, versions: dict[str, str] | None = None) -> Dispatch:
    """The adapter for one livekit realtime session instance, or why there is none."""
    found = dispatch(type(session), versions or installed_versions())
    if found.adapter is None and found.route is not None and reviewed_subclass(type(session)):
        # a provider's subclass (xAI, LiveKit Inference) whose overrides were read
        found = Dispatch(found.route.adapter, "", found.route)
    fork = fork_package(session)
    if found.adapter is None and found.route is None and fork is not None:
        found = Dispatch(
            None,
            f"{fork} is a fork of livekit's OpenAI realtime client, not a subclass (its "
            "private names and answers differ)",
            found.route,
        )
    if found.adapter is None:
        return found
    adapter = found.adapter
    needed = (adapter.ACK_HANDLER, adapter.DELETE_HANDLER, adapter.ERROR_HANDLER, *_NEEDED)
    missing = [n for n in needed if not hasattr(session, n)]
    if missing:
        return Dispatch(
            None, f"{type(session).__qualname__} lacks {', '.join(missing)}", found.route
        )
    return found


def install(
    session: Any, options: ReplayOptions | None = None, versions: dict[str, str] | None = None
) -> SessionAdapter | SanitizerOnly:
    """Install the safe replay on one existing realtime session (idempotent):
    the full adapter of its route, else sanitizer-only (see `reason`)."""
    found = adapter_of(session) or sanitizer_only_of(session)
    if found is not None:
        return found
    route = dispatch_session(session, versions)
    wrapping: SessionAdapter | SanitizerOnly
    if route.adapter is None:
        wrapping = SanitizerOnly(session, route.reason)
    else:
        wrapping = route.adapter(session, options)
    wrapping.install()
    return wrapping


def replay_options_of(model: Any) -> ReplayOptions | None:
    """The options a wrapped model gives its new sessions (None: not wrapped or defaults)."""
    found = getattr(model, _OPTIONS, None)
    return found if isinstance(found, ReplayOptions) else None


def wrap_realtime_model(model: M, *, options: ReplayOptions | None = None) -> M:
    """Make every session of `model` use the safe chat-context replay.

    Returns the same object, so it drops in where the model is built:
    `AgentSession(llm=wrap_realtime_model(openai.realtime.RealtimeModel(...)))`.
    Wrapping again is harmless; given `options`, it replaces the options that
    sessions created from then on get. A livekit release outside the tested
    ones is reported here, at wrap time; an unknown session class when the
    first session is created. Either way once, and the sessions run
    sanitizer-only.

    Raises:
        TypeError: `model` is not a livekit `llm.RealtimeModel`.
    """
    original = getattr(model, "session", None)
    if not isinstance(model, llm.RealtimeModel) or not callable(original):
        # e.g. a text LLM, or 1.8's GPT-Live DuplexModel (no chat-context updates)
        raise TypeError(
            "wrap_realtime_model() needs a livekit realtime model (livekit.agents.llm."
            "RealtimeModel), such as livekit.plugins.openai.realtime.RealtimeModel; "
            f"got {type(model).__module__}.{type(model).__qualname__}"
        )
    if getattr(model, _WRAPPED, False):
        if options is not None:
            setattr(model, _OPTIONS, options)
        return model
    agents = installed_versions()[AGENTS]
    if not SUPPORTED[0] <= parse_release(agents)[:2] <= SUPPORTED[1]:
        _warn_degraded(
            model,
            f"{AGENTS} {agents} is outside the releases this plugin is tested on "
            f"({supported_range_text()})",
        )

    @functools.wraps(original)
    def session(*args: Any, **kwargs: Any) -> Any:
        sess = original(*args, **kwargs)
        wrapping = install(sess, getattr(model, _OPTIONS, None))
        if isinstance(wrapping, SanitizerOnly):
            _warn_degraded(model, wrapping.reason)
        return sess

    model.session = session  # type: ignore[method-assign]
    setattr(model, _OPTIONS, options)
    setattr(model, _WRAPPED, True)
    return model


def _warn_degraded(model: Any, reason: str) -> None:
    if getattr(model, _WARNED, False):
        return
    setattr(model, _WARNED, True)
    logger.warning(
        "livekit-history-plugin runs sanitizer-only on this model: %s. Chat context is "
        "sanitized before livekit's own update_chat_ctx; the ack-matched replay, the safe "
        "reconnect / truncate replays and the audio gate are off. Tested releases: %s",
        reason,
        ", ".join(TESTED_RELEASES),
    )
