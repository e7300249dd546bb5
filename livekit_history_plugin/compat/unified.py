"""livekit-agents 1.5.0 and later: one `RealtimeSession` class serves OpenAI GA,
Azure GA and Azure legacy (`with_azure(..., api_version=...)`).

It lives in `livekit.plugins.openai.realtime.realtime_model` up to 1.5.x and in
`livekit.agents.llm._realtime.openai` from 1.6 (the plugin re-exports it).
Private names relied on, checked in the sources of 1.5.18 and 1.8.9:
`_opts` (`is_azure`, `api_version`), `_remote_chat_ctx`,
`_update_chat_ctx_lock`, `_create_update_chat_ctx_events`,
`_handle_conversion_item_added`, `_handle_conversion_item_deleted`,
`_handle_error`, `truncate`, `send_event`. Azure legacy events are renamed to
GA names by livekit before any handler sees them, so one ack handler serves
both dialects; on the way out only the item parts differ.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..dialects import Dialect
from ._adapter import SessionAdapter


class UnifiedSessionAdapter(SessionAdapter):
    RELEASES: ClassVar[tuple[str, str]] = ("1.5.0", "1.99.99")
    ACK_HANDLER: ClassVar[str] = "_handle_conversion_item_added"

    @classmethod
    def detect_dialect(cls, session: Any) -> Dialect:
        opts = getattr(session, "_opts", None) or session._realtime_model._opts
        return "beta" if opts.is_azure and opts.api_version else "ga"
