"""The `livekit-history` CLI on real SQLite store files populated through the store API."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from livekit_history_plugin.cli import ExitCode, app, load_all_turns, main
from livekit_history_plugin.history.models import Fact, Role, Summary, Turn
from livekit_history_plugin.history.stores import open_store
from livekit_history_plugin.history.stores.base import to_micros
from livekit_history_plugin.testing import validate_client_event


def _runner() -> CliRunner:
    """stdout and stderr apart (click < 8.2 mixes them unless told not to)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2: always apart
        return CliRunner()


T0 = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
ADA_TEXTS = [
    (Role.USER, "Hi, I'm Ada. Where is my order 4711?"),
    (Role.ASSISTANT, "Let me transfer you to our order specialist."),
    (Role.USER, "Please text me when it ships, I don't like calls."),
    (Role.ASSISTANT, "Order 4711 ships tomorrow; I'll send a text."),
]
ADA_SUMMARY = "Ada asked about order 4711 in October."
ADA_FACT = "Prefers a text message over a phone call."


def _ada_turns() -> list[Turn]:
    return [
        Turn(
            user_id="ada",
            conversation_id=f"call-{c}",
            seq=i,
            role=role,
            text=f"{text} (call {c})",
            created_at=T0 + timedelta(days=c, seconds=i),
            agent_id="greeter" if i < 2 else "specialist",
        )
        for c in range(2)
        for i, (role, text) in enumerate(ADA_TEXTS)
    ]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _populate(url: str) -> None:
    now = datetime.now(timezone.utc)
    async with open_store(url) as store:
        await store.append(_ada_turns())
        await store.save_summary(
            Summary(
                user_id="ada", text=ADA_SUMMARY, covers_until=T0 - timedelta(days=20), turn_count=6
            )
        )
        await store.save_fact(Fact(user_id="ada", key="contact", text=ADA_FACT))
        await store.append(
            [
                Turn(
                    user_id="bob",
                    conversation_id="old",
                    seq=0,
                    role=Role.USER,
                    text="an old call",
                    created_at=now - timedelta(days=400),
                ),
                Turn(
                    user_id="bob",
                    conversation_id="old",
                    seq=1,
                    role=Role.ASSISTANT,
                    text="an old answer",
                    created_at=now - timedelta(days=400, seconds=-1),
                ),
                Turn(
                    user_id="bob",
                    conversation_id="new",
                    seq=0,
                    role=Role.USER,
                    text="a recent call",
                    created_at=now - timedelta(days=1),
                ),
            ]
        )


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    _run(_populate(url))
    return url


@pytest.fixture
def cli(db: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("LIVEKIT_HISTORY_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    runner = _runner()

    def invoke(*args: str, store: str | None = db, input: str | None = None) -> Any:
        argv = (["--store", store] if store is not None else []) + list(args)
        return runner.invoke(app, argv, input=input)

    return invoke


async def _count(url: str, user: str) -> int:
    async with open_store(url) as store:
        return await store.count_turns(user)


def _one_error_line(result: Any) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


# -- show / export --------------------------------------------------------------------


def test_show_prints_the_conversation_as_a_table(cli: Any) -> None:
    result = cli("show", "ada")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "History of ada: 8 turns in 2 calls" in out
    rows = [ln for ln in out.splitlines() if "call-" in ln]
    assert len(rows) == 8
    first = rows[0]
    for cell in (
        "2026-11-01 10:00:00",
        "call-0",
        "caller",
        "greeter",
        "Hi, I'm Ada. Where is my order 4711? (call 0)",
    ):
        assert cell in first
    assert "agent" in rows[1] and "specialist" in rows[3]
    assert ADA_SUMMARY in out and "Summary of 6 older turns" in out
    assert "contact" in out and ADA_FACT in out


def test_show_limit_keeps_the_newest(cli: Any) -> None:
    result = cli("show", "ada", "--limit", "2")
    assert result.exit_code == 0
    assert "newest 2 of 8 turns" in result.stdout
    rows = [ln for ln in result.stdout.splitlines() if "call-" in ln]
    assert len(rows) == 2 and all("call-1" in r for r in rows)


def test_export_writes_every_record_as_jsonl(cli: Any) -> None:
    result = cli("export", "ada")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    turns = [r for r in records if r["type"] == "turn"]
    assert [
        Turn.model_validate({k: v for k, v in r.items() if k != "type"}) for r in turns
    ] == _ada_turns()
    assert [r["type"] for r in records] == ["turn"] * 8 + ["summary", "fact"]
    assert records[8]["text"] == ADA_SUMMARY
    assert records[9]["key"] == "contact" and records[9]["text"] == ADA_FACT


def test_export_to_a_file(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "ada.jsonl"
    result = cli("export", "ada", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "exported 10 records of 'ada'" in result.stderr
    assert len(out.read_text().splitlines()) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ada.jsonl", "history.db"] or all(
        not p.name.endswith(".tmp") for p in tmp_path.iterdir()
    )


def test_export_shows_progress_on_big_histories(cli: Any, db: str) -> None:
    async def many() -> None:
        async with open_store(db) as store:
            await store.append(
                [
                    Turn(
                        user_id="big",
                        conversation_id="c",
                        seq=i,
                        role=Role.USER,
                        text=f"t{i}",
                        created_at=T0 + timedelta(seconds=i),
                    )
                    for i in range(2_500)
                ]
            )

    _run(many())
    result = cli("--progress", "export", "big")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 2_500
    assert "Exporting big" in result.stderr and "2500/2500" in result.stderr


def _plant_corrupt_rows(path: Path, user: str, at: list[datetime]) -> None:
    """Rows the store skips on read (unknown role) but still counts and pages over."""
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO turns (user_id, conversation_id, seq, idem_key, role, text, created_at, "
            "source) VALUES (?, 'bad', ?, ?, 'bogus', 'x', ?, 'voice')",
            [(user, i, f"bad:{i}", to_micros(t)) for i, t in enumerate(at)],
        )
    db.close()


async def test_paged_load_keeps_ties_and_skips_corrupt_rows(tmp_path: Path) -> None:
    path = tmp_path / "ties.db"
    url = f"sqlite:///{path}"
    turns = [
        # runs of 7 turns on the same time, across every page boundary
        Turn(
            user_id="u",
            conversation_id=f"c{i % 3}",
            seq=i,
            role=Role.USER,
            text=str(i),
            created_at=T0 + timedelta(seconds=i // 7),
        )
        for i in range(60)
    ] + [
        Turn(
            user_id="u",
            conversation_id="same",
            seq=100 + i,
            role=Role.USER,
            text="x",
            created_at=T0 + timedelta(hours=1),
        )
        for i in range(9)  # more turns on one time than a page holds
    ]
    async with open_store(url) as store:
        await store.append(turns)
        await store.append(
            [Turn(user_id="other", conversation_id="o", seq=0, role=Role.USER, text="o")]
        )
    # corrupt rows take places in pages: at the oldest time, in the middle, among the newest
    _plant_corrupt_rows(
        path,
        "u",
        [T0 - timedelta(days=1)] * 5
        + [T0 + timedelta(seconds=3)] * 4
        + [T0 + timedelta(hours=2)] * 3,
    )
    async with open_store(url) as store:
        expected = await store.load_latest("u", 1_000)
        assert len(expected) == 69
        for size in (1, 2, 3, 4, 7, 50, 1_000):
            pages: list[int] = []
            got = await load_all_turns(store, "u", page=size, on_page=pages.append)
            assert got == expected, size
            assert sum(pages) == 69


# -- preview ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["items", "packed", "instructions"])
def test_preview_events_are_valid_client_events(cli: Any, mode: str) -> None:
    result = cli("preview", "ada", "--mode", mode, "--instructions", "You are Maya.", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["mode"] == mode and doc["stored_turns"] == 8 and doc["replayed_turns"] == 8
    assert doc["budget_computed"] and doc["budget"] > 0
    instructions = doc["instructions"]["text"]
    assert instructions.startswith("You are Maya.") and ADA_FACT in instructions
    assert doc["instructions"]["tokens"] > 0
    assert set(doc["events"]) == {"beta", "ga"}
    for dialect, events in doc["events"].items():
        for e in events:
            validate_client_event(e["event"], dialect)
            assert e["event"]["type"] == "conversation.item.create"
            assert e["tokens"] > 0
        wire = json.dumps([e["event"] for e in events], ensure_ascii=False)
        if mode == "instructions":
            assert events == []
            assert "Where is my order 4711? (call 1)" in instructions
        else:
            assert sum(e["tokens"] for e in events) == doc["history_tokens"]
            assert "Where is my order 4711? (call 1)" in wire and ADA_SUMMARY in wire
    if mode == "items":
        # summary + 8 turns; assistant text parts differ per dialect
        assert len(doc["events"]["beta"]) == 9
        parts = {
            d: [e["event"]["item"]["content"][0]["type"] for e in ev]
            for d, ev in doc["events"].items()
        }
        assert parts["beta"][2] == "text" and parts["ga"][2] == "output_text"
        assert parts["beta"][1] == parts["ga"][1] == "input_text"
    if mode == "packed":
        assert [len(ev) for ev in doc["events"].values()] == [1, 1]


def test_preview_budget_and_dialect(cli: Any) -> None:
    result = cli("preview", "ada", "--budget", "0", "--dialect", "ga", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["budget"] == 0 and not doc["budget_computed"]
    assert doc["events"] == {"ga": []} and doc["history_tokens"] == 0


def test_preview_human_output(cli: Any) -> None:
    result = cli("preview", "ada", "--mode", "items")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Next call preview" in out and "8 of 8 stored turns" in out
    assert "beta (Azure OpenAI api-version" in out and "ga (OpenAI" in out
    assert out.count("conversation.item.create - ") == 18
    assert "instructions (session.update)" in out


# -- delete / purge / stats --------------------------------------------------------------


def test_delete_with_yes_deletes_only_that_user(cli: Any, db: str) -> None:
    result = cli("delete", "ada", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "deleted 8 turns, the summary and 1 fact of 'ada'" in result.stdout
    assert _run(_count(db, "ada")) == 0 and _run(_count(db, "bob")) == 3
    assert cli("show", "ada").exit_code == ExitCode.NOT_FOUND
    assert cli("delete", "ada", "--yes").exit_code == ExitCode.NOT_FOUND


def test_delete_asks_first(cli: Any, db: str) -> None:
    declined = cli("delete", "ada", input="n\n")
    assert declined.exit_code == ExitCode.USAGE
    assert "nothing deleted" in declined.stderr
    assert _run(_count(db, "ada")) == 8
    confirmed = cli("delete", "ada", input="y\n")
    assert confirmed.exit_code == 0, confirmed.stderr
    assert _run(_count(db, "ada")) == 0


def test_purge_deletes_old_turns_of_every_user(cli: Any, db: str) -> None:
    result = cli("purge", "--older-than", "30d")
    assert result.exit_code == 0, result.stderr
    # ada's turns (2026-11-01/02) are older than 30 days only after 2026-12-02
    expected_ada = 8 if datetime.now(timezone.utc) < T0 + timedelta(days=31) else 0
    assert f"purged {2 + 8 - expected_ada} turns older than 30d" in result.stdout
    assert _run(_count(db, "bob")) == 1 and _run(_count(db, "ada")) == expected_ada
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["summaries"] == 1 and stats["facts"] == 1  # kept


def test_stats(cli: Any) -> None:
    result = cli("stats", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert {k: doc[k] for k in ("users", "conversations", "turns", "summaries", "facts")} == {
        "users": 2,
        "conversations": 4,
        "turns": 11,
        "summaries": 1,
        "facts": 1,
    }
    table = cli("stats").stdout
    assert "turns" in table and "11" in table


# -- errors and exit codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (
            ["--store", "foo://x", "stats"],
            ExitCode.USAGE,
            "unsupported history store URL scheme 'foo'",
        ),
        (["--store", "sqlite://relative.db", "stats"], ExitCode.USAGE, "bad sqlite URL"),
        (
            ["--store", "sqlite:///x.db?bogus=1", "stats"],
            ExitCode.USAGE,
            "unknown parameter 'bogus'",
        ),
        (["--store", "postgresql://127.0.0.1:1/x", "stats"], ExitCode.UNAVAILABLE, "127.0.0.1:1"),
        (["--store", "redis://127.0.0.1:1/0", "show", "ada"], ExitCode.UNAVAILABLE, "127.0.0.1:1"),
        (
            ["--store", "sqlite:///does/not/exist.db", "show", "ada"],
            ExitCode.UNAVAILABLE,
            "no SQLite history database",
        ),
        (["show", "nobody"], ExitCode.NOT_FOUND, "unknown user 'nobody'"),
        (["export", "nobody"], ExitCode.NOT_FOUND, "unknown user 'nobody'"),
        (["preview", "nobody"], ExitCode.NOT_FOUND, "unknown user 'nobody'"),
        (["delete", "nobody", "--yes"], ExitCode.NOT_FOUND, "unknown user 'nobody'"),
        (["show", "a\nb"], ExitCode.USAGE, "invalid user id"),
        (["purge", "--older-than", "30 days"], ExitCode.USAGE, "is not an age"),
    ],
)
def test_errors_are_one_line_with_their_exit_code(
    cli: Any, args: list[str], code: ExitCode, needle: str
) -> None:
    result = cli(*args, store=None) if args[0] == "--store" else cli(*args)
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert needle in _one_error_line(result)


def test_password_is_not_printed(cli: Any) -> None:
    result = cli("stats", store="postgresql://me:s3cret@127.0.0.1:1/x")
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "s3cret" not in result.stderr and "***" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], ["preview", "ada", "--mode", "bogus"], ["show"], ["purge"]],
)
def test_usage_errors_exit_1(cli: Any, args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output


def test_help_documents_the_exit_codes(cli: Any) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for code, what in [
        ("0", "success"),
        ("1", "usage error"),
        ("2", "unknown user"),
        ("3", "store unreachable"),
        ("4", "store error"),
    ]:
        assert any(
            ln.strip().startswith(code) and what in ln for ln in result.stdout.splitlines()
        ), what
    for command in ("show", "export", "preview", "delete", "purge", "stats", "demo"):
        assert command in result.stdout


def test_store_from_environment(cli: Any, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_HISTORY_URL", db)
    result = cli("stats", "--json", store=None)
    assert result.exit_code == 0 and json.loads(result.stdout)["turns"] == 11


def test_main_returns_the_exit_code(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", db, "show", "ada", "-n", "1"]) == 0
    assert main(["--store", db, "show", "nobody"]) == ExitCode.NOT_FOUND
    assert main(["--store", db, "nope"]) == ExitCode.USAGE


def test_preview_folds_old_turns_into_the_summary_without_storing_it(cli: Any, db: str) -> None:
    async def long_history() -> None:
        async with open_store(db) as store:
            await store.append(
                [
                    Turn(
                        user_id="long",
                        conversation_id=f"c{i // 10}",
                        seq=i % 10,
                        role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
                        text=f"I'd like to book appointment number {i} on Tuesday.",
                        created_at=T0 + timedelta(minutes=i),
                    )
                    for i in range(80)
                ]
            )

    async def stored_summary() -> Summary | None:
        async with open_store(db) as store:
            return await store.load_summary("long")

    _run(long_history())
    result = cli("preview", "long", "--mode", "packed", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["stored_turns"] == 80 and doc["replayed_turns"] == 50  # max_recent_turns
    assert doc["summary"] == {"stored": False, "replayed": True, "newly_summarized_turns": 30}
    [event] = doc["events"]["ga"]
    assert "summary_of_earlier_calls" in event["event"]["item"]["content"][0]["text"]
    assert _run(stored_summary()) is None  # a preview writes nothing
    human = cli("preview", "long")
    assert "summary replayed, updated with 30 older turns" in human.stdout
