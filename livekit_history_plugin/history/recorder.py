"""Record a live call's committed turns into the history store, in spoken order.

The `Recorder` listens to one livekit `AgentSession` and turns its committed
chat messages into `Turn`s:

- Events used (every release 1.2.18 ... 1.8.9): ``conversation_item_added``
  (the committed user / assistant message; from 1.5 also the ``AgentHandoff``
  item) and ``close`` (flush). livekit emits a message there only once it is
  committed: an assistant reply when its playout ended or was interrupted,
  with the text the caller actually heard (``interrupted=True`` and the text
  cut to the synchronized transcript), a caller turn when its final transcript
  arrived. ``user_input_transcribed`` (interim text, no item id before 1.8)
  and ``agent_state_changed`` add nothing a committed turn lacks.
- Spoken order. A realtime model delivers the caller's transcript late, often
  after the reply it prompted, and before livekit 1.8 stamps that message with
  the transcript's arrival time. The server conversation knows the truth: the
  caller's audio item is created when their turn is committed, before the
  reply's item. So each turn is timed by the earlier of livekit's
  ``created_at`` and the moment its item appeared in the realtime session's
  mirror of the server conversation (`compat.adapter_of(rt).mirror`), and turns
  wait in a small reorder buffer while a caller audio item that precedes them
  still has no transcript (at most `reorder_window` seconds after that item
  appeared). Only then is ``seq`` assigned, so seq follows spoken order.
- Idempotent on the livekit item id: a message seen twice (a re-emit, a
  realtime reconnect that replays the conversation) is recorded once, and the
  stores ignore a re-sent item id.
- The server's id. A server that keeps our items under ids of its own
  (`providers.SERVER_REPLACES_ITEM_IDS`) makes the adapter report each rename
  (`SessionAdapter.id_listeners`); the turn of that item is stored under the
  server's id, whether the rename comes before the message is committed or
  while the turn still waits (reorder buffer, store not open yet). Every id the
  item had counts as seen, so a re-emit under any of them is no new turn.
- Handoff and configuration items, instruction (system / developer) messages
  and empty messages are not turns. With ``record_system_notes`` an agent
  change is recorded as a short system note.
- Writing never blocks the audio path: turns go to a bounded `HistoryWriter`
  (retried, reported); `aclose()` - also run on the session's ``close`` event -
  releases the reorder buffer and flushes everything queued.
"""

from __future__ import annotations

import asyncio
import bisect
import re
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from ..compat import adapter_of
from ..log import logger
from .calls import CallLog, finish_call
from .models import Role, Source, Turn
from .stores.base import HistoryStore
from .writer import HistoryWriter

WrittenCallback = Callable[[Sequence[Turn]], None]

DEFAULT_REORDER_WINDOW = 3.0
DEFAULT_MAX_TURN_CHARS = 8_000
# realtime sessions whose mirror still answers "when did this item appear":
# the current one and a few replaced by handoffs
_WATCHED_SESSIONS = 4
_IDENT_MAX = 256
# retrying a store that cannot be opened: first delay, longest delay (seconds)
_REOPEN_FIRST = 0.25
_REOPEN_MAX = 10.0
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_NOT_IDENT = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(order=True)
class _Pending:
    """A committed turn waiting in the reorder buffer."""

    key_us: int  # spoken-order time, µs since the epoch
    order: int  # arrival number: stable order for equal times
    role: Role = field(compare=False)
    text: str = field(compare=False)
    item_id: str | None = field(compare=False)
    agent_id: str | None = field(compare=False)
    source: Source = field(compare=False)
    interrupted: bool = field(compare=False)


def agent_id_of(agent: Any) -> str:
    """livekit's agent id (`Agent.id`, 1.3+), else the snake-cased class name as
    livekit derives it."""
    found = getattr(agent, "id", None)
    if isinstance(found, str) and found:
        return safe_ident(found)
    return safe_ident(_CAMEL.sub("_", type(agent).__name__).lower())


def safe_ident(value: str) -> str:
    """An id the stores accept: no control characters, at most 256 characters."""
    cleaned = _NOT_IDENT.sub("", value)[:_IDENT_MAX]
    return cleaned or "unknown"


def _to_us(t: float) -> int:
    return int(round(t * 1_000_000))


class Recorder:
    """Persists the committed turns of one `AgentSession` as one conversation.

    Made by `HistoryPlugin.attach` (before `session.start`); usable directly.
    `agent_id`, when given, is stored on every turn; by default each turn gets
    the id of the agent active when it was committed (so handoffs show).
    """

    def __init__(
        self,
        session: Any,
        store: HistoryStore,
        *,
        user_id: str,
        conversation_id: str | None = None,
        agent_id: str | None = None,
        reorder_window: float = DEFAULT_REORDER_WINDOW,
        max_turn_chars: int = DEFAULT_MAX_TURN_CHARS,
        record_system_notes: bool = False,
        flush_timeout: float = 10.0,
        writer_max_buffer: int = 10_000,
        open_store: Callable[[], Awaitable[Any]] | None = None,
        on_written: WrittenCallback | None = None,
    ) -> None:
        if reorder_window < 0:
            raise ValueError(f"reorder_window must be >= 0, got {reorder_window}")
        if max_turn_chars < 1:
            raise ValueError(f"max_turn_chars must be >= 1, got {max_turn_chars}")
        self.session = session
        self.store = store
        self.user_id = user_id
        self.conversation_id = conversation_id or f"conv_{uuid.uuid4().hex}"
        self.agent_id = agent_id
        self.reorder_window = reorder_window
        self.max_turn_chars = max_turn_chars
        self.record_system_notes = record_system_notes
        self.flush_timeout = flush_timeout
        self.on_written = on_written
        self.writer = HistoryWriter(store, max_buffer=writer_max_buffer, on_written=self._written)
        self._max_backlog = writer_max_buffer
        # probe the ids once, so bad ones fail here and not on every turn
        Turn(
            user_id=user_id,
            conversation_id=self.conversation_id,
            seq=0,
            role=Role.USER,
            text="",
            agent_id=agent_id,
        )

        self._turns: list[Turn] = []
        self._pending: list[_Pending] = []
        self._seen: set[str] = set()  # item ids taken (recorded, pending or skipped)
        # an item id livekit knows -> the id the server keeps the item under
        self._server_ids: dict[str, str] = {}
        self._arrivals = 0
        self._next_seq = 0
        self._last_us = 0
        self._last_agent: str | None = None
        self._handoff_items = False  # livekit >= 1.5 marks every agent switch with an item
        self._late = 0
        self._timer: asyncio.TimerHandle | None = None
        self._rt_sessions: deque[weakref.ref[Any]] = deque(maxlen=_WATCHED_SESSIONS)
        # turns numbered while the store is not open yet; None once it is
        self._backlog: list[Turn] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._lost = 0
        self._closing: asyncio.Future[None] | None = None
        self._close_hooks: list[Callable[[], None]] = []
        self._attached = True
        # what this call loaded and replayed, for its record in the call log
        self.call_log = CallLog()

        if open_store is not None:
            self._backlog = []
            self._opening = asyncio.ensure_future(self._open_store(open_store))
        session.on("conversation_item_added", self._on_item_added)
        session.on("close", self._on_close)

    # -- state ----------------------------------------------------------------------
    @property
    def turns(self) -> list[Turn]:
        """Turns given seq numbers so far (submitted for writing), in seq order."""
        return list(self._turns)

    @property
    def buffered(self) -> int:
        """Turns still in the reorder buffer (no seq yet)."""
        return len(self._pending)

    @property
    def written(self) -> int:
        """Turns the store confirmed durable."""
        return self.writer.written

    @property
    def dropped(self) -> int:
        """Turns that will never be written (buffer overflow, store never opened, ...)."""
        return self.writer.dropped + self._lost

    @property
    def pending(self) -> int:
        """Turns recorded but not yet durable (reorder buffer + writer)."""
        waiting = len(self._backlog) if self._backlog is not None else 0
        return len(self._pending) + waiting + self.writer.pending

    @property
    def late_turns(self) -> int:
        """Turns that arrived after a later-spoken turn already had its seq
        (stored with their true time, so a load still returns spoken order)."""
        return self._late

    @property
    def closed(self) -> bool:
        return self._closing is not None

    # -- realtime sessions -------------------------------------------------------------
    def watch_realtime_session(self, rt_session: Any) -> None:
        """Time turns by when their items appeared on this realtime session
        (needs the session to be wrapped: `compat.adapter_of`)."""
        adapter = adapter_of(rt_session)
        if adapter is None:
            logger.debug(
                "realtime session %r is not wrapped; turns keep livekit's times", rt_session
            )
            return
        self._rt_sessions.append(weakref.ref(rt_session))
        self.call_log.watch(adapter)
        adapter.id_listeners.append(self._on_server_id)
        for ours, server in list(adapter.server_ids.items()):
            self._on_server_id(ours, server)

    @property
    def realtime_sessions(self) -> list[Any]:
        """The realtime sessions whose items time the turns (newest last)."""
        return [rt for ref in self._rt_sessions if (rt := ref()) is not None]

    def add_close_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the recorder closes (used to stop watching a model)."""
        self._close_hooks.append(hook)

    def _mirrors(self) -> list[Any]:
        out = []
        for ref in self._rt_sessions:
            rt = ref()
            adapter = adapter_of(rt) if rt is not None else None
            if adapter is not None:
                out.append(adapter.mirror)
        return out

    def _appeared_at(self, item_id: str) -> float | None:
        for mirror in self._mirrors():
            node = mirror.get(item_id)
            created = getattr(getattr(node, "item", None), "created_at", None)
            if isinstance(created, (int, float)):
                return float(created)
        return None

    def _untranscribed_before(self, key_us: int, now: float) -> float | None:
        """When the earliest wait ends for a caller audio item that precedes
        `key_us` and has no transcript yet; None when nothing is outstanding."""
        horizon: float | None = None
        for mirror in self._mirrors():
            for item in mirror.to_chat_ctx().items:
                if getattr(item, "type", None) != "message" or item.role != "user":
                    continue
                # livekit mirrors a caller audio item with no content until its
                # transcript arrives; text and image items have content at once
                if item.id in self._seen or item.content:
                    continue
                created = float(item.created_at)
                expires = created + self.reorder_window
                if _to_us(created) <= key_us and expires > now:
                    horizon = expires if horizon is None else min(horizon, expires)
        return horizon

    # -- livekit events ------------------------------------------------------------------
    def _on_item_added(self, ev: Any) -> None:
        if not self._attached:
            return
        try:
            self._take(ev.item)
        except Exception:  # recording must never break the call
            logger.exception("history recorder: could not record a conversation item")

    def _on_close(self, _ev: Any = None) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._aclose(self.flush_timeout))

    def _take(self, item: Any) -> None:
        kind = getattr(item, "type", None)
        if kind == "agent_handoff":
            self._on_handoff(item)
            return
        if kind != "message":
            return  # configuration updates, tool calls: not turns
        role = {"user": Role.USER, "assistant": Role.ASSISTANT}.get(item.role)
        if role is None:
            return  # system / developer messages are instructions, not turns
        item_id = item.id if isinstance(item.id, str) and item.id else None
        if item_id is not None:
            livekit_id, item_id = item_id, self._server_ids.get(item_id, item_id)
            if item_id in self._seen:
                self._update_pending(item_id, item)
                return
            self._seen.update((livekit_id, item_id))
        text = (item.text_content or "").strip()
        if not text:
            return
        key = float(item.created_at)
        if item_id is not None and (appeared := self._appeared_at(item_id)) is not None:
            key = min(key, appeared)
        agent = self._current_agent()
        self._agent_changed(agent, key - 1e-6)
        self._buffer(
            key,
            role,
            text,
            item_id=item_id,
            agent_id=self.agent_id or agent,
            source=self._source(role),
            interrupted=bool(getattr(item, "interrupted", False)),
        )
        self._release()

    def _update_pending(self, item_id: str, item: Any) -> None:
        """A message seen before: take its newer text while it is still buffered."""
        for i, p in enumerate(self._pending):
            if p.item_id == item_id:
                text = (item.text_content or "").strip()
                if text:
                    p.text = self._capped(text)
                    p.interrupted = bool(getattr(item, "interrupted", False))
                else:
                    del self._pending[i]
                return
        logger.debug("history recorder: item %s already recorded; ignored", item_id)

    def _on_server_id(self, ours: str, server: str) -> None:
        """The server keeps item `ours` under `server`: so does the item's turn."""
        if not self._attached:
            return
        if safe_ident(server) != server:
            logger.debug(
                "history recorder: server item id %r not storable; keeping %s", server, ours
            )
            return
        for first, known in list(self._server_ids.items()):
            if known == ours:
                self._server_ids[first] = server
        self._server_ids[ours] = server
        if ours not in self._seen:
            return  # not committed yet: `_take` maps it
        self._seen.add(server)
        for p in self._pending:
            if p.item_id == ours:
                p.item_id = server
                return
        self._rename_numbered(ours, server)

    def _rename_numbered(self, ours: str, server: str) -> None:
        """Rename a turn that has its seq but is not handed to the store yet."""
        index = next((i for i, t in enumerate(self._turns) if t.item_id == ours), None)
        if index is None:
            return  # a skipped item (empty, not a turn)
        turn = self._turns[index]
        backlog = self._backlog
        at = next((i for i, t in enumerate(backlog or ()) if t is turn), None)
        if backlog is None or at is None:
            # the writer has it (or wrote it): it keeps the id it was sent with;
            # every id of the item is seen, so it is still recorded once
            logger.debug(
                "history recorder: turn %s already sent to the store when the server "
                "named its item %s",
                ours,
                server,
            )
            return
        renamed = turn.model_copy(update={"item_id": server})
        backlog[at] = self._turns[index] = renamed

    def _on_handoff(self, item: Any) -> None:
        new = getattr(item, "new_agent_id", None)
        if isinstance(new, str) and new:
            self._handoff_items = True
            self._agent_changed(safe_ident(new), float(item.created_at))

    def _agent_changed(self, agent: str | None, at: float) -> None:
        old, self._last_agent = self._last_agent, agent or self._last_agent
        if not self.record_system_notes or old is None or agent is None or agent == old:
            return
        self._buffer(
            at,
            Role.SYSTEM,
            f"The call was transferred from agent {old!r} to agent {agent!r}.",
            item_id=None,
            agent_id=self.agent_id or agent,
            source=Source.TEXT,
            interrupted=False,
        )

    def _current_agent(self) -> str | None:
        if self._handoff_items:
            # exact: livekit emits the handoff item after the old agent's last
            # message and before the new agent's first
            return self._last_agent
        # before 1.5: the agent set by update_agent(), which a reply of the old
        # agent still being committed would be attributed to
        try:
            agent = self.session.current_agent
        except RuntimeError:  # between activities (handoff) or not started
            return self._last_agent
        return agent_id_of(agent)

    def _source(self, role: Role) -> Source:
        io = self.session.input if role is Role.USER else self.session.output
        return Source.VOICE if getattr(io, "audio", None) is not None else Source.TEXT

    def _capped(self, text: str) -> str:
        if len(text) <= self.max_turn_chars:
            return text
        logger.warning(
            "history recorder: turn of %d characters cut to max_turn_chars=%d",
            len(text),
            self.max_turn_chars,
        )
        return text[: self.max_turn_chars]

    # -- reorder buffer ---------------------------------------------------------------------
    def _buffer(
        self,
        key: float,
        role: Role,
        text: str,
        *,
        item_id: str | None,
        agent_id: str | None,
        source: Source,
        interrupted: bool,
    ) -> None:
        self._arrivals += 1
        bisect.insort(
            self._pending,
            _Pending(
                _to_us(key),
                self._arrivals,
                role,
                self._capped(text),
                item_id,
                agent_id,
                source,
                interrupted,
            ),
        )

    def _release(self, *, force: bool = False) -> None:
        """Give seq numbers to buffered turns no earlier-spoken turn can still precede."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = time.time()
        while self._pending:
            head = self._pending[0]
            if not force:
                wait_until = self._untranscribed_before(head.key_us, now)
                if wait_until is not None:
                    self._schedule(wait_until - now)
                    return
            self._pending.pop(0)
            self._commit(head)

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(delay, 0.0) + 0.001, self._release)

    def _commit(self, p: _Pending) -> None:
        key_us = p.key_us
        if key_us <= self._last_us:
            if key_us < self._last_us and self._turns:
                # its transcript came after the wait: keep its true time, so the
                # store (ordered by time) still returns it in spoken order
                self._late += 1
                logger.info(
                    "history recorder: %s turn %s arrived after a later one was numbered",
                    p.role.value,
                    p.item_id,
                )
            else:
                key_us = self._last_us + 1  # same microsecond: keep times strictly rising
        try:
            turn = Turn(
                user_id=self.user_id,
                conversation_id=self.conversation_id,
                seq=self._next_seq,
                role=p.role,
                text=p.text,
                created_at=datetime.fromtimestamp(key_us / 1_000_000, timezone.utc),
                source=p.source,
                agent_id=p.agent_id,
                item_id=p.item_id,
                interrupted=p.interrupted,
            )
        except ValidationError as e:
            logger.error("history recorder: turn %s not recordable: %s", p.item_id, e)
            return
        self._next_seq += 1
        self._last_us = max(self._last_us, key_us)
        self._turns.append(turn)
        self._submit(turn)

    # -- writing ------------------------------------------------------------------------------
    async def _open_store(self, open_store: Callable[[], Awaitable[Any]]) -> None:
        """Open the store, retrying with backoff; turns wait in the backlog meanwhile."""
        delay = _REOPEN_FIRST
        attempts = 0
        while True:
            try:
                await open_store()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempts += 1
                if attempts == 1:
                    logger.error(
                        "history store %s cannot be opened (%s); turns of conversation %s "
                        "are kept in memory and written once it opens",
                        self.store.url,
                        e,
                        self.conversation_id,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _REOPEN_MAX)
        if attempts:
            logger.info(
                "history store %s opened after %d failed attempts", self.store.url, attempts
            )
        backlog, self._backlog = self._backlog or [], None
        for turn in backlog:
            self.writer.submit(turn)

    def _submit(self, turn: Turn) -> None:
        backlog = self._backlog
        if backlog is None:
            self.writer.submit(turn)
        elif len(backlog) < self._max_backlog:
            backlog.append(turn)
        else:
            self._lost += 1
            logger.error(
                "history store %s not open and %d turns waiting: turn %s dropped",
                self.store.url,
                len(backlog),
                turn.idempotency_key,
            )

    def _written(self, batch: Sequence[Turn]) -> None:
        if self.on_written is not None:
            try:
                self.on_written(batch)
            except Exception:
                logger.exception("history recorder: on_written callback failed")

    async def flush(self, timeout: float | None = None, *, force: bool = False) -> bool:
        """Wait until every turn numbered so far is durable. `force` also numbers
        the turns still waiting for an earlier transcript. True when done."""
        self._release(force=force)
        started = time.monotonic()
        if not await self._store_opened(timeout):
            return False
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return await self.writer.flush(left)

    async def _store_opened(self, timeout: float | None) -> bool:
        opening = self._opening
        if opening is None or opening.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(opening), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop recording, number everything buffered and write it (up to
        `timeout` seconds, default `flush_timeout`). Idempotent; also run on the
        session's ``close`` event."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(
                self._aclose(self.flush_timeout if timeout is None else timeout)
            )
        await asyncio.shield(self._closing)

    async def _aclose(self, timeout: float) -> None:
        closing_ns = time.time_ns()
        self._detach()
        self._release(force=True)
        deadline = time.monotonic() + timeout
        if not await self._store_opened(timeout) and self._opening is not None:
            self._opening.cancel()
            lost = len(self._backlog or ())
            self._lost += lost
            self._backlog = None
            logger.error(
                "history store %s never opened: %d turns of conversation %s are lost",
                self.store.url,
                lost,
                self.conversation_id,
            )
        await self.writer.aclose(max(0.0, deadline - time.monotonic()))
        await finish_call(self, start_ns=closing_ns, timeout=deadline - time.monotonic())
        for hook in self._close_hooks:
            try:
                hook()
            except Exception:
                logger.exception("history recorder: close hook failed")
        logger.debug(
            "history recorder closed",
            extra={
                "conversation_id": self.conversation_id,
                "turns": len(self._turns),
                "written": self.writer.written,
                "dropped": self.writer.dropped,
                "late": self._late,
            },
        )

    def _detach(self) -> None:
        if not self._attached:
            return
        self._attached = False
        for rt in self.realtime_sessions:
            adapter = adapter_of(rt)
            if adapter is not None and self._on_server_id in adapter.id_listeners:
                adapter.id_listeners.remove(self._on_server_id)
        for event, handler in (
            ("conversation_item_added", self._on_item_added),
            ("close", self._on_close),
        ):
            try:
                self.session.off(event, handler)
            except (KeyError, ValueError):
                pass
