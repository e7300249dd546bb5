"""livekit-history-plugin: safe chat-context replay and caller history for
LiveKit agents on the OpenAI / Azure OpenAI Realtime API.

    from livekit_history_plugin import wrap_realtime_model
    session = AgentSession(llm=wrap_realtime_model(openai.realtime.RealtimeModel(...)))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .log import logger
from .version import __version__

if TYPE_CHECKING:
    # what `__getattr__` returns, for type checkers (which do not run it)
    from .compat import ReplayOptions, adapter_of, wrap_realtime_model
    from .history.models import Fact, Summary, Turn
    from .history.plugin import HistoryConfig, HistoryPlugin
    from .history.stores import open_store
    from .history.stores.base import HistoryStore
    from .history.tokens import warm_up
    from .sanitize import DroppedItem, SanitizeResult, sanitize_chat_ctx, sanitize_chat_ctx_report

# public name -> module that defines it; imported on first use so `import
# livekit_history_plugin` stays cheap and the optional parts stay optional
_EXPORTS: dict[str, str] = {
    "wrap_realtime_model": ".compat",
    "adapter_of": ".compat",
    "ReplayOptions": ".compat",
    "sanitize_chat_ctx": ".sanitize",
    "sanitize_chat_ctx_report": ".sanitize",
    "SanitizeResult": ".sanitize",
    "DroppedItem": ".sanitize",
    "HistoryPlugin": ".history.plugin",
    "HistoryConfig": ".history.plugin",
    "open_store": ".history.stores",
    "HistoryStore": ".history.stores.base",
    "Turn": ".history.models",
    "Fact": ".history.models",
    "Summary": ".history.models",
    "warm_up": ".history.tokens",
}

__all__ = [
    "__version__",
    "logger",
    "wrap_realtime_model",
    "adapter_of",
    "ReplayOptions",
    "sanitize_chat_ctx",
    "sanitize_chat_ctx_report",
    "SanitizeResult",
    "DroppedItem",
    "HistoryPlugin",
    "HistoryConfig",
    "open_store",
    "HistoryStore",
    "Turn",
    "Fact",
    "Summary",
    "warm_up",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value

