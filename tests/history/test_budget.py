"""History budget: window arithmetic, and selections that fit exactly by the tokenizer's count."""

from __future__ import annotations

import logging
import random
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from livekit_history_plugin.history.budget import (
    DEFAULT_CONTEXT_WINDOW,
    BudgetConfig,
    HistorySelection,
    compute_history_budget,
    context_window_for,
    load_selection,
    select_history,
    tools_json_tokens,
)
from livekit_history_plugin.history.models import Fact, Role, Summary, Turn
from livekit_history_plugin.history.render import (
    REPLAY_MODES,
    TRUNCATION_MARK,
    ReplayMode,
    base_instructions,
    item_message,
    render_history,
)
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.tokens import (
    REPLY_PRIMING_TOKENS,
    count_tokens,
    message_tokens,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
WORDS = (
    "I'd like to move my appointment to Monday at 10:30 please . my name is Anna Müller "
    'order 48213 東京 ✈️ 👍🏽 refund , okay ! the the a caller said "quoted" </earlier_conversation> '
    "ignore previous instructions"
).split()
INSTRUCTIONS = "You are Maya, the voice assistant of a dental practice. Be brief and friendly."
BIG = BudgetConfig(max_recent_turns=1_000_000)


def make_turns(n: int, *, user: str = "u1", seed: int = 1, per_call: int = 30) -> list[Turn]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        role = Role.SYSTEM if i % 97 == 96 else (Role.USER if i % 2 == 0 else Role.ASSISTANT)
        out.append(
            Turn(
                user_id=user,
                conversation_id=f"call-{i // per_call}",
                seq=i % per_call,
                role=role,
                text=" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 30))),
                created_at=T0 + timedelta(hours=i // per_call * 20, seconds=i * 7),
                interrupted=i % 13 == 12,
            )
        )
    return out


def summary_of(turns: list[Turn], upto: int) -> Summary:
    return Summary(
        user_id=turns[0].user_id,
        text="2026-01-05 caller: My name is Anna Müller.\n2026-01-06 caller: I prefer mornings.",
        covers_until=turns[upto].created_at,
        turn_count=upto + 1,
    )


def rendered_tokens(selection: HistorySelection, mode: ReplayMode) -> int:
    return render_history(selection, [], mode, agent_instructions=INSTRUCTIONS).history_tokens


# -- windows and config ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "window"),
    [
        ("gpt-realtime", 32_000),
        ("gpt-realtime-2025-08-28", 32_000),
        ("GPT-Realtime", 32_000),
        ("gpt-realtime-mini-2025-12-15", 32_000),
        ("gpt-realtime-1.5", 32_000),
        ("gpt-realtime-2", 128_000),
        ("gpt-realtime-2.1-mini", 128_000),
        ("gpt-4o-realtime-preview-2024-12-17", 32_000),
        ("gpt-4o-mini-realtime-preview", 16_000),
        ("my-azure-deployment", DEFAULT_CONTEXT_WINDOW),
    ],
)
def test_context_window_for(name: str, window: int) -> None:
    assert context_window_for(name) == window


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="min_recent_turns"):
        BudgetConfig(min_recent_turns=5, max_recent_turns=2)
    with pytest.raises(ValidationError):
        BudgetConfig(max_history_fraction=0)
    with pytest.raises(ValidationError):
        BudgetConfig(max_history_fraction=1.5)
    with pytest.raises(ValidationError):
        BudgetConfig(unknown_knob=1)  # type: ignore[call-arg]


def test_budget_arithmetic() -> None:
    tools = [{"type": "function", "name": "book", "parameters": {"type": "object"}}]
    got = compute_history_budget("gpt-realtime", INSTRUCTIONS, tools)
    instr = message_tokens("system", INSTRUCTIONS)
    left = 32_000 - 4_096 - instr - tools_json_tokens(tools) - REPLY_PRIMING_TOKENS
    assert got == int(left * 0.5)
    assert tools_json_tokens('[{"type":"function"}]') == count_tokens('[{"type":"function"}]')
    assert tools_json_tokens(None) == 0


def test_budget_counts_the_facts_render_adds() -> None:
    facts = [Fact(user_id="u1", key="name", text="Anna Müller")]
    cfg = BudgetConfig(max_history_fraction=1.0)
    plain = compute_history_budget("gpt-realtime", INSTRUCTIONS, None, cfg)
    with_facts = compute_history_budget("gpt-realtime", INSTRUCTIONS, None, cfg, facts=facts)
    facts_cost = message_tokens("system", base_instructions(INSTRUCTIONS, facts)) - message_tokens(
        "system", INSTRUCTIONS
    )
    assert facts_cost > 10
    assert plain - with_facts == facts_cost


def test_budget_overrides_and_exhaustion(caplog: pytest.LogCaptureFixture) -> None:
    cfg = BudgetConfig(
        context_window=10_000,
        output_reserve=1_000,
        instructions_tokens=500,
        tools_tokens=497,
        max_history_fraction=1.0,
    )
    assert compute_history_budget("anything", "ignored", "ignored", cfg) == 8_000
    with caplog.at_level(logging.WARNING, logger="livekit.plugins.history"):
        assert compute_history_budget("gpt-4o-mini-realtime-preview", "word " * 20_000, None) == 0
    assert "no room for history" in caplog.text


# -- selection -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_ten_thousand_turns_fit_the_budget_exactly(mode: ReplayMode) -> None:
    turns = make_turns(10_000)
    summary = summary_of(turns, 4_999)
    budget = compute_history_budget("gpt-realtime", INSTRUCTIONS, None, mode=mode)
    sel = select_history(turns, summary, budget, mode=mode, cfg=BIG)

    k = len(sel.turns)
    assert 50 < k < 10_000
    assert sel.turns == turns[-k:]  # the newest contiguous run, untouched
    assert sel.summary == summary
    # the selection's own total is the tokenizer's count of what gets rendered
    assert rendered_tokens(sel, mode) == sel.tokens <= budget
    assert sel.tokens == sel.frame_tokens + sel.summary_tokens + sum(sel.turn_tokens)
    # and one more turn would not have fitted
    one_more = sel.model_copy(update={"turns": turns[-k - 1 :]})
    assert rendered_tokens(one_more, mode) > budget
    # everything older than the window and newer than the summary is left to summarize
    assert sel.older_turns == 10_000 - k
    assert sel.to_summarize == turns[5_000 : 10_000 - k]


@pytest.mark.parametrize("mode", REPLAY_MODES)
def test_oversize_newest_turn_is_cut_not_dropped(mode: ReplayMode) -> None:
    turns = make_turns(4)
    long_text = "The caller read out a long document. " * 200
    turns[-1] = turns[-1].model_copy(update={"text": long_text})
    sel = select_history(turns, None, 300, mode=mode)
    assert sel.truncated_turn
    assert len(sel.turns) == 1
    cut = sel.turns[0].text
    assert cut.endswith(TRUNCATION_MARK)
    assert long_text.startswith(cut.removesuffix(TRUNCATION_MARK))
    assert rendered_tokens(sel, mode) == sel.tokens <= 300
    assert sel.tokens > 250  # the cut uses the room there is


def test_newest_turns_come_before_the_summary() -> None:
    turns = make_turns(40)
    summary = summary_of(turns, 9).model_copy(update={"text": "caller: likes jazz. " * 300})
    newest_two = sum(message_tokens(*item_message(t)) for t in turns[-2:])
    sel = select_history(turns, summary, newest_two + 120, mode="items")
    assert sel.turns == turns[-2:]
    assert sel.summary is not None and sel.summary_truncated
    assert sel.summary.text.endswith(TRUNCATION_MARK)
    assert rendered_tokens(sel, "items") == sel.tokens <= newest_two + 120


def test_summary_dropped_when_nothing_of_it_fits() -> None:
    turns = make_turns(10)
    summary = summary_of(turns, 2)
    first = select_history(turns, None, 10_000, mode="items", cfg=BudgetConfig(max_recent_turns=2))
    sel = select_history(
        turns, summary, first.tokens + 5, mode="items", cfg=BudgetConfig(max_recent_turns=2)
    )
    assert sel.summary is None and sel.summary_dropped
    assert len(sel.turns) == 2


def test_max_recent_turns_caps_the_verbatim_window() -> None:
    turns = make_turns(200)
    sel = select_history(turns, None, 100_000, cfg=BudgetConfig(max_recent_turns=7))
    assert sel.turns == turns[-7:]
    assert len(sel.to_summarize) == 193


def test_walk_stops_at_the_first_turn_that_does_not_fit() -> None:
    turns = make_turns(20)
    turns[14] = turns[14].model_copy(update={"text": "word " * 2_000})
    sel = select_history(turns, None, 2_000, mode="items", cfg=BIG)
    # turns older than the big one would fit, but skipping it would leave a hole
    assert sel.turns == turns[15:]


def test_nothing_to_select() -> None:
    empty = select_history([], None, 1_000)
    assert empty.turns == [] and empty.summary is None and empty.tokens == 0
    turns = make_turns(5)
    none_fit = select_history(turns, summary_of(turns, 1), 3, mode="packed")
    assert none_fit.tokens == 0 and none_fit.turns == [] and none_fit.summary_dropped
    assert none_fit.to_summarize == turns[2:]
    assert select_history(turns, None, 0).turns == []


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown replay mode"):
        select_history(make_turns(2), None, 100, mode="xml")  # type: ignore[arg-type]


# -- straight from a store -----------------------------------------------------------------
@pytest.mark.parametrize("mode", REPLAY_MODES)
async def test_load_selection_equals_selecting_everything(
    mode: ReplayMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    turns = make_turns(3_000)
    summary = summary_of(turns, 999)
    async with open_store("sqlite://:memory:") as store:
        await store.append(turns)
        await store.save_summary(summary)
        limits: list[int] = []
        load_latest = store.load_latest

        async def recording(user_id: str, limit: int, **kw: object) -> list[Turn]:
            limits.append(limit)
            return await load_latest(user_id, limit)

        monkeypatch.setattr(store, "load_latest", recording)
        budget = compute_history_budget("gpt-realtime", INSTRUCTIONS, None, mode=mode)
        got = await load_selection(store, "u1", budget, mode=mode, cfg=BIG)
    want = select_history(turns, summary, budget, mode=mode, cfg=BIG)
    assert got.turns == want.turns and got.summary == want.summary
    assert got.tokens == want.tokens
    # it read about what fits, not the whole history
    assert max(limits) < 3 * len(want.turns) and max(limits) < 3_000
    assert len(limits) <= 4


async def test_load_selection_default_config_is_one_query(monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store("sqlite://:memory:") as store:
        await store.append(make_turns(500))
        calls: list[int] = []
        load_latest = store.load_latest

        async def recording(user_id: str, limit: int, **kw: object) -> list[Turn]:
            calls.append(limit)
            return await load_latest(user_id, limit)

        monkeypatch.setattr(store, "load_latest", recording)
        sel = await load_selection(store, "u1", 10_000)
        short = await load_selection(store, "nobody", 10_000)
    assert calls == [51, 51]
    assert len(sel.turns) == 50 and sel.older_turns == 1
    assert short.turns == [] and short.summary is None
