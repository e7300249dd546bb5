"""The contract every history store keeps (SQLite, PostgreSQL, Redis).

One contract test suite (tests/stores/test_contract.py) runs against every
backend; a new backend is done when that suite passes on it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import TracebackType

from ..models import ConversationInfo, Fact, StoreStats, Summary, Turn


class StoreError(Exception):
    """A store operation failed; the message says which store and why."""


class StoreUnavailableError(StoreError):
    """The store's server cannot be reached (retryable)."""


class HistoryStore(abc.ABC):
    """Async storage of turns, summaries and facts, keyed by user.

    Ordering: a user's turns are ordered by (created_at, conversation_id, seq),
    which is spoken order. Every method is scoped to one user id except
    `purge_older_than` and `stats`; no method returns another user's rows.
    """

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

        Returns how many were new. When it returns, the turns are durable.
        """

    @abc.abstractmethod
    async def load_latest(
        self, user_id: str, limit: int, *, before: datetime | None = None
    ) -> list[Turn]:
        """The latest `limit` turns of a user (strictly before `before` if given),
        oldest first. Corrupt rows are skipped with a warning, never raised."""

    @abc.abstractmethod
    async def count_turns(self, user_id: str) -> int: ...

    @abc.abstractmethod
    async def list_conversations(self, user_id: str) -> list[ConversationInfo]:
        """Conversations of a user, oldest first."""

    @abc.abstractmethod
    async def list_users(self) -> list[str]: ...

    # -- deletion ----------------------------------------------------------------
    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Delete everything of a user (turns, summary, facts). Returns turns deleted."""

    @abc.abstractmethod
    async def purge_older_than(self, age: timedelta, *, now: datetime | None = None) -> int:
        """Delete turns created before now - age, for every user. Returns how many."""

    # -- summary and facts ------------------------------------------------------
    @abc.abstractmethod
    async def save_summary(self, summary: Summary) -> None: ...

    @abc.abstractmethod
    async def load_summary(self, user_id: str) -> Summary | None: ...

    @abc.abstractmethod
    async def save_fact(self, fact: Fact) -> None:
        """Insert or replace the fact with the same (user_id, key)."""

    @abc.abstractmethod
    async def load_facts(self, user_id: str) -> list[Fact]: ...

    @abc.abstractmethod
    async def delete_fact(self, user_id: str, key: str) -> bool: ...

    @abc.abstractmethod
    async def stats(self) -> StoreStats: ...
