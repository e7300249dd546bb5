"""The offline demo: in-process, through the CLI, and as `python examples/voice_agent.py demo`."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from livekit_history_plugin.cli import app
from livekit_history_plugin.demo import CALL_1_FIRST, PREFERENCE, run_demo
from livekit_history_plugin.history.stores import open_store


def _runner() -> CliRunner:
    """stdout and stderr apart (click < 8.2 mixes them unless told not to)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2: always apart
        return CliRunner()


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "voice_agent.py"
# an api version or endpoint in the environment must not change the demo's paths
_PROVIDER_ENV = (
    "OPENAI_API_VERSION",
    "AZURE_OPENAI_ENDPOINT",
    "OPENAI_BASE_URL",
    "LIVEKIT_HISTORY_URL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("provider", "mode", "ack"),
    [
        ("azure", "items", "conversation.item.created"),
        ("openai", "packed", "conversation.item.added"),
    ],
)
def test_demo_in_process(provider: str, mode: str, ack: str) -> None:
    out = io.StringIO()
    result = asyncio.run(
        run_demo(
            provider=provider,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            console=Console(file=out, width=120, color_system=None),
        )
    )
    text = out.getvalue()
    assert result.ok, result.checks
    assert all(ok for _, ok in result.checks) and len(result.checks) == 5

    # call 1 recorded both agents' turns, in spoken order
    assert [t.seq for t in result.recorded] == list(range(len(result.recorded)))
    assert result.recorded[0].text == CALL_1_FIRST
    assert {t.agent_id for t in result.recorded} == {"greeter", "specialist"}
    assert "Recorded in call 1" in text and CALL_1_FIRST in text

    # call 2: every history item created, each acknowledged by the server, in order
    assert result.replayed and all(r.ack == ack for r in result.replayed)
    assert [r.previous_item_id for r in result.replayed][1:] == [
        r.item_id for r in result.replayed[:-1]
    ]
    assert len(result.replayed) == (len(result.recorded) if mode == "items" else 1)
    assert "Replayed into call 2: conversation.item.create → server ack" in text
    assert text.count(ack) >= len(result.replayed)
    for r in result.replayed:
        assert r.item_id in text

    # the reply of call 2 knows call 1 and the remembered preference
    assert CALL_1_FIRST in result.reply and PREFERENCE[1] in result.reply
    assert "call 2 remembered call 1" in text
    # a temporary store is gone afterwards
    assert not Path(result.store_url.removeprefix("sqlite:///")).exists()


def test_demo_command_keeps_its_store(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = _runner().invoke(app, ["demo", "--db", str(db), "--user", "ada", "--mode", "packed"])
    assert result.exit_code == 0, result.output
    assert "call 2 remembered call 1" in result.stdout

    async def stored() -> tuple[int, list[str]]:
        async with open_store(f"sqlite:///{db}") as store:
            return await store.count_turns("ada"), [f.key for f in await store.load_facts("ada")]

    turns, facts = asyncio.run(stored())
    assert turns >= 6 and facts == [PREFERENCE[0]]  # call 1 and call 2 were recorded


def test_example_demo_subprocess(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _PROVIDER_ENV}
    env["COLUMNS"] = "120"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Replayed into call 2: conversation.item.create → server ack (beta dialect)" in out
    assert out.count("conversation.item.created") >= 5
    assert "call 2 remembered call 1" in out
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind (no default store created)
