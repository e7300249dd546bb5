"""Realtime providers that speak the OpenAI protocol, and their known quirks.

Every deviation from the OpenAI Realtime protocol that the replay has to live
with is one named :class:`Quirk` below, with the provider, the release it was
seen on and the public source. :func:`provider_of` tells which provider a
livekit realtime session talks to; the compat adapter asks the provider's
quirks (never the provider's name) what to do, and the emulator can switch each
quirk on (:mod:`livekit_history_plugin.testing._quirks`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .dialects import supports_retrieve

__all__ = [
    "AZURE_PREVIEW_NO_RETRIEVE",
    "EMPTY_DELETED_ITEM_ID",
    "NULL_PREVIOUS_ITEM_ID",
    "PROVIDERS",
    "SERVER_REPLACES_ITEM_IDS",
    "Provider",
    "Quirk",
    "UnsupportedRealtimeModel",
    "provider_of",
    "reviewed_subclass",
    "same_item",
]


class UnsupportedRealtimeModel(TypeError):
    """A realtime model or session this plugin cannot make safe (not livekit's
    OpenAI-protocol client, e.g. a fork with its own copy of livekit's code)."""


@dataclass(frozen=True)
class Quirk:
    """One known deviation of a provider from the OpenAI Realtime protocol."""

    name: str
    provider: str
    seen_on: str
    source: str
    rule: str
    """What the replay does about it."""


NULL_PREVIOUS_ITEM_ID = Quirk(
    name="null_previous_item_id",
    provider="xAI",
    seen_on="livekit-plugins-xai 1.5.0 - 1.8.9 (grok-voice), LiveKit Inference xai/* in livekit-agents 1.8.9",
    source="livekit/agents PR #5320; livekit-plugins-xai 1.8.9 `_handle_conversion_item_added`",
    rule=(
        "an ack's previous_item_id says nothing: an appended item is placed after the "
        "nearest earlier item of the same burst the server took, an anchored one where "
        "it was anchored"
    ),
)

EMPTY_DELETED_ITEM_ID = Quirk(
    name="empty_deleted_item_id",
    provider="xAI",
    seen_on="livekit-plugins-xai 1.5.0 - 1.8.9",
    source="livekit/agents issue #6391 / PR #6392, issue #7073, PR #5320",
    rule=(
        "a conversation.item.deleted with an empty or missing item_id answers the oldest "
        "delete still unanswered (the server answers in order)"
    ),
)

SERVER_REPLACES_ITEM_IDS = Quirk(
    name="server_replaces_item_ids",
    provider="StepFun",
    seen_on="Step-Realtime (step-1o-audio), livekit-plugins-stepfun 1.8.1.post0",
    source="stepfun-ai/Step-Realtime-Console#13 (packet capture)",
    rule=(
        "an ack for an id nobody sent is matched to the oldest unanswered create with the "
        "same content; from then on the server's id is used in the mirror, in every later "
        "plan and on the wire. (livekit-plugins-stepfun itself is a fork of livekit's "
        "client and runs sanitizer-only.)"
    ),
)

# The Azure reference for api-version 2024-10-01-preview (MicrosoftDocs/azure-ai-docs
# articles/ai-services/openai/realtime-audio-reference.md, dated 12/12/2024) lists nine
# client events and no conversation.item.retrieve; the openai SDK only got the beta
# retrieve type between 1.65.0 and 1.70.0 (about March 2025); the Jan-2026 Foundry
# "Audio events reference" (articles/ai-foundry/openai/realtime-audio-reference.md)
# lists it. Later preview versions are not confirmed either way, so only the version
# documented without it is treated as lacking it.
AZURE_PREVIEW_NO_RETRIEVE = Quirk(
    name="no_retrieve",
    provider="Azure OpenAI (preview, api-version 2024-10-01-preview)",
    seen_on="api-version 2024-10-01-preview reference of 12/12/2024",
    source="MicrosoftDocs/azure-ai-docs articles/ai-services/openai/realtime-audio-reference.md",
    rule=(
        "conversation.item.retrieve is never sent: a create whose ack is lost is "
        "settled by the acks chained behind it, else checked with a throwaway item "
        "anchored to it (acked: present; invalid previous item: absent), deleted again"
    ),
)

@dataclass(frozen=True)
class Provider:
    """A realtime service reached through livekit's OpenAI-protocol client."""

    name: str
    package: str
    quirks: frozenset[Quirk] = field(default_factory=frozenset)

    def has(self, quirk: Quirk) -> bool:
        return quirk in self.quirks


OPENAI = Provider("OpenAI", "livekit-plugins-openai")
AZURE = Provider("Azure OpenAI", "livekit-plugins-openai")
AZURE_PREVIEW_2024_10 = Provider(
    "Azure OpenAI", "livekit-plugins-openai", frozenset({AZURE_PREVIEW_NO_RETRIEVE})
)
XAI = Provider(
    "xAI", "livekit-plugins-xai", frozenset({NULL_PREVIOUS_ITEM_ID, EMPTY_DELETED_ITEM_ID})
)
LIVEKIT_INFERENCE = Provider("LiveKit Inference", "livekit-agents")
LIVEKIT_INFERENCE_XAI = Provider(
    "LiveKit Inference (xAI)",
    "livekit-agents",
    frozenset({NULL_PREVIOUS_ITEM_ID, EMPTY_DELETED_ITEM_ID}),
)
THUNDERPHONE = Provider("ThunderPhone", "livekit-plugins-thunderphone")

PROVIDERS: tuple[Provider, ...] = (
    OPENAI,
    AZURE,
    AZURE_PREVIEW_2024_10,
    XAI,
    LIVEKIT_INFERENCE,
    LIVEKIT_INFERENCE_XAI,
    THUNDERPHONE,
)

# Subclasses of livekit's OpenAI session whose overrides were read, with what
# each override does and why the full adapter stays right on top of it. The
# release dispatch refuses an unknown subclass that overrides an ack / delete
# handler or the event builder; these are known.
REVIEWED_SUBCLASSES: dict[str, str] = {
    "livekit.plugins.xai.realtime.realtime_model.RealtimeSession": (
        "livekit-plugins-xai 1.3.12 - 1.8.9. Ack handler (1.5+): a null or unknown "
        "previous_item_id becomes the mirror's tail; the adapter calls it with the "
        "predecessor the chain gives and re-places the item. Delete handler (1.5+): an "
        "empty item_id is taken from livekit's delete futures, which the engine's deletes "
        "do not use; the adapter fills it first (EMPTY_DELETED_ITEM_ID). Event builder "
        "(1.6+): keeps a caller item whose transcript is still pending; the adapter's "
        "update keeps it the same way."
    ),
    "livekit.agents.inference.realtime.openai.RealtimeSession": (
        "livekit-agents 1.8 LiveKit Inference: the same three overrides as xAI's, active "
        "for xai/* models only"
    ),
}


def reviewed_subclass(session_cls: type) -> bool:
    """Whether a session class's overrides of livekit's handlers were read."""
    return f"{session_cls.__module__}.{session_cls.__qualname__}" in REVIEWED_SUBCLASSES


# forks of livekit's OpenAI client (not subclasses): their private names differ
FORKS: dict[str, str] = {
    "livekit.plugins.stepfun": "livekit-plugins-stepfun",
    "livekit.plugins.aliyun": "livekit-plugins-aliyun",
    "livekit.plugins.volcengine": "livekit-plugins-volcengine",
}


def same_item(sent: Mapping[str, Any], echoed: Mapping[str, Any]) -> bool:
    """Whether a server-echoed item is the one we sent, its id aside
    (SERVER_REPLACES_ITEM_IDS): same type, role, texts, call and output."""
    return _signature(sent) == _signature(echoed)


def _signature(item: Mapping[str, Any]) -> tuple[Any, ...]:
    parts = item.get("content")
    texts = tuple(
        p.get("text") or p.get("transcript")
        for p in (parts if isinstance(parts, list) else ())
        if isinstance(p, Mapping)
    )
    keys = ("type", "role", "call_id", "name", "arguments", "output")
    return (*(item.get(k) for k in keys), texts)


def provider_of(session: Any) -> Provider:
    """The provider a livekit OpenAI-protocol realtime session talks to."""
    module = type(session).__module__
    if module.startswith("livekit.plugins.xai"):
        return XAI
    if module.startswith("livekit.plugins.thunderphone"):
        return THUNDERPHONE
    if module.startswith("livekit.agents.inference"):
        # `_is_xai`: livekit-agents 1.8 LiveKit Inference, models named "xai/..."
        return LIVEKIT_INFERENCE_XAI if getattr(session, "_is_xai", False) else LIVEKIT_INFERENCE
    opts = _options(session)
    base_url = getattr(opts, "base_url", None)
    if isinstance(base_url, str) and "api.x.ai" in base_url:
        # livekit-plugins-openai pointed at xAI directly
        return XAI
    if opts is None or not getattr(opts, "is_azure", False):
        return OPENAI
    api_version = getattr(opts, "api_version", None)
    if isinstance(api_version, str) and not supports_retrieve(api_version):
        return AZURE_PREVIEW_2024_10
    return AZURE


def fork_package(obj: Any) -> str | None:
    """The package name when `obj` (a model or session) comes from a known fork."""
    module = type(obj).__module__
    for prefix, package in FORKS.items():
        if module.startswith(prefix):
            return package
    return None


def _options(session: Any) -> Any:
    opts = getattr(session, "_opts", None)
    if opts is None:
        model = getattr(session, "_realtime_model", None)
        opts = getattr(model, "_opts", None)
    return opts
