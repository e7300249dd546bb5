"""Fixtures for the release-matrix acceptance tests.

Every test here runs in each cached venv of the CI matrix (one livekit release
each) against the strict emulator, on every code path that release has.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from livekit.agents import __version__ as LIVEKIT_VERSION
from livekit.plugins import openai as lk_openai

from livekit_history_plugin.testing import RealtimeEmulator

API_VERSION = "2024-10-01-preview"


def _release() -> tuple[int, ...]:
    return tuple(int(p) for p in LIVEKIT_VERSION.split(".")[:2])


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
        modalities=["text"],
    )


def _azure_ga(emu: RealtimeEmulator) -> Any:
    return lk_openai.realtime.RealtimeModel.with_azure(
        azure_deployment="gpt-realtime",
        azure_endpoint=emu.base_url,
        api_key="test-key",
        modalities=["text"],
    )


def _openai_ga(emu: RealtimeEmulator) -> Any:
    return lk_openai.realtime.RealtimeModel(
        base_url=emu.openai_base_url, api_key="test-key", modalities=["text"]
    )


def release_paths() -> list[Path]:
    if _release() < (1, 5):
        return [
            Path("azure-beta", "beta", _azure_legacy),
            Path("openai-ga", "ga", _openai_ga),
        ]
    return [
        Path("azure-legacy", "beta", _azure_legacy),
        Path("azure-ga", "ga", _azure_ga),
        Path("openai-ga", "ga", _openai_ga),
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
