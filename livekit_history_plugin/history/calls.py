"""The call log: what each call loaded, replayed and recorded.

At a call's end the recorder keeps one small `CallRecord` per conversation in
the store (`HistoryStore.record_call`; SQLite / PostgreSQL table `calls`, on
Redis a bounded sorted set per user) - counts, codes and times only, never a
turn's text - so `livekit-history trace USER` can show a caller's last calls
after the fact, without a tracing backend. Nothing here imports livekit: the
CLI reads these records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ..log import logger
from ..replay.report import ReplayReport
from .models import Ident, Summary, Turn
from .stores.base import StoreError

if TYPE_CHECKING:
    from .recorder import Recorder

__all__ = ["CallLog", "CallRecord", "LoadReport", "ReplayTally", "build_call_record", "finish_call", "report_load", "store_kind"]

# calls kept per user on Redis (SQL stores keep them until purged by age)
MAX_CALLS_PER_USER = 100


def store_kind(url: str) -> str:
    """"sqlite", "postgresql" or "redis": a store's kind, never its address or password."""
    scheme = urlsplit(url).scheme.lower()
    return "postgresql" if scheme in ("postgres", "postgresql") else scheme or "unknown"


class LoadReport(BaseModel):
    """What `HistoryPlugin.load` gave a call (what its `history.load` span shows)."""

    model_config = ConfigDict(frozen=True)

    started_at: datetime
    duration_s: float
    store: str = Field(description="store kind: sqlite, postgresql, redis")
    mode: str
    turns: int
    tokens: int
    budget: int
    summary_used: bool
    facts: int
    summarized_turns: int = 0
    failed: bool = Field(False, description="the store failed; the call started without history")


class CallRecord(BaseModel):
    """One call of a user, as kept in the call log."""

    model_config = ConfigDict(frozen=True)

    user_id: Ident
    conversation_id: Ident
    started_at: datetime
    ended_at: datetime
    loaded: LoadReport | None = None
    replays: int = Field(0, description="chat-context updates run on the call's sessions")
    history_replay: ReplayReport | None = Field(
        None, description="the call's first update (the one that put the history on the server)"
    )
    items_sent: int = Field(0, description="over every update of the call")
    items_rejected: int = 0
    rejected_codes: dict[str, int] = Field(default_factory=dict)
    resends: int = 0
    audio_gate_held_s: float | None = None
    audio_gate_reason: str | None = None
    audio_frames_held: int = 0
    turns_recorded: int = Field(0, description="turns the store confirmed durable")
    turns_dropped: int = 0
    turns_late: int = 0
    write_retries: int = 0


class ReplayTally:
    """The replays of one call, folded as they happen: the first report (the
    history's) and running totals, so a long call keeps nothing per update."""

    def __init__(self) -> None:
        self.first: ReplayReport | None = None
        self.replays = 0
        self.items_sent = 0
        self.items_rejected = 0
        self.resends = 0
        self.rejected_codes: dict[str, int] = {}

    @classmethod
    def of(cls, reports: Sequence[ReplayReport]) -> ReplayTally:
        tally = cls()
        for r in sorted(reports, key=lambda r: r.started_at):
            tally.add(r)
        return tally

    def add(self, report: ReplayReport) -> None:
        if self.first is None or report.started_at < self.first.started_at:
            self.first = report
        self.replays += 1
        self.items_sent += report.items_sent
        self.items_rejected += len(report.rejected)
        self.resends += report.resends
        for code, n in report.rejected_codes.items():
            self.rejected_codes[code] = self.rejected_codes.get(code, 0) + n


def _without_messages(report: ReplayReport) -> ReplayReport:
    # the server's wording can quote the item: the call log keeps codes only
    rejected = [r.model_copy(update={"message": ""}) for r in report.rejected]
    return report.model_copy(update={"rejected": rejected})


def build_call_record(
    *,
    user_id: str,
    conversation_id: str,
    started_at: datetime,
    loaded: LoadReport | None,
    replays: ReplayTally,
    gate: Any | None,
    turns_recorded: int,
    turns_dropped: int,
    turns_late: int,
    write_retries: int,
) -> CallRecord:
    """`gate`: a compat `AudioGateStats` (or None when audio was not held)."""
    held = getattr(gate, "opened_after", None)
    return CallRecord(
        user_id=user_id,
        conversation_id=conversation_id,
        started_at=started_at,
        ended_at=datetime.now(timezone.utc),
        loaded=loaded,
        replays=replays.replays,
        history_replay=_without_messages(replays.first) if replays.first else None,
        items_sent=replays.items_sent,
        items_rejected=replays.items_rejected,
        rejected_codes=dict(replays.rejected_codes),
        resends=replays.resends,
        audio_gate_held_s=held if isinstance(held, float) else None,
        audio_gate_reason=getattr(gate, "reason", None),
        audio_frames_held=int(getattr(gate, "frames_held", 0) or 0),
        turns_recorded=turns_recorded,
        turns_dropped=turns_dropped,
        turns_late=turns_late,
        write_retries=write_retries,
    )


def report_load(
    *,
    store_url: str,
    user_id: str,
    mode: str,
    turns: Sequence[Turn],
    summary: Summary | None,
    facts: int,
    tokens: int,
    budget: int,
    summarized_turns: int,
    failed: bool,
    instructions: str,
    start_ns: int,
) -> LoadReport:
    """The `LoadReport` of one `HistoryPlugin.load`, and its `history.load` span."""
    from .. import telemetry

    end_ns = time.time_ns()
    report = LoadReport(
        started_at=datetime.fromtimestamp(start_ns / 1e9, timezone.utc),
        duration_s=max(0, end_ns - start_ns) / 1e9,
        store=store_kind(store_url),
        mode=mode,
        turns=len(turns),
        tokens=tokens,
        budget=budget,
        summary_used=summary is not None,
        facts=facts,
        summarized_turns=summarized_turns,
        failed=failed,
    )
    a = telemetry.ATTR
    telemetry.record_load(
        {
            a["store"]: report.store,
            a["mode"]: report.mode,
            a["turns"]: report.turns,
            a["tokens"]: report.tokens,
            a["budget"]: report.budget,
            a["summary_used"]: report.summary_used,
            a["facts"]: report.facts,
            a["summarized_turns"]: report.summarized_turns,
            a["load_failed"]: report.failed,
        },
        user_id=user_id,
        turns=[(t.role.value, t.text) for t in turns],
        summary=summary.text if summary is not None else None,
        instructions=instructions,
        start_ns=start_ns,
        end_ns=end_ns,
    )
    return report


class CallLog:
    """What a recorder keeps of its call for the call record: when it started,
    what `load` gave it, the replays (each as it is reported) and audio gate of each realtime
    session (kept, not the sessions: those may be gone by the call's end)."""

    def __init__(self) -> None:
        self.started_at = datetime.now(timezone.utc)
        self.loaded: LoadReport | None = None
        self.replays = ReplayTally()
        self._gates: list[Any] = []

    def watch(self, adapter: Any) -> None:
        """Count the replays of a compat `SessionAdapter` (those reported so far and
        every later one) and keep its gate, if it holds audio."""
        for report in adapter.reports:
            self.replays.add(report)
        adapter.report_listeners.append(self.replays.add)
        if adapter.options.audio_gate_timeout is not None:
            self._gates.append(adapter.audio_gate)

    @property
    def gate(self) -> Any | None:
        return self._gates[0] if self._gates else None


async def finish_call(recorder: Recorder, *, start_ns: int, timeout: float) -> CallRecord | None:
    """At a call's end: emit its `history.record` span and keep its record in
    the store (at most `timeout` seconds). Never raises; the record, or None
    when the store did not take it."""
    try:
        return await _finish_call(recorder, start_ns=start_ns, timeout=timeout)
    except Exception:  # the call log must never break closing a call
        logger.exception("call record of conversation %s failed", recorder.conversation_id)
        return None


async def _finish_call(recorder: Recorder, *, start_ns: int, timeout: float) -> CallRecord | None:
    from .. import telemetry

    log = recorder.call_log
    writer = recorder.writer
    record = build_call_record(
        user_id=recorder.user_id,
        conversation_id=recorder.conversation_id,
        started_at=log.started_at,
        loaded=log.loaded,
        replays=log.replays,
        gate=log.gate,
        turns_recorded=recorder.written,
        turns_dropped=recorder.dropped,
        turns_late=recorder.late_turns,
        write_retries=writer.retries,
    )
    kept: CallRecord | None = record
    try:
        # a store that never opened refuses this with a StoreError too
        await asyncio.wait_for(recorder.store.record_call(record), max(timeout, 0.1))
    except (StoreError, OSError, asyncio.TimeoutError) as e:
        logger.warning("call record of conversation %s not stored: %s", recorder.conversation_id, e)
        kept = None
    telemetry.record_history_write(
        store=store_kind(recorder.store.url),
        user_id=recorder.user_id,
        conversation_id=recorder.conversation_id,
        turns_written=recorder.written,
        retries=writer.retries,
        failures=recorder.dropped,
        late_turns=recorder.late_turns,
        start_ns=start_ns,
        end_ns=time.time_ns(),
    )
    return kept


def call_from_json(raw: str | bytes, *, where: str, user_id: str) -> CallRecord | None:
    """A stored call record, or None (logged) when it is corrupt or another user's."""
    try:
        record = CallRecord.model_validate_json(raw)
    except ValueError as e:
        logger.warning("skipping corrupt call record %s: %s", where, str(e).splitlines()[0])
        return None
    if record.user_id != user_id:
        logger.warning("skipping call record %s: it belongs to another user", where)
        return None
    return record
