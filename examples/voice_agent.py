"""A LiveKit voice agent that remembers its callers across calls.

Realtime model: Azure OpenAI when AZURE_OPENAI_ENDPOINT is set (with
AZURE_OPENAI_API_KEY, AZURE_OPENAI_DEPLOYMENT and optionally OPENAI_API_VERSION
for a legacy api-version deployment), else OpenAI (OPENAI_API_KEY). History
store: LIVEKIT_HISTORY_URL (default sqlite:///livekit_history.db).

Two agents: a Greeter that hands off to a Specialist by returning it from its
`transfer_to_specialist` tool, both with a `remember_preference` tool that
stores a durable fact for every later call (`livekit_history_plugin.example_agents`,
which the offline demo runs too).

    python examples/voice_agent.py dev      # or start, as any LiveKit agent
                                            # (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)
    python examples/voice_agent.py console  # talk to it in the terminal, no LiveKit server
    python examples/voice_agent.py demo     # offline: no credentials, no network
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, NoReturn

from livekit.agents import AgentSession, JobContext, JobProcess, WorkerOptions, cli
from livekit.plugins import openai

import livekit_history_plugin
from livekit_history_plugin import HistoryPlugin
from livekit_history_plugin.example_agents import GREETER_INSTRUCTIONS, CallState, Greeter

# commands that connect the worker to a LiveKit server, and what each needs
_SERVER_COMMANDS = ("dev", "start", "connect")
_SERVER_SETTINGS = (
    ("LIVEKIT_URL", "--url"),
    ("LIVEKIT_API_KEY", "--api-key"),
    ("LIVEKIT_API_SECRET", "--api-secret"),
)


def realtime_model() -> Any:
    """Azure OpenAI when AZURE_OPENAI_ENDPOINT is set, else OpenAI."""
    if os.environ.get("AZURE_OPENAI_ENDPOINT"):
        kwargs: dict[str, Any] = {}
        if os.environ.get("OPENAI_API_VERSION"):  # legacy deployments; unset: Azure GA (/v1)
            kwargs["api_version"] = os.environ["OPENAI_API_VERSION"]
        return openai.realtime.RealtimeModel.with_azure(
            azure_deployment=os.environ["AZURE_OPENAI_DEPLOYMENT"],
            azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"],
            api_key=os.environ["AZURE_OPENAI_API_KEY"],
            **kwargs,
        )
    return openai.realtime.RealtimeModel()  # OPENAI_API_KEY


def prewarm(proc: JobProcess) -> None:
    # one store connection (pool) per worker process, shared by its calls
    proc.userdata["history"] = HistoryPlugin()
    livekit_history_plugin.warm_up()  # build the tokenizer now, not during the first call


async def entrypoint(ctx: JobContext) -> None:
    history: HistoryPlugin = ctx.proc.userdata["history"]
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    user_id = participant.identity  # e.g. the caller's phone number for SIP calls

    loaded = await history.load(user_id, instructions=GREETER_INSTRUCTIONS)
    state = CallState(history=history, user_id=user_id, loaded=loaded)
    session: AgentSession[CallState] = AgentSession(llm=realtime_model(), userdata=state)
    recorder = history.attach(session, user_id=user_id)  # before session.start

    async def flush_history() -> None:
        # not `add_shutdown_callback(recorder.aclose)`: livekit would pass the shutdown
        # reason as aclose's `timeout`
        await recorder.aclose()

    ctx.add_shutdown_callback(flush_history)  # every turn is written before the job ends

    await session.start(
        Greeter(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx), room=ctx.room
    )
    await session.generate_reply(instructions="Greet the caller.")


def missing_settings(argv: list[str]) -> list[str]:
    """What a command that connects to a LiveKit server lacks (env var or option)."""
    if argv[:1] and argv[0] not in _SERVER_COMMANDS:
        return []
    given = {a.split("=", 1)[0] for a in argv}
    return [env for env, option in _SERVER_SETTINGS if not os.environ.get(env) and option not in given]


def missing_model_settings() -> list[str]:
    """What the realtime model lacks: Azure's three settings, or an OpenAI key."""
    if os.environ.get("AZURE_OPENAI_ENDPOINT"):
        needed = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_DEPLOYMENT")
        return [name for name in needed if not os.environ.get(name)]
    return [] if os.environ.get("OPENAI_API_KEY") else ["OPENAI_API_KEY (or AZURE_OPENAI_*)"]


class AudioUnavailableError(ValueError):
    # a ValueError: livekit's console (1.4 - 1.8) prints those as one error line, no traceback
    pass


class _NoPortAudio(types.ModuleType):
    """Stands in for `sounddevice` when PortAudio is missing: fails only if audio is used."""

    def __init__(self, reason: str) -> None:
        super().__init__("sounddevice")
        self._reason = reason

    def __getattr__(self, name: str) -> NoReturn:
        raise AudioUnavailableError(
            f"audio console needs the PortAudio library ({self._reason}; on Debian/Ubuntu: "
            "apt install libportaudio2); text mode works without it"
        )


def allow_text_console_without_portaudio(argv: list[str]) -> None:
    """Let `console --text` run where `sounddevice` cannot load PortAudio (servers, CI).

    livekit's console imports sounddevice before it looks at the mode (1.3 - 1.8:
    `_run_console` -> `AgentsConsole._validate_device_or_raise`), so text mode, which
    records and plays nothing, would end in `OSError: PortAudio library not found`.
    """
    if argv[:1] != ["console"] or "--text" not in argv or "sounddevice" in sys.modules:
        return
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:
        sys.modules["sounddevice"] = _NoPortAudio(str(exc))


def console_server_placeholders(argv: list[str]) -> None:
    """Give `console` the LiveKit settings livekit 1.3 - 1.5 insist on but never use.

    Their worker requires LIVEKIT_URL / _API_KEY / _API_SECRET even for the console's
    local room (worker.py `run`; 1.6 checks them only for a registered worker). Placeholders
    as livekit 1.2 set them for console; not on 1.6+, where a key would switch the turn
    detector to LiveKit's hosted inference.
    """
    from livekit.agents import __version__ as agents_version

    release = tuple(int(part) for part in agents_version.split(".")[:2])
    if argv[:1] != ["console"] or release >= (1, 6):
        return
    os.environ.setdefault("LIVEKIT_URL", "ws://localhost:7881/fake_console_url")
    os.environ.setdefault("LIVEKIT_API_KEY", "fake_console_key")
    os.environ.setdefault("LIVEKIT_API_SECRET", "fake_console_secret")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["demo"]:
        from livekit_history_plugin._cli_main import main as history_cli

        sys.exit(history_cli(["demo", *argv[1:]]))
    if argv[:1] and argv[0] in (*_SERVER_COMMANDS, "console"):
        # livekit would start anyway and fail later with a traceback (and exit 0)
        missing = (missing_settings(argv) if argv[0] != "console" else []) + (
            missing_model_settings()
        )
        if missing:
            sys.stderr.write(
                f"error: {argv[0]} needs {', '.join(missing)}: set them in the environment "
                "(see the README, section \"Example voice agent\")\n"
            )
            sys.exit(2)
    allow_text_console_without_portaudio(argv)
    console_server_placeholders(argv)
    cli.run_app(WorkerOptions(entrypoint_fnc=entrypoint, prewarm_fnc=prewarm))


if __name__ == "__main__":
    main()
