"""Several processes and many sessions on one store."""

from __future__ import annotations

import asyncio

import pytest

from livekit_history_plugin.history.models import Turn

from .helpers import Backend, popen_proc, spoken_key, turn

N = 30  # turns per worker conversation (and in the shared one)


def check_history(turns: list[Turn]) -> None:
    assert turns == sorted(turns, key=spoken_key), "history out of spoken order"
    keys = [t.idempotency_key for t in turns]
    assert len(keys) == len(set(keys)), "duplicate turns"


async def test_two_worker_processes_append_the_same_caller(backend: Backend) -> None:
    """Two workers record the same caller at once (each its own conversation plus
    the same shared one), and race on the first migration too."""
    procs = [popen_proc("append", backend.url, "caller", f"w{i}", str(N)) for i in range(2)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdin is not None
            line = await asyncio.to_thread(p.stdout.readline)
            assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        async with backend.store() as store:
            # a reader in a third process-like role sees a consistent history throughout
            while any(p.poll() is None for p in procs):
                check_history(await store.load_latest("caller", 1000))
                await asyncio.sleep(0.01)
            outs = [p.communicate(timeout=60) for p in procs]
            for p, (out, err) in zip(procs, outs, strict=True):
                assert p.returncode == 0, err
                assert out.strip().endswith("done")
            final = await store.load_latest("caller", 1000)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    check_history(final)
    assert len(final) == 3 * N
    for conv in ("w0", "w1", "both"):
        assert [t.seq for t in final if t.conversation_id == conv] == list(range(N)), conv


@pytest.mark.parametrize("backend", ["postgresql", "redis"], indirect=True)
async def test_100_concurrent_sessions(backend: Backend) -> None:
    rounds = 8
    async with backend.store() as store:

        async def session(n: int) -> None:
            user = f"caller-{n}"
            for i in range(rounds):
                await store.append([turn(user=user, conv=f"call-{n}", seq=i)])
                got = await store.load_latest(user, 20)
                assert [t.seq for t in got] == list(range(i + 1))
                assert {t.user_id for t in got} == {user}

        await asyncio.gather(*(session(n) for n in range(100)))
        stats = await store.stats()
    assert (stats.users, stats.turns) == (100, 100 * rounds)
