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


# -- bad input, data loss, usage errors (issue 14) ----------------------------------------


@pytest.mark.parametrize("age", ["99999999999w", "200000000d", "99999999999999999999s"])
def test_an_age_too_large_is_bad_input(cli: Any, db: str, age: str) -> None:
    result = cli("purge", "--older-than", age, "--yes")
    assert result.exit_code == ExitCode.USAGE, (result.exit_code, result.stderr)
    assert "reaches back before year 1" in _one_error_line(result)
    assert _run(_count(db, "ada")) == 8


def test_a_purge_of_every_turn_asks_first(cli: Any, db: str) -> None:
    declined = cli("purge", "--older-than", "0d", input="n\n")
    assert declined.exit_code == ExitCode.USAGE, declined.stderr
    assert "EVERY stored turn (11)" in declined.stderr and "nothing deleted" in declined.stderr
    assert _run(_count(db, "ada")) == 8 and _run(_count(db, "bob")) == 3
    confirmed = cli("purge", "--older-than", "0d", input="y\n")
    assert confirmed.exit_code == 0, confirmed.stderr
    assert "purged 11 turns older than 0d" in confirmed.stdout
    assert _run(_count(db, "ada")) == 0 and _run(_count(db, "bob")) == 0


def test_a_purge_of_every_turn_with_yes_does_not_ask(cli: Any, db: str) -> None:
    result = cli("purge", "--older-than", "0s", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "purged 11 turns" in result.stdout and "EVERY" not in result.stderr
    assert _run(_count(db, "bob")) == 0


def test_a_purge_that_keeps_some_turns_does_not_ask(cli: Any, db: str) -> None:
    result = cli("purge", "--older-than", "200d")  # only bob's 400-day-old call
    assert result.exit_code == 0, result.stderr
    assert "purged 2 turns older than 200d" in result.stdout
    assert _run(_count(db, "bob")) == 1 and _run(_count(db, "ada")) == 8


@pytest.mark.parametrize(("age", "doomed"), [("0d", 11), ("200d", 2), ("5000d", 0)])
def test_purge_dry_run_deletes_nothing(cli: Any, db: str, age: str, doomed: int) -> None:
    result = cli("purge", "--older-than", age, "--dry-run")
    assert result.exit_code == 0, result.stderr
    noun = "turn" if doomed == 1 else "turns"
    assert f"dry run: would purge {doomed} {noun} of 11 stored turns older than {age}" in (
        result.stdout
    )
    assert "nothing deleted" in result.stdout
    assert _run(_count(db, "ada")) == 8 and _run(_count(db, "bob")) == 3


def test_export_does_not_replace_a_file_unless_forced(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "ada.jsonl"
    out.write_text("precious\n")
    refused = cli("export", "ada", "--out", str(out))
    assert refused.exit_code == ExitCode.USAGE
    assert "exists: nothing written (pass --force" in _one_error_line(refused)
    assert out.read_text() == "precious\n"
    forced = cli("export", "ada", "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert len(out.read_text().splitlines()) == 10


@pytest.mark.parametrize("command", [["stats"], ["show", "ada"], ["export", "ada"]])
def test_read_commands_do_not_write_into_an_empty_file(
    cli: Any, tmp_path: Path, command: list[str]
) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    result = cli(*command, store=f"sqlite:///{empty}")
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "is an empty file, not a history database; nothing written" in _one_error_line(result)
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "history.db"]


def test_commands_do_not_write_into_a_foreign_database(cli: Any, tmp_path: Path) -> None:
    foreign = tmp_path / "app.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    before = foreign.read_bytes()
    for command in (["stats"], ["purge", "--older-than", "1d", "--yes"]):
        result = cli(*command, store=f"sqlite:///{foreign}")
        assert result.exit_code == ExitCode.STORE_ERROR
        assert "is not a livekit-history database" in _one_error_line(result)
    assert foreign.read_bytes() == before


def test_a_missing_file_is_not_created(cli: Any, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    result = cli("stats", store=f"sqlite:///{missing}")
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "no SQLite history database" in _one_error_line(result)
    assert not missing.exists()


def test_an_empty_store_option_is_an_error(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # a default store here would be found
    for empty in ("", "  "):
        result = cli("stats", store=empty)
        assert result.exit_code == ExitCode.USAGE
        assert "--store is empty" in _one_error_line(result)


def test_a_mistyped_redis_parameter_is_bad_input(cli: Any) -> None:
    result = cli("stats", store="redis://127.0.0.1:6379/0?typo_ttl=30d")
    assert result.exit_code == ExitCode.USAGE
    assert "unknown parameter 'typo_ttl'" in _one_error_line(result)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no-such-command"], "No such command 'no-such-command'"),
        (["preview", "ada", "--mode", "bogus"], "'bogus' is not one of"),
        (["show"], "Missing argument 'USER'"),
        (["purge"], "Missing option '--older-than'"),
        (["--bogus-option", "stats"], "No such option: --bogus-option"),
        (["show", "ada", "--limit", "-3"], "--limit"),
    ],
)
def test_usage_errors_are_one_error_line(cli: Any, args: list[str], needle: str) -> None:
    result = cli(*args)
    assert result.exit_code == ExitCode.USAGE, result.output
    line = _one_error_line(result)
    assert needle in line and "--help" in line, line
    assert not set("╭╰│─") & set(result.stderr)


def test_usage_errors_through_main_are_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["show"]) == ExitCode.USAGE
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: Missing argument 'USER'"), err


def test_unexpected_exceptions_are_reported_as_bugs_not_store_errors() -> None:
    from livekit_history_plugin.cli import classify
    from livekit_history_plugin.history.stores import StoreError, StoreUnavailableError

    for bug in (TypeError("x() got an unexpected keyword"), KeyError("turns"), ZeroDivisionError()):
        code, message = classify(bug)
        assert code == ExitCode.BUG == 70
        assert message.startswith("internal error (a bug in livekit-history, not a store problem)")
        assert "--verbose" in message
    assert classify(StoreError("s: corrupt", store="s", op="load"))[0] == ExitCode.STORE_ERROR
    assert classify(StoreUnavailableError("s: down"))[0] == ExitCode.UNAVAILABLE
    assert classify(ConnectionRefusedError())[0] == ExitCode.UNAVAILABLE
    assert classify(ValueError("bad URL"))[0] == ExitCode.USAGE


def test_help_documents_the_bug_exit_code(cli: Any) -> None:
    out = cli("--help").stdout
    assert any(ln.strip().startswith("70") and "internal error" in ln for ln in out.splitlines())
