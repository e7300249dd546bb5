"""Out-of-order acks: does livekit's mirror (`session.chat_ctx`) equal the server?

40 chat items replayed on the real livekit client against the bundled emulator,
whose acks come back reversed or shuffled (one window of 40); on the xAI path
(livekit-plugins-xai, where installed) with xAI's quirks too. For livekit's own `update_chat_ctx`
and for a model wrapped by `wrap_realtime_model`, on every path of the
installed release: whether the mirror equals the server when the update
returns, how many of the server's 40 items sit at another position in the
mirror (missing ones included), and the warnings logged.
Not a test: run `python bench/ack_order.py [--items 40]` in any matrix venv.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
from collections.abc import Callable
from typing import Any

from livekit.agents import __version__ as livekit_version
from livekit.agents import llm
from livekit.plugins import openai as lk_openai

from livekit_history_plugin import wrap_realtime_model
from livekit_history_plugin.testing import FaultConfig, ProviderQuirks, RealtimeEmulator

RELEASE = tuple(int(p) for p in livekit_version.split(".")[:2])


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "api_version" not in record.getMessage():
            self.count += 1


Build = Callable[[RealtimeEmulator], Any]


def paths() -> dict[str, tuple[Build, ProviderQuirks]]:
    found: dict[str, Build] = {
        "azure-legacy": lambda e: lk_openai.realtime.RealtimeModel.with_azure(
            **e.azure_kwargs(), **modalities()
        ),
    }
    if RELEASE >= (1, 2):
        found["openai-ga"] = lambda e: lk_openai.realtime.RealtimeModel(
            **e.openai_kwargs(), **modalities()
        )
    if RELEASE >= (1, 5):
        found["azure-ga"] = lambda e: lk_openai.realtime.RealtimeModel.with_azure(
            **e.azure_kwargs(api_version=None), **modalities()
        )
    quirks = {name: ProviderQuirks() for name in found}
    if importlib.util.find_spec("livekit.plugins.xai") is not None:
        from livekit.plugins import xai

        found["xai"] = lambda e: xai.realtime.RealtimeModel(api_key="k", base_url=e.openai_base_url)
        quirks["xai"] = ProviderQuirks.of("xai")
    return {name: (found[name], quirks[name]) for name in found}


def modalities() -> dict[str, Any]:
    return {"modalities": ["text"]} if RELEASE >= (1, 2) else {}


ORDERINGS: dict[str, dict[str, Any]] = {
    "reversed": {"reorder_acks": 10_000},
    "shuffled": {"reorder_acks": 10_000, "reorder_seed": 7},
}


async def run_one(
    build: Build, quirks: ProviderQuirks, ordering: str, n: int, wrapped: bool
) -> dict[str, Any]:
    faults = ORDERINGS[ordering]
    counter = _Count()
    logging.getLogger("livekit").addHandler(counter)
    try:
        async with RealtimeEmulator(faults=FaultConfig(**faults), quirks=quirks) as emu:
            model = build(emu)
            if wrapped:
                wrap_realtime_model(model)
            session = model.session()
            await emu.wait_for_session()
            ids = [f"b{i:03d}" for i in range(n)]
            ctx = llm.ChatContext(
                [llm.ChatMessage(id=i, role="user", content=[f"text {i}"]) for i in ids]
            )
            try:
                await asyncio.wait_for(session.update_chat_ctx(ctx), 30)
                mirror = [item.id for item in session.chat_ctx.items]
            except Exception as e:  # livekit's own update can time out
                mirror = [f"<{type(e).__name__}>"]
            server = emu.last_session.item_ids
            await session.aclose()
    finally:
        logging.getLogger("livekit").removeHandler(counter)
    misplaced = sum(1 for i, item_id in enumerate(server) if i >= len(mirror) or mirror[i] != item_id)
    return {"equal": mirror == server, "misplaced": misplaced, "warnings": counter.count}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=40)
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_VERSION", None)
    print(f"livekit-agents {livekit_version}, {args.items} items, acks in one window\n")
    print("| path | acks | livekit: mirror == server | misplaced | warnings | wrapped: mirror == server | misplaced | warnings |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: |")
    for name, (build, quirks) in paths().items():
        for ordering in ORDERINGS:
            own = await run_one(build, quirks, ordering, args.items, wrapped=False)
            ours = await run_one(build, quirks, ordering, args.items, wrapped=True)
            print(
                f"| {name} | {ordering} | {own['equal']} | {own['misplaced']} | {own['warnings']} "
                f"| {ours['equal']} | {ours['misplaced']} | {ours['warnings']} |"
            )


if __name__ == "__main__":
    asyncio.run(main())
