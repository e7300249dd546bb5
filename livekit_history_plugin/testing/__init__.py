"""Offline testing tools: a strict local OpenAI / Azure OpenAI Realtime API emulator and
the validation of realtime client events against the ``openai`` SDK models.

Example::

    from livekit_history_plugin.testing import RealtimeEmulator

    async with RealtimeEmulator() as emu:
        model = emu.realtime_model("azure", modalities=["text"])  # Azure legacy / beta
        ...
        assert emu.last_session.texts() == [("user", "hello"), ...]
"""
from .. import _plugin  # noqa: F401  (registers with livekit)
from ._faults import (
    AckMatch,
    DuplicateIds,
    FaultConfig,
    ItemMatch,
    RejectRule,
    ScriptedAnswer,
    item_text,
)
from ._quirks import ProviderQuirks
from .emulator import (
    ConversationView,
    EmulatorSession,
    FunctionCallReply,
    RealtimeEmulator,
    ReceivedEvent,
    ResponseRecord,
    SdkValidationFailure,
    SentEvent,
    client_events_of,
    default_reply,
    duplicate_ids_of,
    reply_with_tool,
)
from .validate import (
    Dialect,
    ProviderError,
    provider_event_error,
    provider_item_error,
    sdk_event_error,
    validate_client_event,
    validate_server_event,
)

__all__ = [
    "AckMatch",
    "ConversationView",
    "Dialect",
    "DuplicateIds",
    "EmulatorSession",
    "FaultConfig",
    "FunctionCallReply",
    "ItemMatch",
    "ProviderError",
    "ProviderQuirks",
    "RealtimeEmulator",
    "ReceivedEvent",
    "RejectRule",
    "ResponseRecord",
    "SdkValidationFailure",
    "ScriptedAnswer",
    "SentEvent",
    "client_events_of",
    "default_reply",
    "duplicate_ids_of",
    "item_text",
    "provider_event_error",
    "provider_item_error",
    "reply_with_tool",
    "sdk_event_error",
    "validate_client_event",
    "validate_server_event",
]
