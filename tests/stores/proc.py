"""Child-process entry points for the store tests (a real second process).

proc.py append URL USER CONV N    wait for "go" on stdin, then append N turns of
                                  CONV one by one, interleaved with the shared
                                  conversation "both" (same keys in every worker)
proc.py written URL USER          record turns forever through a HistoryWriter,
                                  printing "written KEY" from on_written
proc.py diskfull URL LIMIT        append under RLIMIT_FSIZE=LIMIT bytes until the
                                  store fails; print "ok TOTAL" / "error MESSAGE"
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from datetime import datetime, timedelta, timezone


def _bare_package() -> None:
    """Import our store modules without the package __init__, which imports
    livekit.agents (seconds per process); a storage child needs none of it."""
    spec = importlib.util.find_spec("livekit_history_plugin")
    assert spec is not None and spec.submodule_search_locations is not None
    pkg = types.ModuleType("livekit_history_plugin")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["livekit_history_plugin"] = pkg


_bare_package()

from livekit_history_plugin.history.models import Role, Turn, utcnow  # noqa: E402
from livekit_history_plugin.history.stores import StoreError, open_store  # noqa: E402
from livekit_history_plugin.history.writer import HistoryWriter  # noqa: E402

SHARED_T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _turn(user: str, conv: str, seq: int, at: datetime, text: str = "") -> Turn:
    return Turn(
        user_id=user,
        conversation_id=conv,
        seq=seq,
        role=Role.USER if seq % 2 == 0 else Role.ASSISTANT,
        text=text or f"{conv}/{seq}",
        created_at=at,
    )


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def append(url: str, user: str, conv: str, n: int) -> None:
    async with open_store(url) as store:
        say("ready")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for seq in range(n):
            await store.append([_turn(user, conv, seq, utcnow())])
            shared = _turn(user, "both", seq, SHARED_T0 + timedelta(seconds=seq))
            await store.append([shared])
    say("done")


async def written(url: str, user: str) -> None:
    async with open_store(url) as store:
        writer = HistoryWriter(
            store,
            batch_size=1,
            on_written=lambda batch: [say(f"written {t.idempotency_key}") for t in batch],
        )
        seq = 0
        while True:  # until the parent kills us
            writer.submit(_turn(user, "c1", seq, utcnow()))
            seq += 1
            await writer.flush()


async def diskfull(url: str, limit: int) -> None:
    import resource
    import signal

    # exceeding RLIMIT_FSIZE makes write() fail with EFBIG, as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    async with open_store(url) as store:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        total = 0
        for batch_no in range(10_000):
            batch = [
                _turn("u1", "c1", batch_no * 20 + i, utcnow(), text="z" * 2_000) for i in range(20)
            ]
            try:
                total += await store.append(batch)
            except StoreError as e:
                say(f"error {type(e).__name__}: {e}")
                break
            say(f"ok {total}")
        # reads keep working after a failed write
        say(f"readable {len(await store.load_latest('u1', 5))}")


def main() -> None:
    mode, url, *rest = sys.argv[1:]
    if mode == "append":
        asyncio.run(append(url, rest[0], rest[1], int(rest[2])))
    elif mode == "written":
        asyncio.run(written(url, rest[0]))
    elif mode == "diskfull":
        asyncio.run(diskfull(url, int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
