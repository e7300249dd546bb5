"""livekit-plugins-openai 1.0.0 – 1.1.x: the one `RealtimeSession` class
(`livekit.plugins.openai.realtime.realtime_model`), beta dialect on every path.

These releases have no GA class: `RealtimeModel(...)` talks to OpenAI with the
`OpenAI-Beta: realtime=v1` header, `with_azure(...)` / `RealtimeModel(api_version=)`
to Azure's `/openai/realtime`; both speak the beta dialect and get
`conversation.item.created` acks. Private names relied on, read in the sources of
1.0.23 and 1.1.7 (docs/livekit-internals.md): `_remote_chat_ctx`,
`_update_chat_ctx_lock`, `_handle_conversion_item_created`,
`_handle_conversion_item_deleted`, `_handle_error`, `_item_create_future`,
`send_event`, and `_create_mock_audio_item` / `_livekit_item_to_openai_item` /
`ConversationItemCreateEvent` of the session's module.

Per release:
- 1.0.x builds its update events inline in `update_chat_ctx` (no
  `_create_update_chat_ctx_events`), has no reconnect (a closed socket ends the
  session with an unrecoverable error) and no `_create_session_update_event`
  (its `_initial_session_update()` sends the session options itself);
- 1.1.x has `_create_update_chat_ctx_events` (called by its reconnect only) and
  reconnects like 1.2 (`session_reconnected`);
- on both, `truncate` sends only `conversation.item.truncate`: no chat context.

Both call `update_chat_ctx(chat_ctx, _add_mock_audio=True)` to pull a model out of
a text-only answer (delete the text reply, add a silent user audio item, ask
again); the safe update takes that keyword too.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar

from livekit.agents import llm

from ..dialects import Dialect
from ..log import logger
from ._adapter import SessionAdapter

# livekit's own id prefix for the silent audio item of its text-mode recovery
MOCK_AUDIO_ID_PREFIX = "lk_mock_audio_item_"


class Pre12SessionAdapter(SessionAdapter):
    RELEASES: ClassVar[tuple[str, str]] = ("1.0.0", "1.1.7")
    ACK_HANDLER: ClassVar[str] = "_handle_conversion_item_created"

    @classmethod
    def detect_dialect(cls, session: Any) -> Dialect:
        return "beta"

    async def update_chat_ctx(  # type: ignore[override]
        self, chat_ctx: llm.ChatContext, *, _add_mock_audio: bool = False
    ) -> None:
        # livekit drops its earlier silent items from every target, so a later
        # update deletes them from the server; the sanitizer drops them too
        # (audio without transcript), this keeps it explicit
        items = [i for i in chat_ctx.items if not str(i.id).startswith(MOCK_AUDIO_ID_PREFIX)]
        await super().update_chat_ctx(llm.ChatContext(items))
        if _add_mock_audio:
            await self._append_mock_audio()

    async def _append_mock_audio(self) -> None:
        """Append livekit's own silent user audio item at the end of the
        conversation (unchained: nothing else depends on it) and wait for its ack
        like livekit does; a missing ack is logged, never raised."""
        module = sys.modules.get(type(self.session).__module__)
        make_item = getattr(module, "_create_mock_audio_item", None)
        to_wire = getattr(module, "_livekit_item_to_openai_item", None)
        event_cls = getattr(module, "ConversationItemCreateEvent", None)
        if make_item is None or to_wire is None or event_cls is None:
            logger.warning("livekit's text-mode recovery item is unavailable; not adding it")
            return
        item = make_item()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.session._item_create_future[item.id] = fut
        self.session.send_event(
            event_cls(type="conversation.item.create", item=to_wire(item), event_id=f"lhp_{item.id}")
        )
        try:
            await asyncio.wait_for(fut, self.options.ack_timeout)
        except asyncio.TimeoutError:
            self.session._item_create_future.pop(item.id, None)
            logger.warning("livekit's silent recovery item %s was not acknowledged", item.id)

    def _reassert_session(self) -> None:
        if self._reasserted or hasattr(self.session, "_create_session_update_event"):
            super()._reassert_session()  # 1.1.x
            return
        send_initial = getattr(self.session, "_initial_session_update", None)
        if send_initial is None:
            return
        # 1.0.x: it sends the configured options (modalities, voice, turn
        # detection; not the instructions, which stay as they are) itself
        self._reasserted = True
        send_initial()
