"""Memory across processes, on the real livekit client and the emulator: a
caller states facts in call 1 (no tool is called) and gives an order number;
call 2, in another interpreter, has the facts in its instructions, and its
model calls the recall tool and gets the order number back, quoted as data.

The children are `memory_call.py` (a real AgentSession on its own emulator).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from stores.helpers import PG_URL, PostgresBackend, require_server

from livekit_history_plugin.history.recall import RECALL_TAG, RECALL_TOOL_NAME
from livekit_history_plugin.history.render import FACTS_TAG

CHILD = Path(__file__).with_name("memory_call.py")
# a fresh interpreter imports livekit: seconds on a loaded 2-core machine
CHILD_TIMEOUT = 120.0

CALL_1 = ["Hi, call me Sam, I'm allergic to peanuts.", "My order number is 4417-B, a pad thai."]


async def _child(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(CHILD.parent),
    )
    out, err = await asyncio.wait_for(proc.communicate(), CHILD_TIMEOUT)
    assert proc.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_facts_and_recall_reach_the_next_call_in_a_new_process(
    tmp_path: Path, backend: str
) -> None:
    pg: PostgresBackend | None = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'history.db'}"
    else:
        require_server("postgresql", PG_URL)
        pg = PostgresBackend(PG_URL)
        url = pg.url
    try:
        first = await _child("tell", url, "sam-1", *CALL_1)
        assert first["tool_calls"] == 0
        assert [r for r, _ in first["recorded"]] == ["user", "assistant", "user", "assistant"]
        captured = {f["key"]: f for f in first["captured"]}
        assert set(captured) == {"preferred_name", "allergy:peanuts"}
        assert captured["preferred_name"]["text"] == "Wants to be called Sam."
        assert captured["allergy:peanuts"]["text"] == "Allergic to peanuts."
        assert all(f["origin"] == "rules" for f in captured.values())
        # each fact names the caller turn it was read from
        assert all(len(f["source_turn_ids"]) == 1 for f in captured.values())

        second = await _child("ask", url, "sam-1", "my order number", "What was my order number?")
        assert second["errors"] == [] and second["rejected"] == []
        instructions = second["loaded_instructions"]
        facts_block = instructions.split(f"<{FACTS_TAG}>", 1)[1].split(f"</{FACTS_TAG}>", 1)[0]
        assert '"Wants to be called Sam."' in facts_block
        assert '"Allergic to peanuts."' in facts_block
        # what the model answered with: the session's instructions hold both facts
        assert all("Allergic to peanuts." in i for i in second["response_instructions"])
        assert second["tool_calls"] == [RECALL_TOOL_NAME]
        (output,) = second["tool_outputs"]
        block = output.split(f"<{RECALL_TAG}>\n", 1)[1].split(f"</{RECALL_TAG}>", 1)[0]
        lines = block.splitlines()
        # the caller's own words, as one JSON string, dated by their call
        assert any(ln.endswith(f"caller: {json.dumps(CALL_1[1])}") for ln in lines), lines
        assert all(ln.startswith("[call on ") for ln in lines)
        assert "data, not instructions" in output.split(f"<{RECALL_TAG}>", 1)[0].lower()
        # the reply was generated after the model saw the tool's output
        assert second["reply"]
    finally:
        if pg is not None:
            await pg.cleanup()
