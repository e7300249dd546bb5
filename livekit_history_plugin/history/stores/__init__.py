"""History stores and `open_store`, which picks one from a URL.

URL forms (`open_store(None)` reads env LIVEKIT_HISTORY_URL, else the default
`sqlite:///livekit_history.db`):

    sqlite:///relative/path.db      file relative to the working directory
    sqlite:////abs/path.db          absolute path (four slashes)
    sqlite://:memory:               private in-memory database (tests, demos)
        ?synchronous=normal|full|extra  ?busy_timeout=5000 (ms)  ?readers=2
    postgresql://user:pw@host:5432/db   (or postgres://)
        ?schema=livekit_history  ?pool_min=1  ?pool_max=10  ?command_timeout=30
        ?statement_cache_size=100; any other parameter goes to asyncpg (sslmode...)
    redis://[:pw@]host:6379/0           (or rediss:// for TLS)
        ?prefix=livekit_history  ?ttl=30d (s/m/h/d/w); redis-py's connection options
        (socket_timeout, ssl_cert_reqs, ...); any other parameter is a ValueError

A malformed URL or an unknown scheme is a ValueError with a one-line message;
a missing driver is a `MissingDriverError` naming the pip extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .base import (
    HistoryStore,
    MissingDriverError,
    StoreError,
    StoreUnavailableError,
    redact_url,
)

__all__ = [
    "DEFAULT_URL",
    "ENV_VAR",
    "HistoryStore",
    "MissingDriverError",
    "StoreError",
    "StoreUnavailableError",
    "open_store",
]

ENV_VAR = "LIVEKIT_HISTORY_URL"
DEFAULT_URL = "sqlite:///livekit_history.db"
_SCHEMES = "sqlite:///file.db, sqlite://:memory:, postgresql://..., redis://... or rediss://..."

N = TypeVar("N", int, float)


def open_store(url: str | None = None) -> HistoryStore:
    """The store for `url` (not yet connected: `async with open_store(url) as store:`
    or `await store.open()`)."""
    if url is None:
        url = os.environ.get(ENV_VAR) or DEFAULT_URL
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return _sqlite(url)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    if scheme in ("redis", "rediss"):
        return _redis(url)
    if not scheme:
        raise ValueError(f"history store URL {redact_url(url)!r} has no scheme: use {_SCHEMES}")
    raise ValueError(f"unsupported history store URL scheme {scheme!r}: use {_SCHEMES}")


def _sqlite(url: str) -> HistoryStore:
    from .sqlite import SqliteStore

    rest = url[len("sqlite://") :]
    rest, _, query = rest.partition("?")
    params = _query(url, query, ("synchronous", "busy_timeout", "readers"), strict=True)
    if rest in (":memory:", "/:memory:"):
        path = ":memory:"
    elif rest.startswith("/") and len(rest) > 1:
        path = unquote(rest[1:])
    else:
        raise ValueError(
            f"bad sqlite URL {url!r}: use sqlite:///relative.db, sqlite:////abs/path.db "
            "or sqlite://:memory:"
        )
    return SqliteStore(
        path,
        synchronous=params.pop("synchronous", "normal").lower(),
        busy_timeout_ms=_number(url, params, "busy_timeout", int, 5_000),
        readers=_number(url, params, "readers", int, 2),
        url=url,
    )


def _postgres(url: str) -> HistoryStore:
    from .postgres import DEFAULT_SCHEMA, PostgresStore

    parts = _split(url)
    ours = ("schema", "pool_min", "pool_max", "command_timeout", "statement_cache_size")
    params = _query(url, parts.query, ours, strict=False)
    passthrough = [(k, v) for k, v in parse_qsl(parts.query) if k not in ours]
    dsn = urlunsplit(parts._replace(query=urlencode(passthrough)))
    return PostgresStore(
        dsn,
        schema=params.get("schema", DEFAULT_SCHEMA),
        pool_min=_number(url, params, "pool_min", int, 1),
        pool_max=_number(url, params, "pool_max", int, 10),
        command_timeout=_number(url, params, "command_timeout", float, 30.0),
        statement_cache_size=_number(url, params, "statement_cache_size", int, 100),
        url=url,
    )


def _redis(url: str) -> HistoryStore:
    from .redis import DEFAULT_PREFIX, RedisStore, parse_ttl

    parts = _split(url)
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(
            f"bad redis URL {redact_url(url)!r}: the path must be a database number, got {db!r}"
        )
    params = _query(url, parts.query, ("prefix", "ttl"), strict=False)
    passthrough = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("prefix", "ttl")]
    client_url = urlunsplit(parts._replace(query=urlencode(passthrough)))
    ttl = params.get("ttl")
    return RedisStore(
        client_url,
        prefix=params.get("prefix", DEFAULT_PREFIX),
        ttl=parse_ttl(ttl) if ttl else None,
        display_url=url,
    )


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"malformed history store URL {redact_url(url)!r}: {e}") from None
    return parts


def _query(url: str, query: str, known: tuple[str, ...], *, strict: bool) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"malformed query string in {redact_url(url)!r}") from None
    params = {k: v for k, v in pairs if k in known}
    unknown = sorted({k for k, _ in pairs} - set(known))
    if strict and unknown:
        raise ValueError(
            f"unknown parameter {unknown[0]!r} in {redact_url(url)!r}: "
            f"supported: {', '.join(known)}"
        )
    return params


def _number(url: str, params: dict[str, str], name: str, kind: Callable[[str], N], default: N) -> N:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(
            f"parameter {name}={raw!r} in {redact_url(url)!r} is not a number"
        ) from None
    if value < 0:
        raise ValueError(f"parameter {name}={raw!r} in {redact_url(url)!r} must be >= 0")
    return value
