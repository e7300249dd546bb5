"""Work done for a caller after their call, off every call's critical path.

`PostCallJobs` runs a short list of named async steps for one user once a
call's turns are flushed (`HistoryPlugin.attach` schedules it when the
recorder closes), and again when a later `load` finds work left undone. The
first step is the summary (`SummaryStep`); other steps are added with
`PostCallJobs.add_step`.

- Isolated: each step runs on its own; one that raises or times out is
  logged and the next still runs.
- Bounded: each step gets `timeout` seconds, then it is cancelled.
- One job per user at a time: a job scheduled while one for the same user is
  running waits for it, so two jobs never fold the same turns twice.
- Crash-safe: a step writes only when it has its whole result (the summary is
  one `save_summary`, a single-row replace). A job killed mid-way - cancelled,
  timed out, or its process killed - leaves the store as it was, and the next
  close or load of that user schedules it again, because the work is found
  from what is stored (turns the stored summary does not cover yet), not from
  a queue that could be lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..log import logger
from .budget import BudgetConfig, HistorySelection, load_selection, select_history
from .models import Summary, Turn
from .render import ReplayMode
from .stores.base import HistoryStore
from .summarize import Summarizer

__all__ = [
    "PostCallContext",
    "PostCallJobs",
    "PostCallStep",
    "SummaryStep",
    "unsummarized_backlog",
]

JobReason = Literal["call_closed", "load"]


@dataclass(frozen=True)
class PostCallContext:
    """What a post-call step is run for."""

    user_id: str
    store: HistoryStore
    reason: JobReason
    conversation_id: str | None = None
    # the turns the closed call recorded (seq order); empty for a job a load scheduled
    turns: Sequence[Turn] = ()


StepFn = Callable[[PostCallContext], Awaitable[None]]


@dataclass(frozen=True)
class PostCallStep:
    name: str
    run: StepFn
    timeout: float
    # also run by the jobs a load schedules to catch up on work a dead job left
    on_load: bool = True


@dataclass
class StepOutcome:
    name: str
    ok: bool
    seconds: float
    error: str | None = None


@dataclass
class JobRecord:
    """One finished job (kept for `PostCallJobs.history`, newest last)."""

    user_id: str
    reason: JobReason
    steps: list[StepOutcome] = field(default_factory=list)


# finished job records kept for inspection
_KEEP_RECORDS = 100


class PostCallJobs:
    """Named async steps run in the background after a caller's call."""

    def __init__(self, *, default_timeout: float = 60.0) -> None:
        if default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0, got {default_timeout}")
        self.default_timeout = default_timeout
        self._steps: list[PostCallStep] = []
        # user -> their unfinished jobs, oldest first (each waits for the one before)
        self._queued: dict[str, list[asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._records: list[JobRecord] = []

    # -- steps ----------------------------------------------------------------------------
    def add_step(
        self, name: str, run: StepFn, *, timeout: float | None = None, on_load: bool = True
    ) -> None:
        """Run `run(ctx)` after every call (in the order added), at most `timeout`
        seconds (default `default_timeout`). `on_load=False`: only after a call,
        not in the catch-up jobs a `load` schedules."""
        if any(s.name == name for s in self._steps):
            raise ValueError(f"a post-call step named {name!r} exists already")
        bound = self.default_timeout if timeout is None else timeout
        if bound <= 0:
            raise ValueError(f"timeout must be > 0, got {bound}")
        self._steps.append(PostCallStep(name, run, bound, on_load))

    @property
    def steps(self) -> list[str]:
        return [s.name for s in self._steps]

    # -- scheduling ---------------------------------------------------------------------
    def schedule(self, ctx: PostCallContext, *, delay: float = 0.0) -> asyncio.Task[None]:
        """Queue a job for `ctx.user_id`; it starts once that user's previous job
        ended (and `delay` seconds have passed). Returns its task."""
        steps = [s for s in self._steps if ctx.reason == "call_closed" or s.on_load]
        queue = self._queued.setdefault(ctx.user_id, [])
        # every earlier one, not just the last: a cancelled job in between must not
        # let this one start beside a job still running
        task = asyncio.ensure_future(self._job(ctx, steps, list(queue), delay))
        queue.append(task)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(ctx.user_id, t))
        return task

    def pending(self, user_id: str) -> bool:
        """True while a job for `user_id` is queued or running in this process."""
        return bool(self._queued.get(user_id))

    @property
    def running(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    @property
    def history(self) -> list[JobRecord]:
        """The last finished jobs, newest last."""
        return list(self._records)

    async def wait_idle(self, user_id: str | None = None, timeout: float | None = None) -> bool:
        """Wait until no job (of `user_id`, or of anyone) is queued or running.
        True when idle, False when `timeout` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            tasks = [
                t
                for u, queue in self._queued.items()
                for t in queue
                if not t.done() and (user_id is None or u == user_id)
            ]
            if not tasks:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await asyncio.wait(tasks, timeout=left)

    async def aclose(self, timeout: float) -> None:
        """Let running jobs finish for up to `timeout` seconds, then cancel them
        (a cancelled job is redone by a later close or load)."""
        if not await self.wait_idle(timeout=timeout):
            left = [t for t in self._tasks if not t.done()]
            logger.warning(
                "history: %d post-call jobs still running after %.1f s are cancelled; "
                "they are redone on the next call of their users",
                len(left),
                timeout,
            )
            for t in left:
                t.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    # -- running --------------------------------------------------------------------------
    async def _job(
        self,
        ctx: PostCallContext,
        steps: Sequence[PostCallStep],
        earlier: list[asyncio.Task[None]],
        delay: float,
    ) -> None:
        if earlier:
            # one job per user at a time; an earlier one's failure is its own, and
            # cancelling this job must not cancel them (asyncio.wait never does)
            await asyncio.wait(earlier)
        if delay > 0:
            await asyncio.sleep(delay)
        record = JobRecord(ctx.user_id, ctx.reason)
        for step in steps:
            record.steps.append(await self._run_step(step, ctx))
        self._records.append(record)
        del self._records[:-_KEEP_RECORDS]
        logger.debug(
            "history post-call job done",
            extra={
                "user_id": ctx.user_id,
                "reason": ctx.reason,
                "steps": {s.name: (s.ok, round(s.seconds, 3)) for s in record.steps},
            },
        )

    @staticmethod
    async def _run_step(step: PostCallStep, ctx: PostCallContext) -> StepOutcome:
        started = time.monotonic()
        try:
            await asyncio.wait_for(step.run(ctx), step.timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "history post-call step %r for user %r timed out after %.1f s; "
                "it is redone on the user's next call",
                step.name,
                ctx.user_id,
                step.timeout,
            )
            return StepOutcome(step.name, False, time.monotonic() - started, "timeout")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one step failing never stops the others
            logger.warning(
                "history post-call step %r for user %r failed: %r", step.name, ctx.user_id, e
            )
            return StepOutcome(step.name, False, time.monotonic() - started, repr(e))
        return StepOutcome(step.name, True, time.monotonic() - started)

    def _finished(self, user_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        queue = self._queued.get(user_id, [])
        if task in queue:
            queue.remove(task)
        if not queue:
            self._queued.pop(user_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("history post-call job of %r crashed: %r", user_id, task.exception())


# -- the summary ------------------------------------------------------------------------
# a summary update may shift the verbatim window again (the summary grew):
# summarize at most this many times per job, the rest waits for the next one
MAX_SUMMARY_ROUNDS = 3
# first page when reading the not-yet-summarized turns behind the verbatim ones
_FIRST_BACKLOG_PAGE = 64
# budgets remembered per user (the last load's), for the job after their call
_KEEP_BUDGETS = 10_000


async def unsummarized_backlog(
    store: HistoryStore,
    user_id: str,
    selection: HistorySelection,
    summary: Summary | None,
    limit: int,
) -> list[Turn]:
    """Stored turns older than the verbatim ones that `summary` does not cover
    yet, oldest first (the newest `limit` of them)."""
    before = selection.turns[0].created_at if selection.turns else None
    covered = summary.covers_until if summary is not None else None
    if covered is not None and before is not None and covered >= before:
        return []
    page = min(_FIRST_BACKLOG_PAGE, limit)
    while True:
        older = await store.load_latest(user_id, page, before=before)
        fresh = [t for t in older if covered is None or t.created_at > covered]
        # pages are newest first: a covered turn means everything older is covered
        if len(fresh) < len(older) or len(older) < page:
            return fresh
        if page >= limit:
            logger.info(
                "user %r has more than %d unsummarized older turns; the oldest are "
                "left out of the summary",
                user_id,
                page,
            )
            return fresh
        page = min(limit, page * 4)


@dataclass
class SummaryResult:
    selection: HistorySelection
    summary: Summary | None
    summarized: int


async def fold_backlog(
    summarizer: Summarizer,
    selection: HistorySelection,
    summary: Summary | None,
    backlog: list[Turn],
    *,
    budget: int,
    mode: ReplayMode,
    cfg: BudgetConfig,
) -> SummaryResult:
    """Fold the aged-out turns into the summary and re-select (not stored).

    A bigger summary can push the oldest verbatim turns out of the budget:
    those are summarized too (a few rounds at most), so no turn falls between
    the summary and the verbatim run. A summarizer that fails ends the rounds
    (logged); what was folded so far is kept.
    """
    summarized = 0
    for _ in range(MAX_SUMMARY_ROUNDS):
        if not backlog:
            break
        try:
            summary = await summarizer.summarize(backlog, summary)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a custom summarizer failing must not fail anything else
            logger.warning(
                "history summarizer %s failed (%r); %d older turns stay unsummarized",
                type(summarizer).__name__,
                e,
                len(backlog),
            )
            break
        summarized += len(backlog)
        # only turns already verbatim can stay verbatim: older ones are summarized now
        selection = select_history(selection.turns, summary, budget, mode=mode, cfg=cfg)
        backlog = selection.to_summarize
    return SummaryResult(selection, summary, summarized)


class SummaryStep:
    """The post-call step that brings a user's stored summary up to date.

    It selects the user's history with the budget of their last `load` (the
    next call's is not known yet; the same instructions and model are the
    best guess, and a call whose budget differs catches up with a job of its
    own), folds the turns that aged out of the verbatim window into the
    summary, and stores it - unless another worker stored a summary covering
    at least as much meanwhile.
    """

    def __init__(
        self,
        summarizer: Summarizer,
        *,
        mode: ReplayMode,
        cfg: BudgetConfig,
        default_budget: Callable[[], int],
        load_limit: int,
    ) -> None:
        self.summarizer = summarizer
        self.mode: ReplayMode = mode
        self.cfg = cfg
        self._default_budget = default_budget
        self.load_limit = load_limit
        self._budgets: OrderedDict[str, int] = OrderedDict()

    def remember_budget(self, user_id: str, budget: int) -> None:
        self._budgets[user_id] = budget
        self._budgets.move_to_end(user_id)
        while len(self._budgets) > _KEEP_BUDGETS:
            self._budgets.popitem(last=False)

    def budget_of(self, user_id: str) -> int:
        found = self._budgets.get(user_id)
        return found if found is not None else self._default_budget()

    async def __call__(self, ctx: PostCallContext) -> None:
        await self.refresh(ctx.store, ctx.user_id, self.budget_of(ctx.user_id), save=True)

    async def refresh(
        self, store: HistoryStore, user_id: str, budget: int, *, save: bool
    ) -> SummaryResult:
        """Fold what aged out into `user_id`'s summary (and store it when `save`)."""
        selection = await load_selection(store, user_id, budget, mode=self.mode, cfg=self.cfg)
        # the whole stored summary, not the part of it that fitted the budget
        summary = await store.load_summary(user_id)
        backlog = await unsummarized_backlog(store, user_id, selection, summary, self.load_limit)
        result = await fold_backlog(
            self.summarizer,
            selection,
            summary,
            backlog,
            budget=budget,
            mode=self.mode,
            cfg=self.cfg,
        )
        if save and result.summarized and result.summary is not None:
            await self.save_if_newer(store, result.summary)
        return result

    @staticmethod
    async def save_if_newer(store: HistoryStore, summary: Summary) -> None:
        """Store `summary` unless the stored one covers at least as much (another
        worker's job got there first; storing ours would only undo its work)."""
        stored = await store.load_summary(summary.user_id)
        if stored is not None and stored.covers_until >= summary.covers_until:
            logger.debug(
                "history summary of %r not saved: the stored one covers as much", summary.user_id
            )
            return
        await store.save_summary(summary)
