"""`livekit-history facts / forget / recall`: list and delete a caller's facts,
search their turns as the recall tool does."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from livekit_history_plugin.cli import ExitCode, app
from livekit_history_plugin.history.models import Fact, Role, Turn
from livekit_history_plugin.history.stores import open_store


async def _populate(url: str) -> None:
    async with open_store(url) as store:
        await store.append(
            [
                Turn(
                    user_id="ada",
                    conversation_id="c1",
                    seq=0,
                    role=Role.USER,
                    text="My order number is 4711.",
                ),
                Turn(
                    user_id="bob",
                    conversation_id="c2",
                    seq=0,
                    role=Role.USER,
                    text="Order 9999 is mine.",
                ),
            ]
        )
        await store.save_fact(
            Fact(
                user_id="ada",
                key="allergy:peanuts",
                text="Allergic to peanuts.",
                origin="rules",
                source_turn_ids=["c1:0"],
            )
        )


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    asyncio.run(_populate(url))
    monkeypatch.setenv("COLUMNS", "200")
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2: always apart
        runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(app, ["--store", url, *args])

    return invoke


def test_facts_lists_provenance_and_json(cli: Any) -> None:
    table = cli("facts", "ada")
    assert table.exit_code == 0, table.stderr
    assert "allergy:peanuts" in table.stdout and "rules" in table.stdout
    assert "c1:0" in table.stdout
    lines = cli("facts", "ada", "--json").stdout.splitlines()
    assert [json.loads(ln)["source_turn_ids"] for ln in lines] == [["c1:0"]]
    assert "no facts stored" in cli("facts", "bob").stdout


def test_forget_deletes_one_fact_and_reports_a_missing_one(cli: Any) -> None:
    missing = cli("forget", "ada", "diet")
    assert missing.exit_code == ExitCode.NOT_FOUND
    assert missing.stderr.strip() == "error: no fact 'diet' stored for 'ada'"
    assert cli("forget", "ada", "allergy:peanuts").exit_code == 0
    assert cli("facts", "ada", "--json").stdout == ""


@pytest.mark.parametrize("query", ["order number", '"; DROP TABLE turns; --', "NEAR(order) OR *"])
def test_recall_searches_one_callers_turns(cli: Any, query: str) -> None:
    result = cli("recall", "ada", query)
    assert result.exit_code == 0, result.stderr
    assert "9999" not in result.stdout
    if "order" in query.lower():
        assert "4711" in result.stdout


def test_bad_user_id_is_a_usage_error(cli: Any) -> None:
    result = cli("recall", "bad\nuser", "x")
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr.startswith("error: ")
