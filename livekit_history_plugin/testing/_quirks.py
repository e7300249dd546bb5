"""Provider quirks the emulator can reproduce, one switch per quirk.

Each switch is the server side of one rule in :mod:`livekit_history_plugin.providers`
(same name, same source); ``ProviderQuirks.of("xai")`` turns on a provider's set.
The emulator reads ``emulator.quirks`` on every event, so a test can change it at
any time.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from .validate import CLIENT_EVENT_TYPES, Dialect, ProviderError, invalid_enum

__all__ = [
    "ProviderQuirks",
    "ack_previous",
    "deleted_item_id",
    "retrieve_refusal",
    "server_item_id",
]


class ProviderQuirks(BaseModel):
    """Server-side quirks of OpenAI-protocol providers (all off: OpenAI itself)."""

    model_config = ConfigDict(validate_assignment=True)

    null_previous_item_id: bool = False
    """Every ``conversation.item.created`` / ``added`` / ``done`` carries
    ``previous_item_id: null`` (xAI; livekit/agents PR #5320)."""

    empty_deleted_item_id: bool = False
    """``conversation.item.deleted`` carries ``item_id: ""`` (xAI; livekit/agents
    issue #6391 / PR #6392, issue #7073)."""

    replace_item_ids: bool = False
    """The server gives every created item an id of its own, whatever the client sent
    (StepFun; stepfun-ai/Step-Realtime-Console#13)."""

    no_retrieve: bool = False
    """``conversation.item.retrieve`` is not a known client event: answered with the
    unknown-type error (Azure api-version 2024-10-01-preview, whose reference lists
    nine client events)."""

    @classmethod
    def of(cls, provider: str) -> ProviderQuirks:
        """The quirks of a provider: ``"openai"``, ``"azure"``, ``"azure-2024-10"``,
        ``"xai"`` or ``"stepfun"``."""
        try:
            return cls(**_BY_PROVIDER[provider])
        except KeyError:
            raise ValueError(
                f"unknown provider {provider!r}; known: {', '.join(sorted(_BY_PROVIDER))}"
            ) from None


_BY_PROVIDER: dict[str, dict[str, bool]] = {
    "openai": {},
    "azure": {},
    "azure-2024-10": {"no_retrieve": True},
    "xai": {"null_previous_item_id": True, "empty_deleted_item_id": True},
    "stepfun": {"replace_item_ids": True},
}


def ack_previous(quirks: ProviderQuirks, previous_item_id: str | None) -> str | None:
    """The ``previous_item_id`` an item ack carries."""
    return None if quirks.null_previous_item_id else previous_item_id


def server_item_id(quirks: ProviderQuirks, client_id: Any) -> str | None:
    """The id the server keeps a created item under (None: it makes one up)."""
    if quirks.replace_item_ids or not isinstance(client_id, str) or not client_id:
        return None
    return client_id


def deleted_item_id(quirks: ProviderQuirks, item_id: str) -> str:
    """The ``item_id`` a ``conversation.item.deleted`` carries."""
    return "" if quirks.empty_deleted_item_id else item_id


def retrieve_refusal(quirks: ProviderQuirks, dialect: Dialect, event: Any) -> ProviderError | None:
    """The error answering a retrieve on a server without it, else None."""
    if not quirks.no_retrieve:
        return None
    known = tuple(t for t in CLIENT_EVENT_TYPES[dialect] if t != "conversation.item.retrieve")
    return invalid_enum("type", "conversation.item.retrieve", known)
