"""asyncio driver for the sans-IO ReplayEngine.

The driver owns no socket: it hands client events to a `send` callable and is
fed server events synchronously by whoever reads the socket (a compat adapter
hooks livekit's receive path). Feeding is synchronous on purpose: a re-chained
item goes out in the same loop iteration as the error that caused it, so a
rejection costs one round trip, not a scheduler hop per item.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from .engine import (
    CONNECTION_RESET,
    Output,
    ReplayEngine,
    ReplayResult,
    SendEvent,
)


class ReplayDriver:
    def __init__(
        self,
        engine: ReplayEngine,
        *,
        send: Callable[[dict[str, Any]], None],
        on_output: Callable[[Output], None] = lambda _o: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._send = send
        self._on_output = on_output
        self._clock = clock
        self._wake = asyncio.Event()
        self._aborted: str | None = None

    @property
    def aborted(self) -> str | None:
        """Why the run was aborted (e.g. "connection_reset"), or None."""
        return self._aborted

    def feed(self, event: Mapping[str, Any]) -> bool:
        """Give the engine one server event; True when it answered our request."""
        reaction = self.engine.receive(event, self._clock())
        if reaction.outputs:
            self._dispatch(reaction.outputs)
        if reaction.claimed or reaction.outputs:
            # new requests mean new deadlines, even for an event livekit keeps too
            self._wake.set()
        return reaction.claimed

    def abort(self, code: str = CONNECTION_RESET, message: str = "connection lost") -> None:
        self._aborted = code
        self._dispatch(self.engine.abort(code, message))
        self._wake.set()

    async def run(self) -> ReplayResult:
        self._dispatch(self.engine.start(self._clock()))
        while not self.engine.done:
            deadline = self.engine.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                self._dispatch(self.engine.tick(self._clock()))
        return self.engine.result

    def _dispatch(self, outputs: tuple[Output, ...] | list[Output]) -> None:
        for out in outputs:
            if isinstance(out, SendEvent):
                self._send(out.event)
            else:
                self._on_output(out)
