"""Which adapter serves which livekit realtime session, on which releases.

A route names one livekit session class (module and qualified name) and the
livekit minor releases whose private names its adapter was checked against
(docs/livekit-internals.md). `dispatch` is pure: it takes the session class and
the installed versions, so the gating is unit-tested with made-up versions and
classes. Anything without a route — a minor newer (or older) than the tested
ones, an unknown session class, a subclass that overrides a method the adapter
replaces — gets no adapter: `wrap_realtime_model` then runs sanitizer-only and
says so once (`compat/degraded.py`).

A new patch of a tested minor uses that minor's adapter (the newest-release CI
job runs the acceptance tests on it the day it ships); a new minor is degraded
until its source has been read and a route added here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._adapter import SessionAdapter
from .beta import BetaSessionAdapter
from .ga_pre15 import GAPre15SessionAdapter
from .pre12 import Pre12SessionAdapter
from .unified import UnifiedSessionAdapter

Release = tuple[int, ...]

AGENTS = "livekit-agents"
PLUGIN = "livekit-plugins-openai"

_PLUGIN_SESSION = "livekit.plugins.openai.realtime.realtime_model.RealtimeSession"
_BETA_SESSION = "livekit.plugins.openai.realtime.realtime_model_beta.RealtimeSessionBeta"
# 1.8 moved the protocol engine into livekit-agents; the plugin re-exports it
_AGENTS_SESSION = "livekit.agents.llm._realtime.openai.RealtimeSession"

#: the last patch of every minor, each run by the CI matrix (scripts/test)
TESTED_RELEASES: tuple[str, ...] = (
    "1.0.23",
    "1.1.7",
    "1.2.18",
    "1.3.12",
    "1.4.3",
    "1.4.6",
    "1.5.17",
    "1.6.10",
    "1.7.1",
    "1.8.9",
)


@dataclass(frozen=True)
class Route:
    """One livekit session class on a range of minor releases, and its adapter."""

    session_class: str
    adapter: type[SessionAdapter]
    first: Release
    last: Release

    @property
    def distribution(self) -> str:
        """The package whose version decides (the one that ships the class)."""
        return PLUGIN if self.session_class.startswith("livekit.plugins.") else AGENTS

    def covers(self, release: Release) -> bool:
        return self.first <= release[:2] <= self.last


ROUTES: tuple[Route, ...] = (
    Route(_PLUGIN_SESSION, Pre12SessionAdapter, (1, 0), (1, 1)),
    Route(_BETA_SESSION, BetaSessionAdapter, (1, 2), (1, 4)),
    Route(_PLUGIN_SESSION, GAPre15SessionAdapter, (1, 2), (1, 4)),
    Route(_PLUGIN_SESSION, UnifiedSessionAdapter, (1, 5), (1, 8)),
    Route(_AGENTS_SESSION, UnifiedSessionAdapter, (1, 5), (1, 8)),
)

#: every minor some route covers
SUPPORTED: tuple[Release, Release] = (
    min(r.first for r in ROUTES),
    max(r.last for r in ROUTES),
)

# what an adapter replaces on the session instance: a subclass that overrides
# one of these does something the adapter would silently undo
_REPLACED = ("update_chat_ctx", "_create_update_chat_ctx_events", "truncate", "push_audio")


@dataclass(frozen=True)
class Dispatch:
    """The adapter for a session class, or why there is none (degraded mode)."""

    adapter: type[SessionAdapter] | None
    reason: str = ""
    route: Route | None = None


def parse_release(version: str) -> Release:
    """`"1.8.9"` -> (1, 8, 9); stops at the first non-numeric part (`"2.0.0rc1"` -> (2, 0, 0))."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def supported_range_text() -> str:
    lo, hi = SUPPORTED
    return f"{lo[0]}.{lo[1]} - {hi[0]}.{hi[1]}.x"


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def dispatch(session_cls: type, versions: Mapping[str, str]) -> Dispatch:
    """Route a livekit realtime session class to its adapter.

    `versions` maps `AGENTS` and `PLUGIN` to installed version strings.
    """
    agents = parse_release(versions.get(AGENTS, ""))
    if not SUPPORTED[0] <= agents[:2] <= SUPPORTED[1]:
        return Dispatch(None, _outside(AGENTS, versions.get(AGENTS, "?")))
    for base in session_cls.__mro__:
        routes = [r for r in ROUTES if r.session_class == class_name(base)]
        if not routes:
            continue
        dist = routes[0].distribution
        release = parse_release(versions.get(dist, ""))
        route = next((r for r in routes if r.covers(release)), None)
        if route is None:
            return Dispatch(None, _outside(dist, versions.get(dist, "?")))
        overridden = _overridden(session_cls, base, route.adapter)
        if overridden:
            return Dispatch(
                None,
                f"{class_name(session_cls)} overrides {', '.join(overridden)} of "
                f"{class_name(base)}, which the safe replay replaces",
                route,
            )
        return Dispatch(route.adapter, "", route)
    return Dispatch(None, f"unknown realtime session class {class_name(session_cls)}")


def _outside(dist: str, version: str) -> str:
    return (
        f"{dist} {version} is outside the releases this plugin is tested on "
        f"({supported_range_text()})"
    )


def _overridden(session_cls: type, base: type, adapter: type[SessionAdapter]) -> list[str]:
    if session_cls is base:
        return []
    names = (adapter.ACK_HANDLER, adapter.DELETE_HANDLER, adapter.ERROR_HANDLER, *_REPLACED)
    return [n for n in names if getattr(session_cls, n, None) is not getattr(base, n, None)]
