"""`MirrorOrder` on livekit's real `RemoteChatContext`: whatever order the acks of
one burst arrive in, with or without `previous_item_id`, the mirror ends in the
server's order."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.agents import llm
from livekit.agents.llm.remote_chat_context import RemoteChatContext

from livekit_history_plugin.compat._ordering import UNKNOWN, MirrorOrder, Placement, put_after


def _msg(item_id: str) -> llm.ChatMessage:
    return llm.ChatMessage(id=item_id, role="user", content=[item_id])


def _ids(mirror: RemoteChatContext) -> list[str]:
    return [item.id for item in mirror.to_chat_ctx().items]


def _burst(mirror: RemoteChatContext, order: MirrorOrder, base: str | None, ids: list[str]) -> None:
    order.begin_burst(base)
    for item_id in ids:
        order.sent_create(item_id, None)


def _ack(mirror: RemoteChatContext, order: MirrorOrder, item_id: str, prev: Any) -> None:
    order.settled(item_id, True)

    def apply(at: str | None) -> None:
        put_after(mirror, _msg(item_id), at)

    order.place(Placement(item_id, prev, apply))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=30),
    existing=st.integers(min_value=0, max_value=3),
    data=st.data(),
    null_previous=st.booleans(),
)
def test_any_arrival_order_ends_in_the_server_order(
    n: int, existing: int, data: st.DataObject, null_previous: bool
) -> None:
    mirror = RemoteChatContext()
    old = [f"old{i}" for i in range(existing)]
    for prev, item_id in zip([None, *old], old, strict=False):
        mirror.insert(prev, _msg(item_id))
    order = MirrorOrder(lambda: mirror, null_previous=null_previous)
    ids = [f"i{k:02d}" for k in range(n)]
    rejected = set(data.draw(st.lists(st.sampled_from(ids), max_size=3)))
    _burst(mirror, order, old[-1] if old else None, ids)
    landed = [i for i in ids if i not in rejected]
    server_prev = dict(zip(landed, [old[-1] if old else None, *landed], strict=False))
    duplicates = data.draw(st.lists(st.sampled_from(landed), max_size=3)) if landed else []
    # acks, duplicate acks and rejections, all in any order
    answers = [("ack", i) for i in [*landed, *duplicates]] + [("reject", i) for i in rejected]
    for kind, item_id in data.draw(st.permutations(answers)):
        if kind == "reject":
            order.settled(item_id, False)
        elif mirror.get(item_id) is None:  # a duplicate ack is not placed again
            _ack(mirror, order, item_id, UNKNOWN if null_previous else server_prev[item_id])
    order.end_update()
    assert _ids(mirror) == [*old, *landed]
    assert order.stats.forced == 0


def test_a_wait_outside_an_update_is_bounded() -> None:
    """An ack naming an item that never gets placed is placed at the end of the
    update at the latest (the bound), at the mirror's tail."""
    mirror = RemoteChatContext()
    order = MirrorOrder(lambda: mirror)
    _burst(mirror, order, None, ["a", "b"])
    _ack(mirror, order, "b", "a")  # "a" is still unanswered
    assert _ids(mirror) == []
    order.end_update()
    assert _ids(mirror) == ["b"]
    assert order.stats.forced == 1


def test_a_rejected_predecessor_releases_the_wait() -> None:
    mirror = RemoteChatContext()
    order = MirrorOrder(lambda: mirror, null_previous=True)
    _burst(mirror, order, None, ["a", "b", "c"])
    _ack(mirror, order, "c", UNKNOWN)  # after "b", whose fate is open
    _ack(mirror, order, "a", UNKNOWN)
    assert _ids(mirror) == ["a"]
    order.settled("b", False)
    assert _ids(mirror) == ["a", "c"]
    assert order.stats.forced == 0
