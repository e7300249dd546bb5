"""Background writer: recording a turn never blocks (or breaks) the audio path.

`HistoryWriter.submit(turn)` only puts the turn in a bounded in-memory buffer
and returns; one background task writes the buffer to the store in batches, in
submission order, retrying with exponential backoff and jitter while the store
is failing. Appends are idempotent, so a retry after an ambiguous failure
(the write landed but the reply was lost) never duplicates a turn.

Guarantees
- Nothing reported as written is lost: a turn counts in `written` and is
  passed to `on_written` only after `store.append` returned for it, i.e. when
  the store says it is durable.
- A turn accepted by `submit` stays queued until it is written; it is given
  up only by `aclose` when its timeout expires (counted in `dropped`, logged).

Overflow policy: keep what was accepted. When `max_buffer` turns are pending,
`submit` rejects the *new* turn (counted in `dropped`) instead of evicting an
older one: the accepted turns are an ordered run already promised to the
caller, and rejecting at the tail leaves one contiguous gap at the end of the
outage instead of holes. One ERROR is logged when an overflow episode starts
and one line when it ends (buffer back to half full) with how many turns the
episode dropped.

Failures: the first failure of an episode is logged once with its cause
(WARNING when the store is unreachable - turns are buffered, nothing lost yet -
ERROR for any other store error, e.g. disk full); retries are silent; recovery
is logged once with the number of attempts and the outage length. A batch that
fails with a non-store exception (a bug, a turn the backend cannot take) is
retried turn by turn and the failing turn is dropped with an ERROR, so one bad
turn can never wedge the queue.

Use from the event loop thread. `flush()` waits for everything submitted before
the call; `aclose()` flushes (bounded by its timeout) and stops the task.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType

from ..log import logger
from .models import Turn
from .stores.base import HistoryStore, StoreError, StoreUnavailableError

WrittenCallback = Callable[[Sequence[Turn]], None]


class HistoryWriter:
    def __init__(
        self,
        store: HistoryStore,
        *,
        max_buffer: int = 10_000,
        retry_base: float = 0.05,
        retry_max: float = 5.0,
        batch_size: int = 256,
        on_written: WrittenCallback | None = None,
    ) -> None:
        if max_buffer < 1 or batch_size < 1:
            raise ValueError("max_buffer and batch_size must be >= 1")
        if not 0 < retry_base <= retry_max:
            raise ValueError("need 0 < retry_base <= retry_max")
        self.store = store
        self.max_buffer = max_buffer
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.batch_size = batch_size
        self.on_written = on_written

        self._queue: deque[Turn] = deque()
        self._inflight = 0
        self._accepted = 0  # turns accepted by submit, ever
        self._finished = 0  # accepted turns written or given up
        self._written = 0
        self._dropped = 0
        self._last_error: BaseException | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._closed_warned = False
        self._overflow_dropped: int | None = None  # set while an overflow episode lasts
        self._failing_since: float | None = None
        self._failed_attempts = 0
        self._retries = 0  # failed append attempts over the writer's life

    # -- state --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Turns accepted but not yet written (queued or being written)."""
        return len(self._queue) + self._inflight

    @property
    def written(self) -> int:
        """Turns the store confirmed durable."""
        return self._written

    @property
    def dropped(self) -> int:
        """Turns that will never be written: rejected on overflow or after close,
        refused by the store as invalid, or abandoned by `aclose`."""
        return self._dropped

    @property
    def retries(self) -> int:
        """Appends that failed and were tried again, over the writer's life."""
        return self._retries

    @property
    def last_error(self) -> BaseException | None:
        """The error of the ongoing failure episode; None while the store is healthy."""
        return self._last_error

    @property
    def closed(self) -> bool:
        return self._closed

    # -- submit ---------------------------------------------------------------------
    def submit(self, turn: Turn) -> None:
        """Queue a turn for writing. O(1), never blocks, never raises."""
        try:
            self._submit(turn)
        except Exception:  # never let recording break the call
            self._dropped += 1
            logger.exception("history writer: could not queue turn; it is dropped")

    def _submit(self, turn: Turn) -> None:
        if not isinstance(turn, Turn):
            raise TypeError(f"expected a Turn, got {type(turn).__name__}")
        if self._closed:
            self._dropped += 1
            if not self._closed_warned:  # once: a late recorder must not flood the log
                self._closed_warned = True
                logger.error(
                    "history writer for %s is closed: turn %s of user %r and any later "
                    "ones are dropped",
                    self.store.url,
                    turn.idempotency_key,
                    turn.user_id,
                )
            return
        if self.pending >= self.max_buffer:
            self._overflow(turn)
            return
        self._queue.append(turn)
        self._accepted += 1
        self._ensure_task()
        if self._wakeup is not None:
            self._wakeup.set()

    def _overflow(self, turn: Turn) -> None:
        self._dropped += 1
        if self._overflow_dropped is None:
            self._overflow_dropped = 0
            cause = f" ({self._last_error})" if self._last_error else ""
            logger.error(
                "history writer buffer full: %d turns pending for %s%s; new turns are "
                "DROPPED until it drains (first: %s of user %r)",
                self.pending,
                self.store.url,
                cause,
                turn.idempotency_key,
                turn.user_id,
            )
        self._overflow_dropped += 1

    def _check_overflow_end(self) -> None:
        # hysteresis: a buffer hovering at the limit must not log an episode per turn
        if self._overflow_dropped is not None and self.pending <= self.max_buffer // 2:
            logger.warning(
                "history writer buffer has room again (%d pending); %d turns were dropped "
                "during the overflow",
                self.pending,
                self._overflow_dropped,
            )
            self._overflow_dropped = None

    def _ensure_task(self) -> None:
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: the next submit/flush inside one starts the task
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._run(), name="livekit-history-writer")

    # -- flush / close --------------------------------------------------------------
    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every turn submitted before this call is written (or given
        up). True when done, False on timeout (logged), never raises."""
        target = self._accepted
        if self._finished >= target:
            return True
        self._ensure_task()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (target, fut)
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except asyncio.TimeoutError:
            cause = f"; last error: {self._last_error}" if self._last_error else ""
            logger.warning(
                "history writer flush timed out after %ss with %d turns pending for %s%s",
                timeout,
                self.pending,
                self.store.url,
                cause,
            )
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def aclose(self, timeout: float | None = 10.0) -> None:
        """Stop accepting turns, write what is queued (up to `timeout` seconds),
        stop the task. Turns still unwritten then are dropped and logged."""
        if self._closed and self._task is None:
            return
        self._closed = True
        await self.flush(timeout)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        lost = self.pending
        if lost:
            self._queue.clear()
            self._inflight = 0
            self._dropped += lost
            self._finished += lost
            cause = f" ({self._last_error})" if self._last_error else ""
            logger.error(
                "history writer closed with %d turns unwritten to %s%s: they are lost",
                lost,
                self.store.url,
                cause,
            )
        self._notify()

    async def __aenter__(self) -> HistoryWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- background task ------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            if not self._queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            n = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            # counts down as turns land or are dropped; what is left when aclose
            # cancels us is what was lost
            self._inflight = n
            await self._write(batch)
            self._check_overflow_end()
            self._notify()

    async def _write(self, batch: list[Turn]) -> None:
        """Append a batch, retrying store errors until it lands."""
        while True:
            try:
                await self.store.append(batch)
            except StoreError as e:
                await self._backoff(e)
                continue
            except Exception as e:
                await self._write_alone(batch, e)
                return
            self._landed(batch)
            return

    async def _write_alone(self, batch: list[Turn], error: Exception) -> None:
        """A non-store error: isolate the turn that causes it and drop only that one."""
        if len(batch) > 1:
            for turn in batch:
                await self._write([turn])
            return
        turn = batch[0]
        self._inflight -= 1
        self._dropped += 1
        self._finished += 1
        logger.error(
            "history writer: %s refused turn %s of user %r (%s: %s); it is dropped",
            self.store.url,
            turn.idempotency_key,
            turn.user_id,
            type(error).__name__,
            error,
        )

    async def _backoff(self, error: StoreError) -> None:
        self._failed_attempts += 1
        self._retries += 1
        self._last_error = error
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            level = "warning" if isinstance(error, StoreUnavailableError) else "error"
            getattr(logger, level)(
                "history store failing, %d turns buffered, retrying with backoff: %s",
                self.pending,
                error,
            )
        else:
            logger.debug(
                "history store still failing (attempt %d): %s", self._failed_attempts, error
            )
        delay = min(self.retry_max, self.retry_base * 2 ** min(self._failed_attempts - 1, 30))
        # equal jitter: spread the retries of many workers hitting the same store
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _landed(self, batch: list[Turn]) -> None:
        if self._failing_since is not None:
            logger.info(
                "history store %s recovered after %d failed attempts over %.1fs; "
                "%d turns still pending",
                self.store.url,
                self._failed_attempts,
                time.monotonic() - self._failing_since,
                self.pending - len(batch),
            )
            self._failing_since = None
            self._failed_attempts = 0
            self._last_error = None
        self._inflight -= len(batch)
        self._written += len(batch)
        self._finished += len(batch)
        if self.on_written is not None:
            try:
                self.on_written(batch)
            except Exception:
                logger.exception("history writer: on_written callback failed")

    def _notify(self) -> None:
        for target, fut in list(self._waiters):
            if self._finished >= target and not fut.done():
                fut.set_result(None)
