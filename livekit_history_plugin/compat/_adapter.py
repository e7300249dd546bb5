"""The shared machinery of every compat adapter.

An adapter attaches to ONE livekit realtime session instance and makes every
path on which livekit sends chat context safe:

- `update_chat_ctx` (agent start, handoff, user turns, tool results, users'
  own calls) is replaced by a sanitized, ack-matched, re-chaining replay;
- the reconnect replay (server close, max-session-duration recycle) and the
  text `truncate` path both build their events through
  `_create_update_chat_ctx_events`; that hook returns nothing and the same
  safe replay runs instead, after the new connection is up;
- livekit's own ack / delete / error handlers are wrapped so the replay engine
  sees each answer first and livekit never reports an answer to our requests
  as an unexplained error.

Subclasses only name the livekit handler methods and the dialect of their code
path, with the release range those names hold for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from livekit.agents import llm
from pydantic import BaseModel, ConfigDict, Field

from .. import telemetry
from ..dialects import Dialect, session_update_without_voice, wire_item_to_livekit
from ..log import logger
from ..providers import (
    AZURE_PREVIEW_NO_RETRIEVE,
    EMPTY_DELETED_ITEM_ID,
    NULL_PREVIOUS_ITEM_ID,
    SERVER_REPLACES_ITEM_IDS,
    Provider,
    provider_of,
    same_item,
)
from ..replay.driver import ReplayDriver
from ..replay.engine import (
    ACK_TIMEOUT,
    CONNECTION_RESET,
    PROBE_ID_PREFIX,
    DeleteFailed,
    ItemConfirmed,
    ItemDeleted,
    ItemRejected,
    Output,
    ReplayEngine,
    ReplayResult,
)
from ..replay.plan import UpdatePlan, plan_update
from ..replay.report import ReplayReport, ReplayTimings
from ._ordering import UNKNOWN, MirrorOrder, Placement, ServerPrev, put_after

_ATTR = "_lhp_adapter"
# how many finished updates still absorb late answers (duplicate acks,
# answers to superseded attempts) so livekit does not log them as failures
_FINISHED_KEPT = 4
# a reconnect that keeps failing must not replay forever
_MAX_REPLANS = 3
# replay reports kept per session (`SessionAdapter.reports`), newest last
_REPORTS_KEPT = 16


# caller audio held while the history replays, at most; older frames go first
_MAX_HELD_SECONDS = 30.0


class ReplayOptions(BaseModel):
    """How the safe replay behaves on each session of a wrapped model."""

    model_config = ConfigDict(frozen=True)

    ack_timeout: float = Field(default=2.0, gt=0, description="wait for one item's ack")
    verify_timeout: float = Field(
        default=1.0, gt=0, description="wait for the retrieve that checks an unacked item"
    )
    audio_gate_timeout: float | None = Field(
        default=None,
        ge=0,
        description=(
            "hold caller audio until the session's first chat-context update is "
            "acknowledged, at most this many seconds (None: do not hold). With "
            "server VAD, history that arrives after the caller starts speaking is "
            "not used for the first answer."
        ),
    )


class AudioGateStats(BaseModel):
    opened_after: float | None = None  # seconds the gate was closed (last time)
    reason: str | None = None  # "replayed" or "timeout"
    frames_held: int = 0
    frames_dropped: int = 0


class SessionAdapter:
    """Safe chat-context replay for one livekit realtime session."""

    #: livekit releases (inclusive) whose private names this adapter relies on
    RELEASES: ClassVar[tuple[str, str]] = ("0", "0")
    #: the session method livekit calls for an item ack
    ACK_HANDLER: ClassVar[str] = "_handle_conversion_item_added"
    DELETE_HANDLER: ClassVar[str] = "_handle_conversion_item_deleted"
    ERROR_HANDLER: ClassVar[str] = "_handle_error"

    def __init__(self, session: Any, options: ReplayOptions | None = None) -> None:
        self.session = session
        self.options = options or ReplayOptions()
        self.dialect: Dialect = self.detect_dialect(session)
        self.provider: Provider = provider_of(session)
        self.order = self._new_order()
        # our item id -> the id the server keeps it under (SERVER_REPLACES_ITEM_IDS)
        self.server_ids: dict[str, str] = {}
        self._client_ids: dict[str, str] = {}
        #: called as ``listener(our_id, server_id)`` each time the server turns out to
        #: keep one of our items under an id of its own (the recorder stores the server's)
        self.id_listeners: list[Callable[[str, str], None]] = []
        self._unknown_id_warned = False
        self.last_result: ReplayResult | None = None
        self.last_report: ReplayReport | None = None
        self.reports: collections.deque[ReplayReport] = collections.deque(maxlen=_REPORTS_KEPT)
        #: called with each new report (the recorder's call log counts them)
        self.report_listeners: list[Callable[[ReplayReport], None]] = []
        self._timings = ReplayTimings()
        self._driver: ReplayDriver | None = None
        self._plan: UpdatePlan | None = None
        self._finished: collections.deque[ReplayEngine] = collections.deque(maxlen=_FINISHED_KEPT)
        self._in_truncate = False
        self._reconnect_ctx: llm.ChatContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._listening_raw = False
        self._lock: asyncio.Lock = getattr(session, "_update_chat_ctx_lock", None) or asyncio.Lock()
        self.audio_gate = AudioGateStats()
        self._reasserted = False
        self._held: collections.deque[Any] | None = None
        self._held_seconds = 0.0
        self._gate_closed_at = time.monotonic()

    def use_provider(self, provider: Provider) -> None:
        """Apply `provider`'s quirks to this session, for a provider its class
        does not tell (tests, a proxy in front of xAI)."""
        self.provider = provider
        self.order = self._new_order()

    def _new_order(self) -> MirrorOrder:
        return MirrorOrder(
            lambda: self.mirror, null_previous=self.provider.has(NULL_PREVIOUS_ITEM_ID)
        )

    # -- per-path facts (override) ---------------------------------------------

    @classmethod
    def detect_dialect(cls, session: Any) -> Dialect:
        raise NotImplementedError

    # -- installation ----------------------------------------------------------

    def install(self) -> None:
        s = self.session
        setattr(s, _ATTR, self)
        self._orig_ack = getattr(s, self.ACK_HANDLER)
        self._orig_deleted = getattr(s, self.DELETE_HANDLER)
        self._orig_error = getattr(s, self.ERROR_HANDLER)
        self._orig_truncate = s.truncate
        setattr(s, self.ACK_HANDLER, self._on_ack)
        setattr(s, self.DELETE_HANDLER, self._on_deleted)
        setattr(s, self.ERROR_HANDLER, self._on_error)
        s._create_update_chat_ctx_events = self._intercept_events
        s.truncate = self._truncate
        s.update_chat_ctx = self.update_chat_ctx
        s.on("session_reconnected", self._on_reconnected)
        self._mirror_seen = self.mirror
        if self.options.audio_gate_timeout is not None:
            self._close_audio_gate(self.options.audio_gate_timeout)

    # -- holding caller audio until the history is on the server ----------------

    def _close_audio_gate(self, timeout: float) -> None:
        self._gate_closed_at = time.monotonic()
        self._held = collections.deque()
        self._held_seconds = 0.0
        self._orig_push_audio = self.session.push_audio
        self.session.push_audio = self._push_audio
        loop = asyncio.get_running_loop()
        self._gate_timer = loop.call_later(timeout, self._open_audio_gate, "timeout")

    def _push_audio(self, frame: Any) -> None:
        held = self._held
        if held is None:
            self._orig_push_audio(frame)
            return
        held.append(frame)
        self.audio_gate.frames_held += 1
        self._held_seconds += _duration(frame)
        while self._held_seconds > _MAX_HELD_SECONDS and len(held) > 1:
            self._held_seconds -= _duration(held.popleft())
            self.audio_gate.frames_dropped += 1

    def _open_audio_gate(self, reason: str) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        self._gate_timer.cancel()
        self.session.push_audio = self._orig_push_audio
        self.audio_gate.opened_after = held_s = time.monotonic() - self._gate_closed_at
        self.audio_gate.reason = reason
        telemetry.record_audio_gate(
            held_s=held_s,
            audio_held_s=self._held_seconds,
            frames_held=len(held),
            frames_dropped=self.audio_gate.frames_dropped,
            reason=reason,
            timeout=self.options.audio_gate_timeout,
            start_ns=time.time_ns() - int(held_s * 1e9),
        )
        if reason == "timeout":
            logger.warning(
                "chat history not acknowledged within %.2fs; letting caller audio through",
                self.options.audio_gate_timeout,
            )
        # the caller's first words were held, not lost: send them in order now
        for frame in held:
            self._orig_push_audio(frame)

    @property
    def mirror(self) -> Any:
        return self.session._remote_chat_ctx

    # -- the safe update ---------------------------------------------------------

    async def update_chat_ctx(self, chat_ctx: llm.ChatContext) -> None:
        """Make the server conversation equal the sanitized `chat_ctx`.

        Never raises for a rejected item and never stalls: each rejection costs
        that item only, and is logged and reported in `last_result`.
        """
        async with self._lock:
            for _ in range(_MAX_REPLANS):
                chat_ctx = self._with_server_ids(self._keep_pending_input(chat_ctx))
                plan = plan_update(chat_ctx, self.mirror.to_chat_ctx(), self.dialect)
                if plan.empty:
                    break
                driver = self._start(plan)
                try:
                    result = await driver.run()
                finally:
                    self._finish(driver)
                self.last_result = result
                self._log_result(plan, result)
                if driver.aborted != CONNECTION_RESET:
                    break
            if self.last_result is not None and self.last_result.confirmed:
                self._reassert_session()
        self._open_audio_gate("replayed")

    def _with_server_ids(self, chat_ctx: llm.ChatContext) -> llm.ChatContext:
        """The context under the ids the server gave our items, so the diff
        against the mirror sees them as there (SERVER_REPLACES_ITEM_IDS)."""
        if not self.server_ids or not any(i.id in self.server_ids for i in chat_ctx.items):
            return chat_ctx
        items = [
            i.model_copy(update={"id": self.server_ids[i.id]}) if i.id in self.server_ids else i
            for i in chat_ctx.items
        ]
        return llm.ChatContext(items)

    def _keep_pending_input(self, chat_ctx: llm.ChatContext) -> llm.ChatContext:
        """Keep a caller item whose transcript is still pending on the server.

        xAI sessions (plugin 1.6+, LiveKit Inference xai/*) hold the caller's item
        back from the agent's context until its transcript is final; a diff in that
        window would delete it. Their own event builder guards it the same way
        (`_pending_transcription`), and the safe update replaces that builder.
        """
        pending = getattr(self.session, "_pending_transcription", None)
        item_id = getattr(pending, "item_id", None)
        if not isinstance(item_id, str) or chat_ctx.get_by_id(item_id) is not None:
            return chat_ctx
        node = self.mirror.get(item_id)
        if node is None:
            return chat_ctx
        kept = chat_ctx.copy()
        index, prev = 0, getattr(node, "_prev", None)
        while prev is not None:
            at = kept.index_by_id(prev.item.id)
            if at is not None:
                index = at + 1
                break
            prev = prev._prev
        kept.items.insert(index, node.item.model_copy())
        return kept

    def _reassert_session(self) -> None:
        """Send the session's own `session.update` again after history landed.

        Replayed text items pull realtime models towards text-only answers;
        restating the configured output modalities (and instructions) right
        after them is the cheapest counterweight. Once per connection is enough.
        """
        if self._reasserted:
            return
        build = getattr(self.session, "_create_session_update_event", None)
        if build is None:
            return
        self._reasserted = True
        # never the voice: after assistant audio a voice change is refused and the
        # whole update discarded (cannot_update_voice, README D10)
        self.session.send_event(session_update_without_voice(build()))

    def _start(self, plan: UpdatePlan) -> ReplayDriver:
        engine = ReplayEngine(
            plan.creates,
            plan.deletes,
            remote_order=plan.remote_order,
            ack_timeout=self.options.ack_timeout,
            verify_timeout=self.options.verify_timeout,
            supports_retrieve=not self.provider.has(AZURE_PREVIEW_NO_RETRIEVE),
        )
        self._plan = plan
        self._timings = ReplayTimings()
        deleted = {d.item_id for d in plan.deletes}
        self.order.begin_burst(next((r for r in reversed(plan.remote_order) if r not in deleted), None))
        self._driver = ReplayDriver(engine, send=self._send, on_output=self._on_output)
        return self._driver

    def _finish(self, driver: ReplayDriver) -> None:
        # every item of the update is settled: whatever still waits for its
        # predecessor is placed now, so the mirror is right when the update returns
        self.order.end_update()
        self._driver = None
        self._plan = None
        self._finished.append(driver.engine)
        if self._listening_raw:
            self._listening_raw = False
            self.session.off("openai_server_event_received", self._on_raw_event)

    def _send(self, event: dict[str, Any]) -> None:
        self._timings.sent(event)
        if _is_probe_event(event):
            self.session.send_event(event)  # the engine's check item: not the mirror's
            return
        if self.server_ids:
            event = self._to_server_ids(event)
        if event["type"] == "conversation.item.create":
            self.order.sent_create(str(event["item"]["id"]), event.get("previous_item_id"))
        elif event["type"] == "conversation.item.delete":
            self.order.sent_delete(str(event["item_id"]))
        if event["type"] == "conversation.item.retrieve" and not self._listening_raw:
            # livekit has no handler for `conversation.item.retrieved`; listen to
            # raw events only while an answer is due (a listener costs per event)
            self._listening_raw = True
            self.session.on("openai_server_event_received", self._on_raw_event)
        self.session.send_event(event)

    def _to_server_ids(self, event: dict[str, Any]) -> dict[str, Any]:
        """An anchor or a delete naming one of our items under our id, renamed to
        the server's (the engine knows only ours)."""
        out = dict(event)
        for key in ("previous_item_id", "item_id"):
            value = out.get(key)
            if isinstance(value, str) and value in self.server_ids:
                out[key] = self.server_ids[value]
        return out

    def _replaced_id(self, event: Any, item_id: str) -> str:
        """Our id for an ack of an item the server renamed: the oldest unanswered
        create with the same content. `item_id` itself when it is not that case."""
        if not self.provider.has(SERVER_REPLACES_ITEM_IDS) or self.order.knows(item_id):
            return item_id
        if item_id in self._client_ids:
            return self._client_ids[item_id]
        raw = getattr(event, "item", None)
        dump = getattr(raw, "model_dump", None)
        echoed = dump() if callable(dump) else raw
        sent = {op.item_id: op.item for op in self._plan.creates} if self._plan else {}
        if not isinstance(echoed, Mapping):
            return item_id
        for ours in self.order.pending_creates():
            if ours in sent and same_item(sent[ours], echoed):
                self._remap(ours, item_id)
                return ours
        return item_id

    def _remap(self, ours: str, server: str) -> None:
        """Keep `ours` under `server` from now on, and tell the listeners."""
        self._client_ids[server] = ours
        # a reconnect replays an item under the id the old connection gave it and
        # the new one renames it again: the item's first id follows to the newest
        for first, known in list(self.server_ids.items()):
            if known == ours:
                self.server_ids[first] = server
        self.server_ids[ours] = server
        for listener in list(self.id_listeners):
            try:
                listener(ours, server)
            except Exception:  # a listener must never fail the replay
                logger.exception("server item id listener failed")

    def _on_output(self, out: Output) -> None:
        self._timings.settled(out)
        if isinstance(out, ItemConfirmed):
            self.order.settled(out.item_id, True)
            if out.how != "ack":
                self._place_local(out.item_id)
        elif isinstance(out, ItemDeleted):
            if out.how == "absent":
                with contextlib.suppress(ValueError):
                    self.mirror.delete(out.item_id)
            self.order.delete_answered(out.item_id)
        elif isinstance(out, DeleteFailed):
            self.order.delete_answered(out.item_id)
        if isinstance(out, ItemRejected):
            self.order.settled(out.item_id, False)
            if out.code == ACK_TIMEOUT:
                # its check (retrieve / anchor probe) names our id, which such a
                # server never knows: "not there" is not proven
                self._warn_unknown_server_id(
                    out.item_id, "it counts as rejected (not mirrored); the call history keeps"
                )
        if isinstance(out, ItemRejected) and out.code == CONNECTION_RESET:
            logger.debug("chat item %s unanswered before a reconnect; replaying", out.item_id)
        elif isinstance(out, ItemRejected):
            logger.warning(
                "realtime server rejected chat item %s: %s (%s); the rest of the update goes on",
                out.item_id,
                out.code,
                out.message,
                extra={"item_id": out.item_id, "code": out.code, "param": out.param},
            )
        elif isinstance(out, DeleteFailed):
            logger.warning("could not delete chat item %s: %s (%s)", out.item_id, out.code, out.message)

    def _place_local(self, item_id: str) -> None:
        """Mirror an item the engine knows is on the server without its ack
        (inferred, duplicate, retrieved): where the protocol put it."""
        if self.mirror.get(item_id) is not None or self._plan is None:
            return
        item = self._plan.local_items.get(item_id)
        if item is None:
            return
        self._warn_unknown_server_id(item_id, "the mirror and the call history keep")

        def apply(prev: str | None) -> None:
            if self.mirror.get(item_id) is None:
                put_after(self.mirror, item, prev)

        self.order.place(Placement(item_id, UNKNOWN, apply, guessed=True))

    def _warn_unknown_server_id(self, item_id: str, kept: str) -> None:
        """An item settled without its own ack on a server that renames items: the
        server's id for it never reached us, so it stays under ours (once a WARNING,
        then DEBUG)."""
        if not self.provider.has(SERVER_REPLACES_ITEM_IDS) or item_id in self.server_ids:
            return
        log = logger.debug if self._unknown_id_warned else logger.warning
        self._unknown_id_warned = True
        log(
            "%s keeps chat items under ids of its own and the ack of chat item %s (the one "
            "event naming its id) was lost: whether and under which id the server has it "
            "cannot be checked; %s %s",
            self.provider.name,
            item_id,
            kept,
            item_id,
            extra={"item_id": item_id},
        )

    def _server_prev(self, event: Any) -> ServerPrev:
        if self.provider.has(NULL_PREVIOUS_ITEM_ID):
            return UNKNOWN
        prev = getattr(event, "previous_item_id", None)
        return prev if isinstance(prev, str) and prev else None

    def _apply_ack(self, event: Any, item_id: str, prev: str | None) -> None:
        """livekit's own ack handler (its futures, events, subclass logic), told
        the predecessor the server chain gives; then the item is made to sit
        exactly there whatever the handler did with it."""
        mirror = self.mirror
        if mirror.get(item_id) is None:
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                event.previous_item_id = prev
            self._orig_ack(event)
        node = mirror.get(item_id)
        item = node.item if node is not None else self._local_or_wire_item(event, item_id)
        if item is not None:
            put_after(mirror, item, prev)

    def _local_or_wire_item(self, event: Any, item_id: str) -> Any:
        local = self._plan.local_items.get(item_id) if self._plan is not None else None
        if local is not None:
            return local
        raw = getattr(event, "item", None)
        dump = getattr(raw, "model_dump", None)
        return wire_item_to_livekit(dump() if callable(dump) else raw)  # type: ignore[arg-type]

    def _log_result(self, plan: UpdatePlan, result: ReplayResult) -> None:
        """Report the update: `last_report` / `reports`, its `chat_ctx.replay`
        span, one INFO line (each rejection was a WARNING already)."""
        timings = self._timings
        report = timings.report(result, dialect=self.dialect, dropped_by_sanitizer=plan.dropped)
        self.last_report = report
        self.reports.append(report)
        for listener in list(self.report_listeners):
            try:
                listener(report)
            except Exception:  # a listener must never fail the replay
                logger.exception("replay report listener failed")
        telemetry.record_replay(report, start_ns=timings.start_ns)
        logger.info(
            "chat context replayed: %s",
            report.summary(),
            extra={
                "confirmed": report.confirmed,
                "rejected": len(report.rejected),
                "rejected_codes": report.rejected_codes,
                "deleted": report.deleted,
                "dropped_by_sanitizer": plan.dropped,
                "resends": report.resends,
                "events_sent": report.events_sent,
                "ack_latency_p50_s": report.ack_latency_p50_s,
                "ack_latency_max_s": report.ack_latency_max_s,
                "round_trips": report.round_trips,
                "duration_s": report.duration_s,
            },
        )

    # -- hooks into livekit's receive path -------------------------------------

    def _feed(self, event: Mapping[str, Any], item_id: str | None) -> bool:
        """Give a server event to the running update, or to a finished one it
        may answer late. True when one of our updates claimed it."""
        driver = self._driver
        if driver is not None and (item_id is None or driver.engine.owns_item(item_id)):
            if driver.feed(event):
                return True
        for engine in self._finished:
            if item_id is not None and not engine.owns_item(item_id):
                continue
            if engine.receive(event, time.monotonic()).claimed:
                return True
        return False

    def _on_ack(self, event: Any) -> None:
        item = event.item
        item_id = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
        if (self._driver is None and not self._finished) or not isinstance(item_id, str):
            self._orig_ack(event)
            return
        if item_id.startswith(PROBE_ID_PREFIX):
            # the engine's throwaway check item: livekit must neither mirror it nor
            # add it to the agent's context as a server-initiated placeholder
            prev = getattr(event, "previous_item_id", None)
            probe_ack = {"type": "conversation.item.added", "item": {"id": item_id}}
            self._feed({**probe_ack, "previous_item_id": prev}, item_id)
            return
        ours = self._replaced_id(event, item_id)
        prev = getattr(event, "previous_item_id", None)
        raw: dict[str, Any] = {
            "type": "conversation.item.added",
            "item": {"id": ours},
            "previous_item_id": self._client_ids.get(prev, prev) if isinstance(prev, str) else prev,
        }
        claimed = self._feed(raw, ours)
        if ours != item_id:
            self.order.rename(ours, item_id)
        server_prev = self._server_prev(event)
        mirror = self.mirror
        if mirror.get(item_id) is not None:
            if self.order.delete_pending_before_create(item_id):
                # a re-created item acked before the delete of its old copy:
                # the mirrored copy is the old one, and the delete's ack is moot
                mirror.delete(item_id)
                self.order.superseded.add(item_id)
            elif claimed or self.order.knows(item_id):
                self.order.confirm(item_id, server_prev)
                return  # a duplicate or late ack of an item already mirrored
            else:
                self._orig_ack(event)
                return
        # livekit would insert it after whatever the ack names, right now; the
        # order owns that, so an ack that overtook its predecessor's waits for it
        apply = functools.partial(self._apply_ack, event, item_id)
        self.order.place(Placement(item_id, server_prev, apply))

    def _on_deleted(self, event: Any) -> None:
        item_id = getattr(event, "item_id", None)
        if isinstance(item_id, str) and item_id.startswith(PROBE_ID_PREFIX):
            self._feed({"type": "conversation.item.deleted", "item_id": item_id}, item_id)
            return  # the check item was never mirrored
        if not item_id and self.provider.has(EMPTY_DELETED_ITEM_ID):
            # the server answers in order: an anonymous deletion is our oldest open delete
            item_id = self.order.oldest_pending_delete()
            if item_id is not None:
                with contextlib.suppress(AttributeError, TypeError, ValueError):
                    event.item_id = item_id
        claimed = self._feed({"type": "conversation.item.deleted", "item_id": item_id}, item_id)
        if isinstance(item_id, str) and item_id in self.order.superseded:
            self.order.superseded.discard(item_id)
            self.order.delete_answered(item_id)
            return  # about the old copy, already replaced in the mirror
        if claimed and item_id is not None and self.mirror.get(item_id) is None:
            self.order.delete_answered(item_id)
            return  # already gone from the mirror (we settled it as absent)
        self._orig_deleted(event)
        if isinstance(item_id, str):
            self.order.delete_answered(item_id)

    def _on_error(self, event: Any) -> None:
        raw = {"type": "error", "error": _error_dict(getattr(event, "error", None))}
        if self._feed(raw, None):
            return
        self._orig_error(event)

    def _on_raw_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "conversation.item.retrieved":
            item = event.get("item")
            item_id = item.get("id") if isinstance(item, dict) else None
            self._feed(event, item_id)

    # -- the other paths that send chat context ---------------------------------

    def _intercept_events(self, chat_ctx: llm.ChatContext) -> list[Any]:
        """Called by livekit's reconnect and text-truncate paths; answers with no
        events and runs the safe replay instead."""
        if self._in_truncate or self.mirror is self._mirror_seen:
            # truncate, or a caller we do not know of: same safe path, now
            self._spawn(self.update_chat_ctx(chat_ctx))
        else:
            # the reconnect path swaps in a fresh mirror and sends what we
            # return straight to the new socket; replay once it is up instead
            self._mirror_seen = self.mirror
            self._reconnect_ctx = chat_ctx
        return []

    def _truncate(self, **kwargs: Any) -> None:
        self._in_truncate = True
        try:
            self._orig_truncate(**kwargs)
        finally:
            self._in_truncate = False

    def _on_reconnected(self, _ev: Any = None) -> None:
        ctx, self._reconnect_ctx = self._reconnect_ctx, None
        self._reasserted = False  # a new connection: its replay re-asserts again
        # a fresh mirror: what waited for the old connection's answers is moot
        self.order = self._new_order()
        if self.options.audio_gate_timeout is not None and self._held is None:
            # mid-call the activity is already live: without this, the caller's
            # audio reaches the new connection before the history it answers to
            self._close_audio_gate(self.options.audio_gate_timeout)
        if self._driver is not None:
            # the running update re-plans against the fresh mirror with its own,
            # newer target, which supersedes the reconnect snapshot
            self._driver.abort(CONNECTION_RESET, "realtime session reconnected")
            return
        if ctx is not None:
            self._spawn(self.update_chat_ctx(ctx))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background chat context replay failed", exc_info=task.exception())


def _is_probe_event(event: Mapping[str, Any]) -> bool:
    item = event.get("item")
    item_id = item.get("id") if isinstance(item, Mapping) else event.get("item_id")
    return isinstance(item_id, str) and item_id.startswith(PROBE_ID_PREFIX)


def _duration(frame: Any) -> float:
    rate = getattr(frame, "sample_rate", 0) or 0
    return float(getattr(frame, "samples_per_channel", 0)) / rate if rate else 0.0


def _error_dict(err: Any) -> dict[str, Any]:
    if isinstance(err, Mapping):
        return dict(err)
    keys = ("type", "code", "message", "param", "event_id")
    return {k: getattr(err, k, None) for k in keys}


def adapter_of(session: Any) -> SessionAdapter | None:
    """The adapter attached to a livekit realtime session, if any."""
    found = getattr(session, _ATTR, None)
    return found if isinstance(found, SessionAdapter) else None


SessionFactory = Callable[..., Any]
