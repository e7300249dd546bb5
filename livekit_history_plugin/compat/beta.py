"""livekit-plugins-openai 1.2.0 – 1.4.6: `RealtimeSessionBeta`.

`RealtimeModel.with_azure(...)` returns `RealtimeModelBeta` on these releases
(Azure preview API, beta dialect). Private names relied on, checked in the
sources of 1.2.18, 1.3.12, 1.4.3 and 1.4.6: `_remote_chat_ctx`,
`_update_chat_ctx_lock`, `_create_update_chat_ctx_events`,
`_handle_conversion_item_created`, `_handle_conversion_item_deleted`,
`_handle_error`, `truncate`, `send_event`, and the `session_reconnected` /
`openai_server_event_received` events.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..dialects import Dialect
from ._adapter import SessionAdapter


class BetaSessionAdapter(SessionAdapter):
    RELEASES: ClassVar[tuple[str, str]] = ("1.2.0", "1.4.6")
    ACK_HANDLER: ClassVar[str] = "_handle_conversion_item_created"

    @classmethod
    def detect_dialect(cls, session: Any) -> Dialect:
        return "beta"
