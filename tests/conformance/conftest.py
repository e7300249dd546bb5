"""Conformance: event sequences recorded from the real OpenAI / Azure servers (or from
tests run against them), written down as fixtures, replayed against the emulator and
through the adapter on the real livekit client (run in the dev venv and matrix venvs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_files() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def cases(kind: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, case, its file) for every case of `kind` ("wire", "replays", "sequences")."""
    for path in fixture_files():
        data = json.loads(path.read_text())
        for case in data.get(kind, ()):
            yield f"{path.stem}:{case['name']}", case, data


def resolve(value: Any, data: dict[str, Any]) -> Any:
    """`"$key"` names a top-level object of the fixture file (a recorded shape)."""
    if isinstance(value, str) and value.startswith("$"):
        return data[value[1:]]
    if isinstance(value, dict):
        return {k: resolve(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, data) for v in value]
    return value


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # an api version in the environment would switch the Azure path under test
    for name in ("OPENAI_API_VERSION", "AZURE_OPENAI_ENDPOINT", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
