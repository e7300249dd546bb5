"""The call log on every backend (real SQLite file, PostgreSQL, Redis): records
kept per call, newest first, replaced on a retry, deleted with the user, purged
by age, bounded on Redis; and `livekit-history trace USER` reading it."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from typer.testing import CliRunner

from livekit_history_plugin.cli import ExitCode, app
from livekit_history_plugin.history.calls import (
    MAX_CALLS_PER_USER,
    CallRecord,
    LoadReport,
    ReplayTally,
    build_call_record,
)
from livekit_history_plugin.replay.report import RejectedItem, ReplayReport

from .helpers import Backend, turn

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)


def replay_report(at: datetime, *, rejected: int = 0) -> ReplayReport:
    return ReplayReport(
        started_at=at,
        duration_s=0.061,
        dialect="ga",
        items_sent=12,
        confirmed=12 - rejected,
        confirmed_by={"ack": 12 - rejected},
        rejected=[
            RejectedItem(item_id=f"item_{i:02d}", code="invalid_value", message="quotes the text")
            for i in range(rejected)
        ],
        events_sent=12,
        ack_latency_p50_s=0.052,
        ack_latency_max_s=0.060,
        round_trips=1.2,
    )


def record(conv: str, ended: datetime, *, user: str = "ada", rejected: int = 0) -> CallRecord:
    loaded = LoadReport(
        started_at=ended - timedelta(minutes=5),
        duration_s=0.004,
        store="sqlite",
        mode="packed",
        turns=8,
        tokens=840,
        budget=13_000,
        summary_used=True,
        facts=1,
    )
    gate = type("Gate", (), {"opened_after": 0.064, "reason": "replayed", "frames_held": 3})()
    built = build_call_record(
        user_id=user,
        conversation_id=conv,
        started_at=ended - timedelta(minutes=5),
        loaded=loaded,
        replays=ReplayTally.of([replay_report(ended - timedelta(minutes=5), rejected=rejected)]),
        gate=gate,
        turns_recorded=6,
        turns_dropped=0,
        turns_late=0,
        write_retries=2,
    )
    return built.model_copy(update={"ended_at": ended})


async def test_records_are_kept_newest_first_and_replaced_on_retry(backend: Backend) -> None:
    async with backend.store() as store:
        for c in range(3):
            await store.record_call(record(f"call-{c}", T0 + timedelta(days=c)))
        await store.record_call(record("other", T0, user="bob"))
        got = await store.load_calls("ada", 10)
        assert [r.conversation_id for r in got] == ["call-2", "call-1", "call-0"]
        assert got[0] == record("call-2", T0 + timedelta(days=2))
        assert [r.conversation_id for r in await store.load_calls("ada", 2)] == [
            "call-2",
            "call-1",
        ]
        assert await store.load_calls("ada", 0) == []
        # the record of a call written again (a retried close) replaces the first
        await store.record_call(record("call-1", T0 + timedelta(days=3), rejected=1))
        got = await store.load_calls("ada", 10)
        assert [r.conversation_id for r in got] == ["call-1", "call-2", "call-0"]
        assert got[0].items_rejected == 1
        assert [r.conversation_id for r in await store.load_calls("bob", 10)] == ["other"]


async def test_the_record_keeps_codes_not_the_servers_message(backend: Backend) -> None:
    async with backend.store() as store:
        await store.record_call(record("call-0", T0, rejected=1))
        (got,) = await store.load_calls("ada", 1)
    assert got.history_replay is not None
    assert [(r.item_id, r.code, r.message) for r in got.history_replay.rejected] == [
        ("item_00", "invalid_value", "")
    ]
    assert got.rejected_codes == {"invalid_value": 1}


async def test_records_go_with_the_user_and_with_age(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append([turn("ada", at=T0)])
        await store.record_call(record("old", T0 - timedelta(days=40)))
        await store.record_call(record("new", datetime.now(timezone.utc)))
        await store.record_call(record("keep", datetime.now(timezone.utc), user="bob"))
        await store.purge_older_than(timedelta(days=30))
        assert [r.conversation_id for r in await store.load_calls("ada", 10)] == ["new"]
        await store.delete_user("ada")
        assert await store.load_calls("ada", 10) == []
        assert [r.conversation_id for r in await store.load_calls("bob", 10)] == ["keep"]


async def test_redis_keeps_a_bounded_number_of_calls(redis_backend: Backend) -> None:
    async with redis_backend.store() as store:
        for c in range(MAX_CALLS_PER_USER + 5):
            await store.record_call(record(f"call-{c:03d}", T0 + timedelta(minutes=c)))
        got = await store.load_calls("ada", MAX_CALLS_PER_USER + 5)
    assert len(got) == MAX_CALLS_PER_USER
    assert got[0].conversation_id == f"call-{MAX_CALLS_PER_USER + 4:03d}"
    assert got[-1].conversation_id == "call-005"


# -- the CLI ----------------------------------------------------------------------------


def _invoke(url: str, *args: str) -> Any:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2 keeps them apart anyway
        runner = CliRunner()
    return runner.invoke(app, ["--store", url, *args], env={"COLUMNS": "200"})


async def _seed(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append([turn("ada", "call-0", 0, at=T0), turn("ada", "call-1", 0, at=T0)])
        await store.record_call(record("call-0", T0))
        await store.record_call(record("call-1", T0 + timedelta(days=1), rejected=1))


async def test_trace_shows_the_last_calls(backend: Backend) -> None:
    await _seed(backend)
    result = await asyncio.to_thread(_invoke, backend.url, "trace", "ada")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.index("call-1") < out.index("call-0")  # newest first
    assert "packed: 8 turns + summary" in out
    assert "840/13,000 tokens" in out
    assert "12 sent, 11 confirmed, 1 rejected" in out
    assert "item_00 invalid_value" in out
    assert "ack p50 52 ms, max 60 ms" in out
    assert "0.06 s" in out and "3 frames" in out
    assert "6 turns, 2 write retries" in out

    result = await asyncio.to_thread(_invoke, backend.url, "trace", "ada", "--json", "-n", "1")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["user_id"] == "ada"
    assert [c["conversation_id"] for c in data["calls"]] == ["call-1"]
    assert CallRecord.model_validate(data["calls"][0]) == record(
        "call-1", T0 + timedelta(days=1), rejected=1
    )


async def test_trace_of_an_unknown_user_exits_2(backend: Backend) -> None:
    await _seed(backend)
    result = await asyncio.to_thread(_invoke, backend.url, "trace", "nobody")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert result.stderr.startswith("error: unknown user 'nobody'")


def test_a_long_call_keeps_its_first_replay_and_totals() -> None:
    # more updates than an adapter keeps reports of: nothing is lost from the record
    reports = [replay_report(T0 + timedelta(seconds=i), rejected=i % 2) for i in range(40)]
    tally = ReplayTally()
    for r in reports:
        tally.add(r)
    assert tally.first == reports[0]
    assert (tally.replays, tally.items_sent, tally.items_rejected) == (40, 480, 20)
    assert tally.rejected_codes == {"invalid_value": 20}
    assert ReplayTally.of(list(reversed(reports))).first == reports[0]
