"""Budget boundaries: what fits the budget exactly is kept whole, one token less is not.

Each test pins one comparison of `history/budget.py` (a `>` that must not be `>=`,
a `<=` that must not be `<`), so an off-by-one there fails a test.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from livekit_history_plugin.history.budget import (
    BudgetConfig,
    compute_history_budget,
    select_history,
)
from livekit_history_plugin.history.models import Role, Summary, Turn
from livekit_history_plugin.history.render import (
    REPLAY_MODES,
    TRUNCATION_MARK,
    ReplayMode,
    history_costs,
    render_history,
)
from livekit_history_plugin.history.tokens import REPLY_PRIMING_TOKENS

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
TEXTS = [
    "Hi, I'm Ada. Where is my order 4711?",
    "It shipped yesterday and arrives tomorrow before noon.",
    "Please text me when it arrives, I don't like phone calls.",
    "Noted: you will get a text message when it arrives.",
]


def turns() -> list[Turn]:
    return [
        Turn(
            user_id="ada",
            conversation_id="call-1",
            seq=i,
            role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
            text=text,
            created_at=T0 + timedelta(seconds=i),
        )
        for i, text in enumerate(TEXTS)
    ]


SUMMARY = Summary(
    user_id="ada",
    text="Ada asked about an order in February and prefers mornings.",
    covers_until=T0 - timedelta(days=1),
    turn_count=6,
)


def exact_cost(ts: list[Turn], summary: Summary | None, mode: ReplayMode) -> int:
    """Tokens of replaying all of `ts` (and `summary`) in `mode`, as rendered."""
    sel = select_history(ts, summary, 1_000_000, mode=mode)
    assert sel.turns == ts and sel.summary == summary
    rendered = render_history(sel, [], mode, agent_instructions="").history_tokens
    assert rendered == sel.tokens
    return sel.tokens


@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_a_newest_turn_that_fits_exactly_is_not_cut(mode: ReplayMode) -> None:
    newest = turns()[-1:]
    cost = exact_cost(newest, None, mode)
    sel = select_history(newest, None, cost, mode=mode)
    assert sel.turns == newest and not sel.truncated_turn
    assert sel.tokens == cost
    one_less = select_history(newest, None, cost - 1, mode=mode)
    assert one_less.truncated_turn and one_less.turns[0].text.endswith(TRUNCATION_MARK)
    assert one_less.tokens <= cost - 1


@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_older_turns_that_fit_exactly_are_all_kept(mode: ReplayMode) -> None:
    ts = turns()
    cost = exact_cost(ts, None, mode)
    sel = select_history(ts, None, cost, mode=mode)
    assert sel.turns == ts and not sel.truncated_turn and sel.older_turns == 0
    one_less = select_history(ts, None, cost - 1, mode=mode)
    assert one_less.turns == ts[1:] and one_less.older_turns == 1  # the oldest goes, whole


@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_a_summary_that_fits_exactly_is_not_cut(mode: ReplayMode) -> None:
    ts = turns()
    cost = exact_cost(ts, SUMMARY, mode)
    cfg = BudgetConfig(min_recent_turns=len(ts))  # turns first, then the summary gets the rest
    sel = select_history(ts, SUMMARY, cost, mode=mode, cfg=cfg)
    assert sel.summary == SUMMARY and not sel.summary_truncated and sel.turns == ts
    assert sel.tokens == cost
    one_less = select_history(ts, SUMMARY, cost - 1, mode=mode, cfg=cfg)
    assert one_less.summary is not None and one_less.summary_truncated
    assert one_less.summary.text.endswith(TRUNCATION_MARK) and one_less.turns == ts


@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_a_cut_turn_uses_the_whole_budget_it_can(mode: ReplayMode) -> None:
    """The binary search of the cut keeps a prefix whose cost equals the limit."""
    costs = history_costs(mode)
    long = turns()[0].model_copy(update={"text": "one two three four five six seven " * 40})
    frame = costs.frame()
    for n_words in (3, 10, 25):
        prefix = " ".join(long.text.split()[:n_words])
        target = costs.turn(long.model_copy(update={"text": prefix + TRUNCATION_MARK}), None)
        sel = select_history([long], None, frame + target, mode=mode)
        assert sel.truncated_turn and sel.tokens == frame + target, n_words


@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_a_budget_of_just_the_frame_replays_nothing(
    mode: ReplayMode, caplog: pytest.LogCaptureFixture
) -> None:
    frame = history_costs(mode).frame()
    caplog.set_level(logging.WARNING, logger="livekit.plugins.history")
    sel = select_history(turns(), None, frame, mode=mode)
    assert sel.turns == [] and sel.tokens == 0
    if frame:  # items mode has no frame: a zero budget asks for no history, no warning
        assert "too small to replay anything" in caplog.text


def test_no_room_at_exactly_zero_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    cfg = BudgetConfig(
        context_window=1_000, output_reserve=1_000 - REPLY_PRIMING_TOKENS, instructions_tokens=0
    )
    caplog.set_level(logging.WARNING, logger="livekit.plugins.history")
    assert compute_history_budget("gpt-realtime", "", None, cfg) == 0
    assert "no room for history" in caplog.text
    one_more = cfg.model_copy(update={"output_reserve": 1_000 - REPLY_PRIMING_TOKENS - 2})
    assert compute_history_budget("gpt-realtime", "", None, one_more) == 1
