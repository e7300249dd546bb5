"""Child process of the crash tests: a call whose post-call summary job is cut mid-way.

summary_job_child.py STORE_URL USER
    run one real call (livekit AgentSession on the emulator) for USER with an
    LLM summarizer that answers the first chunk of the backlog and never the
    second; print "call ended" once the call's turns are written, then
    "mid-way" once the summary job is waiting on the second chunk (the first
    one already folded in memory), and wait forever: the parent kills this
    process with SIGKILL.
"""

from __future__ import annotations

import asyncio
import sys

from history_helpers import run_call
from llm_helpers import ScriptedLLM

from livekit_history_plugin.history.budget import BudgetConfig
from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.history.summarize import LLMSummarizer
from livekit_history_plugin.testing import RealtimeEmulator

# one chunk answered, the next never: the job is killed between the two
CHUNK_TOKENS = 60
BUDGET = BudgetConfig(max_recent_turns=10, min_recent_turns=2)


async def main(url: str, user: str) -> None:
    provider = ScriptedLLM(["The caller books cleanings.", None])
    summarizer = LLMSummarizer(provider, max_input_tokens=CHUNK_TOKENS, timeout=3600)
    plugin = HistoryPlugin(
        url, HistoryConfig(summarizer=summarizer, budget=BUDGET, post_call_timeout=3600)
    )
    async with RealtimeEmulator() as emu:
        await run_call(emu, plugin, user, ["Please book me a cleaning on Friday."])
        print("call ended", flush=True)
        await provider.wait_for_streams(2)
        print("mid-way", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
