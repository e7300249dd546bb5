"""The sans-IO replay engine against a small in-order server model.

These tests drive the pure state machine only. The same engine is exercised
against the real livekit packages and the strict websocket emulator in
tests/matrix/.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_history_plugin.replay.engine import (
    ACK_TIMEOUT,
    DUPLICATE_ID,
    INVALID_PREVIOUS,
    CreateOp,
    DeleteOp,
    ItemConfirmed,
    ItemDeleted,
    ItemRejected,
    ReplayEngine,
    SendEvent,
)


def msg(i: int | str, text: str | None = None) -> dict[str, Any]:
    return {
        "id": f"m{i}",
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text or f"text {i}"}],
    }


def chain(n: int, after: str | None = None, start: int = 0) -> list[CreateOp]:
    ops = []
    prev = after
    for i in range(start, start + n):
        ops.append(CreateOp(item=msg(i), after=prev))
        prev = f"m{i}"
    return ops


@dataclass
class Server:
    """Processes client events strictly in order, like the realtime API."""

    items: list[str] = field(default_factory=list)
    reject: Callable[[dict[str, Any]], str | None] = lambda item: None
    anonymous_errors: bool = False
    drop_ack: Callable[[str], bool] = lambda item_id: False
    duplicate_acks: bool = False

    def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        t = ev["type"]
        eid = None if self.anonymous_errors else ev.get("event_id")
        if t == "conversation.item.create":
            item = ev["item"]
            prev = ev.get("previous_item_id")
            if item["id"] in self.items:
                return [self._err(DUPLICATE_ID, f"Item with id '{item['id']}' already exists.", eid)]
            if code := self.reject(item):
                return [self._err(code, "rejected by policy", eid, "item.content")]
            if prev not in (None, "root") and prev not in self.items:
                m = f"Error adding item: the previous item with id '{prev}' does not exist."
                return [self._err(INVALID_PREVIOUS, m, eid)]
            pos = 0 if prev == "root" else (len(self.items) if prev is None else self.items.index(prev) + 1)
            self.items.insert(pos, item["id"])
            if self.drop_ack(item["id"]):
                return []
            ack = {
                "type": "conversation.item.added",
                "previous_item_id": self.items[pos - 1] if pos else None,
                "item": item,
            }
            return [ack, ack] if self.duplicate_acks else [ack]
        if t == "conversation.item.delete":
            if ev["item_id"] not in self.items:
                return [self._err("item_delete_invalid_item_id", "no such item", eid)]
            self.items.remove(ev["item_id"])
            return [{"type": "conversation.item.deleted", "item_id": ev["item_id"]}]
        if t == "conversation.item.retrieve":
            if ev["item_id"] in self.items:
                return [{"type": "conversation.item.retrieved", "item": {"id": ev["item_id"]}}]
            return [self._err("item_retrieve_invalid_item_id", "no such item", eid)]
        raise AssertionError(t)

    @staticmethod
    def _err(code: str, message: str, eid: str | None, param: str | None = None) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": code, "message": message,
                      "param": param, "event_id": eid},
        }


def run(
    engine: ReplayEngine,
    server: Server,
    *,
    shuffle_replies: random.Random | None = None,
    max_rounds: int = 50,
) -> tuple[int, list[Any]]:
    """Round-based simulation: every event sent in a round is answered in the
    next. Returns (round trips used, every non-send output)."""
    now = 0.0
    outputs: list[Any] = []
    pending = engine.start(now)
    rounds = 0
    while pending or not engine.done:
        assert rounds <= max_rounds, "replay did not settle"
        replies: list[dict[str, Any]] = []
        if any(isinstance(out, SendEvent) for out in pending):
            rounds += 1
        for out in pending:
            if isinstance(out, SendEvent):
                replies.extend(server.handle(out.event))
            else:
                outputs.append(out)
        if shuffle_replies is not None:
            shuffle_replies.shuffle(replies)
        pending = []
        now += 0.05
        for r in replies:
            reaction = engine.receive(r, now)
            # an anonymous `server_error` names no item: acted on, left for livekit too
            assert reaction.claimed or r.get("error", {}).get("type") == "server_error", r
            pending.extend(reaction.outputs)
        if not replies and not engine.done:
            now += 10.0  # nothing came back: let the deadlines pass
            pending.extend(engine.tick(now))
    return rounds, outputs


def test_clean_replay_is_one_round_trip() -> None:
    server = Server()
    engine = ReplayEngine(chain(200))
    rounds, outs = run(engine, server)
    assert rounds == 1
    assert server.items == [f"m{i}" for i in range(200)]
    assert engine.result.confirmed == server.items
    assert all(isinstance(o, ItemConfirmed) and o.how == "ack" for o in outs)


def _invalid_previous_errors(outs: list[Any]) -> int:
    return sum(1 for o in outs if isinstance(o, ItemRejected) and o.code == INVALID_PREVIOUS)


def test_one_rejection_at_the_tail_costs_one_item_and_no_round_trip() -> None:
    server = Server(reject=lambda item: "policy_violation" if item["id"] == "m100" else None)
    engine = ReplayEngine(chain(200))
    rounds, outs = run(engine, server)
    assert rounds == 1
    assert server.items == [f"m{i}" for i in range(200) if i != 100]
    assert [r.item_id for r in engine.result.rejected] == ["m100"]
    assert engine.result.resends == 0
    assert _invalid_previous_errors(outs) == 0


def test_one_rejection_mid_conversation_is_rechained_in_two_round_trips() -> None:
    # inserted between existing items, so each is anchored explicitly; the
    # items behind the refused one are re-chained onto the last one that landed
    server = Server(
        items=["a", "z"], reject=lambda item: "policy_violation" if item["id"] == "m100" else None
    )
    engine = ReplayEngine(chain(200, after="a"), remote_order=["a", "z"])
    rounds, _ = run(engine, server)
    assert rounds == 2
    assert server.items == ["a"] + [f"m{i}" for i in range(200) if i != 100] + ["z"]
    assert [r.item_id for r in engine.result.rejected] == ["m100"]
    assert engine.result.resends == 99


def test_typeless_first_item_does_not_orphan_the_rest() -> None:
    ops = [CreateOp(item={"id": "handoff"}, after=None), *chain(5, after="handoff")]
    server = Server(reject=lambda item: "missing_required_parameter" if "type" not in item else None)
    engine = ReplayEngine(ops)
    run(engine, server)
    assert server.items == [f"m{i}" for i in range(5)]
    assert engine.result.rejected[0].code == "missing_required_parameter"


def test_consecutive_rejections() -> None:
    bad = {"m3", "m4", "m5", "m9"}
    server = Server(reject=lambda item: "bad" if item["id"] in bad else None)
    engine = ReplayEngine(chain(12))
    rounds, _ = run(engine, server)
    assert server.items == [f"m{i}" for i in range(12) if f"m{i}" not in bad]
    assert rounds <= 3


def test_errors_without_event_id_are_matched_in_order() -> None:
    server = Server(
        reject=lambda item: "bad" if item["id"] in {"m2", "m7"} else None, anonymous_errors=True
    )
    engine = ReplayEngine(chain(10))
    run(engine, server)
    assert server.items == [f"m{i}" for i in range(10) if i not in (2, 7)]
    assert sorted(r.item_id for r in engine.result.rejected) == ["m2", "m7"]


def test_duplicate_acks_are_idempotent() -> None:
    server = Server(duplicate_acks=True)
    engine = ReplayEngine(chain(5))
    run(engine, server)
    assert engine.result.confirmed == [f"m{i}" for i in range(5)]


def test_dropped_ack_is_inferred_from_the_next_ack() -> None:
    server = Server(drop_ack=lambda item_id: item_id == "m2")
    engine = ReplayEngine(chain(5))
    _, outs = run(engine, server)
    inferred = [o for o in outs if isinstance(o, ItemConfirmed) and o.how == "inferred"]
    assert [(o.item_id, o.previous_item_id) for o in inferred] == [("m2", "m1")]
    assert engine.result.confirmed == [f"m{i}" for i in range(5)]


def test_dropped_last_ack_is_verified_with_retrieve() -> None:
    server = Server(drop_ack=lambda item_id: item_id == "m4")
    engine = ReplayEngine(chain(5))
    _, outs = run(engine, server)
    assert any(isinstance(o, ItemConfirmed) and o.how == "retrieved" for o in outs)
    assert not engine.result.rejected


def test_lost_request_times_out_per_item() -> None:
    class Lossy(Server):
        def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
            if ev["type"] == "conversation.item.create" and ev["item"]["id"] == "m4":
                return []  # never reached the server
            return super().handle(ev)

    server = Lossy()
    engine = ReplayEngine(chain(5))
    run(engine, server)
    assert [r.code for r in engine.result.rejected] == [ACK_TIMEOUT]
    assert server.items == [f"m{i}" for i in range(4)]


def test_duplicate_id_means_already_there() -> None:
    server = Server(items=["m1"])
    engine = ReplayEngine([CreateOp(item=msg(1), after=None)])
    _, outs = run(engine, server)
    assert isinstance(outs[0], ItemConfirmed) and outs[0].how == "duplicate"


def test_deletes_acked_and_unknown_delete_counts_as_gone() -> None:
    server = Server(items=["a", "b"])
    engine = ReplayEngine([], [DeleteOp("a"), DeleteOp("zzz")], remote_order=["a", "b"])
    _, outs = run(engine, server)
    assert {(o.item_id, o.how) for o in outs if isinstance(o, ItemDeleted)} == {
        ("a", "ack"),
        ("zzz", "absent"),
    }
    assert server.items == ["b"]


def test_rechain_walks_back_past_a_vanished_remote_item() -> None:
    # the mirror believes "x" exists, the server lost it: items anchored on it
    # must land after "w" instead of failing forever
    server = Server(items=["w"])
    engine = ReplayEngine(chain(3, after="x"), remote_order=["w", "x"])
    run(engine, server)
    assert server.items == ["w", "m0", "m1", "m2"]


def test_abort_settles_everything() -> None:
    engine = ReplayEngine(chain(3))
    engine.start(0.0)
    outs = engine.abort()
    assert engine.done
    assert [o.item_id for o in outs if isinstance(o, ItemRejected)] == ["m0", "m1", "m2"]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    rejected=st.sets(st.integers(min_value=0, max_value=39), max_size=10),
    anonymous=st.booleans(),
    duplicates=st.booleans(),
    dropped=st.sets(st.integers(min_value=0, max_value=39), max_size=5),
    existing=st.integers(min_value=0, max_value=3),
    middle=st.booleans(),
    seed=st.integers(min_value=0, max_value=10_000),
    shuffle=st.booleans(),
)
def test_every_valid_item_lands_in_order(
    n: int,
    rejected: set[int],
    anonymous: bool,
    duplicates: bool,
    dropped: set[int],
    existing: int,
    middle: bool,
    seed: int,
    shuffle: bool,
) -> None:
    remote = [f"r{i}" for i in range(existing)]
    bad = {f"m{i}" for i in rejected}
    server = Server(
        items=list(remote),
        reject=lambda item: "policy" if item["id"] in bad else None,
        anonymous_errors=anonymous and not shuffle,  # anonymous errors rely on order
        duplicate_acks=duplicates,
        drop_ack=lambda item_id: item_id in {f"m{i}" for i in dropped},
    )
    # middle: inserted after the first remote item, before the others
    cut = 1 if middle and remote else len(remote)
    anchor = remote[cut - 1] if cut else None
    engine = ReplayEngine(chain(n, after=anchor), remote_order=remote)
    run(engine, server, shuffle_replies=random.Random(seed) if shuffle else None)
    created = [f"m{i}" for i in range(n) if f"m{i}" not in bad]
    assert server.items == remote[:cut] + created + remote[cut:]
    assert sorted(engine.result.confirmed) == sorted(created)
    assert {r.item_id for r in engine.result.rejected} == bad & {f"m{i}" for i in range(n)}
    assert engine.done


def test_transient_server_error_is_retried_in_place() -> None:
    failures = {"m2": 2}  # m2 fails twice with server_error, then lands

    class Flaky(Server):
        def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
            item_id = ev.get("item", {}).get("id")
            if ev["type"] == "conversation.item.create" and failures.get(item_id, 0) > 0:
                failures[item_id] -= 1
                err = self._err("server_error", "The server had an error", ev["event_id"])
                err["error"]["type"] = "server_error"
                return [err]
            return super().handle(ev)

    server = Flaky()
    engine = ReplayEngine(chain(5))
    run(engine, server)
    # retried anchored after m1, so it lands before the items appended meanwhile
    assert server.items == [f"m{i}" for i in range(5)]
    assert not engine.result.rejected


# -- real-server shapes (see README "Real-server fidelity") --------------------------


@dataclass
class RealServer(Server):
    """The in-order model with the shapes real servers send.

    `duplicates`: what a create with an existing id gets, per model (D4):
    "reject" (gpt-realtime-2.1), "ignore" / "append" (gpt-4o-realtime-preview /
    gpt-realtime-1.5: acked with previous_item_id == own id, "append" adds a
    second copy). `retrieve`: False for Azure 2024-10-01-preview (D5).
    """

    duplicates: str = "reject"
    retrieve: bool = True
    server_errors: dict[str, int] = field(default_factory=dict)
    server_error_after_insert: bool = False
    stale: str | None = None  # previous_item_id named by every append ack (D11)

    def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
        t = ev["type"]
        if t == "conversation.item.retrieve" and not self.retrieve:
            return [self._err("invalid_value", "Invalid value: 'conversation.item.retrieve'.",
                              ev.get("event_id"), "type")]
        if t != "conversation.item.create":
            return super().handle(ev)
        item = ev["item"]
        if self.server_errors.get(item["id"], 0) > 0:
            self.server_errors[item["id"]] -= 1
            if self.server_error_after_insert and item["id"] not in self.items:
                self.items.append(item["id"])
            return [server_error()]
        if item["id"] in self.items and self.duplicates != "reject":
            if self.duplicates == "append":
                self.items.append(item["id"])
            return [{"type": "conversation.item.added", "previous_item_id": item["id"], "item": item}]
        out = super().handle(ev)
        if self.stale and out and out[0]["type"] == "conversation.item.added" and "previous_item_id" not in ev:
            out = [{**o, "previous_item_id": self.stale} for o in out]
        return out


def server_error() -> dict[str, Any]:
    """A real `server_error` (trace at index id 34909638017): code and event_id null."""
    return {
        "type": "error",
        "event_id": "event_C1waMserver",
        "error": {
            "type": "server_error",
            "code": None,
            "message": "The server had an error while processing your request. Sorry about that! "
            "You can retry your request, or contact us through our help center at "
            "help.openai.com if the error persists. (Please include the session ID in your "
            "message.) We recommend you retry your request.",
            "param": None,
            "event_id": None,
        },
    }


def test_anonymous_code_null_server_error_is_verified_then_retried() -> None:
    server = RealServer(server_errors={"m1": 1})
    engine = ReplayEngine(chain(3))
    run(engine, server)
    assert server.items == ["m0", "m1", "m2"]
    assert engine.result.ok and engine.result.resends == 1
    assert engine.result.verifications == 1


def test_server_error_after_the_insert_never_duplicates_history() -> None:
    # the insert happened, then the server failed: a blind resend would append a
    # second m1 on a gpt-realtime-1.5-class model
    for retrieve in (True, False):
        server = RealServer(
            server_errors={"m1": 1}, server_error_after_insert=True,
            duplicates="append", retrieve=retrieve,
        )
        engine = ReplayEngine(chain(3), supports_retrieve=retrieve)
        run(engine, server)
        assert sorted(server.items) == ["m0", "m1", "m2"], retrieve
        assert engine.result.ok


def test_invalid_tool_call_id_without_event_id_or_param_is_rejected_at_once() -> None:
    # livekit/agents#3344: event_id None, param None; the message quotes the call id
    ops = [
        CreateOp(item=msg(0), after=None),
        CreateOp(item={"id": "out1", "type": "function_call_output", "call_id": "call_x",
                       "output": "42"}, after="m0"),
        CreateOp(item=msg(2), after="out1"),
    ]
    engine = ReplayEngine(ops)
    sent = [o.event for o in engine.start(0.0) if isinstance(o, SendEvent)]
    engine.receive({"type": "conversation.item.added", "previous_item_id": None,
                    "item": sent[0]["item"]}, 0.1)
    reaction = engine.receive({"type": "error", "error": {
        "type": "invalid_request_error", "code": "invalid_tool_call_id",
        "message": "Tool call ID 'call_x' not found in conversation.", "param": None,
        "event_id": None}}, 0.1)
    assert reaction.claimed
    assert [type(o) for o in reaction.outputs] == [ItemRejected]
    assert reaction.outputs[0].item_id == "out1"  # type: ignore[union-attr]
    assert reaction.outputs[0].code == "invalid_tool_call_id"  # type: ignore[union-attr]


def test_lost_ack_without_retrieve_is_checked_by_an_anchor_probe() -> None:
    # no retrieve (Azure 2024-10-01-preview): a throwaway item anchored to m2 is
    # acked, so m2 is there; the probe item is deleted again, m2 is never resent
    server = RealServer(retrieve=False, duplicates="append", drop_ack=lambda i: i == "m2")
    engine = ReplayEngine(chain(3), supports_retrieve=False)
    run(engine, server)
    assert server.items == ["m0", "m1", "m2"]
    assert engine.result.ok and engine.result.verifications == 1
    assert engine.result.resends == 0 and engine.done


def test_anchor_probe_refused_means_absent() -> None:
    # the request itself was lost: the probe anchored to it is refused
    @dataclass
    class Lossy(RealServer):
        lost: bool = False

        def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
            if ev["type"] == "conversation.item.create" and ev["item"]["id"] == "m1" and not self.lost:
                self.lost = True
                return []
            return super().handle(ev)

    server = Lossy(retrieve=False)
    engine = ReplayEngine(chain(2), supports_retrieve=False)
    _, outputs = run(engine, server)
    assert server.items == ["m0"]
    assert [(r.item_id, r.code) for r in engine.result.rejected] == [("m1", ACK_TIMEOUT)]


def test_retrieve_refused_as_unknown_event_falls_back_to_an_anchor_probe() -> None:
    server = RealServer(retrieve=False, drop_ack=lambda i: i == "m1")
    engine = ReplayEngine(chain(2))  # believes retrieve works
    run(engine, server)
    assert server.items == ["m0", "m1"]
    assert engine.result.ok


@given(duplicates=st.sampled_from(["reject", "ignore", "append"]))
def test_self_anchored_ack_is_a_duplicate_not_a_placement(duplicates: str) -> None:
    server = RealServer(items=["m1"], duplicates=duplicates)
    engine = ReplayEngine([CreateOp(item=msg(1), after=None)])
    _, outputs = run(engine, server)
    confirmed = [o for o in outputs if isinstance(o, ItemConfirmed)]
    assert [(o.item_id, o.how, o.previous_item_id) for o in confirmed] == [("m1", "duplicate", None)]


def test_stale_anchor_does_not_confirm_a_recreated_item() -> None:
    # r1 is deleted and recreated; the server then acks m2 naming the deleted r1
    # (livekit/agents PR #6964) before r1's own answer: r1 must stay unconfirmed
    engine = ReplayEngine(
        [CreateOp(item={**msg(1), "id": "r1"}, after="r0"), CreateOp(item=msg(2), after="r1")],
        [DeleteOp("r1")],
        remote_order=["r0", "r1"],
    )
    engine.start(0.0)
    reaction = engine.receive({"type": "conversation.item.added", "previous_item_id": "r1",
                               "item": {"id": "m2"}}, 0.1)
    assert [(type(o), o.item_id) for o in reaction.outputs] == [(ItemConfirmed, "m2")]  # type: ignore[union-attr]
    assert "r1" not in engine.result.confirmed


def test_code_null_errors_are_classified_by_their_sentence() -> None:
    # early beta (run-llama/openai_realtime_client#3): code and event_id null
    engine = ReplayEngine(chain(2, after="r0"), remote_order=["r0", "r9"])
    engine.start(0.0)
    reaction = engine.receive({"type": "error", "error": {
        "type": "invalid_request_error", "code": None, "param": None, "event_id": None,
        "message": "Error adding item: the previous item with id 'r0' does not exist."}}, 0.1)
    sends = [o.event for o in reaction.outputs if isinstance(o, SendEvent)]
    assert reaction.claimed and sends and sends[0]["item"]["id"] == "m0"
    assert sends[0]["previous_item_id"] == "root"


def test_rate_limit_error_type_is_verified_then_retried() -> None:
    # any code under type rate_limit_error is transient (D7: never observed on item
    # creates, kept as a safety net)
    failures = {"m1": 1}

    class Limited(RealServer):
        def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
            item_id = ev.get("item", {}).get("id")
            if ev["type"] == "conversation.item.create" and failures.get(item_id, 0) > 0:
                failures[item_id] -= 1
                err = self._err("tokens_per_min", "Rate limit reached", ev["event_id"])
                err["error"]["type"] = "rate_limit_error"
                return [err]
            return super().handle(ev)

    server = Limited()
    engine = ReplayEngine(chain(3))
    run(engine, server)
    assert server.items == ["m0", "m1", "m2"]
    assert engine.result.ok and engine.result.resends == 1


def test_server_error_on_a_delete_sends_it_again() -> None:
    failures = {"r1": 1}

    class Flaky(RealServer):
        def handle(self, ev: dict[str, Any]) -> list[dict[str, Any]]:
            if ev["type"] == "conversation.item.delete" and failures.get(ev["item_id"], 0) > 0:
                failures[ev["item_id"]] -= 1
                return [server_error()]
            return super().handle(ev)

    server = Flaky(items=["r0", "r1"])
    engine = ReplayEngine([], [DeleteOp("r1")], remote_order=["r0", "r1"])
    run(engine, server)
    assert server.items == ["r0"]
    assert engine.result.deleted == ["r1"] and engine.result.ok
