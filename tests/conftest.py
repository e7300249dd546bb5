"""Suite-wide rule: a store test never skips silently.

With env CI set (`CI=true`, as `.ci/run` sets it), a store test that skips - a
server down, a `pytest.skip` anywhere in it - is reported as FAILED, so CI
cannot pass without having run every backend. Without CI the skips stay
(a laptop may lack PostgreSQL), but the run ends with a loud list of them.

Store tests: everything under tests/stores/ and every test marked `postgres`
or `redis`.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

_STORES_DIR = Path(__file__).parent / "stores"
_SERVER_MARKERS = ("postgres", "redis")
_skipped_store_tests: list[tuple[str, str]] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def is_store_test(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(m) is not None for m in _SERVER_MARKERS):
        return True
    return _STORES_DIR in Path(str(item.path)).parents


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not is_store_test(item):
        return
    reason = _skip_reason(report)
    if in_ci():
        report.outcome = "failed"
        report.longrepr = f"store test skipped under CI (a skip must not pass CI): {reason}"
    else:
        _skipped_store_tests.append((item.nodeid, reason))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _skipped_store_tests:
        return
    terminalreporter.section("STORE TESTS SKIPPED", sep="!", red=True, bold=True)
    reasons: dict[str, int] = {}
    for _nodeid, reason in _skipped_store_tests:
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, n in sorted(reasons.items()):
        terminalreporter.write_line(f"{n} store tests skipped: {reason}", red=True)
    terminalreporter.write_line(
        "these backends were NOT tested; with CI=true these skips fail the run", red=True
    )
