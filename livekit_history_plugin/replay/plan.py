"""Turn a desired ChatContext and the server mirror into replay operations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from livekit.agents import llm

from ..dialects import Dialect, item_to_wire
from ..log import logger
from ..sanitize import sanitize_chat_ctx_report
from .engine import CreateOp, DeleteOp


@dataclass
class UpdatePlan:
    creates: list[CreateOp] = field(default_factory=list)
    deletes: list[DeleteOp] = field(default_factory=list)
    remote_order: list[str] = field(default_factory=list)
    # the livekit item behind each create, to put into the mirror when the
    # server confirms an item without a normal ack
    local_items: dict[str, llm.ChatItem] = field(default_factory=dict)
    dropped: int = 0

    @property
    def empty(self) -> bool:
        return not self.creates and not self.deletes


def _is_empty_message(item: Any) -> bool:
    return getattr(item, "type", None) == "message" and not getattr(item, "content", None)


def _target_items(chat_ctx: llm.ChatContext, remote: llm.ChatContext) -> tuple[list[Any], int]:
    """The sanitized context, plus remote items the local copy only lacks content for.

    A message that exists on the server with non-text content (caller audio)
    arrives here empty: it must stay, not be deleted (livekit keeps it too).
    """
    report = sanitize_chat_ctx_report(chat_ctx)
    # ids the API would reject were mapped to wire ids; the server and the mirror
    # only ever see those
    renamed = dict(report.renamed)
    remote_ids = {item.id for item in remote.items}
    by_id = {item.id: item for item in report.chat_ctx.items}
    items: list[Any] = []
    for item in chat_ctx.items:
        item_id = getattr(item, "id", None)
        if not isinstance(item_id, str):
            continue
        wire_id = renamed.get(item_id, item_id)
        if wire_id in by_id:
            items.append(by_id.pop(wire_id))  # first occurrence only, as the sanitizer does
        elif item_id in remote_ids and _is_empty_message(item):
            items.append(remote.get_by_id(item_id))
    return items, len(report.dropped)


def plan_update(
    chat_ctx: llm.ChatContext, remote: llm.ChatContext, dialect: Dialect
) -> UpdatePlan:
    """The deletes and creates that turn the server conversation `remote` into
    the sanitized `chat_ctx`, each create anchored to its desired predecessor."""
    items, dropped = _target_items(chat_ctx, remote)
    target = llm.ChatContext(items)
    diff = llm.utils.compute_chat_ctx_diff(remote, target)
    plan = UpdatePlan(remote_order=[item.id for item in remote.items], dropped=dropped)
    plan.deletes = [DeleteOp(item_id) for item_id in diff.to_remove]
    position = {item.id: i for i, item in enumerate(target.items)}
    remote_by_id = {item.id: item for item in remote.items}
    # an item left out must not strand the ones chained behind it: they are
    # anchored to what precedes it instead
    skipped: dict[str, str | None] = {}

    def anchor(prev: str | None) -> str | None:
        while prev is not None and prev in skipped:
            prev = skipped[prev]
        return prev

    for prev, item_id in sorted(
        # livekit 1.0 - 1.1 do not diff changed content (their DiffOps has no `to_update`)
        list(diff.to_create) + list(getattr(diff, "to_update", ())),
        key=lambda op: position[op[1]],
    ):
        if item_id in remote_by_id and _is_empty_message(remote_by_id[item_id]):
            continue  # the server has content we never saw; recreating would lose it
        local = target.get_by_id(item_id)
        if local is None:
            continue
        try:
            wire = item_to_wire(local, dialect)
        except ValueError as e:
            logger.warning("not replaying item %s: %s", item_id, e)
            plan.dropped += 1
            skipped[item_id] = anchor(prev)
            continue
        if item_id in remote_by_id:
            plan.deletes.append(DeleteOp(item_id))
        plan.creates.append(CreateOp(item=wire, after=anchor(prev)))
        plan.local_items[item_id] = local
    return plan
