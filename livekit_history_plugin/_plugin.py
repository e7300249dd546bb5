"""Registers the plugin with livekit, as every livekit plugin does.

Imported by each module that works with livekit objects rather than by the
package itself, so `import livekit_history_plugin` and the store-only CLI
commands do not pay livekit's import time (several seconds).
"""

from __future__ import annotations

import threading

from livekit.agents import Plugin

from .log import logger
from .version import __version__


class HistoryLivekitPlugin(Plugin):
    def __init__(self) -> None:
        super().__init__("livekit_history_plugin", __version__, "livekit_history_plugin", logger)


def _register() -> None:
    # livekit only accepts registrations from the main thread; a first import
    # from a worker thread goes unregistered rather than failing the import
    if threading.current_thread() is threading.main_thread():
        Plugin.register_plugin(HistoryLivekitPlugin())
    else:
        logger.debug("livekit_history_plugin imported off the main thread; not registered")


_register()
