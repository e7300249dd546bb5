"""What one chat-context replay did, as a structured report.

The sans-IO engine counts what it settled (`ReplayResult`) but reads no clock;
the timings - when each item was first sent and when its acknowledgement came
back - are taken by whoever drives it (a compat adapter), from the events it
sends and the outputs the engine gives it, with `ReplayTimings`. The two make
one `ReplayReport`: what the `chat_ctx.replay` span shows, what the INFO line
says and what a call's record in the store keeps.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .engine import CONNECTION_RESET, ItemConfirmed, Output, ReplayResult

__all__ = ["RejectedItem", "ReplayReport", "ReplayTimings"]


class RejectedItem(BaseModel):
    """One item the server refused (or never answered) in a replay."""

    model_config = ConfigDict(frozen=True)

    item_id: str
    code: str
    # the server's wording may quote the item's content: telemetry keeps it
    # under `lk.pii.*` only, the call record not at all
    message: str = ""
    param: str | None = None


class ReplayReport(BaseModel):
    """One chat-context update on one realtime connection, settled."""

    model_config = ConfigDict(frozen=True)

    started_at: datetime = Field(description="wall-clock start (UTC)")
    duration_s: float = Field(description="first event sent to last item settled")
    dialect: str = ""
    items_sent: int = Field(0, description="distinct items sent with conversation.item.create")
    confirmed: int = Field(0, description="items the server has after the update")
    confirmed_by: dict[str, int] = Field(
        default_factory=dict,
        description="confirmed items by how: ack, inferred, duplicate, retrieved",
    )
    rejected: list[RejectedItem] = Field(default_factory=list)
    resends: int = Field(0, description="items sent again (re-chained or retried)")
    deleted: int = 0
    delete_failed: int = 0
    events_sent: int = Field(0, description="client events sent (creates, retrieves, deletes)")
    dropped_by_sanitizer: int = 0
    ack_latency_p50_s: float | None = Field(
        None, description="median time from an item's first send to its own ack"
    )
    ack_latency_max_s: float | None = None
    round_trips: float | None = Field(
        None,
        description="duration / the fastest ack (one round trip): 1.0 when everything "
        "was pipelined and nothing had to wait for an answer",
    )
    aborted: str | None = Field(None, description="why the run stopped early (connection_reset)")

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.delete_failed

    @property
    def rejected_codes(self) -> dict[str, int]:
        return dict(Counter(r.code for r in self.rejected))

    def summary(self) -> str:
        """The figures that matter, as one log line."""
        parts = [
            f"{self.items_sent} sent",
            f"{self.confirmed} confirmed",
            f"{len(self.rejected)} rejected",
        ]
        if self.rejected:
            codes = ", ".join(f"{c} x{n}" for c, n in sorted(self.rejected_codes.items()))
            parts[-1] += f" ({codes})"
        parts.append(f"{self.resends} resends")
        if self.deleted or self.delete_failed:
            parts.append(f"{self.deleted} deleted, {self.delete_failed} not deleted")
        if self.ack_latency_p50_s is not None and self.ack_latency_max_s is not None:
            parts.append(
                f"ack p50 {self.ack_latency_p50_s * 1000:.0f} ms max "
                f"{self.ack_latency_max_s * 1000:.0f} ms"
            )
        if self.round_trips is not None:
            parts.append(f"{self.round_trips:.1f} round trips")
        parts.append(f"{self.duration_s * 1000:.0f} ms")
        if self.aborted:
            parts.append(f"aborted: {self.aborted}")
        return ", ".join(parts)


class ReplayTimings:
    """Send and acknowledgement times of one replay, per item.

    Feed it every client event the driver sends (`sent`) and every output the
    engine gives (`settled`); the latency of an item runs from its FIRST send
    to its own ack, so a re-chained item's latency includes the refusal it
    went through - what the caller waits for.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started_at = datetime.now(timezone.utc)
        self.start_ns = time.time_ns()
        self._started: float | None = None
        self._last: float | None = None
        self._first_sent: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._how: Counter[str] = Counter()

    def sent(self, event: Mapping[str, Any]) -> None:
        now = self._clock()
        if self._started is None:
            self._started = self._last = now
            self.started_at = datetime.now(timezone.utc)
            self.start_ns = time.time_ns()
        if event.get("type") != "conversation.item.create":
            return
        item = event.get("item")
        item_id = item.get("id") if isinstance(item, Mapping) else None
        if isinstance(item_id, str):
            self._first_sent.setdefault(item_id, now)

    def settled(self, out: Output) -> None:
        now = self._clock()
        self._last = now
        if not isinstance(out, ItemConfirmed):
            return
        self._how[out.how] += 1
        sent = self._first_sent.get(out.item_id)
        # only the item's own ack measures the server; an inferred or retrieved
        # confirmation says when we found out, not when the server answered
        if out.how == "ack" and sent is not None:
            self._latency.setdefault(out.item_id, now - sent)

    @property
    def latencies(self) -> list[float]:
        return list(self._latency.values())

    def report(
        self, result: ReplayResult, *, dialect: str = "", dropped_by_sanitizer: int = 0
    ) -> ReplayReport:
        latencies = self.latencies
        if self._started is None or self._last is None:
            duration = 0.0
        else:
            duration = max(0.0, self._last - self._started)
        fastest = min(latencies) if latencies else None
        rejected = [
            RejectedItem(item_id=r.item_id, code=r.code, message=r.message, param=r.param)
            for r in result.rejected
        ]
        aborted = CONNECTION_RESET if any(r.code == CONNECTION_RESET for r in rejected) else None
        return ReplayReport(
            started_at=self.started_at,
            duration_s=duration,
            dialect=dialect,
            items_sent=len(self._first_sent),
            confirmed=len(result.confirmed),
            confirmed_by=dict(self._how),
            rejected=rejected,
            resends=result.resends,
            deleted=len(result.deleted),
            delete_failed=len(result.delete_failed),
            events_sent=result.events_sent,
            dropped_by_sanitizer=dropped_by_sanitizer,
            ack_latency_p50_s=statistics.median(latencies) if latencies else None,
            ack_latency_max_s=max(latencies) if latencies else None,
            round_trips=duration / fastest if fastest else None,
            aborted=aborted,
        )
