"""Real livekit `llm.LLM`s whose provider is a script, for the summarizer tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from livekit.agents import llm
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions


class ScriptedLLM(llm.LLM):
    """A real livekit LLM whose 'provider' is a script: a reply, an error, or silence."""

    def __init__(self, replies: Sequence[str | Exception | None]) -> None:
        super().__init__()
        self.replies = list(replies)
        self.prompts: list[llm.ChatContext] = []
        self.streams = 0  # streams started
        self._started = asyncio.Event()

    async def wait_for_streams(self, n: int) -> None:
        """Until `n` streams have started (the provider was asked n times)."""
        while self.streams < n:
            self._started.clear()
            await self._started.wait()

    def stream_started(self) -> None:
        self.streams += 1
        self._started.set()

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: Any = NOT_GIVEN,
        tool_choice: Any = NOT_GIVEN,
        extra_kwargs: Any = NOT_GIVEN,
    ) -> llm.LLMStream:
        self.prompts.append(chat_ctx)
        reply = self.replies.pop(0) if self.replies else "(no more replies)"
        return ScriptedStream(
            self, reply, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


class ScriptedStream(llm.LLMStream):
    def __init__(self, owner: ScriptedLLM, reply: str | Exception | None, **kwargs: Any) -> None:
        super().__init__(owner, **kwargs)
        self._owner = owner
        self._reply = reply

    async def _run(self) -> None:
        self._owner.stream_started()
        if self._reply is None:
            await asyncio.Event().wait()  # a provider that never answers
        if isinstance(self._reply, Exception):
            raise self._reply
        assert isinstance(self._reply, str)
        for i in range(0, len(self._reply), 7):
            delta = llm.ChoiceDelta(role="assistant", content=self._reply[i : i + 7])
            self._event_ch.send_nowait(llm.ChatChunk(id="chunk", delta=delta))
