"""Child process of the cross-process tests: a call in a fresh interpreter.

history_call.py call STORE_URL USER MODE KIND TEXT...
    load USER's history, run one call on the emulator saying each TEXT, print
    one JSON line: what the emulator saw (see history_helpers.observe), the
    loaded turns and the turns this call recorded.
history_call.py record STORE_URL USER
    run a call that never ends, printing "written ITEM_ID" for every turn the
    store reported durable (the parent kills this process with SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence

from history_helpers import observe, start_call

from livekit_history_plugin.history.models import Turn
from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.testing import RealtimeEmulator


async def call(url: str, user: str, mode: str, kind: str, texts: list[str]) -> None:
    plugin = HistoryPlugin(url, HistoryConfig(mode=mode))  # type: ignore[arg-type]
    async with RealtimeEmulator() as emu:
        c = await start_call(emu, plugin, user, kind=kind)
        for text in texts:
            await c.say(text)
        await c.end()
        out = observe(emu, c.loaded)
    out["loaded_turns"] = [[t.role.value, t.text] for t in c.loaded.turns]
    out["recorded"] = [[t.seq, t.role.value, t.text] for t in c.recorder.turns]
    out["written"] = c.recorder.written
    await plugin.aclose()
    print(json.dumps(out), flush=True)


async def record(url: str, user: str) -> None:
    plugin = HistoryPlugin(url, HistoryConfig(reorder_window=0.05))

    def written(batch: Sequence[Turn]) -> None:
        for t in batch:
            sys.stdout.write(f"written {t.item_id}\n")
        sys.stdout.flush()

    async with RealtimeEmulator() as emu:
        c = await start_call(emu, plugin, user)
        c.recorder.on_written = written
        print("ready", flush=True)
        i = 0
        while True:
            i += 1
            await c.say(f"message number {i}")


def main(argv: list[str]) -> None:
    if argv[0] == "call":
        asyncio.run(call(argv[1], argv[2], argv[3], argv[4], argv[5:]))
    elif argv[0] == "record":
        asyncio.run(record(argv[1], argv[2]))
    else:
        raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
