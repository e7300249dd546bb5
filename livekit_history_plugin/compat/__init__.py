"""Compat adapters: the only code that touches livekit private attributes.

`wrap_realtime_model(model)` returns the same model object; every session it
creates from then on has the safe chat-context replay installed by the adapter
of its livekit code path.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from livekit.agents import __version__ as _LIVEKIT_VERSION

from .. import _plugin  # noqa: F401  (registers with livekit)
from ..log import logger
from ._adapter import ReplayOptions, SessionAdapter, adapter_of
from .beta import BetaSessionAdapter
from .ga_pre15 import GAPre15SessionAdapter
from .unified import UnifiedSessionAdapter

__all__ = [
    "ReplayOptions",
    "SessionAdapter",
    "BetaSessionAdapter",
    "GAPre15SessionAdapter",
    "UnifiedSessionAdapter",
    "adapter_of",
    "adapter_for_session",
    "install",
    "replay_options_of",
    "wrap_realtime_model",
]

M = TypeVar("M")
_WRAPPED = "_lhp_wrapped"
_OPTIONS = "_lhp_options"


def _version_tuple(v: str) -> tuple[int, ...]:
    parts: list[int] = []
    for p in v.split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


LIVEKIT_VERSION = _version_tuple(_LIVEKIT_VERSION)


def adapter_for_session(session: Any) -> type[SessionAdapter]:
    """The adapter class for a livekit realtime session instance."""
    name = type(session).__name__
    if name == "RealtimeSessionBeta":
        return BetaSessionAdapter
    if LIVEKIT_VERSION < (1, 5):
        return GAPre15SessionAdapter
    if LIVEKIT_VERSION >= (2,):
        logger.warning(
            "livekit-agents %s is newer than the releases this plugin was tested on "
            "(1.2 - 1.x); using the 1.5+ adapter",
            _LIVEKIT_VERSION,
        )
    return UnifiedSessionAdapter


def install(session: Any, options: ReplayOptions | None = None) -> SessionAdapter:
    """Install the safe replay on one existing realtime session (idempotent)."""
    found = adapter_of(session)
    if found is not None:
        return found
    adapter = adapter_for_session(session)(session, options)
    adapter.install()
    return adapter


def replay_options_of(model: Any) -> ReplayOptions | None:
    """The options a wrapped model gives its new sessions (None: not wrapped or defaults)."""
    found = getattr(model, _OPTIONS, None)
    return found if isinstance(found, ReplayOptions) else None


def wrap_realtime_model(model: M, *, options: ReplayOptions | None = None) -> M:
    """Make every session of `model` use the safe chat-context replay.

    Returns the same object, so it drops in where the model is built:
    `AgentSession(llm=wrap_realtime_model(openai.realtime.RealtimeModel(...)))`.
    Wrapping again is harmless; given `options`, it replaces the options that
    sessions created from then on get.
    """
    if getattr(model, _WRAPPED, False):
        if options is not None:
            setattr(model, _OPTIONS, options)
        return model
    original = model.session  # type: ignore[attr-defined]

    @functools.wraps(original)
    def session(*args: Any, **kwargs: Any) -> Any:
        sess = original(*args, **kwargs)
        install(sess, getattr(model, _OPTIONS, None))
        return sess

    model.session = session  # type: ignore[attr-defined]
    setattr(model, _OPTIONS, options)
    setattr(model, _WRAPPED, True)
    return model
