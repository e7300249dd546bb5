"""PostgreSQL history store on asyncpg.

- A connection pool; asyncpg prepares and caches every statement per
  connection (behind PgBouncer in transaction mode pass
  `?statement_cache_size=0`).
- Tables live in their own schema (`?schema=`, default `livekit_history`),
  created on first open when missing (needs CREATE on the database, or create
  the schema beforehand).
- Migrations run in one transaction under a transaction-scoped advisory lock
  keyed on the schema, so any number of workers may start at once; a worker
  that finds the schema current does not take the lock.
- Latest-N of a user is one scan of the `turns_latest` index
  (user_id, created_at DESC, conversation_id DESC, seq DESC, idem_key DESC).
- Appends are one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING`
  statement: atomic and idempotent, one round trip per batch.
- A dropped connection (server restart, failover) raises
  `StoreUnavailableError`; each operation is retried once on a fresh
  connection first, which is safe because every operation is idempotent.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from ...log import logger
from ..calls import CallRecord, call_from_json
from ..models import (
    ConversationInfo,
    Fact,
    StoreStats,
    Summary,
    Turn,
    fact_from_record,
    summary_from_record,
    turn_from_record,
)
from ..search import SEARCH_WINDOW, Candidate, RecallHit, check_recall_args, rank_phases
from .base import (
    HistoryStore,
    MissingDriverError,
    PurgeProgress,
    StoreError,
    StoreUnavailableError,
    check_limit,
    purge_cutoff,
    purge_in_batches,
    redact_url,
    storable,
    storable_turn_texts,
)
from .migrations.postgres import LATEST, MIGRATIONS

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")

DEFAULT_SCHEMA = "livekit_history"
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PURGE_BATCH = 5_000
_TURN_COLUMNS = (
    "user_id, conversation_id, seq, role, text, created_at, source, agent_id, item_id, "
    "interrupted, idem_key"
)


def require_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as e:
        raise MissingDriverError(
            "the PostgreSQL history store needs asyncpg: "
            "pip install 'livekit-history-plugin[postgres]'"
        ) from e
    return asyncpg


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_RE.fullmatch(schema):
        raise ValueError(
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits and _ (max 63)"
        )
    return schema


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer plugin release."""


class PostgresStore(HistoryStore):
    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_min: int = 1,
        pool_max: int = 10,
        command_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        statement_cache_size: int = 100,
        url: str | None = None,
    ) -> None:
        self._asyncpg = require_asyncpg()
        if not 0 <= pool_min <= pool_max or pool_max < 1:
            raise ValueError("need 0 <= pool_min <= pool_max and pool_max >= 1")
        self._dsn = dsn
        self.schema = check_schema_name(schema)
        self.url = redact_url(url or dsn)
        self._q = f'"{schema}"'
        self._pool_min, self._pool_max = pool_min, pool_max
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._statement_cache_size = statement_cache_size
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()
        exc = self._asyncpg.exceptions
        # errors that mean "the server or the connection went away": retryable
        self._unavailable: tuple[type[BaseException], ...] = (
            OSError,
            asyncio.TimeoutError,
            exc.PostgresConnectionError,
            exc.OperatorInterventionError,
            exc.TooManyConnectionsError,
            exc.CannotConnectNowError,
        )
        self._sql = _Statements(self._q)

    # -- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        async with self._open_lock:
            if self._pool is not None:
                return
            try:
                pool = await self._asyncpg.create_pool(
                    self._dsn,
                    min_size=self._pool_min,
                    max_size=self._pool_max,
                    command_timeout=self._command_timeout,
                    timeout=self._connect_timeout,
                    statement_cache_size=self._statement_cache_size,
                    server_settings={"application_name": "livekit-history-plugin"},
                    **_cheap_reset(self._asyncpg.create_pool),
                )
            except BaseException as e:
                err = self._error("open", e)
                if err is e:
                    raise
                raise err from e
            self._pool = pool
            try:
                await self._run("migrate", self._migrate, retry=False)
            except BaseException:
                self._pool = None
                await _close_pool(pool)
                raise

    async def close(self) -> None:
        async with self._open_lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await _close_pool(pool)

    # -- plumbing -------------------------------------------------------------------
    async def _run(
        self,
        op: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        retry: bool = True,
    ) -> T:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.url}: {op} on a store that is not open", store=self.url)
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                async with pool.acquire(timeout=self._connect_timeout) as conn:
                    return await fn(conn)
            except BaseException as e:
                err = self._error(op, e)
                if isinstance(err, StoreUnavailableError) and attempt + 1 < attempts:
                    # pooled connections die together on a server restart: replace
                    # them all and retry once (every operation is idempotent)
                    logger.debug("%s: %s, retrying on a fresh connection", self.url, err)
                    await pool.expire_connections()
                    continue
                if err is e:
                    raise
                raise err from e
        raise AssertionError("unreachable")

    def _error(self, op: str, e: BaseException) -> BaseException:
        """Map a driver error to StoreUnavailableError / StoreError; others pass as-is."""
        exc = self._asyncpg.exceptions
        if isinstance(e, StoreError):
            return e
        if isinstance(e, self._unavailable) or (
            isinstance(e, exc.InterfaceError) and "closed" in str(e)
        ):
            return StoreUnavailableError.wrap(self.url, op, e)
        if isinstance(e, (exc.PostgresError, exc.InterfaceError, exc.InternalClientError)):
            return StoreError.wrap(self.url, op, e)
        return e

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        q = self._q
        if await _schema_version(conn, self.schema) == LATEST:
            return
        async with conn.transaction():
            # serializes concurrent migrators: the second one finds the work done
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(self.schema))
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
            )
            if not exists:
                await conn.execute(f"CREATE SCHEMA {q}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {q}.schema_version (version integer PRIMARY KEY, "
                "description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(
                f"SELECT coalesce(max(version), 0) FROM {q}.schema_version"
            )
            if current > LATEST:
                raise SchemaTooNewError(
                    f"{self.url}: schema {self.schema} is at version {current}, newer than "
                    f"this livekit-history-plugin supports ({LATEST}): upgrade the plugin",
                    store=self.url,
                    op="migrate",
                )
            await apply_migrations(conn, self.schema, current, LATEST)

    # -- turns ----------------------------------------------------------------------
    async def append(self, turns: Sequence[Turn]) -> int:
        if not turns:
            return 0
        columns: list[list[Any]] = [[] for _ in range(11)]
        texts = storable_turn_texts(turns, self.url)
        for t, text in zip(turns, texts, strict=True):
            row = (
                t.user_id,
                t.idempotency_key,
                t.conversation_id,
                t.seq,
                t.role.value,
                text,
                t.created_at,
                t.source.value,
                t.agent_id,
                t.item_id,
                t.interrupted,
            )
            for col, value in zip(columns, row, strict=True):
                col.append(value)

        async def fn(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(self._sql.append, *columns)
            return int(status.rsplit(" ", 1)[-1])

        return await self._run("append", fn)

    async def load_latest(
        self, user_id: str, limit: int, *, before: datetime | None = None
    ) -> list[Turn]:
        check_limit(limit)
        if limit == 0:
            return []

        async def fn(conn: asyncpg.Connection) -> list[Any]:
            if before is None:
                return list(await conn.fetch(self._sql.latest, user_id, limit))
            return list(await conn.fetch(self._sql.latest_before, user_id, before, limit))

        rows = await self._run("load_latest", fn)
        turns = (
            turn_from_record(
                {k: row[k] for k in row.keys() if k != "idem_key"},
                where=f"{self.url} {self.schema}.turns (user_id={user_id!r}, "
                f"idem_key={row['idem_key']!r})",
                user_id=user_id,
            )
            for row in reversed(rows)
        )
        return [t for t in turns if t is not None]

    async def count_turns(self, user_id: str) -> int:
        async def fn(conn: asyncpg.Connection) -> int:
            return int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {self._q}.turns WHERE user_id = $1", user_id
                )
            )

        return await self._run("count_turns", fn)

    async def list_conversations(self, user_id: str) -> list[ConversationInfo]:
        async def fn(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT conversation_id, min(created_at) AS started_at, "
                    f"max(created_at) AS ended_at, count(*) AS turn_count FROM {self._q}.turns "
                    "WHERE user_id = $1 GROUP BY conversation_id ORDER BY 2, 1",
                    user_id,
                )
            )

        return [
            ConversationInfo(user_id=user_id, **dict(row))
            for row in await self._run("list_conversations", fn)
        ]

    async def list_users(self) -> list[str]:
        async def fn(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                f"SELECT user_id FROM {self._q}.turns UNION SELECT user_id FROM "
                f"{self._q}.summaries UNION SELECT user_id FROM {self._q}.facts"
            )
            return [r[0] for r in rows]

        return sorted(await self._run("list_users", fn))

    async def count_turns_older_than(
        self, age: timedelta, *, now: datetime | None = None
    ) -> int:
        cutoff = purge_cutoff(age, now)

        async def fn(conn: asyncpg.Connection) -> int:
            return int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {self._q}.turns WHERE created_at < $1", cutoff
                )
            )

        return await self._run("count_turns_older_than", fn)

    # -- deletion ---------------------------------------------------------------------
    async def delete_user(self, user_id: str) -> int:
        async def fn(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                status: str = await conn.execute(
                    f"DELETE FROM {self._q}.turns WHERE user_id = $1", user_id
                )
                await conn.execute(f"DELETE FROM {self._q}.summaries WHERE user_id = $1", user_id)
                await conn.execute(f"DELETE FROM {self._q}.facts WHERE user_id = $1", user_id)
                await conn.execute(f"DELETE FROM {self._q}.calls WHERE user_id = $1", user_id)
            return int(status.rsplit(" ", 1)[-1])

        return await self._run("delete_user", fn)

    async def purge_older_than(
        self,
        age: timedelta,
        *,
        now: datetime | None = None,
        progress: PurgeProgress | None = None,
    ) -> int:
        cutoff = purge_cutoff(age, now)

        async def fn(conn: asyncpg.Connection) -> int:
            status: str = await conn.execute(self._sql.purge, cutoff, _PURGE_BATCH)
            return int(status.rsplit(" ", 1)[-1])

        deleted = await purge_in_batches(
            lambda: self._run("purge_older_than", fn), _PURGE_BATCH, progress
        )

        async def purge_calls(conn: asyncpg.Connection) -> None:
            await conn.execute(f"DELETE FROM {self._q}.calls WHERE ended_at < $1", cutoff)

        await self._run("purge_older_than", purge_calls)
        return deleted

    # -- call log -----------------------------------------------------------------------
    async def record_call(self, record: CallRecord) -> None:
        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO {self._q}.calls (user_id, conversation_id, ended_at, record) "
                "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (user_id, conversation_id) DO "
                "UPDATE SET ended_at = excluded.ended_at, record = excluded.record",
                record.user_id,
                record.conversation_id,
                record.ended_at,
                record.model_dump_json(),
            )

        await self._run("record_call", fn)

    async def load_calls(self, user_id: str, limit: int) -> list[CallRecord]:
        check_limit(limit)

        async def fn(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT conversation_id, record::text AS record FROM {self._q}.calls "
                    "WHERE user_id = $1 ORDER BY ended_at DESC, conversation_id DESC LIMIT $2",
                    user_id,
                    limit,
                )
            )

        records = (
            call_from_json(
                row["record"],
                where=f"{self.url} {self.schema}.calls {user_id!r}/{row['conversation_id']!r}",
                user_id=user_id,
            )
            for row in await self._run("load_calls", fn)
        )
        return [r for r in records if r is not None]

    # -- summary and facts --------------------------------------------------------------
    async def save_summary(self, summary: Summary) -> None:
        text = storable(summary.text, self.url, f"summary of user {summary.user_id!r}")

        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO {self._q}.summaries (user_id, text, covers_until, turn_count, "
                "created_at, method) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO "
                "UPDATE SET text = excluded.text, covers_until = excluded.covers_until, "
                "turn_count = excluded.turn_count, created_at = excluded.created_at, "
                "method = excluded.method",
                summary.user_id,
                text,
                summary.covers_until,
                summary.turn_count,
                summary.created_at,
                summary.method,
            )

        await self._run("save_summary", fn)

    async def load_summary(self, user_id: str) -> Summary | None:
        async def fn(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(
                f"SELECT user_id, text, covers_until, turn_count, created_at, method "
                f"FROM {self._q}.summaries WHERE user_id = $1",
                user_id,
            )

        row = await self._run("load_summary", fn)
        if row is None:
            return None
        return summary_from_record(
            dict(row), where=f"{self.url} {self.schema}.summaries user_id={user_id!r}"
        )

    async def save_fact(self, fact: Fact) -> None:
        text = storable(fact.text, self.url, f"fact {fact.key!r} of user {fact.user_id!r}")

        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO {self._q}.facts (user_id, key, text, created_at, origin, "
                "source_turns) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, key) "
                "DO UPDATE SET text = excluded.text, created_at = excluded.created_at, "
                "origin = excluded.origin, source_turns = excluded.source_turns",
                fact.user_id,
                fact.key,
                text,
                fact.created_at,
                fact.origin,
                fact.source_turn_ids,
            )

        await self._run("save_fact", fn)

    async def load_facts(self, user_id: str) -> list[Fact]:
        async def fn(conn: asyncpg.Connection) -> list[Any]:
            return list(
                await conn.fetch(
                    f"SELECT user_id, key, text, created_at, origin, source_turns AS "
                    f"source_turn_ids FROM {self._q}.facts WHERE user_id = $1 "
                    "ORDER BY created_at, key",
                    user_id,
                )
            )

        facts = (
            fact_from_record(
                dict(row),
                where=f"{self.url} {self.schema}.facts user_id={user_id!r} key={row['key']!r}",
            )
            for row in await self._run("load_facts", fn)
        )
        return [f for f in facts if f is not None]

    async def delete_fact(self, user_id: str, key: str) -> bool:
        async def fn(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(
                f"DELETE FROM {self._q}.facts WHERE user_id = $1 AND key = $2", user_id, key
            )
            return status != "DELETE 0"

        return await self._run("delete_fact", fn)

    async def search_turns(
        self,
        user_id: str,
        query: str,
        limit: int,
        *,
        exclude_conversation_id: str | None = None,
    ) -> list[RecallHit]:
        """tsvector search over the user's turns in bounded phases (see
        `history.search.SEARCH_WINDOW`), ranked by `rank_phases`."""
        terms = check_recall_args(query, limit)
        if not terms or limit == 0:
            return []
        n = len(terms)
        exclude = exclude_conversation_id is not None
        tail: list[Any] = [exclude_conversation_id] if exclude else []
        if n > 1:  # one word has one phase: no limit to compare with
            tail.append(limit)
        sql = self._sql.search(n, exclude=exclude)

        async def fn(conn: asyncpg.Connection) -> list[tuple[Any, float]]:
            # one round trip: the counts and every phase the counts call for
            rows = await conn.fetch(sql, user_id, SEARCH_WINDOW, *terms, *tail)
            if not rows:
                return []
            phases: list[list[Candidate[Any]]] = [[], [], []]
            for r in rows:
                phases[r["phase"] - 1].append(
                    Candidate(
                        key=r["idem_key"],
                        recency=r["created_at"].timestamp(),
                        length=r["len"],
                        matched=frozenset(i for i, held in enumerate(r["held"]) if held),
                        row=r,
                    )
                )
            counts = list(rows[0]["counts"])[:n]
            return rank_phases(phases, counts, limit)

        hits: list[RecallHit] = []
        extra = ("idem_key", "len", "held", "phase", "counts")
        for row, score in await self._run("search_turns", fn):
            turn = turn_from_record(
                {k: row[k] for k in row.keys() if k not in extra},
                where=f"{self.url} {self.schema}.turns (user_id={user_id!r}, "
                f"idem_key={row['idem_key']!r})",
                user_id=user_id,
            )
            if turn is not None:
                hits.append(RecallHit(turn=turn, score=score))
        return hits

    async def stats(self) -> StoreStats:
        q = self._q

        async def fn(conn: asyncpg.Connection) -> StoreStats:
            # one snapshot for every count
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(
                    f"""SELECT
                        (SELECT count(*) FROM (SELECT user_id FROM {q}.turns UNION
                            SELECT user_id FROM {q}.summaries UNION
                            SELECT user_id FROM {q}.facts) u) AS users,
                        (SELECT count(*) FROM (SELECT DISTINCT user_id, conversation_id
                            FROM {q}.turns) c) AS conversations,
                        (SELECT count(*) FROM {q}.turns) AS turns,
                        (SELECT count(*) FROM {q}.summaries) AS summaries,
                        (SELECT count(*) FROM {q}.facts) AS facts,
                        (SELECT max(version) FROM {q}.schema_version) AS schema_version"""
                )
            return StoreStats(**dict(row))

        return await self._run("stats", fn)


class _Statements:
    """SQL text of the hot statements (asyncpg prepares each once per connection)."""

    def __init__(self, q: str) -> None:
        self.append = (
            f"INSERT INTO {q}.turns (user_id, idem_key, conversation_id, seq, role, text, "
            "created_at, source, agent_id, item_id, interrupted) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], "
            "$5::text[], $6::text[], $7::timestamptz[], $8::text[], $9::text[], $10::text[], "
            "$11::boolean[]) ON CONFLICT (user_id, idem_key) DO NOTHING"
        )
        order = "ORDER BY created_at DESC, conversation_id DESC, seq DESC, idem_key DESC"
        self.latest = f"SELECT {_TURN_COLUMNS} FROM {q}.turns WHERE user_id = $1 {order} LIMIT $2"
        self.latest_before = (
            f"SELECT {_TURN_COLUMNS} FROM {q}.turns WHERE user_id = $1 AND created_at < $2 "
            f"{order} LIMIT $3"
        )
        self.purge = (
            f"DELETE FROM {q}.turns WHERE (user_id, idem_key) IN (SELECT user_id, idem_key "
            f"FROM {q}.turns WHERE created_at < $1 LIMIT $2)"
        )
        self._q = q
        self._whole: dict[tuple[int, bool], str] = {}
        # the owner lexeme of migration 3 (hex digits: a valid tsquery word), ANDed
        # into every match so the GIN index scopes the search to this user
        self._owner = "('u' || md5($1))::tsquery"

    def search(self, n_terms: int, *, exclude: bool) -> str:
        """A whole search for n_terms words ($3..) in one statement: the per-word
        counts and every phase of `search_turns`. A phase runs only when the earlier
        ones found fewer than the limit (the last parameter, only with more than
        one word) rows: a one-time filter on an InitPlan, whose plan node is never
        executed otherwise. Rows come back phase by phase, newest first, each with
        its phase and the counts."""
        key = (n_terms, exclude)
        sql = self._whole.get(key)
        if sql is not None:
            return sql
        q, owner, n = self._q, self._owner, n_terms
        limit = f"${n + 4}" if exclude else f"${n + 3}"
        # each word goes through plainto_tsquery as a bound parameter: no tsquery
        # syntax of the caller's ever reaches the parser as syntax
        word = [f"plainto_tsquery('simple', ${i + 3})" for i in range(n)]
        every = "(" + " && ".join(word) + ")"
        some = "(" + " || ".join(word) + ")"
        held = "ARRAY[" + ", ".join(f"search @@ {w}" for w in word) + "]"
        skip = f"AND conversation_id <> ${n + 3} " if exclude else ""
        cols = f"{_TURN_COLUMNS}, length(text) AS len, {held} AS held"
        order = "ORDER BY created_at DESC, conversation_id DESC, seq DESC, idem_key DESC"
        # Each count keeps the row ids (ctid) of the up to $2 matches it read: a
        # count under $2 is every match of the user's, so the phases that need
        # those rows fetch them by id (a TID scan, within this statement's
        # snapshot) instead of reading the GIN posting lists a second time.
        # One word: its own count is the count of "all words".
        probes = [*word, every] if n > 1 else word
        ctes = [
            f"w{i} AS MATERIALIZED (SELECT ctid AS id FROM {q}.turns "
            f"WHERE search @@ ({p} && {owner}) LIMIT $2)"
            for i, p in enumerate(probes)
        ]
        every_ids = f"w{len(probes) - 1}"
        counts = ", ".join(f"(SELECT count(*) FROM w{i})" for i in range(len(probes)))
        together = f"(SELECT v[{len(probes)}] FROM c)"
        ctes += [
            f"c AS MATERIALIZED (SELECT ARRAY[{counts}] AS v)",
            # all words: every match (fewer than the window hold them all), else
            # among the caller's newest turns (there are plenty); user_id = $1
            # re-checks the owner exactly
            f"m1 AS MATERIALIZED (SELECT * FROM {q}.turns WHERE {together} < $2 "
            f"AND ctid = ANY(ARRAY(SELECT id FROM {every_ids})))",
            f"p1 AS MATERIALIZED ((SELECT {cols} FROM m1 WHERE user_id = $1 {skip}{order} "
            f"LIMIT $2) UNION ALL (SELECT {cols} FROM (SELECT * FROM {q}.turns "
            f"WHERE {together} >= $2 AND user_id = $1 {order} LIMIT $2) t "
            f"WHERE search @@ {every} {skip}))",
        ]
        phases = ["SELECT 1 AS phase, * FROM p1"]
        if n > 1:
            found1 = "(SELECT count(*) FROM p1)"
            nrare = f"(SELECT count(*) FROM c, unnest(c.v[1:{n}]) x WHERE x < $2)"
            # a rare word: fewer than $2 of the user's turns hold it, so its ids
            # are all of them
            rare_ids = " UNION ".join(
                f"SELECT id FROM w{i} WHERE (SELECT v[{i + 1}] FROM c) < $2" for i in range(n)
            )
            ctes += [
                f"m2 AS MATERIALIZED (SELECT * FROM {q}.turns WHERE {found1} < {limit} "
                f"AND ctid = ANY(ARRAY({rare_ids})))",
                f"p2 AS MATERIALIZED (SELECT {cols} FROM m2 WHERE user_id = $1 {skip}{order} "
                f"LIMIT $2 * {nrare})",
                f"p3 AS (SELECT {cols} FROM (SELECT * FROM {q}.turns WHERE "
                f"{found1} + (SELECT count(*) FROM p2) < {limit} "
                f"AND {nrare} < {n} AND user_id = $1 {order} LIMIT $2) t "
                f"WHERE search @@ {some} {skip})",
            ]
            phases += ["SELECT 2, * FROM p2", "SELECT 3, * FROM p3"]
        sql = (
            "WITH "
            + ", ".join(ctes)
            + " SELECT s.*, (SELECT v FROM c) AS counts FROM ("
            + " UNION ALL ".join(phases)
            + ") s ORDER BY phase, created_at DESC, conversation_id DESC, seq DESC, idem_key DESC"
        )
        self._whole[key] = sql
        return sql


async def _keep_session(conn: Any) -> None:
    """Returning a connection to the pool runs no reset query.

    asyncpg's default reset (``SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``) is one more round trip inside every operation,
    paid by each read of a call's start. This store leaves no session state to
    reset: its advisory lock is transaction-scoped, it never LISTENs, declares
    cursors or SETs outside a transaction; an open transaction is still rolled
    back by asyncpg (``Connection._reset``) before this runs.
    """


def _cheap_reset(create_pool: Callable[..., Any]) -> dict[str, Any]:
    # `reset=` exists from asyncpg 0.30; older releases keep their reset query
    return {"reset": _keep_session} if "reset" in inspect.signature(create_pool).parameters else {}


def _lock_key(schema: str) -> int:
    """A stable signed 64-bit advisory lock id per schema."""
    digest = hashlib.sha256(f"livekit_history_plugin:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _schema_version(conn: asyncpg.Connection, schema: str) -> int:
    table = await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".schema_version')
    if table is None:
        return 0
    return int(
        await conn.fetchval(f'SELECT coalesce(max(version), 0) FROM "{schema}".schema_version')
    )


async def apply_migrations(
    conn: asyncpg.Connection, schema: str, current: int, target: int
) -> None:
    """Apply migrations current+1..target inside the caller's transaction."""
    for m in MIGRATIONS:
        if current < m.version <= target:
            for statement in m.statements:
                await conn.execute(statement.format(schema=f'"{schema}"'))
            await conn.execute(
                f'INSERT INTO "{schema}".schema_version (version, description) VALUES ($1, $2)',
                m.version,
                m.description,
            )
            logger.info(
                "postgresql history schema %s migrated to v%d: %s", schema, m.version, m.description
            )


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=5)
    except Exception:  # a hung or dead server must not block shutdown
        pool.terminate()
