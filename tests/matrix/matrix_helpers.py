"""What differs between the livekit releases of the matrix, by feature.

Tests condition on these (never on a release number where a feature can be
asked for), and keep their wrapped assertions the same on every release.
"""

from __future__ import annotations

import inspect
from typing import Any

from livekit.agents import AgentSession, llm
from livekit.agents import __version__ as LIVEKIT_VERSION
from livekit.plugins import openai as lk_openai


def _release() -> tuple[int, ...]:
    return tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])


RELEASE = _release()
# livekit 1.1 added the reconnect loop (server close, max_session_duration)
HAS_RECONNECT = hasattr(llm, "RealtimeSessionReconnectedEvent")
# livekit 1.0 - 1.1 always ask for text and audio (no `modalities` option)
HAS_MODALITIES = "modalities" in inspect.signature(lk_openai.realtime.RealtimeModel).parameters
# livekit 1.0 - 1.1: truncate only cuts audio (no text path that rewrites an item)
HAS_TEXT_TRUNCATE = (
    "audio_transcript" in inspect.signature(lk_openai.realtime.RealtimeSession.truncate).parameters
)
# AgentSession.run (the testing API) exists from 1.2 on
HAS_RUN = hasattr(AgentSession, "run")


def text_only() -> dict[str, Any]:
    """Model options for text answers, where the release has the option."""
    return {"modalities": ["text"]} if HAS_MODALITIES else {}


async def user_turn(session: AgentSession, text: str) -> Any:
    """One user turn and the agent's full answer, on every release: the
    `RunResult` (1.2+) or the played-out `SpeechHandle` (1.0 - 1.1)."""
    if HAS_RUN:
        return await session.run(user_input=text)
    return await session.generate_reply(user_input=text)
