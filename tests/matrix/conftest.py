"""Fixtures for the release-matrix acceptance tests.

Every test here runs in each cached venv of the CI matrix (one livekit release
each) against the strict emulator, on every code path that release has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from livekit.plugins import openai as lk_openai
from matrix_helpers import RELEASE, text_only

from livekit_history_plugin.testing import RealtimeEmulator

API_VERSION = "2024-10-01-preview"


@dataclass(frozen=True)
class Path:
    """One livekit code path to the realtime API."""

    name: str
    dialect: str  # what the emulator speaks on it: "beta" or "ga"
    build: Callable[[RealtimeEmulator], Any]


def _azure_legacy(emu: RealtimeEmulator) -> Any:
    return lk_openai.realtime.RealtimeModel.with_azure(
        azure_deployment="gpt-realtime",
        azure_endpoint=emu.base_url,
        api_key="test-key",
        api_version=API_VERSION,
        **text_only(),
    )


def _azure_ga(emu: RealtimeEmulator) -> Any:
    return lk_openai.realtime.RealtimeModel.with_azure(
        azure_deployment="gpt-realtime",
        azure_endpoint=emu.base_url,
        api_key="test-key",
        **text_only(),
    )


def _openai(emu: RealtimeEmulator) -> Any:
    return lk_openai.realtime.RealtimeModel(
        base_url=emu.openai_base_url, api_key="test-key", **text_only()
    )


def release_paths() -> list[Path]:
    """Every code path the installed release has (docs/livekit-internals.md)."""
    if RELEASE < (1, 2):
        # one session class, beta dialect only. Its OpenAI path sends
        # `OpenAI-Beta: realtime=v1`, a shape OpenAI refuses since 2026-05-12
        # (the emulator too, by default): Azure is the only live path
        return [Path("azure-beta", "beta", _azure_legacy)]
    if RELEASE < (1, 5):
        return [
            Path("azure-beta", "beta", _azure_legacy),
            Path("openai-ga", "ga", _openai),
        ]
    return [
        Path("azure-legacy", "beta", _azure_legacy),
        Path("azure-ga", "ga", _azure_ga),
        Path("openai-ga", "ga", _openai),
    ]


@pytest.fixture(params=release_paths(), ids=lambda p: p.name)
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    # an api version in the environment would switch the Azure path under test
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def emulator() -> AsyncIterator[RealtimeEmulator]:
    async with RealtimeEmulator() as emu:
        yield emu


@pytest.fixture(autouse=True)
async def livekit_http_context() -> AsyncIterator[None]:
    """livekit 1.0 - 1.1 models find their aiohttp session only in a job's http
    context (1.2+ create one outside a job); give each test one, as a job would."""
    from livekit.agents.utils import http_context

    if http_context._ContextVar.get(None) is not None or RELEASE >= (1, 2):
        yield
        return
    http_context._new_session_ctx()
    try:
        yield
    finally:
        await http_context._close_http_ctx()
