"""`examples/voice_agent.py console --text` on a pseudo-terminal, against the emulator.

What a user does to try the example offline (README, "Example voice agent"): point the
example's Azure variables at a local emulator, run livekit's console in text mode, type a
line, read the reply, Ctrl+C; then a second call that must know the first. The process is
the real example under the real livekit console (1.3+: text mode arrived in 1.3); only the
keyboard and the screen are the test's.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from livekit_history_plugin.demo import CALL_1_FIRST, CALL_2_FIRST, orders_before_this_question
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.testing import ConversationView, RealtimeEmulator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "voice_agent.py"
# the participant identity of livekit's console room (ipc/mock_room.py, 1.2 - 1.8)
CONSOLE_USER = "mock_user"
CALL_1_LINE = "Hi, where is my order 4711?"
CALL_2_LINE = "Which order did I ask about last time?"
GREETING = "Hello, this is Acme."
GREETING_LOGGED = '"role": "assistant"'  # livekit's conversation_item_added log line (1.6+)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\r")


def _release() -> tuple[int, ...]:
    return tuple(int(p) for p in version("livekit-agents").split(".")[:2])


pytestmark = pytest.mark.skipif(
    _release() < (1, 3),
    reason="livekit-agents < 1.3: its console has no text mode (`console --text` is 1.3+)",
)


def scripted_model(view: ConversationView) -> str:
    """Answers the call-2 question only from what the server holds besides it, so the
    reply names order 4711 only if call 1's history was replayed into call 2."""
    if view.last_user_text == CALL_2_LINE:
        orders = orders_before_this_question(view)
        return f"Last time you asked about order {orders[-1]}." if orders else "No record."
    if view.last_user_text == CALL_1_LINE:
        return "Order 4711 ships tomorrow."
    return GREETING


class ConsoleCall:
    """One `voice_agent.py console --text` process whose terminal is a pty."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self._env = env
        self._cwd = cwd
        self._screen = ""
        self._changed = asyncio.Event()
        self._master, self._slave = pty.openpty()
        # rich lays the console out for the terminal's width; a wide one keeps lines whole
        fcntl.ioctl(self._slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 240, 0, 0))
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "console",
            "--text",
            stdin=self._slave,
            stdout=self._slave,
            stderr=self._slave,
            env=self._env,
            cwd=self._cwd,
            start_new_session=True,  # its own process group, as a terminal's job
        )
        asyncio.get_running_loop().add_reader(self._master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except OSError:  # EIO: every slave side closed
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self._master)
        self._screen += _ANSI.sub("", data.decode("utf-8", "replace"))
        self._changed.set()

    @property
    def screen(self) -> str:
        """Everything the process wrote to its terminal, without escape sequences."""
        return self._screen

    async def _screen_change(self, timeout: float) -> None:
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def wait_for_text(self, text: str, *, after: int = 0, timeout: float = 90.0) -> int:
        """Wait until `text` is on the screen past offset `after`; return where it ends."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (at := self._screen.find(text, after)) < 0:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or self._exited():
                raise AssertionError(f"not on the screen: {text!r}\n{self._screen[-3000:]}")
            await self._screen_change(min(remaining, 1.0))
        return at + len(text)

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def _reading_keys(self) -> bool:
        # livekit's prompt reads each key with echo and canonical mode off (cli/readchar.py),
        # after a TCSAFLUSH that discards input typed before it: type only then
        lflag = termios.tcgetattr(self._slave)[3]
        return not lflag & (termios.ECHO | termios.ICANON)

    async def type_line(self, line: str, *, timeout: float = 90.0) -> None:
        """Type `line` and Enter once the console's prompt reads keys."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._reading_keys():
            if asyncio.get_running_loop().time() > deadline or self._exited():
                raise AssertionError(f"the prompt never read keys\n{self._screen[-3000:]}")
            # the prompt redraws while it waits; the mode change itself has no event
            await self._screen_change(0.1)
        os.write(self._master, (line + "\r").encode())  # one write: read whole by the prompt

    async def ctrl_c(self, *, timeout: float = 90.0) -> int:
        """What Ctrl+C does in a terminal (SIGINT to its foreground job); the exit code."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def aclose(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        asyncio.get_running_loop().remove_reader(self._master)
        os.close(self._master)
        os.close(self._slave)


def _example_env(emu: RealtimeEmulator, db: Path, api_version: str | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LIVEKIT_", "OPENAI_", "AZURE_OPENAI_"))
    }
    env.update(
        AZURE_OPENAI_ENDPOINT=emu.base_url,  # plain http://127.0.0.1:PORT
        AZURE_OPENAI_API_KEY=emu.api_key,
        AZURE_OPENAI_DEPLOYMENT=emu.model,
        LIVEKIT_HISTORY_URL=f"sqlite:///{db}",
        TERM="xterm-256color",
        COLUMNS="240",
    )
    if api_version is not None:
        env["OPENAI_API_VERSION"] = api_version
    return env


async def _console_call(
    env: dict[str, str],
    cwd: Path,
    line: str,
    expect: tuple[str, ...],
    greeted: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Run one console call: type `line` (after `greeted()`: the console does not show the
    greeting), wait until each text of `expect` is on the screen, Ctrl+C. Returns the screen."""
    call = ConsoleCall(env, cwd)
    try:
        await call.start()
        if greeted is not None:
            await greeted()
        else:  # livekit 1.6+ logs each conversation item; the greeting is the first reply
            await call.wait_for_text(GREETING_LOGGED)
        await call.type_line(line)
        typed = await call.wait_for_text(line)
        for text in expect:  # a reply is logged before the console prints the turn's events
            await call.wait_for_text(text, after=typed)
        code = await call.ctrl_c()
        assert code == 0, call.screen[-3000:]
        assert "Traceback" not in call.screen, call.screen[-3000:]
        return call.screen
    finally:
        await call.aclose()


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "api_version",
    [
        pytest.param(None, id="azure-ga"),
        pytest.param("2024-10-01-preview", id="azure-legacy"),
    ],
)
async def test_console_text_mode_two_calls(tmp_path: Path, api_version: str | None) -> None:
    if api_version is None and _release() < (1, 5):
        pytest.skip("Azure GA (/openai/v1) needs livekit-plugins-openai >= 1.5")
    db = tmp_path / "h.db"
    async with RealtimeEmulator(reply=scripted_model) as emu:
        env = _example_env(emu, db, api_version)

        def greeting_of_call(n: int) -> Callable[[], Awaitable[None]]:
            def greeted() -> bool:
                return len(emu.sessions) == n and any(
                    r.text == GREETING and r.status != "in_progress"
                    for r in emu.sessions[-1].responses
                )

            return lambda: emu.wait_until(greeted, timeout=90)

        await _console_call(
            env, tmp_path, CALL_1_LINE, ("Order 4711 ships tomorrow.",), greeting_of_call(1)
        )
        async with open_store(f"sqlite:///{db}") as store:
            call_1 = [(t.role, t.text) for t in await store.load_latest(CONSOLE_USER, 100)]
        assert ("user", CALL_1_LINE) in call_1, call_1
        assert ("assistant", "Order 4711 ships tomorrow.") in call_1, call_1

        await _console_call(
            env,
            tmp_path,
            CALL_2_LINE,
            ("Last time you asked about order 4711.",),
            greeting_of_call(2),
        )
        first, second = emu.sessions[0], emu.sessions[-1]
        assert second is not first
        # call 1's turns are on call 2's server conversation, each acknowledged, none refused
        # (default mode `packed`: one transcript item holds the earlier turns)
        on_server = " ".join(text for _role, text in second.texts())
        assert CALL_1_LINE in on_server and "Order 4711 ships tomorrow." in on_server, on_server
        # livekit <= 1.4's beta class cancels a response that is not active when it updates
        # tools; the API answers response_cancel_not_active and livekit ignores it
        errors = [c for c in second.error_codes() if c != "response_cancel_not_active"]
        assert errors == [], second.error_codes()
        async with open_store(f"sqlite:///{db}") as store:
            calls = await store.load_calls(CONSOLE_USER, 10)
        replay = max(calls, key=lambda c: c.started_at).history_replay
        assert replay is not None and replay.items_sent >= 1, calls
        assert replay.confirmed == replay.items_sent and replay.rejected == [], replay
        assert replay.confirmed_by.get("ack") == replay.items_sent, replay


async def _start_emulator_command() -> tuple[asyncio.subprocess.Process, str]:
    """`livekit-history emulator --port 0`, as the README runs it; its URL."""
    cli = Path(sys.executable).with_name("livekit-history")
    proc = await asyncio.create_subprocess_exec(
        str(cli), "emulator", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    found = re.search(r"realtime emulator on (http://127\.0\.0\.1:\d+)", first)
    assert found, first
    return proc, found.group(1)


@pytest.mark.timeout(400)
async def test_readme_steps_with_the_emulator_command(tmp_path: Path) -> None:
    """The README's offline steps: `livekit-history emulator` (the demo's scripted model),
    then the example in `console --text`, twice with the demo's lines."""
    if _release() < (1, 6):
        pytest.skip(
            "livekit-agents < 1.6: its console shows neither the greeting nor a log of it, "
            "and this test, with the emulator in another process, has no other sign of it"
        )
    proc, url = await _start_emulator_command()
    try:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LIVEKIT_", "OPENAI_", "AZURE_OPENAI_"))
        }
        env.update(
            AZURE_OPENAI_ENDPOINT=url,
            AZURE_OPENAI_API_KEY="emulator-key",
            AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
            LIVEKIT_HISTORY_URL=f"sqlite:///{tmp_path / 'h.db'}",
            TERM="xterm-256color",
        )
        # the scripted model hands CALL_1_FIRST to the specialist, who looks the order up
        await _console_call(
            env, tmp_path, CALL_1_FIRST, ("transfer_to_specialist", "Order 4711: shipped")
        )
        # and answers call 2's question only from what the server holds besides it
        await _console_call(env, tmp_path, CALL_2_FIRST, ("Last time you asked about order 4711.",))
        show = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("livekit-history")),
            *("--store", env["LIVEKIT_HISTORY_URL"], "show", CONSOLE_USER),
            stdout=asyncio.subprocess.PIPE,
            env={**env, "COLUMNS": "400"},
        )
        shown = (await asyncio.wait_for(show.communicate(), 60))[0].decode()
        assert show.returncode == 0 and "2 calls" in shown and CALL_1_FIRST in shown, shown
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl+C in the emulator's terminal
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
