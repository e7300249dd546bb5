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
            assert reaction.claimed, r
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
