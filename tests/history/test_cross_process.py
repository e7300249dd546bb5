"""History across processes: a call recorded here is replayed by a call in a
new interpreter, and a worker killed with SIGKILL loses no reported turn.

The child is `history_call.py` (a real AgentSession on its own emulator).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from history_helpers import DEFAULT_KIND, assert_clean, run_call

from livekit_history_plugin.history.plugin import HistoryConfig, HistoryPlugin
from livekit_history_plugin.history.render import HISTORY_TAG
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.testing import RealtimeEmulator

CHILD = Path(__file__).with_name("history_call.py")
# a fresh interpreter imports livekit: seconds on a loaded 2-core machine
CHILD_TIMEOUT = 90.0


async def _child(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(CHILD.parent),
    )


async def test_history_is_replayed_by_a_call_in_a_new_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    plugin = HistoryPlugin(url)
    async with RealtimeEmulator() as emu:
        first = await run_call(
            emu, plugin, "alice", ["Hi, I'm Alice.", "I need a cleaning on Friday."], kind="azure"
        )
        assert_clean(emu.sessions[0])
    recorded = [(t.role.value, t.text) for t in first.recorder.turns]
    assert [r for r, _ in recorded] == ["user", "assistant", "user", "assistant"]
    assert first.recorder.written == 4
    await plugin.aclose()

    proc = await _child("call", url, "alice", "packed", DEFAULT_KIND, "Is my booking still on?")
    out, err = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    assert proc.returncode == 0, err.decode()[-3000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])

    # the second call starts with call 1, in spoken order
    assert [tuple(t) for t in seen["loaded_turns"]] == recorded
    assert seen["errors"] == [] and seen["rejected"] == []
    # every history item acknowledged before the first response was asked for
    assert seen["acked"] == seen["item_ids"] and len(seen["item_ids"]) == 1
    assert seen["last_ack"] < seen["first_response_create"]
    # and it is what the model saw when answering
    conversation = seen["response_conversation"]
    assert [c["id"] for c in conversation[:-1]] == seen["item_ids"]
    assert conversation[-1]["role"] == "user"
    assert conversation[-1]["text"] == "Is my booking still on?"
    packed = conversation[0]["text"]
    assert packed.count(f"</{HISTORY_TAG}>") == 1
    positions = [packed.index(json.dumps(text, ensure_ascii=False)) for _, text in recorded]
    assert positions == sorted(positions)
    # the new call was recorded after the old one
    assert [r[1:] for r in seen["recorded"]][0] == ["user", "Is my booking still on?"]

    # bob shares the store and gets none of alice's words
    plugin = HistoryPlugin(url)
    async with RealtimeEmulator() as emu:
        bob = await run_call(emu, plugin, "bob", ["Hello, this is Bob."])
        sent = json.dumps([r.event for r in emu.sessions[0].received])
        texts = emu.responses[0].conversation
    await plugin.aclose()
    assert bob.loaded.turns == [] and bob.loaded.item_ids == []
    assert "Alice" not in sent and "cleaning" not in sent
    assert [t.get("role") for t in texts] == ["user"]


@pytest.mark.timeout(180)
async def test_sigkill_after_a_reported_write_loses_nothing_reported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    proc = await _child("record", url, "carol")
    assert proc.stdout is not None
    reported: list[str] = []
    try:
        while len(reported) < 6:
            line = await asyncio.wait_for(proc.stdout.readline(), CHILD_TIMEOUT)
            if not line:
                err = await proc.stderr.read() if proc.stderr else b""
                pytest.fail(f"child ended early: {err.decode()[-3000:]}")
            word, _, item_id = line.decode().strip().partition(" ")
            if word == "written":
                reported.append(item_id)
        # right after a write was reported, while the call keeps recording
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # lines already in the pipe were reported before the kill too
    reported += [
        ln.split(" ", 1)[1] for ln in rest.decode().splitlines() if ln.startswith("written ")
    ]

    async with open_store(url) as store:
        turns = await store.load_latest("carol", 10_000)
    stored = [t.item_id for t in turns]
    assert set(reported) <= set(stored), set(reported) - set(stored)
    # what survived is a gap-free prefix of the call, in order
    assert [t.seq for t in turns] == list(range(len(turns)))
    assert [t.role.value for t in turns[:2]] == ["user", "assistant"]

    # and the next call of that user loads it
    plugin = HistoryPlugin(url, HistoryConfig(mode="items"))
    loaded = await plugin.load("carol")
    await plugin.aclose()
    assert len(loaded.turns) == len(turns)
