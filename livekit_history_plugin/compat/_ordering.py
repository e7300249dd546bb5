"""Keep livekit's mirror (`_remote_chat_ctx`) in the server's order.

livekit inserts an acknowledged item after the `previous_item_id` its ack
names, at the moment the ack arrives. When answers arrive out of order (a proxy,
a provider answering from several workers), an ack can name an item whose own
ack is still on its way: livekit <= 1.4 then drops the item from the mirror,
1.5+ appends it at the tail (and logs a warning), and the mirror ends up
scrambled although the server holds every item in order. Providers whose acks
name no predecessor at all (xAI) make livekit append everything at the tail.

`MirrorOrder` owns the placement instead. Each acknowledged item is placed
right after the item the server says precedes it; when that item is not in the
mirror yet but is one of ours still unanswered, the placement waits for it
(bounded: until the update settles, or `WAIT_BOUND` seconds outside one). When
the server says nothing useful, the item goes where the server put it by the
protocol's own rule: an anchored create after its anchor, an appended create
after the nearest earlier item of its burst that the server took.

Touches livekit's `RemoteChatContext` through `get`, `insert`, `delete`,
`to_chat_ctx` and the node's `_prev` link, all unchanged from 1.0 to 1.8.9.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..log import logger
from ..replay.engine import ROOT

# how long an acknowledged item waits for its predecessor outside an update
WAIT_BOUND = 1.0
# bursts whose creates are still remembered (late answers name them)
_BURSTS_KEPT = 4


class _Unknown:
    """The server did not say where an item sits."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
ServerPrev = str | None | _Unknown

Apply = Callable[[str | None], None]
"""Put the item into the mirror right after this id (None: at the head)."""


@dataclass
class _Sent:
    item_id: str
    seq: int
    burst: int
    anchor: str | None  # previous_item_id of the latest attempt; None: appended
    base: str | None  # for appends: the item the burst appends to
    state: Literal["pending", "present", "absent"] = "pending"


@dataclass
class Placement:
    item_id: str
    server_prev: ServerPrev
    apply: Apply
    # placed from our own knowledge (not the server's word): a later ack that
    # names a predecessor may move it
    guessed: bool = False
    order: int = 0


@dataclass(frozen=True)
class _At:
    prev: str | None


@dataclass(frozen=True)
class _Wait:
    blocker: str


@dataclass
class OrderStats:
    """What the ordering did, for tests and logs (counts, not timings)."""

    placed: int = 0
    waited: int = 0
    moved: int = 0
    forced: int = 0  # placements a bound ran out on (placed at the best guess)


class MirrorOrder:
    def __init__(self, mirror: Callable[[], Any], *, null_previous: bool = False) -> None:
        self._mirror = mirror
        self._null_previous = null_previous
        self._sent: dict[str, _Sent] = {}
        self._seq = 0
        self._burst = 0
        self._base: str | None = None
        self._waiting: dict[str, list[Placement]] = collections.defaultdict(list)
        self._guessed: set[str] = set()
        self._order = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_update = False
        self.pending_deletes: collections.OrderedDict[str, int] = collections.OrderedDict()
        # items re-created while their delete was unanswered: the delete's ack
        # is about the old copy, which is already gone from the mirror
        self.superseded: set[str] = set()
        self.stats = OrderStats()

    # -- what we sent and what became of it -----------------------------------

    def begin_burst(self, base: str | None) -> None:
        self._burst += 1
        self._base = base
        self._in_update = True
        old = self._burst - _BURSTS_KEPT
        for item_id in [i for i, s in self._sent.items() if s.burst <= old]:
            del self._sent[item_id]

    def sent_create(self, item_id: str, anchor: str | None) -> None:
        self._seq += 1
        self._sent[item_id] = _Sent(item_id, self._seq, self._burst, anchor, self._base)

    def sent_delete(self, item_id: str) -> None:
        self._seq += 1
        self.pending_deletes[item_id] = self._seq
        self.pending_deletes.move_to_end(item_id)

    def delete_answered(self, item_id: str) -> None:
        self.pending_deletes.pop(item_id, None)
        entry = self._sent.get(item_id)
        if entry is not None and entry.state == "present" and self._mirror().get(item_id) is None:
            entry.state = "absent"
            self._wake(item_id)

    def oldest_pending_delete(self) -> str | None:
        return next(iter(self.pending_deletes), None)

    def delete_pending_before_create(self, item_id: str) -> bool:
        """Whether a delete of `item_id` is unanswered and was sent before its
        latest create (the create's ack is then about a new copy)."""
        seq = self.pending_deletes.get(item_id)
        entry = self._sent.get(item_id)
        return seq is not None and entry is not None and seq < entry.seq

    def settled(self, item_id: str, present: bool) -> None:
        entry = self._sent.get(item_id)
        if entry is None:
            return
        entry.state = "present" if present else "absent"
        if not present:
            self._wake(item_id)

    def knows(self, item_id: str) -> bool:
        return item_id in self._sent

    def pending_creates(self) -> list[str]:
        """Creates not answered yet, oldest first."""
        pending = [s for s in self._sent.values() if s.state == "pending"]
        return [s.item_id for s in sorted(pending, key=lambda s: s.seq)]

    def rename(self, item_id: str, server_id: str) -> None:
        """The server keeps `item_id` under an id of its own (SERVER_REPLACES_ITEM_IDS)."""
        entry = self._sent.pop(item_id, None)
        if entry is not None:
            entry.item_id = server_id
            self._sent[server_id] = entry
        for s in self._sent.values():
            if s.anchor == item_id:
                s.anchor = server_id
            if s.base == item_id:
                s.base = server_id

    # -- placing ----------------------------------------------------------------

    def place(self, placement: Placement) -> None:
        self._order += 1
        placement.order = self._order
        self._run([placement])

    def confirm(self, item_id: str, server_prev: ServerPrev) -> None:
        """A (late or duplicate) ack of an item already mirrored: if it was
        placed by a guess and the server names a predecessor in the mirror,
        follow the server."""
        if item_id not in self._guessed or not isinstance(server_prev, str):
            return
        mirror = self._mirror()
        if self._null_previous or mirror.get(server_prev) is None:
            return
        self._guessed.discard(item_id)
        if move_after(mirror, item_id, server_prev):
            self.stats.moved += 1

    def end_update(self) -> None:
        """The update settled: nothing it sent is pending, every wait ends now."""
        self._in_update = False
        self.flush()

    def flush(self) -> None:
        """Place every waiting item at its best guess."""
        self._cancel_timer()
        while self._waiting:
            waiting = sorted(
                (p for ps in self._waiting.values() for p in ps), key=lambda p: p.order
            )
            self._waiting.clear()
            for p in waiting:
                where = self._where(p)
                if isinstance(where, _Wait):
                    logger.debug(
                        "mirror: %s still waits for %s; placed at its best guess",
                        p.item_id,
                        where.blocker,
                    )
                    self.stats.forced += 1
                    where = self._guess(p.item_id, final=True)
                self._apply(p, where.prev if isinstance(where, _At) else self._tail(p.item_id))

    def _run(self, work: list[Placement]) -> None:
        queue = collections.deque(work)
        while queue:
            p = queue.popleft()
            where = self._where(p)
            if isinstance(where, _Wait):
                self.stats.waited += 1
                self._waiting[where.blocker].append(p)
                self._arm_timer()
                continue
            self._apply(p, where.prev)
            queue.extend(self._woken(p.item_id))

    def _apply(self, p: Placement, prev: str | None) -> None:
        try:
            p.apply(prev)
        except Exception:  # a livekit handler failing must not stop the others
            logger.exception("mirror: placing %s failed", p.item_id)
        self.stats.placed += 1
        if p.guessed:
            self._guessed.add(p.item_id)
        else:
            self._guessed.discard(p.item_id)

    def _woken(self, item_id: str) -> list[Placement]:
        return sorted(self._waiting.pop(item_id, []), key=lambda p: p.order)

    def _wake(self, item_id: str) -> None:
        woken = self._woken(item_id)
        if woken:
            self._run(woken)

    # -- where the server has an item -------------------------------------------

    def _where(self, p: Placement) -> _At | _Wait:
        mirror = self._mirror()
        sp = p.server_prev
        if isinstance(sp, str) and sp != ROOT:
            if mirror.get(sp) is not None:
                return _At(sp)
            if self._unplaced(sp):
                return _Wait(sp)
            # an anchor unknown to the mirror (deleted meanwhile): where the
            # protocol put it
            return self._guess(p.item_id)
        if sp is UNKNOWN:
            return self._guess(p.item_id)
        # the server says: first in the conversation
        entry = self._sent.get(p.item_id)
        if entry is None or entry.anchor is not None:
            return _At(None)
        guess = self._guess(p.item_id)
        return guess if isinstance(guess, _Wait) or guess.prev != entry.base else _At(None)

    def _guess(self, item_id: str, *, final: bool = False) -> _At | _Wait:
        mirror = self._mirror()
        entry = self._sent.get(item_id)
        if entry is None:
            return _At(self._tail(item_id))  # not ours: livekit's own rule
        if entry.anchor is not None:
            if entry.anchor == ROOT:
                return _At(None)
            if mirror.get(entry.anchor) is not None:
                return _At(entry.anchor)
            if self._unplaced(entry.anchor) and not final:
                return _Wait(entry.anchor)
            return _At(self._tail(item_id))
        # appended: after the nearest earlier item of its burst the server took
        for earlier in self._appended_before(entry):
            if earlier.state == "absent":
                continue
            if mirror.get(earlier.item_id) is not None:
                return _At(earlier.item_id)
            if not final:
                return _Wait(earlier.item_id)
        if entry.base is None or mirror.get(entry.base) is not None:
            return _At(entry.base)
        return _At(self._tail(item_id))

    def _appended_before(self, entry: _Sent) -> list[_Sent]:
        found = [
            s
            for s in self._sent.values()
            if s.burst == entry.burst and s.anchor is None and s.seq < entry.seq
        ]
        return sorted(found, key=lambda s: s.seq, reverse=True)

    def _unplaced(self, item_id: str) -> bool:
        """One of ours, not refused, not in the mirror yet: its placement is coming."""
        entry = self._sent.get(item_id)
        return entry is not None and entry.state != "absent" and self._mirror().get(item_id) is None

    def _tail(self, exclude: str) -> str | None:
        items = self._mirror().to_chat_ctx().items
        for item in reversed(items):
            if item.id != exclude:
                return str(item.id)
        return None

    # -- the bound outside an update ----------------------------------------------

    def _arm_timer(self) -> None:
        if self._in_update or self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._timer = loop.call_later(WAIT_BOUND, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def prev_of(mirror: Any, item_id: str) -> str | None:
    node = mirror.get(item_id)
    prev = getattr(node, "_prev", None) if node is not None else None
    return str(prev.item.id) if prev is not None else None


def move_after(mirror: Any, item_id: str, prev: str | None) -> bool:
    """Move a mirrored item right after `prev` (None: the head); True if it moved."""
    node = mirror.get(item_id)
    if node is None or prev == item_id or prev_of(mirror, item_id) == prev:
        return False
    if node._prev is None and prev is None:
        return False
    item = node.item
    mirror.delete(item_id)
    mirror.insert(prev, item)
    return True


def put_after(mirror: Any, item: Any, prev: str | None) -> None:
    """Make `item` sit right after `prev` in the mirror, inserting or moving it."""
    if mirror.get(item.id) is not None:
        move_after(mirror, item.id, prev)
        return
    if prev is not None and mirror.get(prev) is None:
        prev = None
    mirror.insert(prev, item)


__all__ = [
    "UNKNOWN",
    "WAIT_BOUND",
    "MirrorOrder",
    "OrderStats",
    "Placement",
    "move_after",
    "prev_of",
    "put_after",
]
