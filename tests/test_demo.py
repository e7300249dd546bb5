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

from livekit_history_plugin.cli import ExitCode, app
from livekit_history_plugin.demo import (
    CALL_1_FIRST,
    CALL_1_ORDER,
    CALL_2_FIRST,
    PREFERENCE,
    run_demo,
)
from livekit_history_plugin.history.render import HISTORY_TAG, SUMMARY_LABEL
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

    # the reply of call 2 names call 1's order (not in the question) and the preference
    assert CALL_1_ORDER not in CALL_2_FIRST
    assert f"Last time you asked about order {CALL_1_ORDER}." in result.reply
    assert PREFERENCE[1] in result.reply
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
    assert turns >= 6 and PREFERENCE[0] in facts  # call 1 and call 2 were recorded


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
    assert out.count("conversation.item.created") >= 4  # one per call-1 turn (4 on livekit 1.2)
    assert "call 2 remembered call 1" in out
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind (no default store created)


def _demo(**kwargs: object) -> tuple[object, str]:
    out = io.StringIO()
    result = asyncio.run(
        run_demo(console=Console(file=out, width=120, color_system=None), **kwargs)  # type: ignore[arg-type]
    )
    return result, out.getvalue()


@pytest.mark.parametrize("mode", ["items", "packed", "instructions"])
def test_without_the_replayed_history_the_check_fails(mode: str) -> None:
    """The check is not self-fulfilling: call 1's turns deleted before call 2 (facts
    kept), the same scripted model cannot name the order, and the demo fails."""
    result, text = _demo(mode=mode, forget_history=True)
    assert not result.ok  # type: ignore[attr-defined]
    checks = dict(result.checks)  # type: ignore[attr-defined]
    knows = next(c for c in checks if "names order" in c)
    assert checks[knows] is False
    assert "the remembered preference is in call 2's instructions" in checks
    assert checks["the remembered preference is in call 2's instructions"] is True
    assert "I have no record of an earlier order." in result.reply  # type: ignore[attr-defined]
    assert "demo FAILED" in text


def test_the_demo_command_with_forget_history_exits_5() -> None:
    result = _runner().invoke(app, ["demo", "--forget-history"])
    assert result.exit_code == ExitCode.DEMO_FAILED, result.output
    assert result.stderr.startswith("error: demo check failed: ")
    assert f"call 2's reply names order {CALL_1_ORDER}" in result.stderr


async def _stored_texts(db: Path) -> list[str]:
    async with open_store(f"sqlite:///{db}") as store:
        return [t.text for t in await store.load_latest("ada", 10_000)]


@pytest.mark.parametrize("mode", ["packed", "items", "instructions"])
def test_history_does_not_nest_over_calls(tmp_path: Path, mode: str) -> None:
    """Four calls on one store (the demo twice): no reply quotes the replayed history,
    so what is stored stays what was said, and the history of call 4 holds each
    caller line once per call it was said in."""
    db = tmp_path / "calls.db"
    first, _ = _demo(db_path=db, user_id="ada", mode=mode)
    second, text = _demo(db_path=db, user_id="ada", mode=mode)
    assert first.ok and second.ok, (first.checks, second.checks)  # type: ignore[attr-defined]
    texts = asyncio.run(_stored_texts(db))
    assert texts.count(CALL_1_FIRST) == 2 and texts.count(CALL_2_FIRST) == 2
    for t in texts:
        assert f"<{HISTORY_TAG}>" not in t and SUMMARY_LABEL not in t, t
        assert CALL_1_FIRST not in t or t == CALL_1_FIRST, t  # never quoted by a reply
        assert len(t) < 200, t
    # what call 4 was given: every caller line of calls 1-3, once each
    replayed = " ".join(r.text for r in second.replayed)  # type: ignore[attr-defined]
    if mode != "instructions":  # there, the history rides in the instructions
        assert replayed.count(CALL_1_FIRST) == 2, replayed


def test_example_without_livekit_url_is_one_error_line(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIVEKIT_", "OPENAI_", "AZURE_OPENAI_"))
    }
    env["OPENAI_API_KEY"] = "sk-test"  # only the LiveKit settings are missing
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "dev"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "error: dev needs LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET: set them"
    ), lines
    assert list(tmp_path.iterdir()) == []


def test_example_does_not_import_the_demo_module() -> None:
    code = (
        "import runpy, sys\n"
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='voice_agent')\n"
        "assert 'livekit_history_plugin.demo' not in sys.modules, 'demo imported'\n"
        "assert 'livekit_history_plugin.testing' not in sys.modules, 'emulator imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
