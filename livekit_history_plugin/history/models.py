"""The stored shape of a caller's history: turns, summaries, durable facts.

Every store speaks these models; `turn_from_record` is the single place where a
row read back from any backend is checked, so a corrupt or hostile row is
reported the same way whatever the engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from ..log import logger

# A stored turn longer than this is cut on load: one pasted document must not
# eat the whole context window of the next call.
MAX_TURN_CHARS = 8_000

# C0/C1 control characters except \t \n \r: they carry nothing a model should
# read back and some terminals/loggers misbehave on them.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# lone surrogates: a Python str may hold them, no UTF-8 database or wire can
_SURROGATES = re.compile(r"[\ud800-\udfff]")
# not allowed in an id: every control character (\t \n \r too) and lone surrogates
_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# Largest seq every backend can hold (SQL BIGINT).
MAX_SEQ = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(v: datetime) -> datetime:
    """Aware UTC datetime; a naive one is taken as UTC.

    Normalising here makes a turn read back from any backend compare and
    serialise identically to the one that was written.
    """
    return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)


def _no_control_chars(v: str) -> str:
    # Ids become SQL keys and Redis key names; PostgreSQL text cannot hold NUL
    # and a newline in a key name makes logs lie.
    bad = _BAD_ID_CHARS.search(v)
    if bad is not None:
        if _SURROGATES.match(bad.group()):
            raise ValueError("must be valid Unicode (lone surrogate)")
        raise ValueError("must not contain control characters")
    return v


# user, conversation, item and fact ids: non-empty, bounded, printable
Ident = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_no_control_chars)]
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class Role(str, Enum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"  # a system note (e.g. "caller was transferred"), never instructions


class Source(str, Enum):
    VOICE = "voice"  # a speech transcript (the caller's STT, or the assistant's audio transcript)
    TEXT = "text"  # typed text
    TOOL = "tool"  # a short summary of a tool result


class Turn(BaseModel):
    """One committed turn of a call."""

    model_config = ConfigDict(frozen=True, use_enum_values=False)

    user_id: Ident
    conversation_id: Ident
    seq: int = Field(
        ge=0, le=MAX_SEQ, description="position inside its conversation, in spoken order"
    )
    role: Role
    text: str
    created_at: UtcDatetime = Field(default_factory=utcnow)
    source: Source = Source.VOICE
    agent_id: Ident | None = None
    item_id: Ident | None = Field(
        default=None, description="livekit chat item id; appends are idempotent on it"
    )
    interrupted: bool = False

    @property
    def idempotency_key(self) -> str:
        """Key that makes a re-sent append a no-op."""
        return self.item_id or f"{self.conversation_id}:{self.seq}"


class Summary(BaseModel):
    """A summary of a user's older turns, stored and reused across calls."""

    user_id: Ident
    text: str
    # the summary covers every turn up to and including this (created_at, conversation_id, seq)
    covers_until: UtcDatetime
    turn_count: int = Field(ge=0, le=MAX_SEQ, description="how many turns it summarizes")
    created_at: UtcDatetime = Field(default_factory=utcnow)
    method: str = Field(default="extractive", max_length=64)


class Fact(BaseModel):
    """A durable fact about a user, put into the instructions of every later call."""

    user_id: Ident
    key: Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_control_chars)]
    text: str = Field(min_length=1, max_length=2_000)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    # where it came from: "author" (remember()), "rules" / "llm" (captured from a
    # call), "tool" (the model called a tool); a captured fact names the caller
    # turns (idempotency keys) it was read from, so it can be checked and revoked
    origin: str = Field(default="author", min_length=1, max_length=32)
    source_turn_ids: list[Ident] = Field(default_factory=list, max_length=64)


class ConversationInfo(BaseModel):
    user_id: str
    conversation_id: str
    started_at: UtcDatetime
    ended_at: UtcDatetime
    turn_count: int


class StoreStats(BaseModel):
    users: int
    conversations: int
    turns: int
    summaries: int
    facts: int
    schema_version: int


class CorruptRowWarning(UserWarning):
    """A stored row could not be read back as a turn."""


def clean_text(text: str) -> tuple[str, list[str]]:
    """Strip control characters and cap the length; say what was done."""
    problems: list[str] = []
    cleaned = _CONTROL_CHARS.sub("", text)
    if cleaned != text:
        problems.append(f"removed {len(text) - len(cleaned)} control characters")
    if len(cleaned) > MAX_TURN_CHARS:
        problems.append(f"truncated {len(cleaned)} chars to {MAX_TURN_CHARS}")
        cleaned = cleaned[:MAX_TURN_CHARS]
    return cleaned, problems


def storable_text(text: str) -> tuple[str, int]:
    """Text as every store writes it: control characters removed, lone
    surrogates replaced by U+FFFD, length kept. Returns (text, characters changed).

    PostgreSQL text cannot hold NUL, no UTF-8 store can hold a lone surrogate,
    and neither carries meaning, so all backends fix them on write (and say how
    many); the length cap is applied on load, so a later, larger budget can
    still see the full turn.
    """
    no_controls = _CONTROL_CHARS.sub("", text)
    cleaned, replaced = _SURROGATES.subn("\ufffd", no_controls)
    return cleaned, len(text) - len(no_controls) + replaced


def turn_from_record(
    record: Mapping[str, Any] | str | bytes, *, where: str, user_id: str | None = None
) -> Turn | None:
    """Read one stored row back as a Turn, or None when it cannot be trusted.

    `where` names the row for the warning (store, key or rowid) so an operator can
    find and fix it. Rows are data, never trusted: bad JSON, an unknown role or a
    missing field drops the row; oversize text or control characters are cleaned
    and the row kept. When `user_id` is given, a row that names another user is
    dropped too (it was stored under the wrong key: never hand it to this caller).
    Never raises.
    """
    turn: Turn | None = None
    if isinstance(record, (str, bytes)):
        # fast path for the common, valid JSON row: pydantic's own parser (about
        # 1.6x faster than json.loads + validate); any failure takes the path
        # below, which says exactly what is wrong
        try:
            turn = Turn.model_validate_json(record)
        except (ValidationError, ValueError, RecursionError):
            turn = None
        if turn is not None:
            cleaned, problems = clean_text(turn.text)
            if problems:
                for p in problems:
                    logger.warning("history row %s: %s", where, p)
                turn = turn.model_copy(update={"text": cleaned})
    if turn is None:
        data = _record_data(record, where)
        if data is None:
            return None
        text = data.get("text")
        if isinstance(text, str):
            data["text"], problems = clean_text(text)
            for p in problems:
                logger.warning("history row %s: %s", where, p)
        turn = _validate(Turn, data, where)
    if turn is not None and user_id is not None and turn.user_id != user_id:
        logger.warning("skipping history row %s: it belongs to another user", where)
        return None
    return turn


def summary_from_record(record: Mapping[str, Any] | str | bytes, *, where: str) -> Summary | None:
    """Read a stored summary back, or None (with a warning) when it cannot be trusted."""
    data = _record_data(record, where)
    if data is None:
        return None
    if isinstance(data.get("text"), str):
        data["text"] = _CONTROL_CHARS.sub("", data["text"])
    return _validate(Summary, data, where)


def fact_from_record(record: Mapping[str, Any] | str | bytes, *, where: str) -> Fact | None:
    """Read a stored fact back, or None (with a warning) when it cannot be trusted."""
    data = _record_data(record, where)
    if data is None:
        return None
    if isinstance(data.get("text"), str):
        data["text"] = _CONTROL_CHARS.sub("", data["text"])
    return _validate(Fact, data, where)


def _record_data(record: Mapping[str, Any] | str | bytes, where: str) -> dict[str, Any] | None:
    try:
        data: Any = json.loads(record) if isinstance(record, (str, bytes)) else dict(record)
    # RecursionError: deeply nested JSON must not crash the load
    except (ValueError, TypeError, RecursionError) as e:
        logger.warning("skipping corrupt history row %s: bad JSON (%s)", where, e)
        return None
    if not isinstance(data, dict):
        logger.warning("skipping corrupt history row %s: not an object", where)
        return None
    return data


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: dict[str, Any], where: str) -> _M | None:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        logger.warning(
            "skipping corrupt history row %s: %s %s", where, loc or "row", first.get("msg")
        )
        return None
