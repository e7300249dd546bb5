"""How much of a caller's history fits in the next call, and which part.

`compute_history_budget` turns the model's context window into a token budget for
replayed history; `select_history` picks, newest first, the turns and summary that
fit it; `load_selection` does the same straight from a store, loading only about
as many turns as can fit. Token counts are exact (o200k_base, see `tokens`) for the replay mode
the selection is made for, framing and per-message overhead included: rendering
the selection with `render.render_history` in the same mode gives exactly
`HistorySelection.tokens`.

Why history gets at most half of what is left (`max_history_fraction=0.5`): the
live call shares the same window. Audio is expensive (the OpenAI cookbook
measures about ten times as many tokens for a spoken sentence as for the same
sentence in text), so on gpt-realtime's 32k window a few minutes of conversation
already takes thousands of tokens. When the window fills, the server truncates
the oldest items, which would be the replayed history itself (and the prompt
cache with it). Half keeps a long history useful while leaving the live call as
much room as the history gets; the cookbook also notes instruction adherence
drifts as the context grows, another reason not to fill it with the past.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..log import logger
from .models import Fact, Summary, Turn
from .render import (
    DEFAULT_REPLAY_MODE,
    TRUNCATION_MARK,
    HistoryCosts,
    ReplayMode,
    base_instructions,
    history_costs,
)
from .stores.base import HistoryStore
from .tokens import REPLY_PRIMING_TOKENS, count_tokens, message_tokens, truncate_to_tokens

# Context windows of OpenAI realtime models, from their model pages on
# developers.openai.com. Looked up by the model name or any dated snapshot of it
# ("gpt-realtime-2025-08-28" -> "gpt-realtime"), longest name first.
REALTIME_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-realtime": 32_000,
    "gpt-realtime-1.5": 32_000,
    "gpt-realtime-2": 128_000,
    "gpt-realtime-2.1-mini": 128_000,
    # no official page found for it; the gpt-realtime figure errs on the safe side
    "gpt-realtime-mini": 32_000,
    "gpt-4o-realtime-preview": 32_000,
    "gpt-4o-mini-realtime-preview": 16_000,
}
# Unknown names (Azure deployment names, new models) get the gpt-realtime window.
DEFAULT_CONTEXT_WINDOW = 32_000


def context_window_for(model_name: str) -> int:
    """The context window of a realtime model, by name or snapshot name."""
    name = model_name.strip().lower()
    for known in sorted(REALTIME_CONTEXT_WINDOWS, key=len, reverse=True):
        if name == known or name.startswith(known + "-"):
            return REALTIME_CONTEXT_WINDOWS[known]
    return DEFAULT_CONTEXT_WINDOW


class BudgetConfig(BaseModel):
    """Knobs of the history budget. Every default suits gpt-realtime."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_window: int | None = Field(
        default=None, gt=0, description="tokens; None = from the model name (32,000 if unknown)"
    )
    output_reserve: int = Field(
        default=4_096, ge=0, description="tokens kept for one reply (gpt-realtime's max output)"
    )
    instructions_tokens: int | None = Field(
        default=None, ge=0, description="None = counted from the agent instructions (and facts)"
    )
    tools_tokens: int | None = Field(
        default=None, ge=0, description="None = counted from the tools JSON"
    )
    max_history_fraction: float = Field(
        default=0.5, gt=0, le=1, description="share of what is left that history may take"
    )
    min_recent_turns: int = Field(
        default=2,
        ge=0,
        description="newest turns kept ahead of the summary (the newest is truncated if it must be)",
    )
    max_recent_turns: int = Field(
        default=50,
        ge=0,
        description="most turns replayed verbatim; older ones are left to the summary",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> BudgetConfig:
        if self.min_recent_turns > self.max_recent_turns:
            raise ValueError(
                f"min_recent_turns ({self.min_recent_turns}) exceeds "
                f"max_recent_turns ({self.max_recent_turns})"
            )
        return self


def tools_json_tokens(tools_json: str | Sequence[Mapping[str, Any]] | None) -> int:
    """Tokens of the tools' JSON schemas.

    The server renders tools in its own syntax, which is more compact than JSON,
    so this errs on the safe side.
    """
    if not tools_json:
        return 0
    text = (
        tools_json
        if isinstance(tools_json, str)
        else json.dumps(list(tools_json), separators=(",", ":"), ensure_ascii=False)
    )
    return count_tokens(text)


def compute_history_budget(
    model_name: str,
    instructions: str | None,
    tools_json: str | Sequence[Mapping[str, Any]] | None,
    cfg: BudgetConfig | None = None,
    *,
    facts: Sequence[Fact] = (),
    mode: ReplayMode = DEFAULT_REPLAY_MODE,
) -> int:
    """Tokens the replayed history may take in the next call (>= 0).

    window - output reserve - instructions (with the facts list render adds) -
    tools - reply priming, times ``max_history_fraction``.
    """
    cfg = cfg or BudgetConfig()
    window = cfg.context_window or context_window_for(model_name)
    if cfg.instructions_tokens is not None:
        instr = cfg.instructions_tokens
    else:
        instr = message_tokens("system", base_instructions(instructions or "", facts, mode))
    tools = cfg.tools_tokens if cfg.tools_tokens is not None else tools_json_tokens(tools_json)
    remaining = window - cfg.output_reserve - instr - tools - REPLY_PRIMING_TOKENS
    if remaining <= 0:
        logger.warning(
            "no room for history: context window %d, output reserve %d, instructions %d, "
            "tools %d tokens",
            window,
            cfg.output_reserve,
            instr,
            tools,
        )
        return 0
    return int(remaining * cfg.max_history_fraction)


class HistorySelection(BaseModel):
    """The part of a caller's history that fits the budget, ready for `render_history`."""

    model_config = ConfigDict(frozen=True)

    mode: ReplayMode
    budget: int
    turns: list[Turn] = Field(description="replayed verbatim, oldest first; the newest may be cut")
    summary: Summary | None = Field(description="summary of older calls; may be cut")
    tokens: int = Field(description="exact tokens of the rendered history, <= budget")
    frame_tokens: int = 0
    summary_tokens: int = 0
    turn_tokens: list[int] = Field(
        default_factory=list, description="tokens each of `turns` adds, in `turns` order"
    )
    truncated_turn: bool = False
    summary_truncated: bool = False
    summary_dropped: bool = False
    older_turns: int = Field(0, description="stored turns older than the verbatim ones")
    to_summarize: list[Turn] = Field(
        default_factory=list,
        description="older turns the summary does not cover yet, oldest first: "
        "give them to a Summarizer with the summary and store the result",
    )


def _fit_text(text: str, cost_of: Callable[[str], int], limit: int) -> tuple[str, int] | None:
    """The longest token-prefix of `text` (+ truncation mark) whose cost is <= limit."""
    best: tuple[str, int] | None = None
    lo, hi = 1, count_tokens(text)
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = truncate_to_tokens(text, mid) + TRUNCATION_MARK
        cost = cost_of(candidate)
        if cost <= limit:
            best = (candidate, cost)
            lo = mid + 1
        else:
            hi = mid - 1
    return best


class _Walk:
    """Newest-first walk over the turns, keeping the chosen run contiguous."""

    def __init__(self, turns: Sequence[Turn], costs: HistoryCosts, remaining: int) -> None:
        self.turns = turns
        self.costs = costs
        self.remaining = remaining
        self.next_index = len(turns) - 1
        self.chosen: list[Turn] = []  # newest first
        self.chosen_costs: list[int] = []
        self.blocked = False
        self.truncated = False

    def take(self, up_to: int) -> None:
        while not self.blocked and len(self.chosen) < up_to and self.next_index >= 0:
            turn = self.turns[self.next_index]
            newer = self.chosen[-1] if self.chosen else None
            cost = self.costs.turn(turn, newer)
            if cost > self.remaining:
                self.blocked = True
                if not self.chosen:
                    self._take_truncated(turn)
                return
            self._accept(turn, cost)

    def _take_truncated(self, turn: Turn) -> None:
        """The newest turn alone is over budget: keep its beginning rather than lose it."""
        fitted = _fit_text(
            turn.text,
            lambda text: self.costs.turn(turn.model_copy(update={"text": text}), None),
            self.remaining,
        )
        if fitted is None:
            logger.warning("newest history turn does not fit %d tokens even cut", self.remaining)
            return
        self.truncated = True
        self._accept(turn.model_copy(update={"text": fitted[0]}), fitted[1])

    def _accept(self, turn: Turn, cost: int) -> None:
        self.chosen.append(turn)
        self.chosen_costs.append(cost)
        self.remaining -= cost
        self.next_index -= 1


def _fit_summary(
    summary: Summary, costs: HistoryCosts, remaining: int
) -> tuple[Summary | None, int, bool]:
    cost = costs.summary(summary)
    if cost <= remaining:
        return summary, cost, False
    fitted = _fit_text(
        summary.text,
        lambda text: costs.summary(summary.model_copy(update={"text": text})),
        remaining,
    )
    if fitted is None:
        return None, 0, False
    return summary.model_copy(update={"text": fitted[0]}), fitted[1], True


def _not_summarized(turns: Sequence[Turn], end: int, summary: Summary | None) -> list[Turn]:
    """turns[:end] that `summary` does not cover, oldest first."""
    if summary is None:
        return list(turns[:end])
    until = summary.covers_until
    if until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    start = bisect.bisect_right(turns, until, hi=end, key=lambda t: t.created_at)
    return list(turns[start:end])


def select_history(
    turns_oldest_first: Sequence[Turn],
    summary: Summary | None,
    budget: int,
    *,
    mode: ReplayMode = DEFAULT_REPLAY_MODE,
    cfg: BudgetConfig | None = None,
) -> HistorySelection:
    """The newest turns verbatim plus the summary of older ones, within `budget` tokens.

    Priority: the ``min_recent_turns`` newest turns, then the summary (cut if it
    must be), then older turns up to ``max_recent_turns``. The verbatim turns are
    always the newest contiguous run: the walk stops at the first turn that does
    not fit, so no turn is skipped. A newest turn that alone exceeds the budget is
    cut, not dropped. ``tokens`` is exact for `mode` and never exceeds `budget`.
    Only the turns it needs are tokenized.
    """
    cfg = cfg or BudgetConfig()
    costs = history_costs(mode)
    turns = turns_oldest_first
    frame = costs.frame()
    if budget <= frame or (not turns and summary is None):
        if budget > 0 and (turns or summary is not None):
            logger.warning("history budget of %d tokens is too small to replay anything", budget)
        return HistorySelection.model_construct(
            mode=mode,
            budget=budget,
            turns=[],
            summary=None,
            tokens=0,
            frame_tokens=0,
            summary_tokens=0,
            turn_tokens=[],
            truncated_turn=False,
            summary_truncated=False,
            summary_dropped=summary is not None,
            older_turns=len(turns),
            to_summarize=_not_summarized(turns, len(turns), summary),
        )

    walk = _Walk(turns, costs, budget - frame)
    walk.take(cfg.min_recent_turns)
    chosen_summary: Summary | None = None
    summary_tokens = 0
    summary_truncated = False
    if summary is not None:
        chosen_summary, summary_tokens, summary_truncated = _fit_summary(
            summary, costs, walk.remaining
        )
        walk.remaining -= summary_tokens
    walk.take(cfg.max_recent_turns)

    if not walk.chosen and chosen_summary is None:
        frame = 0  # nothing is replayed, so no wrapper either
    end = walk.next_index + 1
    turn_tokens = walk.chosen_costs[::-1]
    return HistorySelection.model_construct(
        mode=mode,
        budget=budget,
        turns=walk.chosen[::-1],
        summary=chosen_summary,
        tokens=frame + summary_tokens + sum(turn_tokens),
        frame_tokens=frame,
        summary_tokens=summary_tokens,
        turn_tokens=turn_tokens,
        truncated_turn=walk.truncated,
        summary_truncated=summary_truncated,
        summary_dropped=summary is not None and chosen_summary is None,
        older_turns=end,
        to_summarize=_not_summarized(turns, end, summary),
    )


# first page of `load_selection`; the default max_recent_turns fits in one page
_FIRST_PAGE = 64


async def load_selection(
    store: HistoryStore,
    user_id: str,
    budget: int,
    *,
    mode: ReplayMode = DEFAULT_REPLAY_MODE,
    cfg: BudgetConfig | None = None,
) -> HistorySelection:
    """`select_history` over a stored history, loading only the turns it can use.

    Loads the summary and the newest turns a page at a time (the next page sized
    from what the loaded turns cost) until the walk stops, ``max_recent_turns`` is
    reached or the store has nothing older. ``to_summarize`` then lists the older
    turns among those loaded only: a summarizer job should read its backlog from
    the store itself.
    """
    cfg = cfg or BudgetConfig()
    summary = await store.load_summary(user_id)
    cap = cfg.max_recent_turns + 1  # one more than can be kept shows whether more exist
    limit = min(cap, _FIRST_PAGE)
    while True:
        turns = await store.load_latest(user_id, limit)
        selection = select_history(turns, summary, budget, mode=mode, cfg=cfg)
        every_turn_fitted = len(selection.turns) == len(turns)
        if len(turns) < limit or limit >= cap or not every_turn_fitted:
            return selection
        per_turn = max(1, sum(selection.turn_tokens) // max(1, len(turns)))
        room = max(0, budget - selection.tokens) // per_turn
        limit = min(cap, max(limit * 2, len(turns) + room + room // 4 + 1))
