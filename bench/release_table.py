"""The README's "Supported livekit releases" table, measured.

For every release of the CI matrix (`compat.releases.TESTED_RELEASES`, or the
ones given), in that release's cached venv (`scripts/matrix-venv.sh`), on every
code path the release has (`tests/matrix/conftest.py: release_paths`): the
acceptance scenario of `tests/matrix/test_acceptance.py` (40 items: handoff and
config-update items where the release has those classes, an empty message, one
message the emulator rejects at position 5), sent once by livekit's own
`update_chat_ctx` and once wrapped. Prints one markdown row per release and path.

    python bench/release_table.py                 # every matrix release, 2 at a time
    python bench/release_table.py 1.4.3 1.8.9     # some
    python bench/release_table.py --json          # the raw measurements

Not a test: the same assertions live in tests/matrix/test_acceptance.py. Needs
`uv` and the package index once per release (venvs are cached).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "matrix"
NATIVE_TIMEOUT = 10.0


# -- inside one release's venv ----------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _send(path: Any, wrapped: bool) -> dict[str, Any]:
    from livekit.agents.utils import http_context
    from test_acceptance import REJECT_MARKER, mixed_chat_ctx

    from livekit_history_plugin import wrap_realtime_model
    from livekit_history_plugin.compat import adapter_of, sanitizer_only_of
    from livekit_history_plugin.testing import RealtimeEmulator, RejectRule

    records = _Records()
    livekit_logger = logging.getLogger("livekit")
    livekit_logger.addHandler(records)
    own_http = http_context._ContextVar.get(None) is None
    if own_http:  # 1.0 - 1.1 find their aiohttp session only in a job's http context
        http_context._new_session_ctx()
    try:
        async with RealtimeEmulator() as emu:
            emu.faults.reject.append(RejectRule.text_contains(REJECT_MARKER, code="invalid_value"))
            model = path.build(emu)
            if wrapped:
                model = wrap_realtime_model(model)
            session = model.session()
            ctx, expected = mixed_chat_ctx()
            outcome = "returned"
            t0 = time.perf_counter()
            try:
                await emu.wait_for_session()
                await asyncio.wait_for(session.update_chat_ctx(ctx), NATIVE_TIMEOUT)
            except Exception as e:  # livekit's own path raises after its stall
                outcome = f"{type(e).__name__}: {e}"
            elapsed = time.perf_counter() - t0
            server = [item["id"] for item in emu.last_session.items] if emu.sessions else []
            codes = [e["error"].get("code") for s in emu.sessions for e in s.errors]
            adapter = adapter_of(session)
            mode = type(adapter).__name__ if adapter else (
                "sanitizer-only" if sanitizer_only_of(session) else "none"
            )
            with contextlib.suppress(Exception):
                await session.aclose()
            refused = [code for _close, code, _path in emu.refused_connections]
    finally:
        livekit_logger.removeHandler(records)
        if own_http:
            await http_context._close_http_ctx()
    landed = [i for i in server if i in set(expected)]
    return {
        "expected": len(expected),
        "landed": len(landed),
        "in_order": landed == [i for i in expected if i in set(landed)],
        "exact": server == expected,
        "typeless": emu.typeless_items,
        "invalid_previous": codes.count("item_create_invalid_previous_item_id"),
        "missing_parameter": codes.count("missing_required_parameter"),
        "seconds": round(elapsed, 3),
        "outcome": outcome,
        "livekit_warned": any("rejected part of a chat context update" in m for m in records.messages),
        "adapter": mode,
        "refused": refused,
    }


def measure() -> dict[str, Any]:
    sys.path.insert(0, str(TESTS))
    import conftest
    import matrix_helpers
    from livekit.agents import __version__ as agents
    from livekit.plugins.openai import __version__ as plugin

    paths = list(conftest.release_paths())
    if matrix_helpers.RELEASE < (1, 2):
        # listed to show it: OpenAI refuses this shape (the emulator too, by default)
        paths.append(conftest.Path("openai-beta", "beta", conftest._openai))
    rows = []
    for path in paths:
        native = asyncio.run(_send(path, wrapped=False))
        wrapped = asyncio.run(_send(path, wrapped=True))
        rows.append({"path": path.name, "dialect": path.dialect, "native": native, "wrapped": wrapped})
    return {
        "agents": agents,
        "plugin": plugin,
        "reconnect": matrix_helpers.HAS_RECONNECT,
        "text_truncate": matrix_helpers.HAS_TEXT_TRUNCATE,
        "rows": rows,
    }


# -- the orchestrator (any python) -------------------------------------------------


def _tested_releases() -> list[str]:
    # read, not imported: the orchestrator must not need livekit installed
    source = (ROOT / "livekit_history_plugin" / "compat" / "releases.py").read_text()
    block = source.split("TESTED_RELEASES: tuple[str, ...] = (", 1)[1].split(")", 1)[0]
    return [line.strip().strip('",') for line in block.splitlines() if line.strip()]


def _run_release(spec: str) -> dict[str, Any]:
    venv = subprocess.run(
        [str(ROOT / "scripts" / "matrix-venv.sh"), spec],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    out = subprocess.run(
        [f"{venv}/bin/python", __file__, "--measure"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"livekit {spec}: measurement failed\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _native_text(n: dict[str, Any]) -> str:
    if n["refused"]:
        return f"connection refused by the service (`{n['refused'][0]}`)"
    parts = [f"{n['landed']}/{n['expected']}"]
    if n["typeless"]:
        parts.append(f"{n['typeless']} typeless items sent")
    if n["invalid_previous"]:
        parts.append(f"{n['invalid_previous']} × `invalid_previous_item_id`")
    if n["outcome"] != "returned":
        parts.append(f"`{n['outcome']}` after {n['seconds']:.1f} s")
    elif n["livekit_warned"]:
        parts.append(f"returned in {n['seconds']:.2f} s with a warning")
    else:
        parts.append(f"returned in {n['seconds']:.2f} s")
    return ", ".join(parts)


def _wrapped_text(w: dict[str, Any]) -> str:
    if w["refused"]:
        return "— (no connection)"
    text = f"{w['landed']}/{w['expected']}"
    if w["exact"]:
        text += " in order"
    text += f", {w['typeless']} typeless, {w['seconds']:.2f} s"
    return text


def _not_hooked(result: dict[str, Any], path: str) -> str:
    gaps = []
    if path == "openai-beta":
        return "no live path: OpenAI retired the beta shape on 2026-05-12"
    if not result["reconnect"]:
        gaps.append("reconnect: none in this release (a closed socket ends the session)")
    if not result["text_truncate"]:
        gaps.append("text truncate: none (audio truncate sends no chat context)")
    return "; ".join(gaps) or "—"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| livekit-agents / plugins-openai | path | adapter | livekit's own `update_chat_ctx` "
        "(valid items landed) | wrapped | paths with no hook |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        release = result["agents"] if result["agents"] == result["plugin"] else (
            f"{result['agents']} / {result['plugin']}"
        )
        for row in result["rows"]:
            adapter = row["wrapped"]["adapter"] if not row["wrapped"]["refused"] else "—"
            lines.append(
                f"| {release} | {row['path']} ({row['dialect']}) | `{adapter}` | "
                f"{_native_text(row['native'])} | {_wrapped_text(row['wrapped'])} | "
                f"{_not_hooked(result, row['path'])} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("releases", nargs="*", help="default: every release of the CI matrix")
    parser.add_argument("--jobs", type=int, default=2, help="releases measured at once")
    parser.add_argument("--json", action="store_true", help="print the raw measurements")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    releases = args.releases or _tested_releases()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(_run_release, releases))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results))
    print(
        f"\n`python bench/release_table.py {' '.join(args.releases)}`".replace(" `", "`")
        + f" — {len(releases)} releases in {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
