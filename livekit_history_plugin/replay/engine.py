"""Sans-IO replay engine: creates and deletes conversation items, matched to
their server acknowledgements, with re-chaining after a rejection.

Like h11 or wsproto it does no I/O and reads no clock: the caller feeds it
server events and the current time, and it answers with what to do — client
events to send, and what it learnt about each item. One engine serves one
chat-context update on one realtime connection.

Why: livekit chains every created item to the previous *local* id. When the
server rejects one item, every item chained behind it is rejected too
(`item_create_invalid_previous_item_id`). Here items that go at the end of the
conversation — all of a history replay — are appended unchained in send order
(the server handles events in order), so a rejection costs exactly that item
and no round trip. Items that go between existing ones must be anchored with
`previous_item_id`: they are sent pipelined, anchored to their desired
predecessor, and when the server says an anchor does not exist the item is sent
again anchored to the nearest earlier item certain to be there — again, a
rejection costs exactly that item.

Real servers do not echo `event_id` on every error (`server_error` and
`invalid_tool_call_id` carry none) and some lack `conversation.item.retrieve`
(Azure 2024-10-01-preview). An answer whose meaning depends on whether an item
landed (an order-only match, a transient error, a lost ack) is verified before
anything is resent: by retrieve, or by a throwaway item anchored to it where
retrieve is missing. So a resend never adds a second copy, which some models
append for a repeated id (README "Real-server fidelity").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

ROOT = "root"

_CREATE_ACKS = frozenset({"conversation.item.created", "conversation.item.added"})

# Codes the server uses for a problem with the item a request carried; an
# error with one of these and no event_id is matched to one of our requests.
_ITEM_ERROR_PREFIXES = ("item_", "conversation_item")
_ITEM_PARAM_PREFIX = "item"
_QUOTED_ID = re.compile(r"'([^'\s]{1,200})'")

DUPLICATE_ID = "item_create_duplicate_item_id"
INVALID_PREVIOUS = "item_create_invalid_previous_item_id"
DELETE_UNKNOWN = "item_delete_invalid_item_id"
RETRIEVE_UNKNOWN = "item_retrieve_invalid_item_id"
# a function_call_output whose call the server does not have; real servers send it
# with `param` and `event_id` null (livekit/agents#3344)
INVALID_TOOL_CALL = "invalid_tool_call_id"
ACK_TIMEOUT = "ack_timeout"
TOO_MANY_ATTEMPTS = "too_many_attempts"
# answers that say "not now" rather than "not this item": tried again later, once
# the server said the item is absent
_RETRYABLE_TYPES = frozenset({"server_error", "rate_limit_error"})
_RETRYABLE_CODES = frozenset({"server_error", "rate_limit_exceeded"})
_RETRY_BASE_S = 0.1
CONNECTION_RESET = "connection_reset"

# Early-beta servers (Oct-Nov 2024) sent errors with `code: null`
# (run-llama/openai_realtime_client#3, livekit/agents PR #1015); the sentence still
# names what went wrong, in the wording the coded errors use.
_CODE_BY_MESSAGE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"previous item with id '[^']*' does not exist"), INVALID_PREVIOUS),
    (re.compile(r"an item with id '[^']*' already exists"), DUPLICATE_ID),
    (re.compile(r"^Error deleting item: "), DELETE_UNKNOWN),
    (re.compile(r"^Error retrieving item: "), RETRIEVE_UNKNOWN),
    (re.compile(r"^Tool call ID '[^']*' not found"), INVALID_TOOL_CALL),
)

RequestKind = Literal["create", "delete", "retrieve", "probe", "cleanup"]
_ANY_KIND: frozenset[RequestKind] = frozenset(
    {"create", "delete", "retrieve", "probe", "cleanup"}
)
PROBE_ID_PREFIX = "lhp_probe_"


@dataclass(frozen=True)
class CreateOp:
    """Create `item` (wire JSON, with its `id`) right after the item `after`
    (None: at the start of the conversation)."""

    item: Mapping[str, Any]
    after: str | None

    @property
    def item_id(self) -> str:
        return str(self.item["id"])


@dataclass(frozen=True)
class DeleteOp:
    item_id: str


# -- what the engine tells its driver ----------------------------------------


@dataclass(frozen=True)
class SendEvent:
    """Send this client event on the socket, in order."""

    event: dict[str, Any]


@dataclass(frozen=True)
class ItemConfirmed:
    """The server has `item_id`, right after `previous_item_id` (None: first).

    `how`: "ack" (its own acknowledgement), "inferred" (an item chained behind it
    was acknowledged, so it exists though its own ack was lost or is late),
    "duplicate" (the server said the id already exists, or acked it naming itself
    as its predecessor), "retrieved" (found by `conversation.item.retrieve`, or by
    an anchor probe, after its ack timed out or an unclear error). For every `how` but
    "ack" the driver must put the item into its mirror itself.
    """

    item_id: str
    previous_item_id: str | None
    item: Mapping[str, Any]
    how: Literal["ack", "inferred", "duplicate", "retrieved"]


@dataclass(frozen=True)
class ItemRejected:
    """The server does not have `item_id` and will not get it from this update."""

    item_id: str
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class ItemDeleted:
    """`item_id` is gone from the server (`how`: "ack" or "absent")."""

    item_id: str
    how: Literal["ack", "absent"]


@dataclass(frozen=True)
class DeleteFailed:
    item_id: str
    code: str
    message: str


Output = SendEvent | ItemConfirmed | ItemRejected | ItemDeleted | DeleteFailed


@dataclass(frozen=True)
class Reaction:
    """The engine's answer to one server event.

    `claimed`: the event answered one of this engine's requests (the driver
    should not report it as an unexplained server error).
    """

    outputs: tuple[Output, ...] = ()
    claimed: bool = False


NOT_OURS = Reaction()


@dataclass
class ReplayResult:
    confirmed: list[str] = field(default_factory=list)
    rejected: list[ItemRejected] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    delete_failed: list[DeleteFailed] = field(default_factory=list)
    events_sent: int = 0
    resends: int = 0

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.delete_failed

    #: checks of an item whose fate was unknown: retrieves, or (where the server has
    #: no retrieve) deletes that prove presence or absence before a resend
    verifications: int = 0


class _State(Enum):
    SENT = "sent"  # an attempt is in flight
    PARKED = "parked"  # refused for its anchor; waits until an anchor is certain
    VERIFYING = "verifying"  # its fate is unknown; a retrieve (or anchor probe) is in flight
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


@dataclass
class _Create:
    op: CreateOp
    state: _State = _State.SENT
    event_id: str = ""
    # the previous_item_id of the current attempt; None: appended at the tail
    sent_prev: str | None = None
    attempts: int = 0
    sent_seq: int = 0  # send order of the current attempt
    deadline: float = 0.0
    # the server told us this item is not there (an item chained on it was
    # refused); it must not anchor anything even while its own answer is pending
    known_absent: bool = False
    # send number of the attempt refused for its anchor, while PARKED
    refused_seq: int = 0
    # an error whose meaning depends on whether the item landed: one matched to
    # it by order only, or a transient one (the insert may have happened before
    # it); a verification decides. None while verifying: its ack timed out
    suspect_error: tuple[str, str, str | None] | None = None
    # while PARKED after a transient server error: not sent again before this
    retry_at: float = 0.0


@dataclass
class _Delete:
    item_id: str
    event_id: str = ""
    deadline: float = 0.0
    done: bool = False
    attempts: int = 0


@dataclass(frozen=True)
class _Request:
    kind: RequestKind
    item_id: str


def default_event_id(kind: str) -> str:
    return f"lhp_{kind}_{uuid.uuid4().hex[:16]}"


class ReplayEngine:
    """One chat-context update as a state machine.

    Drive it with `start(now)`, then `receive(event, now)` for every server
    event of the connection and `tick(now)` at `next_deadline()`; it is `done`
    when every request is settled. All outputs must be acted on in order.
    """

    def __init__(
        self,
        creates: Sequence[CreateOp],
        deletes: Sequence[DeleteOp] = (),
        *,
        remote_order: Sequence[str] = (),
        ack_timeout: float = 2.0,
        verify_timeout: float = 1.0,
        max_attempts: int = 8,
        new_event_id: Callable[[str], str] = default_event_id,
        supports_retrieve: bool = True,
    ) -> None:
        # Azure's 2024-10-01-preview has no conversation.item.retrieve (its reference
        # lists nine client events); there an item of unknown fate is checked by
        # creating a throwaway item anchored to it (refused if it is not there),
        # deleted again right after
        self._retrieve_ok = supports_retrieve
        # anchor probes: probe item id -> the item it checks; and the deadlines of
        # the deletes that remove the probe items again
        self._probe_of: dict[str, str] = {}
        self._cleanup_deadline: dict[str, float] = {}
        self._ack_timeout = ack_timeout
        self._verify_timeout = verify_timeout
        self._max_attempts = max_attempts
        self._new_event_id = new_event_id
        self._creates: dict[str, _Create] = {}
        for op in creates:
            if op.item_id in self._creates:
                raise ValueError(f"item {op.item_id!r} is created twice in one update")
            self._creates[op.item_id] = _Create(op=op)
        self._deletes = {d.item_id: _Delete(item_id=d.item_id) for d in deletes}
        # where each already-present item sits, so re-chaining can walk back past
        # a remote item that turned out to be gone
        self._remote_prev: dict[str, str | None] = {}
        prev: str | None = None
        for rid in remote_order:
            self._remote_prev[rid] = prev
            prev = rid
        self._absent_remote: set[str] = set(self._deletes)
        # every request ever sent, current and superseded, by event id
        self._requests: dict[str, _Request] = {}
        # unanswered requests in send order, for errors that carry no event_id
        self._inflight: dict[str, _Request] = {}
        self._started = False
        self._seq = 0
        self._parked: dict[str, _Create] = {}
        self.result = ReplayResult()

    # -- public driving API ----------------------------------------------------

    @property
    def done(self) -> bool:
        return self._started and not self._inflight and not self._parked

    def start(self, now: float) -> list[Output]:
        """The initial burst: every delete, then every create, pipelined."""
        if self._started:
            raise RuntimeError("engine already started")
        self._started = True
        out: list[Output] = []
        for d in self._deletes.values():
            out.append(self._send_delete(d, now))
        tail = self._tail_after_deletes()
        appending = True
        for c in self._creates.values():
            # Items that go at the end are appended in send order, unchained: a
            # rejected one then cannot take the ones after it down. Items that go
            # between existing ones are anchored (optimistically to their desired
            # predecessor, which is sent before them) and re-chained on refusal.
            appending = appending and c.op.after == tail
            if appending:
                out.append(self._send_create(c, None, now))
                tail = c.op.item_id
            else:
                out.append(self._send_create(c, c.op.after or ROOT, now))
        return out

    def _tail_after_deletes(self) -> str | None:
        for rid in reversed(list(self._remote_prev)):
            if rid not in self._deletes:
                return rid
        return None

    def receive(self, event: Mapping[str, Any], now: float) -> Reaction:
        """Feed one server event (any type; events not about our items are ignored)."""
        etype = event.get("type")
        if etype in _CREATE_ACKS:
            reaction = self._on_created(event, now)
        elif etype == "conversation.item.deleted":
            reaction = self._on_deleted(event, now)
        elif etype == "conversation.item.retrieved":
            reaction = self._on_retrieved(event)
        elif etype == "error":
            reaction = self._on_error(event, now)
        else:
            return NOT_OURS
        if self._parked and reaction.claimed:
            return Reaction(reaction.outputs + tuple(self._unpark(now)), True)
        return reaction

    def tick(self, now: float) -> list[Output]:
        """Handle every deadline that has passed."""
        out: list[Output] = []
        for eid, req in list(self._inflight.items()):
            if req.kind == "cleanup":
                if self._cleanup_deadline.get(req.item_id, 0.0) <= now:
                    # a probe item left behind costs nothing but a stray item
                    del self._inflight[eid]
                    self._cleanup_deadline.pop(req.item_id, None)
                continue
            if req.kind == "delete":
                d = self._deletes[req.item_id]
                if d.deadline <= now:
                    del self._inflight[eid]
                    d.done = True
                    out.append(self._delete_failed(d.item_id, ACK_TIMEOUT, "no answer to delete"))
                continue
            c = self._creates[req.item_id]
            if c.deadline > now:
                continue
            del self._inflight[eid]
            if req.kind == "create":
                # ask the server instead of guessing: a lost ack and a lost
                # request look the same from here
                c.suspect_error = None
                out.append(self._verify(c, now))
            else:
                out.extend(self._reject(c, ACK_TIMEOUT, "no acknowledgement and no answer to its check"))
        out.extend(self._unpark(now))
        return out

    def next_deadline(self) -> float | None:
        deadlines = [self._deadline_of(r) for r in self._inflight.values()]
        deadlines.extend(c.retry_at for c in self._parked.values() if c.retry_at)
        return min(deadlines) if deadlines else None

    def abort(self, code: str = CONNECTION_RESET, message: str = "connection lost") -> list[Output]:
        """Settle everything still in flight as failed (e.g. the socket closed)."""
        out: list[Output] = []
        for req in list(self._inflight.values()):
            if req.kind == "cleanup":
                continue
            if req.kind == "delete":
                self._deletes[req.item_id].done = True
                out.append(self._delete_failed(req.item_id, code, message))
            else:
                out.extend(self._reject(self._creates[req.item_id], code, message))
        self._inflight.clear()
        for c in list(self._parked.values()):
            out.extend(self._reject(c, code, message))
        return out

    def owns_item(self, item_id: str) -> bool:
        # deletes count too: an item the server or livekit created (a tool call, its
        # output) is deleted by us, and its `deleted` ack must reach this engine
        return item_id in self._creates or item_id in self._deletes or item_id in self._probe_of

    # -- acknowledgements ------------------------------------------------------

    def _on_created(self, event: Mapping[str, Any], now: float) -> Reaction:
        item = event.get("item")
        item_id = item.get("id") if isinstance(item, Mapping) else None
        if isinstance(item_id, str) and item_id in self._probe_of:
            return self._on_probe_added(item_id, now)
        c = self._creates.get(item_id) if isinstance(item_id, str) else None
        if c is None:
            return NOT_OURS
        if c.state is _State.CONFIRMED:
            return Reaction(claimed=True)  # duplicate ack: already counted
        prev = event.get("previous_item_id")
        prev = prev if isinstance(prev, str) and prev != ROOT else None
        if prev == c.op.item_id:
            # gpt-realtime-1.5 / gpt-4o-realtime-preview ack a create whose id already
            # exists with previous_item_id == its own id (steelburn/speaches
            # realtime_conversation_test.py): the item was there before; the ack
            # confirms no placement, and no second copy of ours
            return Reaction(tuple(self._confirm(c, self._placed_after(c), "duplicate")), True)
        out: list[Output] = []
        # the server placed it after `prev`, so `prev` exists even if its own
        # ack was dropped or is still on its way
        if prev is not None and self._anchor_proves(prev, c):
            out.extend(self._infer_present(self._creates[prev]))
        out.extend(self._confirm(c, prev, "ack"))
        return Reaction(tuple(out), claimed=True)

    def _anchor_proves(self, prev: str, acked: _Create) -> bool:
        """Whether an ack naming `prev` proves our create of `prev` landed.

        OpenAI can name an item it deleted about 400 ms earlier (livekit/agents
        PR #6964): an anchor is trusted only for an item this update does not
        delete, whose current attempt went out before the acked one.
        """
        other = self._creates.get(prev)
        if other is None or prev in self._deletes:
            return False
        return other.sent_seq < acked.sent_seq

    def _infer_present(self, c: _Create) -> list[Output]:
        if c.state is _State.CONFIRMED:
            return []
        chain: list[_Create] = []
        cur: _Create | None = c
        while cur is not None and cur.state is not _State.CONFIRMED:
            chain.append(cur)
            # only an anchored attempt proves its anchor; an append proves nothing
            nxt = _none_if_root(cur.sent_prev) if cur.sent_prev is not None else None
            cur = self._creates.get(nxt) if nxt is not None else None
        out: list[Output] = []
        for item in reversed(chain):
            out.extend(self._confirm(item, self._placed_after(item), "inferred"))
        return out

    def _placed_after(self, c: _Create) -> str | None:
        """Where the current attempt of `c` lands: its anchor, or for an append
        the item appended before it (what it was planned to follow)."""
        if c.sent_prev is None:
            return c.op.after
        return _none_if_root(c.sent_prev)

    def _on_deleted(self, event: Mapping[str, Any], now: float) -> Reaction:
        item_id = event.get("item_id")
        if isinstance(item_id, str) and item_id in self._probe_of:
            self._cleanup_deadline.pop(item_id, None)
            for eid, req in list(self._inflight.items()):
                if req == _Request("cleanup", item_id):
                    del self._inflight[eid]
            return Reaction(claimed=True)
        d = self._deletes.get(item_id) if isinstance(item_id, str) else None
        if d is None:
            return NOT_OURS
        if d.done:
            return Reaction(claimed=True)
        self._inflight.pop(d.event_id, None)
        d.done = True
        self.result.deleted.append(d.item_id)
        return Reaction((ItemDeleted(d.item_id, "ack"),), claimed=True)

    def _on_retrieved(self, event: Mapping[str, Any]) -> Reaction:
        item = event.get("item")
        item_id = item.get("id") if isinstance(item, Mapping) else None
        c = self._creates.get(item_id) if isinstance(item_id, str) else None
        if c is None or c.state is not _State.VERIFYING:
            return NOT_OURS if c is None else Reaction(claimed=True)
        self._inflight.pop(c.event_id, None)
        return Reaction(tuple(self._confirm(c, self._placed_after(c), "retrieved")), True)

    # -- errors ----------------------------------------------------------------

    def _on_error(self, event: Mapping[str, Any], now: float) -> Reaction:
        err = event.get("error")
        if not isinstance(err, Mapping):
            return NOT_OURS
        message = str(err.get("message") or "")
        code = _error_code(err, message)
        param = err.get("param") if isinstance(err.get("param"), str) else None
        event_id = err.get("event_id")
        certain = True
        if isinstance(event_id, str) and event_id:
            req = self._requests.get(event_id)
            if req is None:
                return NOT_OURS
            if event_id not in self._inflight:
                # the answer to a superseded attempt (or a duplicate error)
                return Reaction(claimed=True)
            matched_eid = event_id
        else:
            found = self._match_anonymous_error(code, message, param)
            if found is None:
                return NOT_OURS
            matched_eid, certain = found
            req = self._inflight[matched_eid]
        del self._inflight[matched_eid]
        # an order-only match of an error that names no item (a `server_error`)
        # may answer livekit's own request: act on it, but let livekit see it too
        claimed = certain or _is_item_code(code, param)
        if req.kind == "cleanup":
            self._cleanup_deadline.pop(req.item_id, None)
            return Reaction(claimed=claimed)
        if req.kind == "delete":
            retryable = err.get("type") in _RETRYABLE_TYPES or code in _RETRYABLE_CODES
            return Reaction(tuple(self._delete_error(req.item_id, code, message, retryable, now)), claimed)
        c = self._creates[req.item_id]
        if req.kind in ("retrieve", "probe"):
            return Reaction(tuple(self._verify_error(c, req.kind, code, message, now)), claimed)
        retryable = err.get("type") in _RETRYABLE_TYPES or code in _RETRYABLE_CODES
        if retryable or (not certain and code not in (INVALID_PREVIOUS, DUPLICATE_ID)):
            # Matched by order alone (if an earlier ack was lost, this error is a
            # later item's), or transient (the insert may have happened before
            # it): ask the server rather than drop a landed item or send it twice.
            # a transient error keeps a retryable code, whatever the server called it
            kept = code if not retryable or code in _RETRYABLE_CODES else str(err.get("type"))
            c.suspect_error = (kept, message, param)
            return Reaction((self._verify(c, now),), claimed)
        return Reaction(tuple(self._create_error(c, code, message, param, now)), claimed)

    def _match_anonymous_error(
        self, code: str, message: str, param: str | None
    ) -> tuple[str, bool] | None:
        """Find which request an error without event_id answers, and whether
        that is certain.

        Only requests of a kind the error can answer qualify (its code family:
        create / delete / retrieve errors, or any for a `server_error`). An id
        quoted in the message makes the match certain; otherwise it is the
        oldest such request — the server answers in order — to be verified.
        """
        kinds = _kinds_answered_by(code, param)
        candidates = [(eid, r) for eid, r in self._inflight.items() if r.kind in kinds]
        if not candidates:
            return None
        if code == INVALID_TOOL_CALL:
            candidates = [(eid, r) for eid, r in candidates if self._is_tool_output(r)]
            if not candidates:
                return None
        quoted = set(_QUOTED_ID.findall(message))
        for eid, req in candidates if quoted else ():
            c = self._creates.get(req.item_id)
            if code == INVALID_PREVIOUS:
                if c is not None and req.kind == "create" and c.sent_prev in quoted:
                    return eid, True
                if req.kind == "probe" and req.item_id in quoted:
                    return eid, True
            elif code == INVALID_TOOL_CALL:
                if c is not None and c.op.item.get("call_id") in quoted:
                    return eid, True
            elif req.item_id in quoted:
                return eid, True
        return candidates[0][0], False

    def _is_tool_output(self, req: _Request) -> bool:
        c = self._creates.get(req.item_id) if req.kind == "create" else None
        return c is not None and c.op.item.get("type") == "function_call_output"

    # -- verification: is an item of unknown fate on the server? -------------------

    def _verify(self, c: _Create, now: float) -> SendEvent:
        self.result.verifications += 1
        if self._retrieve_ok:
            return self._send_retrieve(c, now)
        return self._send_probe(c, now)

    def _verify_error(
        self, c: _Create, kind: RequestKind, code: str, message: str, now: float
    ) -> list[Output]:
        """An error answering a retrieve / anchor probe of `c`."""
        if kind == "retrieve" and code != RETRIEVE_UNKNOWN:
            # the server has no retrieve after all (answered as an unknown event
            # type): the same check with an anchor probe
            self._retrieve_ok = False
            return [self._send_probe(c, now)]
        if code in (RETRIEVE_UNKNOWN, INVALID_PREVIOUS):
            return self._settle_absent(c, now)
        return self._reject(c, code, message)

    def _settle_absent(self, c: _Create, now: float) -> list[Output]:
        """The server does not have `c`: the error it was suspected of holds."""
        suspect, c.suspect_error = c.suspect_error, None
        if suspect is None:
            return self._reject(c, ACK_TIMEOUT, "its ack timed out and the server does not have it")
        code, message, param = suspect
        if code in _RETRYABLE_CODES or code in _RETRYABLE_TYPES:
            return self._retry_later(c, code, message, now)
        return self._create_error(c, code, message, param, now)

    def _on_probe_added(self, probe_id: str, now: float) -> Reaction:
        """The server placed a probe item after the item it checks: that item is
        there (what was suspected of it was not its answer). The probe goes again."""
        out: list[Output] = [self._send_cleanup(probe_id, now)]
        c = self._creates[self._probe_of[probe_id]]
        if c.state is _State.VERIFYING:
            c.suspect_error = None
            out.extend(self._confirm(c, self._placed_after(c), "retrieved"))
        return Reaction(tuple(out), claimed=True)

    def _create_error(
        self, c: _Create, code: str, message: str, param: str | None, now: float
    ) -> list[Output]:
        if code == DUPLICATE_ID:
            # already on the server, which is all the create wanted
            return self._confirm(c, self._placed_after(c), "duplicate")
        if code != INVALID_PREVIOUS or c.sent_prev is None:
            return self._reject(c, code, message, param)
        self._mark_absent(c.sent_prev, refused_at=c.sent_seq)
        if c.attempts >= self._max_attempts:
            return self._reject(c, TOO_MANY_ATTEMPTS, f"gave up after {c.attempts} attempts")
        c.state, c.refused_seq = _State.PARKED, c.sent_seq
        self._parked[c.op.item_id] = c
        return self._unpark(now)

    def _retry_later(self, c: _Create, code: str, message: str, now: float) -> list[Output]:
        """A transient failure (server_error, rate limit): send the item again
        after a backoff, anchored where it belongs — the items appended after it
        in the meantime must stay after it."""
        if c.attempts >= self._max_attempts:
            return self._reject(c, code, f"{message} (gave up after {c.attempts} attempts)")
        c.state, c.refused_seq = _State.PARKED, c.sent_seq
        c.retry_at = now + _RETRY_BASE_S * (2 ** (c.attempts - 1))
        self._parked[c.op.item_id] = c
        return []

    def _unpark(self, now: float) -> list[Output]:
        """Send again every parked item whose anchor is now certain, in order."""
        out: list[Output] = []
        for item_id in list(self._parked):
            c = self._parked[item_id]
            if c.retry_at > now:
                continue
            anchor = self._anchor_for(c)
            if anchor is None:
                continue
            del self._parked[item_id]
            self.result.resends += 1
            out.append(self._send_create(c, anchor, now))
        return out

    def _delete_error(
        self, item_id: str, code: str, message: str, retryable: bool, now: float
    ) -> list[Output]:
        d = self._deletes[item_id]
        if retryable and d.attempts < self._max_attempts:
            # a delete can be repeated safely: a second one of a gone item answers
            # item_delete_invalid_item_id, which counts as deleted
            return [self._send_delete(d, now)]
        d.done = True
        if code == DELETE_UNKNOWN:
            self.result.deleted.append(item_id)
            return [ItemDeleted(item_id, "absent")]
        return [self._delete_failed(item_id, code, message)]

    def _mark_absent(self, item_id: str, *, refused_at: int) -> None:
        """The server did not have `item_id` when it processed our request number
        `refused_at`. An attempt of ours sent after that request is still open."""
        if item_id == ROOT:
            return
        c = self._creates.get(item_id)
        if c is not None:
            if c.state is not _State.CONFIRMED and c.sent_seq < refused_at:
                c.known_absent = True
        else:
            self._absent_remote.add(item_id)

    # -- chaining --------------------------------------------------------------

    def _anchor_for(self, c: _Create) -> str | None:
        """The nearest desired predecessor of a refused item that is certain to
        be on the server when the item arrives again; None while that depends on
        an answer still on its way.

        Certain: confirmed, or sent again after the refused attempt (the server
        handles it first, and if it fails, so does this one, and we come back).
        """
        seen: set[str] = set()
        cur = c.op.after
        while cur is not None and cur not in seen:
            seen.add(cur)
            other = self._creates.get(cur)
            if other is not None:
                if other.state is _State.CONFIRMED:
                    return cur
                in_flight = other.state in (_State.SENT, _State.VERIFYING)
                if in_flight and other.sent_seq > c.refused_seq:
                    return cur
                if in_flight and not other.known_absent:
                    return None  # its answer decides where this one goes
                if other.state is _State.PARKED:
                    return None  # goes out first; this one follows it
                cur = other.op.after
            elif cur in self._absent_remote or cur not in self._remote_prev:
                # unknown to the mirror too: fall back to what precedes it there
                cur = self._remote_prev.get(cur)
            else:
                return cur
        return ROOT

    # -- sending and settling --------------------------------------------------

    def _send_create(self, c: _Create, anchor: str | None, now: float) -> SendEvent:
        eid = self._new_event_id("create")
        c.event_id, c.sent_prev, c.state = eid, anchor, _State.SENT
        c.attempts += 1
        self._seq += 1
        c.sent_seq = self._seq
        c.known_absent = False
        c.deadline = now + self._ack_timeout
        self._track(eid, _Request("create", c.op.item_id))
        event: dict[str, Any] = {"type": "conversation.item.create", "event_id": eid}
        if anchor is not None:
            event["previous_item_id"] = anchor
        event["item"] = dict(c.op.item)
        return SendEvent(event)

    def _send_retrieve(self, c: _Create, now: float) -> SendEvent:
        eid = self._new_event_id("retrieve")
        c.event_id, c.state = eid, _State.VERIFYING
        c.deadline = now + self._verify_timeout
        self._track(eid, _Request("retrieve", c.op.item_id))
        return SendEvent({"type": "conversation.item.retrieve", "event_id": eid, "item_id": c.op.item_id})

    def _send_probe(self, c: _Create, now: float) -> SendEvent:
        """Learn whether `c` is there without retrieve: create a throwaway item
        anchored to it. Acked: `c` is there; `item_create_invalid_previous_item_id`:
        it is not. Nothing of `c` is touched, so nothing can be duplicated."""
        eid = self._new_event_id("probe")
        probe_id = PROBE_ID_PREFIX + uuid.uuid4().hex[:16]
        self._probe_of[probe_id] = c.op.item_id
        c.event_id, c.state = eid, _State.VERIFYING
        c.deadline = now + self._verify_timeout
        self._track(eid, _Request("probe", c.op.item_id))
        probe = {
            "id": probe_id,
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "."}],
        }
        return SendEvent(
            {
                "type": "conversation.item.create",
                "event_id": eid,
                "previous_item_id": c.op.item_id,
                "item": probe,
            }
        )

    def _send_cleanup(self, probe_id: str, now: float) -> SendEvent:
        eid = self._new_event_id("delete")
        self._cleanup_deadline[probe_id] = now + self._ack_timeout
        self._track(eid, _Request("cleanup", probe_id))
        return SendEvent({"type": "conversation.item.delete", "event_id": eid, "item_id": probe_id})

    def _send_delete(self, d: _Delete, now: float) -> SendEvent:
        d.attempts += 1
        eid = self._new_event_id("delete")
        d.event_id, d.deadline = eid, now + self._ack_timeout
        self._track(eid, _Request("delete", d.item_id))
        return SendEvent({"type": "conversation.item.delete", "event_id": eid, "item_id": d.item_id})

    def _track(self, eid: str, req: _Request) -> None:
        self._requests[eid] = req
        self._inflight[eid] = req
        self.result.events_sent += 1

    def _confirm(self, c: _Create, prev: str | None, how: Any) -> list[Output]:
        if c.state is _State.CONFIRMED:
            return []
        self._inflight.pop(c.event_id, None)
        self._parked.pop(c.op.item_id, None)
        was_rejected = c.state is _State.REJECTED
        c.state, c.known_absent = _State.CONFIRMED, False
        if was_rejected:
            # a late answer proved it there after all
            self.result.rejected = [r for r in self.result.rejected if r.item_id != c.op.item_id]
        self.result.confirmed.append(c.op.item_id)
        return [ItemConfirmed(c.op.item_id, prev, c.op.item, how)]

    def _reject(self, c: _Create, code: str, message: str, param: str | None = None) -> list[Output]:
        if c.state in (_State.CONFIRMED, _State.REJECTED):
            return []
        self._inflight.pop(c.event_id, None)
        self._parked.pop(c.op.item_id, None)
        c.state = _State.REJECTED
        rej = ItemRejected(c.op.item_id, code, message, param)
        self.result.rejected.append(rej)
        return [rej]

    def _delete_failed(self, item_id: str, code: str, message: str) -> DeleteFailed:
        f = DeleteFailed(item_id, code, message)
        self.result.delete_failed.append(f)
        return f

    def _deadline_of(self, req: _Request) -> float:
        if req.kind == "cleanup":
            return self._cleanup_deadline.get(req.item_id, 0.0)
        if req.kind == "delete":
            return self._deletes[req.item_id].deadline
        return self._creates[req.item_id].deadline


def _none_if_root(item_id: str) -> str | None:
    return None if item_id == ROOT else item_id


def _error_code(err: Mapping[str, Any], message: str) -> str:
    code = err.get("code")
    if isinstance(code, str) and code:
        return code
    for pattern, known in _CODE_BY_MESSAGE:
        if pattern.search(message):
            return known
    # `server_error` arrives with `code: null` (realtime trace, index id 34909638017)
    return str(err.get("type") or "error")


def _is_item_code(code: str, param: str | None) -> bool:
    if code.startswith(_ITEM_ERROR_PREFIXES) or code == INVALID_TOOL_CALL:
        return True
    return bool(param) and str(param).startswith(_ITEM_PARAM_PREFIX)


def _kinds_answered_by(code: str, param: str | None) -> frozenset[RequestKind]:
    """Which of our requests an error without event_id may answer."""
    if code == INVALID_TOOL_CALL:
        return frozenset({"create"})
    if code.startswith("item_create"):
        return frozenset({"create", "probe"})
    if code.startswith("item_delete"):
        return frozenset({"delete", "cleanup"})
    if code.startswith("item_retrieve"):
        return frozenset({"retrieve"})
    if code in _RETRYABLE_CODES or code in _RETRYABLE_TYPES:
        return _ANY_KIND
    if _is_item_code(code, param):
        return frozenset({"create"}) if param else _ANY_KIND
    return frozenset()
