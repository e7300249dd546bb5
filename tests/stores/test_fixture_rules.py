"""The server fixture rule: unreachable server -> skip locally, FAIL under CI."""

from __future__ import annotations

import pytest

from .helpers import free_port, require_server


@pytest.mark.parametrize("ci", ["true", "1"])
def test_unreachable_server_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_server("redis", f"redis://127.0.0.1:{free_port()}/0")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_unreachable_server_skips_locally(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="not reachable"):
        require_server("postgresql", f"postgresql://postgres@127.0.0.1:{free_port()}/test")
