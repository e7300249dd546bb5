"""The contract every history store keeps (SQLite, PostgreSQL, Redis).

One contract test suite (tests/stores/test_contract.py) runs against every
backend; a new backend is done when that suite passes on it.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ...log import logger
from ..models import ConversationInfo, Fact, StoreStats, Summary, Turn, as_utc, storable_text

if TYPE_CHECKING:
    from ..calls import CallRecord
from ..search import SCAN_FALLBACK_TURNS, RecallHit, check_recall_args, scan_search

# purge progress: called with the number of turns deleted so far, after each batch
PurgeProgress = Callable[[int], None]


async def purge_in_batches(
    run_batch: Callable[[], Awaitable[int]], batch: int, progress: PurgeProgress | None
) -> int:
    """Run a purge as short transactions of at most `batch` rows each, so a live
    call's append waits for one batch, never for the whole purge."""
    total = 0
    while True:
        n = await run_batch()
        total += n
        if progress is not None and n:
            progress(total)
        if n < batch:
            return total

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class StoreError(Exception):
    """A store operation failed; the message says which store and why.

    `store` is the store's (password-free) URL, `op` the operation and `cause`
    the underlying driver error, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        store: str | None = None,
        op: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.store = store
        self.op = op
        self.cause = cause

    @classmethod
    def wrap(cls, store: str, op: str, cause: BaseException) -> StoreError:
        """`<store>: <op> failed: <cause> (<CauseType>)` carrying the cause."""
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else "no detail"
        return cls(
            f"{store}: {op} failed: {detail} ({type(cause).__name__})",
            store=store,
            op=op,
            cause=cause,
        )


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached (retryable)."""


class MissingDriverError(StoreError, ImportError):
    """The backend's optional driver is not installed; the message names the extra."""


class HistoryStore(abc.ABC):
    """Async storage of turns, summaries and facts, keyed by user.

    Ordering: a user's turns are ordered by (created_at, conversation_id, seq),
    which is spoken order; ties on all three (two turns with different item ids
    at the same position) break on the idempotency key so every backend returns
    the same order. Ids compare by code point on every backend.
    Every method is scoped to one user id except `purge_older_than`,
    `list_users` and `stats`; no method returns another user's rows.

    Every operation is idempotent, so a caller may retry any of them after a
    `StoreUnavailableError`.
    """

    # the store's URL with any password masked: safe to log and print
    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and run schema migrations. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> HistoryStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- turns ------------------------------------------------------------------
    @abc.abstractmethod
    async def append(self, turns: Sequence[Turn]) -> int:
        """Write turns atomically; idempotent on (user_id, idempotency_key).

        Turns of several users may be mixed in one call. Control characters are
        dropped from the text on write (see `storable_text`). Returns how many
        were new. When it returns, the turns are durable (to the level the
        backend documents).
        """

    @abc.abstractmethod
    async def load_latest(
        self, user_id: str, limit: int, *, before: datetime | None = None
    ) -> list[Turn]:
        """The latest `limit` turns of a user (strictly before `before` if given),
        oldest first. Corrupt rows are skipped with a warning, never raised (they
        count against `limit`). `limit` < 0 is a ValueError; 0 returns []."""

    @abc.abstractmethod
    async def count_turns(self, user_id: str) -> int:
        """How many turn rows are stored for the user (corrupt ones included)."""

    @abc.abstractmethod
    async def list_conversations(self, user_id: str) -> list[ConversationInfo]:
        """Conversations of a user, oldest first (by first turn, then id)."""

    @abc.abstractmethod
    async def list_users(self) -> list[str]:
        """Every user with any stored turn, summary or fact, sorted by code point."""

    async def count_turns_older_than(
        self, age: timedelta, *, now: datetime | None = None
    ) -> int:
        """How many turns `purge_older_than(age, now=now)` would delete, for every
        user (for a dry run, and to see a purge that would delete everything).

        This default reads each user's old turns (corrupt rows, which a purge
        deletes too, are not counted); the built-in backends count in the store.
        """
        cutoff = purge_cutoff(age, now)
        total = 0
        for user_id in await self.list_users():
            stored = await self.count_turns(user_id)
            if stored:
                total += len(await self.load_latest(user_id, stored, before=cutoff))
        return total

    # -- deletion ----------------------------------------------------------------
    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Delete everything of a user (turns, summary, facts). Returns turns deleted."""

    @abc.abstractmethod
    async def purge_older_than(
        self,
        age: timedelta,
        *,
        now: datetime | None = None,
        progress: PurgeProgress | None = None,
    ) -> int:
        """Delete turns created before now - age, for every user. Returns how many.

        Summaries and facts are kept (they are what remains of old history).
        The purge runs in small batches so live appends are never blocked for
        long; `progress(turns_deleted_so_far)` is called after each batch.
        """

    # -- summary and facts ------------------------------------------------------
    @abc.abstractmethod
    async def save_summary(self, summary: Summary) -> None:
        """Insert or replace the user's one summary."""

    @abc.abstractmethod
    async def load_summary(self, user_id: str) -> Summary | None: ...

    @abc.abstractmethod
    async def save_fact(self, fact: Fact) -> None:
        """Insert or replace the fact with the same (user_id, key)."""

    @abc.abstractmethod
    async def load_facts(self, user_id: str) -> list[Fact]:
        """The user's facts, oldest first (then by key)."""

    @abc.abstractmethod
    async def delete_fact(self, user_id: str, key: str) -> bool: ...

    @abc.abstractmethod
    async def stats(self) -> StoreStats: ...

    # -- call log (what each call loaded, replayed, recorded) ---------------------
    @abc.abstractmethod
    async def record_call(self, record: CallRecord) -> None:
        """Insert or replace the record of (user_id, conversation_id).

        Deleted with the user; purged by age with the turns. Redis keeps the
        newest `calls.MAX_CALLS_PER_USER` per user."""

    @abc.abstractmethod
    async def load_calls(self, user_id: str, limit: int) -> list[CallRecord]:
        """The user's latest `limit` call records, newest first (corrupt ones skipped)."""

    # -- recall --------------------------------------------------------------------
    async def search_turns(
        self,
        user_id: str,
        query: str,
        limit: int,
        *,
        exclude_conversation_id: str | None = None,
    ) -> list[RecallHit]:
        """The user's stored turns best matching `query` (natural language, see
        `history.search`), best first, at most `limit`; never another user's.

        This default is the bounded fallback for a backend without a text index:
        it ranks the user's latest `SCAN_FALLBACK_TURNS` turns, so older turns
        are not found. SQLite and PostgreSQL override it with their own engine.
        """
        terms = check_recall_args(query, limit)
        if not terms or limit == 0:
            return []
        turns = await self.load_latest(user_id, SCAN_FALLBACK_TURNS)
        return scan_search(turns, terms, limit, exclude_conversation_id=exclude_conversation_id)


# -- helpers shared by the backends ----------------------------------------------


def to_micros(dt: datetime) -> int:
    """Microseconds since the Unix epoch (UTC): exact, sortable, backend-neutral."""
    delta = as_utc(dt) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime | None:
    """Inverse of `to_micros`; None when out of datetime's range (a corrupt row)."""
    try:
        return _EPOCH + timedelta(microseconds=us)
    except (OverflowError, TypeError):
        return None


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"limit must be an int >= 0, got {limit!r}")


def purge_cutoff(age: timedelta, now: datetime | None) -> datetime:
    if age < timedelta(0):
        raise ValueError(f"purge age must be >= 0, got {age}")
    base = as_utc(now) if now is not None else datetime.now(timezone.utc)
    return base - age


def storable(text: str, store: str, what: str) -> str:
    """Text as written by every backend (see `storable_text`), warning when it changed.

    `what` names the row for the warning, e.g. "turn c1:3 of user 'u1'".
    """
    cleaned, removed = storable_text(text)
    if removed:
        logger.warning(
            "%s: removed %d control characters from %s before storing", store, removed, what
        )
    return cleaned


def storable_turn_texts(turns: Sequence[Turn], store: str) -> list[str]:
    """Each turn's text as stored; one warning per batch when any had to change."""
    texts: list[str] = []
    changed: list[str] = []
    removed_total = 0
    for t in turns:
        text, removed = storable_text(t.text)
        texts.append(text)
        if removed:
            removed_total += removed
            changed.append(f"{t.user_id!r}/{t.idempotency_key}")
    if changed:
        logger.warning(
            "%s: removed %d control characters from %d turns before storing (%s%s)",
            store,
            removed_total,
            len(changed),
            ", ".join(changed[:3]),
            ", ..." if len(changed) > 3 else "",
        )
    return texts


def redact_url(url: str) -> str:
    """The URL with its password masked, for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return "<unparseable url>"
