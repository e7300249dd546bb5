"""`HistoryPlugin`: callers are remembered across calls.

    history = HistoryPlugin()                      # LIVEKIT_HISTORY_URL or ./livekit_history.db
    loaded = await history.load(user_id, instructions=INSTRUCTIONS)
    session = AgentSession(llm=openai.realtime.RealtimeModel(...))
    history.attach(session, user_id=user_id)       # before session.start
    await session.start(Agent(instructions=loaded.instructions, chat_ctx=loaded.chat_ctx), ...)

`load` reads the caller's durable facts, stored summary and latest turns,
fits them to the token budget of the model, summarizes only the turns that
aged out of the verbatim window since the last summary (and stores the new
summary), and renders everything in the configured replay mode - stored text
always quoted as data (see `render`). `attach` wraps the session's realtime
model for the safe chat-context replay (holding caller audio until the
history is acknowledged) and records the call's turns (see `recorder`).
"""

from __future__ import annotations

import asyncio
import functools
import os
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
from .models import Fact, Role, Summary, Turn
from .recorder import DEFAULT_MAX_TURN_CHARS, DEFAULT_REORDER_WINDOW, Recorder
from .render import DEFAULT_REPLAY_MODE, base_instructions, render_history
from .stores import DEFAULT_URL, ENV_VAR, open_store
from .stores.base import HistoryStore, StoreError
from .summarize import DEFAULT_SUMMARY_TOKENS, ExtractiveSummarizer, LLMSummarizer, Summarizer
from .tokens import get_encoding

__all__ = ["HistoryConfig", "HistoryPlugin", "LoadedHistory", "watch_sessions"]

# a summary update may shift the verbatim window again (the summary grew):
# summarize at most this many times per load, the rest waits for the next call
_MAX_SUMMARY_ROUNDS = 3
_SESSION_WATCHERS = "_lhp_history_session_watchers"
# first page when reading the not-yet-summarized turns behind the verbatim ones
_FIRST_BACKLOG_PAGE = 64


def _default_store_url() -> str:
    return os.environ.get(ENV_VAR) or DEFAULT_URL


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
        default=10.0, gt=0, description="seconds an LLM summarizer may take per chunk"
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
        description="most not-yet-summarized older turns read (and summarized) per load",
    )
    writer_max_buffer: int = Field(default=10_000, ge=1)
    flush_timeout: float = Field(
        default=10.0, ge=0, description="seconds a closing call waits for its turns to be written"
    )

    @field_validator("summarizer")
    @classmethod
    def _check_summarizer(cls, v: Any) -> Any:
        if v is None or isinstance(v, llm.LLM) or isinstance(v, Summarizer):
            return v
        raise ValueError(
            f"summarizer must be a livekit llm.LLM, a Summarizer or None, not {type(v).__name__}"
        )

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
    summarized_turns: int = Field(0, description="turns newly summarized by this load")


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
        self._summarizer = self.config.build_summarizer()
        self._open_task: asyncio.Future[None] | None = None
        self._recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
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
    ) -> LoadedHistory:
        """The caller's history for a new call with `instructions`, `tools_json`
        and the realtime `model` (whose context window sizes the budget).

        A store that fails is logged and the call starts without history; it
        never raises for store trouble.
        """
        _check_user_id(user_id)
        cfg = self.config
        # building the tokenizer takes ~0.3 s once per process: not on the event loop
        await asyncio.to_thread(get_encoding)
        facts: list[Fact] = []
        summary: Summary | None = None
        summarized = 0
        try:
            await self.open()
            facts = await self.store.load_facts(user_id)
            budget = compute_history_budget(
                model, instructions, tools_json, cfg.budget, facts=facts, mode=cfg.mode
            )
            summary = await self.store.load_summary(user_id)
            selection = await load_selection(
                self.store, user_id, budget, mode=cfg.mode, cfg=cfg.budget
            )
            backlog = await self._aged_out(user_id, selection, summary)
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
            backlog = []
        if backlog:
            selection, summary, summarized = await self._summarize(
                selection, summary, backlog, budget
            )
        rendered = render_history(selection, facts, cfg.mode, agent_instructions=instructions)
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
                "facts": len(facts),
                "tokens": rendered.history_tokens,
                "budget": budget,
                "summarized": summarized,
            },
        )
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
        )

    async def _aged_out(
        self, user_id: str, selection: HistorySelection, summary: Summary | None
    ) -> list[Turn]:
        """Stored turns older than the verbatim ones that the summary does not cover
        yet, oldest first (at most `config.load_limit`)."""
        before = selection.turns[0].created_at if selection.turns else None
        covered = summary.covers_until if summary is not None else None
        if covered is not None and before is not None and covered >= before:
            return []
        limit = min(_FIRST_BACKLOG_PAGE, self.config.load_limit)
        while True:
            older = await self.store.load_latest(user_id, limit, before=before)
            fresh = [t for t in older if covered is None or t.created_at > covered]
            # pages are newest first: a covered turn means everything older is covered
            if len(fresh) < len(older) or len(older) < limit:
                return fresh
            if limit >= self.config.load_limit:
                logger.info(
                    "user %r has more than %d unsummarized older turns; the oldest are "
                    "left out of the summary",
                    user_id,
                    limit,
                )
                return fresh
            limit = min(self.config.load_limit, limit * 4)

    async def _summarize(
        self,
        selection: HistorySelection,
        summary: Summary | None,
        backlog: list[Turn],
        budget: int,
    ) -> tuple[HistorySelection, Summary | None, int]:
        """Fold the aged-out turns into the summary, re-select, store the summary.

        A bigger summary can push the oldest verbatim turns out of the budget:
        those are summarized too (a few rounds at most), so no turn falls
        between the summary and the verbatim run.
        """
        cfg = self.config
        summarized = 0
        for _ in range(_MAX_SUMMARY_ROUNDS):
            if not backlog:
                break
            try:
                summary = await self._summarizer.summarize(backlog, summary)
            except Exception as e:  # a custom summarizer failing must not fail the call
                logger.warning(
                    "history summarizer %s failed (%r); %d older turns stay unsummarized",
                    type(self._summarizer).__name__,
                    e,
                    len(backlog),
                )
                break
            summarized += len(backlog)
            # only turns already verbatim can stay verbatim: older ones are summarized now
            selection = select_history(
                selection.turns, summary, budget, mode=cfg.mode, cfg=cfg.budget
            )
            backlog = selection.to_summarize
        if summarized and summary is not None:
            try:
                await self.store.save_summary(summary)
            except (StoreError, OSError) as e:
                logger.warning("history summary of %r not saved: %s", summary.user_id, e)
        return selection, summary, summarized

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
        if realtime:
            recorder.add_close_hook(
                watch_sessions(model, recorder.watch_realtime_session)
            )
        self._recorders.add(recorder)
        return recorder

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

    async def forget(self, user_id: str, key: str) -> bool:
        """Delete a durable fact; True when it existed."""
        await self.open()
        return await self.store.delete_fact(user_id, key)

    async def facts(self, user_id: str) -> list[Fact]:
        await self.open()
        return await self.store.load_facts(user_id)

    # -- lifecycle -------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Flush and close every attached recorder, then the store if this plugin opened it."""
        if self._closed:
            return
        recorders = list(self._recorders)
        await asyncio.gather(*(r.aclose() for r in recorders), return_exceptions=True)
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
