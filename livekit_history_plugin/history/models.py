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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..log import logger

# A stored turn longer than this is cut on load: one pasted document must not
# eat the whole context window of the next call.
MAX_TURN_CHARS = 8_000

# C0/C1 control characters except \t \n \r: they carry nothing a model should
# read back and some terminals/loggers misbehave on them.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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

    user_id: str = Field(min_length=1, max_length=256)
    conversation_id: str = Field(min_length=1, max_length=256)
    seq: int = Field(ge=0, description="position inside its conversation, in spoken order")
    role: Role
    text: str
    created_at: datetime = Field(default_factory=utcnow)
    source: Source = Source.VOICE
    agent_id: str | None = None
    item_id: str | None = Field(
        default=None, description="livekit chat item id; appends are idempotent on it"
    )
    interrupted: bool = False

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=timezone.utc)

    @property
    def idempotency_key(self) -> str:
        """Key that makes a re-sent append a no-op."""
        return self.item_id or f"{self.conversation_id}:{self.seq}"


class Summary(BaseModel):
    """A summary of a user's older turns, stored and reused across calls."""

    user_id: str
    text: str
    # the summary covers every turn up to and including this (created_at, conversation_id, seq)
    covers_until: datetime
    turn_count: int = Field(ge=0, description="how many turns it summarizes")
    created_at: datetime = Field(default_factory=utcnow)
    method: str = "extractive"


class Fact(BaseModel):
    """A durable fact about a user, put into the instructions of every later call."""

    user_id: str
    key: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=2_000)
    created_at: datetime = Field(default_factory=utcnow)


class ConversationInfo(BaseModel):
    user_id: str
    conversation_id: str
    started_at: datetime
    ended_at: datetime
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


def turn_from_record(record: Mapping[str, Any] | str | bytes, *, where: str) -> Turn | None:
    """Read one stored row back as a Turn, or None when it cannot be trusted.

    `where` names the row for the warning (store, key or rowid) so an operator can
    find and fix it. Rows are data, never trusted: bad JSON, an unknown role or a
    missing field drops the row; oversize text or control characters are cleaned
    and the row kept. Never raises.
    """
    try:
        data: Any = json.loads(record) if isinstance(record, (str, bytes)) else dict(record)
    except (ValueError, TypeError) as e:
        logger.warning("skipping corrupt history row %s: bad JSON (%s)", where, e)
        return None
    if not isinstance(data, dict):
        logger.warning("skipping corrupt history row %s: not an object", where)
        return None
    text = data.get("text")
    if isinstance(text, str):
        data["text"], problems = clean_text(text)
        for p in problems:
            logger.warning("history row %s: %s", where, p)
    try:
        return Turn.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        logger.warning(
            "skipping corrupt history row %s: %s %s", where, loc or "row", first.get("msg")
        )
        return None
