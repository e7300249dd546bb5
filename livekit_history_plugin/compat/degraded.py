"""Sanitizer-only mode, for sessions no adapter is known to fit.

On a livekit release outside the tested ranges, or a session class no route
names (`compat/releases.py`), touching livekit private attributes could break a
live call in ways no test has seen. This mode touches none: the session's
public `update_chat_ctx` is replaced by one that passes the sanitized context
(no typeless handoff / config items, no empty or unreplayable messages, no
orphan tool outputs) to livekit's own `update_chat_ctx`. What it does NOT give:
ack-matched replay and re-chaining (a rejected item can still take later ones
with it), the safe reconnect and truncate replays, the audio gate. The caller is
told once per wrapped model (`wrap_realtime_model`).
"""

from __future__ import annotations

from typing import Any

from livekit.agents import llm

from ..sanitize import sanitize_chat_ctx

_ATTR = "_lhp_sanitizer_only"


class SanitizerOnly:
    """Sanitizes the chat context before livekit's own `update_chat_ctx`."""

    def __init__(self, session: Any, reason: str) -> None:
        self.session = session
        self.reason = reason

    def install(self) -> None:
        setattr(self.session, _ATTR, self)
        original = getattr(self.session, "update_chat_ctx", None)
        if not callable(original):
            self.reason += "; it has no update_chat_ctx, so nothing is wrapped"
            return
        self._orig_update = original
        self.session.update_chat_ctx = self.update_chat_ctx

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext, **kwargs: Any) -> None:
        # keyword arguments are livekit's own (1.0 - 1.1: `_add_mock_audio`)
        await self._orig_update(sanitize_chat_ctx(chat_ctx), **kwargs)


def sanitizer_only_of(session: Any) -> SanitizerOnly | None:
    """The sanitizer-only wrapping of a livekit realtime session, if any."""
    found = getattr(session, _ATTR, None)
    return found if isinstance(found, SanitizerOnly) else None
