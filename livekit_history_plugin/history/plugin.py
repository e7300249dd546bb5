"""`HistoryPlugin`: callers are remembered across calls.

    history = HistoryPlugin()                      # LIVEKIT_HISTORY_URL or ./livekit_history.db
    loaded = await history.load(user_id, instructions=INSTRUCTIONS)
    session = AgentSession(llm=openai.realtime.RealtimeModel(...))
    history.attach(session, user_id=user_id)       # before session.start
    await session.start(Agent(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx), ...)

`load` reads the caller's durable facts, stored summary and latest turns,
fits them to the token budget of the model and renders everything in the
configured replay mode - stored text always quoted as data (see `render`). It
never waits for a summarizer: summaries are brought up to date after a call
(see `jobs`), and a call that starts before that is done replays the last
stored summary plus the verbatim turns and says so (`summary_stale`). `attach`
wraps the session's realtime model for the safe chat-context replay (holding
caller audio until the history is acknowledged), records the call's turns
(see `recorder`) and, once they are written, runs the post-call jobs
(`HistoryPlugin.jobs`: the summary first).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

from livekit.agents import llm
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import _plugin  # noqa: F401  (registers with livekit)
from ..compat import ReplayOptions, replay_options_of, wrap_realtime_model
from ..log import logger
from .budget import (
    BudgetConfig,
    HistorySelection,
    compute_history_budget,
    load_selection,
    select_history,
)
from .calls import LoadReport, report_load
from .facts import (
    CaptureResult,
    FactExtractor,
    LLMFactExtractor,
    RuleFactExtractor,
    capture_facts,
)
from .jobs import PostCallContext, PostCallJobs, SummaryStep
from .models import Fact, Role, Summary, Turn
from .recall import RECALL_TOOL_NAME, make_recall_tool
from .recorder import DEFAULT_MAX_TURN_CHARS, DEFAULT_REORDER_WINDOW, Recorder
from .render import DEFAULT_REPLAY_MODE, base_instructions, render_history
from .search import RecallHit
from .stores import DEFAULT_URL, ENV_VAR, open_store
from .stores.base import HistoryStore, StoreError
from .summarize import DEFAULT_SUMMARY_TOKENS, ExtractiveSummarizer, LLMSummarizer, Summarizer
from .tokens import wait_ready, warm_up_in_background

__all__ = ["HistoryConfig", "HistoryPlugin", "LoadedHistory", "watch_sessions"]

_SESSION_WATCHERS = "_lhp_history_session_watchers"
# a catch-up summary job a load schedules starts this much later, so its work
# does not compete with the starting call (connect, replay, first reply)
_CATCH_UP_DELAY = 1.0
# turns read with the facts and the summary at load; the default max_recent_turns
# (50) fits in it, a larger one pages on through `load_selection`
_FIRST_PAGE = 64
# load reports waiting for the call's `attach` (a load without one must not pile up)
_LOAD_REPORTS_KEPT = 1_024


def _default_store_url() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_URL


def _llm_or(value: Any, kind: type, field: str) -> Any:
    """`value` when it is None, a livekit `llm.LLM` or a `kind`; else a clear error."""
    if value is None or isinstance(value, (llm.LLM, kind)):
        return value
    raise ValueError(
        f"{field} must be a livekit llm.LLM, a {kind.__name__} or None, "
        f"not {type(value).__name__}"
    )


class HistoryConfig(BaseModel):
    """Settings of a `HistoryPlugin`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)

    store_url: str = Field(
        default_factory=_default_store_url,
        description=f"history store URL; default env {ENV_VAR}, else {DEFAULT_URL}",
    )
    mode: Literal["items", "packed", "instructions"] = Field(
        default=DEFAULT_REPLAY_MODE,
        description="how history is replayed; packed keeps realtime replies in audio",
    )
    budget: BudgetConfig = Field(
        default_factory=BudgetConfig,
        description="token budget of replayed history; the window comes from load(model=...)",
    )
    summarizer: Any = Field(
        default=None,
        description="a livekit llm.LLM, a Summarizer, or None for the offline extractive one",
    )
    summary_tokens: int = Field(default=DEFAULT_SUMMARY_TOKENS, ge=16)
    summary_timeout: float = Field(
        default=10.0,
        gt=0,
        description="seconds an LLM summarizer may take per chunk (after the call; "
        "longer falls back to extractive)",
    )
    post_call_timeout: float = Field(
        default=30.0,
        gt=0,
        description="seconds each post-call step (the summary, ...) may take; aclose() "
        "waits at most this long for running ones",
    )
    audio_gate_timeout: float | None = Field(
        default=1.5,
        ge=0,
        description="hold caller audio until the history is acknowledged, at most this long "
        "(None: do not hold)",
    )
    record_system_notes: bool = Field(
        default=False, description="record agent handoffs as system notes in the history"
    )
    max_turn_chars: int = Field(
        default=DEFAULT_MAX_TURN_CHARS, ge=1, description="longer recorded turns are cut"
    )
    reorder_window: float = Field(
        default=DEFAULT_REORDER_WINDOW,
        ge=0,
        description="seconds a turn may wait for an earlier caller transcript before numbering",
    )
    load_limit: int = Field(
        default=1_000,
        ge=1,
        description="most not-yet-summarized older turns read (and summarized) per summary job",
    )
    writer_max_buffer: int = Field(default=10_000, ge=1)
    flush_timeout: float = Field(
        default=10.0, ge=0, description="seconds a closing call waits for its turns to be written"
    )

    @field_validator("summarizer")
    @classmethod
    def _check_summarizer(cls, v: Any) -> Any:
        return _llm_or(v, Summarizer, "summarizer")

    capture_facts: bool = Field(
        default=True,
        description="after each call, store the facts the caller stated about themselves",
    )
    fact_extractor: Any = Field(
        default=None,
        description="a livekit llm.LLM, a FactExtractor, or None: the summarizer's LLM "
        "when it is one, else the offline rules",
    )
    fact_timeout: float = Field(
        default=20.0, gt=0, description="seconds an LLM fact extractor may take"
    )

    @field_validator("fact_extractor")
    @classmethod
    def _check_fact_extractor(cls, v: Any) -> Any:
        return _llm_or(v, FactExtractor, "fact_extractor")

    def build_fact_extractor(self) -> FactExtractor:
        source = self.fact_extractor
        if source is None and isinstance(self.summarizer, llm.LLM):
            source = self.summarizer
        if source is None:
            return RuleFactExtractor()
        if isinstance(source, llm.LLM):
            return LLMFactExtractor(source, timeout=self.fact_timeout)
        extractor: FactExtractor = source
        return extractor

    def build_summarizer(self) -> Summarizer:
        if self.summarizer is None:
            return ExtractiveSummarizer(self.summary_tokens)
        if isinstance(self.summarizer, llm.LLM):
            return LLMSummarizer(self.summarizer, self.summary_tokens, timeout=self.summary_timeout)
        summarizer: Summarizer = self.summarizer
        return summarizer


class LoadedHistory(BaseModel):
    """A caller's history, ready for `Agent(instructions=..., chat_ctx=...)`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    user_id: str
    mode: Literal["items", "packed", "instructions"]
    chat_ctx: llm.ChatContext = Field(description="pass as Agent(chat_ctx=...)")
    instructions: str = Field(
        description="agent instructions + durable facts (+ the quoted history in instructions mode)"
    )
    turns: list[Turn] = Field(description="turns replayed verbatim, oldest first")
    summary: Summary | None = Field(description="the summary replayed (may be cut to fit)")
    facts: list[Fact]
    tokens: int = Field(description="exact tokens the replayed history takes")
    budget: int = Field(description="tokens the history was allowed")
    item_ids: list[str] = Field(description="ids of the replayed history items")
    summarized_turns: int = Field(
        0, description="turns newly summarized by this load (only with summarize_now=True)"
    )
    summary_stale: bool = Field(
        False,
        description="stored turns older than the verbatim ones are not in the summary yet: "
        "this call replays the last stored summary + the verbatim turns",
    )
    summary_pending: bool = Field(
        False, description="a summary job for this caller was queued or running at load"
    )
    report: LoadReport | None = Field(
        None, description="what this load did (what its `history.load` span shows)"
    )


class HistoryPlugin:
    """Loads a caller's history into new calls and records calls into it.

    `store`: a `HistoryStore` (opened on first use, closed by the caller), a
    store URL, or None for `config.store_url` (both opened and closed here).
    """

    def __init__(
        self, store: HistoryStore | str | None = None, config: HistoryConfig | None = None
    ) -> None:
        self.config = config or HistoryConfig()
        if isinstance(store, HistoryStore):
            self.store, self._owns_store = store, False
        else:
            self.store, self._owns_store = open_store(store or self.config.store_url), True
        cfg = self.config
        # ~0.3 s once per process, in a thread: ready long before most first calls
        warm_up_in_background()
        self._summary = SummaryStep(
            cfg.build_summarizer(),
            mode=cfg.mode,
            cfg=cfg.budget,
            default_budget=self._default_budget,
            load_limit=cfg.load_limit,
        )
        self.jobs = PostCallJobs(default_timeout=cfg.post_call_timeout)
        """Steps run for a caller after each call (`jobs.add_step`); "summary" first."""
        self.jobs.add_step("summary", self._summary)
        self._fact_extractor = cfg.build_fact_extractor()
        self.captured: list[CaptureResult] = []
        """What fact capture did after the calls of this process, newest last (bounded)."""
        if cfg.capture_facts:
            # from the closed call's own turns only: nothing to redo on a later load
            self.jobs.add_step("facts", self._capture_facts, on_load=False)
        self._open_task: asyncio.Future[None] | None = None
        self._recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
        self._load_reports: dict[str, LoadReport] = {}
        self._closed = False

    # -- store ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect the store (done on first use; call it to fail fast at startup)."""
        await asyncio.shield(self._opener())

    def _opener(self) -> asyncio.Future[None]:
        if self._closed:
            raise RuntimeError("HistoryPlugin is closed")
        task = self._open_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._open_task = asyncio.ensure_future(self._open_store())
        return task

    async def _open_store(self) -> None:
        try:
            await self.store.open()
        except Exception as e:
            logger.error("history store %s could not be opened: %s", self.store.url, e)
            raise

    # -- loading ----------------------------------------------------------------------
    async def load(
        self,
        user_id: str,
        *,
        instructions: str = "",
        tools_json: str = "",
        model: str = "gpt-realtime",
        summarize_now: bool = False,
    ) -> LoadedHistory:
        """The caller's history for a new call with `instructions`, `tools_json`
        and the realtime `model` (whose context window sizes the budget).

        Never waits for a summarizer: when older turns are not in the stored
        summary yet (`summary_stale`), the last stored summary and the verbatim
        turns are replayed and a summary job is queued unless one is already
        (`summary_pending`). `summarize_now=True` (offline tools such as the
        CLI preview, never a call) folds them in first and stores the result.

        A store that fails is logged and the call starts without history; it
        never raises for store trouble.
        """
        _check_user_id(user_id)
        start_ns = time.time_ns()
        cfg = self.config
        # built in a background thread since the plugin was made: wait there, not on the loop
        await wait_ready()
        facts: list[Fact] = []
        summarized = 0
        loaded = False
        try:
            await self.open()
            # one wait for the store, not three in a row: the budget needs the facts,
            # the selection the budget, but the reads need none of them
            page = min(cfg.budget.max_recent_turns + 1, _FIRST_PAGE)
            facts, summary, newest = await asyncio.gather(
                self.store.load_facts(user_id),
                self.store.load_summary(user_id),
                self.store.load_latest(user_id, page),
            )
            budget = compute_history_budget(
                model, instructions, tools_json, cfg.budget, facts=facts, mode=cfg.mode
            )
            self._summary.remember_budget(user_id, budget)
            if summarize_now:
                selection, summarized = await self._summarize_now(user_id, budget)
            else:
                selection = select_history(newest, summary, budget, mode=cfg.mode, cfg=cfg.budget)
                if (
                    len(newest) == page
                    and len(selection.turns) == page <= cfg.budget.max_recent_turns
                ):
                    # every turn of the page fitted and more may: page through the store
                    selection = await load_selection(
                        self.store, user_id, budget, mode=cfg.mode, cfg=cfg.budget
                    )
            loaded = True
        except (StoreError, OSError) as e:
            logger.error(
                "history of user %r could not be loaded (%s); the call starts without it",
                user_id,
                e,
            )
            budget = compute_history_budget(
                model, instructions, tools_json, cfg.budget, facts=facts, mode=cfg.mode
            )
            selection = select_history([], None, budget, mode=cfg.mode, cfg=cfg.budget)
        # the turns between the summary and the verbatim run are in neither
        stale = bool(selection.to_summarize)
        pending = self.jobs.pending(user_id)
        if stale and loaded and not pending:
            self.jobs.schedule(
                PostCallContext(user_id=user_id, store=self.store, reason="load"),
                delay=_CATCH_UP_DELAY,
            )
            pending = True
        # the selection's count is exact for its mode (tests/history/test_budget*.py)
        rendered = render_history(
            selection, facts, cfg.mode, agent_instructions=instructions, recount=False
        )
        agent_instructions = rendered.instructions
        if cfg.mode == "instructions" and not (selection.turns or selection.summary):
            # render leaves the blank line meant to precede the history block
            agent_instructions = base_instructions(instructions, facts, "packed")
        logger.debug(
            "history loaded",
            extra={
                "user_id": user_id,
                "turns": len(selection.turns),
                "summary": selection.summary is not None,
                "summary_stale": stale,
                "summary_pending": pending,
                "facts": len(facts),
                "tokens": rendered.history_tokens,
                "budget": budget,
                "summarized": summarized,
            },
        )
        report = report_load(
            store_url=self.store.url,
            user_id=user_id,
            mode=cfg.mode,
            turns=selection.turns,
            summary=selection.summary,
            facts=len(facts),
            tokens=rendered.history_tokens,
            budget=budget,
            summarized_turns=summarized,
            failed=not loaded,
            instructions=agent_instructions,
            start_ns=start_ns,
        )
        self._keep_load_report(user_id, report)
        return LoadedHistory(
            user_id=user_id,
            mode=cfg.mode,
            chat_ctx=rendered.chat_ctx,
            instructions=agent_instructions,
            turns=list(selection.turns),
            summary=selection.summary,
            facts=list(facts),
            tokens=rendered.history_tokens,
            budget=budget,
            item_ids=list(rendered.item_ids),
            summarized_turns=summarized,
            summary_stale=stale,
            summary_pending=pending,
            report=report,
        )

    def _keep_load_report(self, user_id: str, report: LoadReport) -> None:
        """Until the call's `attach` puts it in the call's record."""
        self._load_reports.pop(user_id, None)
        self._load_reports[user_id] = report
        if len(self._load_reports) > _LOAD_REPORTS_KEPT:
            del self._load_reports[next(iter(self._load_reports))]

    async def _summarize_now(self, user_id: str, budget: int) -> tuple[HistorySelection, int]:
        result = await self._summary.refresh(self.store, user_id, budget, save=False)
        if result.summarized and result.summary is not None:
            try:
                await self._summary.save_if_newer(self.store, result.summary)
            except (StoreError, OSError) as e:
                logger.warning("history summary of %r not saved: %s", user_id, e)
        return result.selection, result.summarized

    def _default_budget(self) -> int:
        """The budget a post-call job uses for a caller never loaded in this process."""
        return compute_history_budget(
            "gpt-realtime", "", "", self.config.budget, mode=self.config.mode
        )

    async def wait_post_call(
        self, user_id: str | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until the post-call jobs (of `user_id`, or all) are done; False on timeout."""
        return await self.jobs.wait_idle(user_id, timeout)

    # -- recording ----------------------------------------------------------------------
    def attach(
        self,
        session: Any,
        *,
        user_id: str,
        conversation_id: str | None = None,
        agent_id: str | None = None,
    ) -> Recorder:
        """Record `session` (a livekit AgentSession) as one conversation of `user_id`.

        Call BEFORE `session.start(...)`: a realtime `session.llm` is wrapped so
        every session it creates replays chat context safely and holds caller
        audio until the history is acknowledged (`config.audio_gate_timeout`).
        `agent_id` stores one id on every turn instead of the active agent's.
        """
        _check_user_id(user_id)
        cfg = self.config
        warm_up_in_background()
        if _started(session):
            logger.warning(
                "HistoryPlugin.attach() called after session.start(): the running realtime "
                "session is not wrapped and its audio is not held; attach before start"
            )
        model = getattr(session, "llm", None)
        realtime = isinstance(model, llm.RealtimeModel)
        if realtime:
            # keep whatever else the author configured on an already wrapped model
            base = replay_options_of(model) or ReplayOptions()
            options = base.model_copy(update={"audio_gate_timeout": cfg.audio_gate_timeout})
            wrap_realtime_model(model, options=options)
        recorder = Recorder(
            session,
            self.store,
            user_id=user_id,
            conversation_id=conversation_id,
            agent_id=agent_id,
            reorder_window=cfg.reorder_window,
            max_turn_chars=cfg.max_turn_chars,
            record_system_notes=cfg.record_system_notes,
            flush_timeout=cfg.flush_timeout,
            writer_max_buffer=cfg.writer_max_buffer,
            open_store=self.open,
        )
        recorder.call_log.loaded = self._load_reports.pop(user_id, None)
        if realtime:
            recorder.add_close_hook(watch_sessions(model, recorder.watch_realtime_session))
        # close hooks run once the recorder's turns are flushed
        recorder.add_close_hook(functools.partial(self._after_call, recorder))
        self._recorders.add(recorder)
        return recorder

    def _after_call(self, recorder: Recorder) -> None:
        """Queue the post-call jobs of a call whose turns were just written."""
        if self._closed:
            return
        self.jobs.schedule(
            PostCallContext(
                user_id=recorder.user_id,
                store=self.store,
                reason="call_closed",
                conversation_id=recorder.conversation_id,
                turns=recorder.turns,
            )
        )

    # -- durable facts -----------------------------------------------------------------
    async def remember(self, user_id: str, key: str, text: str) -> Fact:
        """Store a durable fact ("diet" -> "vegan"); it is in the instructions of
        every later call. Same key replaces. Bad input is a ValueError."""
        try:
            fact = Fact(user_id=user_id, key=key, text=text)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise ValueError(f"cannot remember fact {key!r}: {where} {first.get('msg')}") from None
        await self.open()
        await self.store.save_fact(fact)
        return fact

    async def _capture_facts(self, ctx: PostCallContext) -> None:
        result = await capture_facts(ctx.store, ctx.user_id, ctx.turns, self._fact_extractor)
        self.captured = [*self.captured[-99:], result]

    # -- recall ---------------------------------------------------------------------------
    async def recall(
        self,
        user_id: str,
        query: str,
        k: int = 5,
        *,
        exclude_conversation_id: str | None = None,
    ) -> list[RecallHit]:
        """The `k` stored turns of `user_id` that best match `query` (plain words;
        no search syntax is interpreted), best first. Only this user's turns."""
        _check_user_id(user_id)
        await self.open()
        return await self.store.search_turns(
            user_id, query, k, exclude_conversation_id=exclude_conversation_id
        )

    def recall_tool(
        self,
        user_id: str,
        *,
        k: int = 5,
        exclude_conversation_id: str | None = None,
        name: str = RECALL_TOOL_NAME,
    ) -> llm.FunctionTool[..., Any]:
        """A function tool for the agent (`Agent(tools=[...])`) that searches this
        user's earlier calls; its answer quotes the turns as data (see `recall`)."""
        _check_user_id(user_id)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
            raise ValueError(f"k must be an int from 1 to 50, got {k!r}")

        async def search(query: str) -> list[RecallHit]:
            return await self.recall(
                user_id, query, k, exclude_conversation_id=exclude_conversation_id
            )

        return make_recall_tool(search, name=name)

    async def forget(self, user_id: str, key: str) -> bool:
        """Delete a durable fact; True when it existed."""
        await self.open()
        return await self.store.delete_fact(user_id, key)

    async def facts(self, user_id: str) -> list[Fact]:
        await self.open()
        return await self.store.load_facts(user_id)

    # -- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Flush and close every attached recorder, let the post-call jobs finish
        (at most `post_call_timeout`; cut ones are redone on the caller's next
        call), then close the store if this plugin opened it."""
        if self._closed:
            return
        recorders = list(self._recorders)
        await asyncio.gather(*(r.aclose() for r in recorders), return_exceptions=True)
        await self.jobs.aclose(self.config.post_call_timeout)
        self._closed = True
        if self._owns_store and self._open_task is not None:
            await self.store.close()

    async def __aenter__(self) -> HistoryPlugin:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def watch_sessions(model: Any, callback: Callable[[Any], None]) -> Callable[[], None]:
    """Call `callback(rt_session)` for every session `model.session()` creates
    from now on; returns the function that stops it."""
    watchers: list[Callable[[Any], None]] | None = getattr(model, _SESSION_WATCHERS, None)
    if watchers is None:
        watchers = []
        original = model.session
        registered = watchers

        @functools.wraps(original)
        def session(*args: Any, **kwargs: Any) -> Any:
            rt_session = original(*args, **kwargs)
            for watcher in list(registered):
                try:
                    watcher(rt_session)
                except Exception:
                    logger.exception("history: realtime session watcher failed")
            return rt_session

        model.session = session
        setattr(model, _SESSION_WATCHERS, watchers)
    watchers.append(callback)

    def stop() -> None:
        if callback in watchers:
            watchers.remove(callback)

    return stop


def _started(session: Any) -> bool:
    try:
        session.current_agent  # noqa: B018 - raises RuntimeError until start()
    except RuntimeError:
        return False
    return True


def _check_user_id(user_id: str) -> None:
    try:
        Turn(user_id=user_id, conversation_id="c", seq=0, role=Role.USER, text="")
    except ValidationError as e:
        raise ValueError(f"invalid user_id {user_id!r}: {e.errors()[0].get('msg')}") from None
