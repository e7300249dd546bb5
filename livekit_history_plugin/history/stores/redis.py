"""Redis history store on redis.asyncio.

Key layout (``P`` is the deployment prefix, ``?prefix=``, default
``livekit_history``; ``U`` the user id as is):

    P:schema          string  layout version ("1")
    P:order:U         zset    one member per turn, score = created_at in µs since
                              the epoch (exact below year 2255); member =
                              conversation_id NUL seq(19 digits) NUL idempotency_key
    P:turns:U         hash    idempotency_key -> turn JSON
    P:summary:U       string  summary JSON
    P:facts:U         hash    fact key -> fact JSON
    P:calls:U         zset    the user's newest call records (at most
                              calls.MAX_CALLS_PER_USER), score = ended_at µs,
                              member = conversation_id
    P:callrec:U       hash    conversation_id -> call record JSON

Why a sorted set + hash rather than a stream: history is read as "latest N
before T" in spoken order and must be deduplicated on a caller-chosen key and
deleted per user and by age; a zset gives the ordered range read and the age
range delete, the hash gives O(1) idempotency (HSETNX) and holds the payload.
Stream ids are arrival order, not spoken order, and cannot be deduplicated.
The member embeds (conversation_id, seq, key) so Redis's tie order for equal
scores (bytewise by member) is exactly the (created_at, conversation_id, seq,
idempotency_key) order of the SQL stores.

Writes are Lua scripts (each user's append is atomic and idempotent: HSETNX
then ZADD); a batch touching several users runs all its scripts in one
MULTI/EXEC, so the whole batch is atomic. With `?ttl=30d` every key of a user
expires 30 days after the user's last write (append, summary, fact).

Recall (`search_turns`) has no text index here: it is the bounded fallback of
`HistoryStore.search_turns`, the user's latest `SCAN_FALLBACK_TURNS` (2,000)
turns matched word by word in Python, so older turns are not found (the SQL
stores search every turn). A RediSearch index would lift the bound but is a
module, not core Redis.

Durability is the server's: run Redis with `appendonly yes` (and
`appendfsync always` if a reported write must survive a server crash, not just
a client crash). Not for Redis Cluster (a batch spans users' keys).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ...log import logger
from ..calls import MAX_CALLS_PER_USER, CallRecord, call_from_json
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
from .base import (
    HistoryStore,
    MissingDriverError,
    PurgeProgress,
    StoreError,
    StoreUnavailableError,
    check_limit,
    from_micros,
    purge_cutoff,
    redact_url,
    storable,
    storable_turn_texts,
    to_micros,
)

T = TypeVar("T")

LAYOUT_VERSION = 1
DEFAULT_PREFIX = "livekit_history"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TTL_RE = re.compile(r"(\d+)\s*([smhdw]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_SCRIPT_CHUNK = 500  # turns per append script call
_PURGE_BATCH = 1_000
_SCAN_COUNT = 500
_SEP = "\x00"
# server replies meaning "not now" (failover, loading, busy script): retryable
_TRANSIENT_REPLIES = ("READONLY", "LOADING", "MASTERDOWN", "TRYAGAIN", "BUSY", "CLUSTERDOWN")

# KEYS: order, turns, summary, facts   ARGV: ttl_ms, then (idem, member, score, json)*
_APPEND_LUA = """
local added = 0
for i = 2, #ARGV, 4 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 3]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i + 1])
    added = added + 1
  end
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  for k = 1, #KEYS do redis.call('PEXPIRE', KEYS[k], ttl) end
end
return added
"""

# KEYS: order, turns   ARGV: max score ('+inf' or '(us'), limit
# -> flat list: member, json-or-false, member, json-or-false... newest first
_LATEST_LUA = """
local members = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '-inf', 'LIMIT', 0, ARGV[2])
local out = {}
for _, m in ipairs(members) do
  local a = string.find(m, '\\0', 1, true)
  local b = a and string.find(m, '\\0', a + 1, true)
  out[#out + 1] = m
  out[#out + 1] = b and redis.call('HGET', KEYS[2], string.sub(m, b + 1)) or false
end
return out
"""

# KEYS: order, turns   ARGV: cutoff ('(us'), batch -> how many removed
_PURGE_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(members) do
  local a = string.find(m, '\\0', 1, true)
  local b = a and string.find(m, '\\0', a + 1, true)
  if b then redis.call('HDEL', KEYS[2], string.sub(m, b + 1)) end
  redis.call('ZREM', KEYS[1], m)
end
return #members
"""

# KEYS: order -> {turns, distinct conversations}
_COUNT_LUA = """
local seen, n = {}, 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local a = string.find(m, '\\0', 1, true)
  local c = a and string.sub(m, 1, a - 1) or m
  if not seen[c] then seen[c] = true; n = n + 1 end
end
return {redis.call('ZCARD', KEYS[1]), n}
"""

# KEYS: calls, callrec   ARGV: ttl_ms, max kept, conversation_id, score, json
_RECORD_CALL_LUA = """
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if extra > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, extra - 1)) do
    redis.call('HDEL', KEYS[2], m)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
end
local ttl = tonumber(ARGV[1])
if ttl > 0 then
  for k = 1, #KEYS do redis.call('PEXPIRE', KEYS[k], ttl) end
end
return 0
"""

# KEYS: calls, callrec   ARGV: cutoff ('(us') -> how many removed
_PURGE_CALLS_LUA = """
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, m in ipairs(members) do
  redis.call('HDEL', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
return #members
"""

# KEYS: every key of the user   ARGV: ttl_ms
_TOUCH_LUA = """
for k = 1, #KEYS do redis.call('PEXPIRE', KEYS[k], ARGV[1]) end
return 0
"""


def require_redis() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError as e:
        raise MissingDriverError(
            "the Redis history store needs redis-py: pip install 'livekit-history-plugin[redis]'"
        ) from e
    return redis_asyncio


def parse_ttl(value: str) -> timedelta:
    """'30d', '12h', '15m', '45s', '2w' or plain seconds -> timedelta (> 0)."""
    m = _TTL_RE.fullmatch(value.strip().lower())
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"invalid ttl {value!r}: use a positive number with s/m/h/d/w, e.g. 30d")
    return timedelta(seconds=int(m.group(1)) * _TTL_UNITS[m.group(2)])


def _init_parameters(cls: type) -> set[str]:
    """Named parameters of `cls.__init__` and of every base's (the **kwargs chain)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                names.add(p.name)
    return names


def check_client_url(url: str, *, shown: str | None = None) -> None:
    """Refuse a URL redis-py would only fail on at the first command.

    redis-py passes every query parameter it does not know to its connection
    class as a keyword, so a typo (`?typo_ttl=30d`) becomes a TypeError on
    connect. The parameters a URL may carry are the keywords the pool and the
    connection class of its scheme accept.
    """
    connection = require_redis().connection
    parse_url = getattr(connection, "parse_url", None)
    if parse_url is None:  # a redis-py without it builds no keywords from the query either
        return
    where = redact_url(shown or url)
    try:
        kwargs: dict[str, Any] = parse_url(url)
    except ValueError as e:  # e.g. "Invalid value for 'db' in connection URL."
        raise ValueError(f"bad redis URL {where!r}: {e}") from None
    cls = kwargs.get("connection_class", connection.Connection)
    known = _init_parameters(cls) | _init_parameters(connection.ConnectionPool)
    unknown = sorted(k for k in kwargs if k not in known and k != "connection_class")
    if unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} in redis URL {where!r}: ours are "
            "prefix and ttl; redis-py takes its connection options (socket_timeout, "
            "ssl_cert_reqs, client_name, ...)"
        )


def check_prefix(prefix: str) -> str:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"invalid redis key prefix {prefix!r}: use 1-64 of letters, digits, _ . -")
    return prefix


class RedisLayoutTooNewError(StoreError):
    """The keys were written by a newer plugin release."""


def _member(turn: Turn) -> str:
    return f"{turn.conversation_id}{_SEP}{turn.seq:019d}{_SEP}{turn.idempotency_key}"


class RedisStore(HistoryStore):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: timedelta | None = None,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        display_url: str | None = None,
    ) -> None:
        self._redis = require_redis()
        check_client_url(url, shown=display_url)
        if ttl is not None and ttl.total_seconds() <= 0:
            raise ValueError("ttl must be positive")
        self._client_url = url
        self.prefix = check_prefix(prefix)
        self.ttl = ttl
        self._ttl_ms = int(ttl.total_seconds() * 1000) if ttl else 0
        self.url = redact_url(display_url or url)
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._open_lock = asyncio.Lock()
        import redis.exceptions as exceptions

        self._exc = exceptions
        self._unavailable: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
            asyncio.TimeoutError,
        )

    # -- keys -----------------------------------------------------------------------
    def key(self, kind: str, user_id: str) -> str:
        return f"{self.prefix}:{kind}:{user_id}"

    def user_keys(self, user_id: str) -> list[str]:
        """Every key that can hold data of the user."""
        kinds = ("order", "turns", "summary", "facts", "calls", "callrec")
        return [self.key(k, user_id) for k in kinds]

    # -- lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        async with self._open_lock:
            if self._client is not None:
                return
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            client = self._redis.Redis.from_url(
                self._client_url,
                decode_responses=False,  # a value with invalid UTF-8 must not break a whole read
                socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._connect_timeout,
                # one immediate reconnect covers a connection left stale by a server
                # restart; longer outages are the caller's (HistoryWriter's) to retry
                retry=Retry(NoBackoff(), 1),
            )
            scripts = {
                name: client.register_script(lua)
                for name, lua in (
                    ("append", _APPEND_LUA),
                    ("latest", _LATEST_LUA),
                    ("purge", _PURGE_LUA),
                    ("count", _COUNT_LUA),
                    ("touch", _TOUCH_LUA),
                    ("record_call", _RECORD_CALL_LUA),
                    ("purge_calls", _PURGE_CALLS_LUA),
                )
            }
            try:
                await self._call("open", lambda: self._check_layout(client), client=client)
            except BaseException:
                await client.aclose()
                raise
            self._client, self._scripts = client, scripts

    async def _check_layout(self, client: Any) -> None:
        key = f"{self.prefix}:schema"
        await client.set(key, str(LAYOUT_VERSION), nx=True)
        version = int(await client.get(key) or 0)
        if version > LAYOUT_VERSION:
            raise RedisLayoutTooNewError(
                f"{self.url}: keys under prefix {self.prefix!r} use layout v{version}, newer "
                f"than this livekit-history-plugin supports (v{LAYOUT_VERSION}): upgrade it",
                store=self.url,
                op="open",
            )

    async def close(self) -> None:
        async with self._open_lock:
            client, self._client = self._client, None
            if client is not None:
                await client.aclose()

    # -- plumbing -------------------------------------------------------------------
    async def _call(self, op: str, fn: Callable[[], Awaitable[T]], *, client: Any = None) -> T:
        if client is None and self._client is None:
            raise StoreError(f"{self.url}: {op} on a store that is not open", store=self.url)
        try:
            return await fn()
        except StoreError:
            raise
        except self._unavailable as e:
            raise StoreUnavailableError.wrap(self.url, op, e) from e
        except self._exc.ResponseError as e:
            if str(e).startswith(_TRANSIENT_REPLIES):
                raise StoreUnavailableError.wrap(self.url, op, e) from e
            raise StoreError.wrap(self.url, op, e) from e
        except self._exc.RedisError as e:
            raise StoreError.wrap(self.url, op, e) from e

    # -- turns ----------------------------------------------------------------------
    async def append(self, turns: Sequence[Turn]) -> int:
        if not turns:
            return 0
        texts = storable_turn_texts(turns, self.url)
        by_user: dict[str, list[Turn]] = {}
        for t, text in zip(turns, texts, strict=True):
            by_user.setdefault(t.user_id, []).append(
                t if text == t.text else t.model_copy(update={"text": text})
            )
        calls: list[tuple[list[str], list[str | int]]] = []
        for user_id, user_turns in by_user.items():
            for i in range(0, len(user_turns), _SCRIPT_CHUNK):
                args: list[str | int] = [self._ttl_ms]
                for t in user_turns[i : i + _SCRIPT_CHUNK]:
                    args += [
                        t.idempotency_key,
                        _member(t),
                        to_micros(t.created_at),
                        t.model_dump_json(),
                    ]
                calls.append((self.user_keys(user_id), args))

        async def fn() -> int:
            if len(calls) == 1:
                keys, args = calls[0]
                return int(await self._scripts["append"](keys=keys, args=args))
            # several users or chunks: one MULTI/EXEC keeps the batch atomic
            async with self._client.pipeline(transaction=True) as pipe:
                for keys, args in calls:
                    await self._scripts["append"](keys=keys, args=args, client=pipe)
                return sum(int(n) for n in await pipe.execute())

        return await self._call("append", fn)

    async def load_latest(
        self, user_id: str, limit: int, *, before: datetime | None = None
    ) -> list[Turn]:
        check_limit(limit)
        if limit == 0:
            return []
        max_score = "+inf" if before is None else f"({to_micros(before)}"
        keys = [self.key("order", user_id), self.key("turns", user_id)]

        async def fn() -> list[Any]:
            return list(await self._scripts["latest"](keys=keys, args=[max_score, limit]))

        flat = await self._call("load_latest", fn)
        turns: list[Turn] = []
        # newest first from the script; oldest first to the caller
        for i in range(len(flat) - 2, -1, -2):
            member, raw = flat[i], flat[i + 1]
            where = f"{self.url} {keys[1]} member={member!r}"
            if raw is None:
                logger.warning(
                    "skipping corrupt history row %s: no turn data for this order entry", where
                )
                continue
            turn = turn_from_record(raw, where=where, user_id=user_id)
            if turn is not None:
                turns.append(turn)
        return turns

    async def count_turns(self, user_id: str) -> int:
        return int(
            await self._call("count_turns", lambda: self._client.zcard(self.key("order", user_id)))
        )

    async def list_conversations(self, user_id: str) -> list[ConversationInfo]:
        key = self.key("order", user_id)
        pairs = await self._call(
            "list_conversations", lambda: self._client.zrange(key, 0, -1, withscores=True)
        )
        convs: dict[str, list[int]] = {}  # conversation -> [first, last, count]
        for member, score in pairs:
            conv = member.split(b"\x00", 1)[0].decode("utf-8", "replace")
            us = int(score)
            c = convs.get(conv)
            if c is None:
                convs[conv] = [us, us, 1]
            else:
                c[0], c[1], c[2] = min(c[0], us), max(c[1], us), c[2] + 1
        out: list[ConversationInfo] = []
        for conv, (first, last, count) in convs.items():
            start, end = from_micros(first), from_micros(last)
            if start is None or end is None:
                logger.warning(
                    "%s: skipping conversation %r in %s: score out of range", self.url, conv, key
                )
                continue
            out.append(
                ConversationInfo(
                    user_id=user_id,
                    conversation_id=conv,
                    started_at=start,
                    ended_at=end,
                    turn_count=count,
                )
            )
        out.sort(key=lambda c: (c.started_at, c.conversation_id))
        return out

    async def _scan(self, pattern: str) -> list[bytes]:
        keys: list[bytes] = []
        async for key in self._client.scan_iter(match=pattern, count=_SCAN_COUNT):
            keys.append(key)
        return keys

    def _users_of(self, keys: Sequence[bytes], kinds: Sequence[str]) -> dict[str, set[str]]:
        """kind -> users, parsed from key names (user ids may contain ':')."""
        out: dict[str, set[str]] = {k: set() for k in kinds}
        heads = {f"{self.prefix}:{k}:".encode(): k for k in kinds}
        for key in keys:
            for head, kind in heads.items():
                if key.startswith(head):
                    out[kind].add(key[len(head) :].decode("utf-8", "replace"))
                    break
        return out

    async def list_users(self) -> list[str]:
        keys = await self._call("list_users", lambda: self._scan(f"{_glob(self.prefix)}:*"))
        users = self._users_of(keys, ("order", "turns", "summary", "facts"))
        return sorted(set().union(*users.values()))

    async def count_turns_older_than(
        self, age: timedelta, *, now: datetime | None = None
    ) -> int:
        cutoff = f"({to_micros(purge_cutoff(age, now))}"

        async def fn() -> int:
            total = 0
            async for key in self._client.scan_iter(
                match=f"{_glob(self.prefix)}:order:*", count=_SCAN_COUNT
            ):
                total += int(await self._client.zcount(key, "-inf", cutoff))
            return total

        return await self._call("count_turns_older_than", fn)

    # -- deletion ---------------------------------------------------------------------
    async def delete_user(self, user_id: str) -> int:
        async def fn() -> int:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zcard(self.key("order", user_id))
                pipe.unlink(*self.user_keys(user_id))
                count, _ = await pipe.execute()
            return int(count)

        return await self._call("delete_user", fn)

    async def purge_older_than(
        self,
        age: timedelta,
        *,
        now: datetime | None = None,
        progress: PurgeProgress | None = None,
    ) -> int:
        cutoff = f"({to_micros(purge_cutoff(age, now))}"
        head = f"{self.prefix}:order:".encode()
        turns_head = f"{self.prefix}:turns:".encode()
        total = 0

        async def purge_user(order_key: bytes) -> int:
            # bytes all the way: a key that is not valid UTF-8 is still purged
            keys = [order_key, turns_head + order_key[len(head) :]]
            removed = 0
            while True:
                n = int(await self._scripts["purge"](keys=keys, args=[cutoff, _PURGE_BATCH]))
                removed += n
                if n < _PURGE_BATCH:
                    return removed

        async def walk() -> int:
            nonlocal total
            cursor: int = 0
            while True:
                # one SCAN page at a time: memory stays flat however many users
                cursor, page = await self._client.scan(
                    cursor, match=f"{_glob(self.prefix)}:order:*", count=_SCAN_COUNT
                )
                for key in page:
                    total += await purge_user(key)
                if progress is not None:
                    progress(total)
                if cursor == 0:
                    await purge_calls()
                    return total

        async def purge_calls() -> None:
            calls_head = f"{self.prefix}:calls:".encode()
            records_head = f"{self.prefix}:callrec:".encode()
            async for key in self._client.scan_iter(
                match=f"{_glob(self.prefix)}:calls:*", count=_SCAN_COUNT
            ):
                keys = [key, records_head + key[len(calls_head) :]]
                await self._scripts["purge_calls"](keys=keys, args=[cutoff])

        return await self._call("purge_older_than", walk)

    # -- summary and facts --------------------------------------------------------------
    async def _touch(self, pipe: Any, user_id: str) -> None:
        if self._ttl_ms:
            await self._scripts["touch"](
                keys=self.user_keys(user_id), args=[self._ttl_ms], client=pipe
            )

    async def save_summary(self, summary: Summary) -> None:
        text = storable(summary.text, self.url, f"summary of user {summary.user_id!r}")
        payload = summary.model_copy(update={"text": text}).model_dump_json()

        async def fn() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self.key("summary", summary.user_id), payload)
                await self._touch(pipe, summary.user_id)
                await pipe.execute()

        await self._call("save_summary", fn)

    async def load_summary(self, user_id: str) -> Summary | None:
        key = self.key("summary", user_id)
        raw = await self._call("load_summary", lambda: self._client.get(key))
        if raw is None:
            return None
        summary = summary_from_record(raw, where=f"{self.url} {key}")
        if summary is not None and summary.user_id != user_id:
            logger.warning("skipping history row %s %s: it belongs to another user", self.url, key)
            return None
        return summary

    async def save_fact(self, fact: Fact) -> None:
        text = storable(fact.text, self.url, f"fact {fact.key!r} of user {fact.user_id!r}")
        payload = fact.model_copy(update={"text": text}).model_dump_json()

        async def fn() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self.key("facts", fact.user_id), fact.key, payload)
                await self._touch(pipe, fact.user_id)
                await pipe.execute()

        await self._call("save_fact", fn)

    async def load_facts(self, user_id: str) -> list[Fact]:
        key = self.key("facts", user_id)
        raw: dict[bytes, bytes] = await self._call("load_facts", lambda: self._client.hgetall(key))
        facts: list[Fact] = []
        for field, value in raw.items():
            fact = fact_from_record(value, where=f"{self.url} {key} field={field!r}")
            if fact is None:
                continue
            if fact.user_id != user_id or fact.key.encode() != field:
                logger.warning(
                    "skipping history row %s %s field=%r: user or key does not match",
                    self.url,
                    key,
                    field,
                )
                continue
            facts.append(fact)
        facts.sort(key=lambda f: (f.created_at, f.key))
        return facts

    async def delete_fact(self, user_id: str, key: str) -> bool:
        n = await self._call(
            "delete_fact", lambda: self._client.hdel(self.key("facts", user_id), key)
        )
        return int(n) > 0

    # -- call log -----------------------------------------------------------------------
    async def record_call(self, record: CallRecord) -> None:
        keys = [self.key("calls", record.user_id), self.key("callrec", record.user_id)]
        args = [
            self._ttl_ms,
            MAX_CALLS_PER_USER,
            record.conversation_id,
            to_micros(record.ended_at),
            record.model_dump_json(),
        ]

        async def fn() -> None:
            await self._scripts["record_call"](keys=keys, args=args)

        await self._call("record_call", fn)

    async def load_calls(self, user_id: str, limit: int) -> list[CallRecord]:
        check_limit(limit)
        if limit == 0:
            return []
        order, records = self.key("calls", user_id), self.key("callrec", user_id)

        async def fn() -> list[tuple[bytes, bytes | None]]:
            members = await self._client.zrevrange(order, 0, limit - 1)
            if not members:
                return []
            raws = await self._client.hmget(records, members)
            return list(zip(members, raws, strict=True))

        out: list[CallRecord] = []
        for member, raw in await self._call("load_calls", fn):
            where = f"{self.url} {records} field={member!r}"
            if raw is None:
                logger.warning("skipping call record %s: no data for this entry", where)
                continue
            record = call_from_json(raw, where=where, user_id=user_id)
            if record is not None:
                out.append(record)
        return out

    async def stats(self) -> StoreStats:
        async def fn() -> StoreStats:
            keys = await self._scan(f"{_glob(self.prefix)}:*")
            users = self._users_of(keys, ("order", "turns", "summary", "facts"))
            turns = conversations = 0
            order_keys = [self.key("order", u) for u in users["order"]]
            for i in range(0, len(order_keys), 100):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in order_keys[i : i + 100]:
                        await self._scripts["count"](keys=[key], client=pipe)
                    for n_turns, n_convs in await pipe.execute():
                        turns += int(n_turns)
                        conversations += int(n_convs)
            facts = 0
            fact_keys = [self.key("facts", u) for u in users["facts"]]
            for i in range(0, len(fact_keys), 100):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in fact_keys[i : i + 100]:
                        pipe.hlen(key)
                    facts += sum(int(n) for n in await pipe.execute())
            version = int(await self._client.get(f"{self.prefix}:schema") or 0)
            return StoreStats(
                users=len(set().union(*users.values())),
                conversations=conversations,
                turns=turns,
                summaries=len(users["summary"]),
                facts=facts,
                schema_version=version,
            )

        return await self._call("stats", fn)


def _glob(text: str) -> str:
    """Escape glob metacharacters for SCAN MATCH."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
