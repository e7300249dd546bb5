"""The package root as a user meets it: the README's calls work as written, and
every root export is typed for mypy (lazy exports are not `Any`)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_warm_up_call() -> str:
    found = re.findall(r"`(livekit_history_plugin\.[\w.]*warm_up\(\))`", README)
    assert found, "the README no longer documents warm_up()"
    return str(found[0])


def test_the_readme_warm_up_call_works_after_importing_the_package() -> None:
    call = _readme_warm_up_call()
    code = f"import livekit_history_plugin\n{call}\nprint('ok')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


SNIPPET = textwrap.dedent(
    """
    from livekit_history_plugin import (
        HistoryConfig, HistoryPlugin, HistoryStore, ReplayOptions, Turn, open_store,
        sanitize_chat_ctx, warm_up, wrap_realtime_model,
    )

    reveal_type(HistoryPlugin)
    reveal_type(open_store)
    reveal_type(Turn)
    reveal_type(HistoryConfig)
    reveal_type(HistoryStore)
    reveal_type(ReplayOptions)
    reveal_type(wrap_realtime_model)
    reveal_type(sanitize_chat_ctx)
    reveal_type(warm_up)

    async def use(user_id: str) -> None:
        plugin = HistoryPlugin("sqlite:///h.db")
        loaded = await plugin.load(user_id)
        reveal_type(loaded)
        reveal_type(open_store("sqlite:///h.db"))
    """
)


@pytest.mark.slow
def test_root_exports_are_typed_for_mypy(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    revealed = [ln for ln in proc.stdout.splitlines() if "Revealed type is" in ln]
    assert len(revealed) == 11, proc.stdout + proc.stderr
    for line in revealed:
        assert '"Any"' not in line, line
    text = "\n".join(revealed)
    for name in (
        "livekit_history_plugin.history.plugin.HistoryPlugin",
        "livekit_history_plugin.history.stores.base.HistoryStore",
        "livekit_history_plugin.history.models.Turn",
        "livekit_history_plugin.history.plugin.LoadedHistory",
        "livekit_history_plugin.compat",
    ):
        assert name in text, text
    errors = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert errors == [], errors
