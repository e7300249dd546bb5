"""Capture the spans livekit's tracer emits, in memory, for tests.

    from livekit_history_plugin.testing.spans import capture_spans, spans_named

    with capture_spans() as exporter:
        ...  # run a session
    replay = spans_named(exporter, "chat_ctx.replay")

`livekit.agents.telemetry` (livekit-agents 1.1+) depends on opentelemetry-sdk,
so wherever the tracer exists the SDK's `InMemorySpanExporter` does too
(`TRACING_AVAILABLE` says whether it does).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "TRACING_AVAILABLE",
    "allow_pii_supported",
    "capture_spans",
    "content_outside_pii",
    "spans_named",
]

TRACING_AVAILABLE = importlib.util.find_spec("livekit.agents.telemetry") is not None


def allow_pii_supported() -> bool:
    """`set_tracer_provider(..., allow_pii=)`: livekit-agents 1.8 and later."""
    from livekit.agents.telemetry import set_tracer_provider

    return "allow_pii" in inspect.signature(set_tracer_provider).parameters


@contextmanager
def capture_spans(*, allow_pii: bool | None = None) -> Iterator[Any]:
    """An `InMemorySpanExporter` behind livekit's tracer while the block runs,
    registered as an integrator's exporter would be (after livekit's own span
    processors, e.g. 1.8's PII filter); livekit's previous provider is put back."""
    if not TRACING_AVAILABLE:
        raise RuntimeError("this livekit-agents release has no livekit.agents.telemetry tracer")
    from livekit.agents.telemetry import set_tracer_provider, tracer
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    previous = tracer._tracer_provider
    if allow_pii is None:
        set_tracer_provider(provider)
    elif allow_pii_supported():
        set_tracer_provider(provider, allow_pii=allow_pii)
    else:
        raise RuntimeError("set_tracer_provider(allow_pii=...) needs livekit-agents 1.8+")
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracer.set_provider(previous)
        provider.shutdown()


def spans_named(exporter: Any, name: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def content_outside_pii(
    exporter: Any, texts: Iterable[str], *, names: Iterable[str] | None = None
) -> list[tuple[str, str, str]]:
    """(span, attribute, text) for each of `texts` found in an attribute (of a
    span or of one of its events) without a `pii` segment in its name; in the
    spans called `names`, or in every span."""
    wanted = [t for t in texts if t]
    only = set(names) if names is not None else None
    found: list[tuple[str, str, str]] = []
    for span in exporter.get_finished_spans():
        if only is not None and span.name not in only:
            continue
        attribute_sets = [dict(span.attributes or {})]
        attribute_sets += [dict(e.attributes or {}) for e in span.events]
        for attributes in attribute_sets:
            for key, value in attributes.items():
                if "pii" in key.split("."):
                    continue
                for s in _strings(value):
                    # JSON-escaped too: content may sit inside a serialized value
                    found += [
                        (span.name, key, t) for t in wanted if t in s or json.dumps(t)[1:-1] in s
                    ]
    return found
