"""The suite-wide rule of tests/conftest.py, run for real: pytest in a subprocess
with the store servers pointed at dead ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# one store test of the contract suite, and the Redis test of the plugin suite
SELECTION = [
    "tests/stores/test_contract.py::test_limit_and_before",
    "tests/history/test_plugin.py::test_corrupt_redis_rows_are_skipped",
]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _pytest(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["LHP_TEST_PG_URL"] = f"postgresql://postgres@127.0.0.1:{_dead_port()}/test"
    env["LHP_TEST_REDIS_URL"] = f"redis://127.0.0.1:{_dead_port()}/0"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *SELECTION],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_store_test_cannot_skip(ci: str) -> None:
    proc = _pytest(ci)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # sqlite runs; postgresql and redis of the contract test (fixture setup) and the
    # plugin's redis test fail
    assert "1 failed, 1 passed, 2 errors" in out, out
    assert "skipped" not in out.splitlines()[-1], out


def _run_rule(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """The conftest rule alone, on store tests that skip by themselves."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "test_skips.py").write_text(
        "import pytest\n"
        "def test_skips():\n    pytest.skip('no server here')\n"
        "@pytest.mark.skipif(True, reason='by a mark')\ndef test_marked():\n    pass\n"
    )
    (tmp_path / "test_other.py").write_text(
        "import pytest\n"
        "@pytest.mark.redis\ndef test_redis():\n    pytest.skip('redis down')\n"
        "def test_unrelated():\n    pytest.skip('not a store test')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_rule_turns_any_store_skip_into_a_failure_under_ci(tmp_path: Path) -> None:
    proc = _run_rule(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout
    # a skip in the test fails it; a skip mark fails its setup; only the unrelated test skips
    assert "2 failed, 1 skipped" in proc.stdout and "1 error" in proc.stdout, proc.stdout
    assert "store test skipped under CI" in proc.stdout


def test_the_rule_lists_store_skips_without_ci(tmp_path: Path) -> None:
    proc = _run_rule(tmp_path, None)
    assert proc.returncode == 0, proc.stdout
    assert "4 skipped" in proc.stdout
    assert "STORE TESTS SKIPPED" in proc.stdout and "these backends were NOT tested" in proc.stdout
    assert "not a store test" not in proc.stdout.split("STORE TESTS SKIPPED", 1)[1]


def test_without_ci_store_skips_are_listed_loudly() -> None:
    proc = _pytest(None)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "1 passed, 3 skipped" in out, out
    assert "STORE TESTS SKIPPED" in out
    assert "these backends were NOT tested" in out
