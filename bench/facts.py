"""Precision and recall of the offline fact rules on a labelled set of call transcripts.

    python bench/facts.py [--data FILE...] [--verbose]

Two sets: `facts_labelled.jsonl` (50 calls, written with the rules, so its
figure is in-sample) and `facts_heldout.jsonl` (20 calls written afterwards and
never used to tune the rules).

Each line of the data set is one call: its turns (caller and agent), the facts
the caller already had (`known`), the facts the call should leave stored
(`facts`: key -> a word the fact's text must contain) and the known keys it
should revoke (`forgotten`). The calls run through the real `capture_facts`
on a real SQLite store (one user per call), so what is scored is what a call
would store: assistant lines, questions, other people's facts and
hypotheticals are in the set as negatives.

A saved fact is correct when its key is expected and its text contains the
expected word; a deletion is correct when the key was to be forgotten.
Precision = correct / produced, recall = correct / expected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livekit_history_plugin.history.facts import RuleFactExtractor, capture_facts  # noqa: E402
from livekit_history_plugin.history.models import Fact, Role, Turn  # noqa: E402
from livekit_history_plugin.history.stores import open_store  # noqa: E402

DATA = [
    Path(__file__).with_name("data") / "facts_labelled.jsonl",
    # written after the rules, never used to tune them
    Path(__file__).with_name("data") / "facts_heldout.jsonl",
]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def call_turns(user: str, call: dict[str, Any]) -> list[Turn]:
    return [
        Turn(
            user_id=user,
            conversation_id=call["id"],
            seq=i,
            role=Role.USER if role == "user" else Role.ASSISTANT,
            text=text,
            created_at=T0 + timedelta(seconds=i),
        )
        for i, (role, text) in enumerate(call["turns"])
    ]


async def score(path: Path, verbose: bool) -> dict[str, int]:
    counts = {"calls": 0, "produced": 0, "correct": 0, "expected": 0}
    extractor = RuleFactExtractor()
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"sqlite:///{tmp}/facts.db") as store:
            for call in load(path):
                user = f"user-{call['id']}"
                for key, text in (call.get("known") or {}).items():
                    await store.save_fact(Fact(user_id=user, key=key, text=text))
                result = await capture_facts(store, user, call_turns(user, call), extractor)
                expected: dict[str, str] = call.get("facts") or {}
                forgotten = set(call.get("forgotten") or ())
                good = [
                    f
                    for f in result.saved
                    if f.key in expected and expected[f.key].lower() in f.text.lower()
                ]
                good_forgets = [k for k in result.forgotten if k in forgotten]
                counts["calls"] += 1
                counts["produced"] += len(result.saved) + len(result.forgotten)
                counts["correct"] += len(good) + len(good_forgets)
                counts["expected"] += len(expected) + len(forgotten)
                wrong = [f"{f.key}={f.text!r}" for f in result.saved if f not in good]
                wrong += [f"forget {k}" for k in result.forgotten if k not in forgotten]
                missed = [k for k in expected if k not in {f.key for f in good}]
                missed += [f"forget {k}" for k in forgotten if k not in good_forgets]
                if verbose and (wrong or missed):
                    print(f"{call['id']}: wrong {wrong} missed {missed}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", default=DATA)
    parser.add_argument("--verbose", action="store_true", help="print every miss and error")
    args = parser.parse_args()
    print("offline fact rules (RuleFactExtractor) through capture_facts, SQLite store\n")
    print("| data set | calls | expected | produced | correct | precision | recall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for path in args.data:
        c = asyncio.run(score(path, args.verbose))
        precision = c["correct"] / c["produced"] if c["produced"] else 1.0
        recall = c["correct"] / c["expected"] if c["expected"] else 1.0
        print(
            f"| {path.name} | {c['calls']} | {c['expected']} | {c['produced']} | "
            f"{c['correct']} | {precision:.2f} | {recall:.2f} |"
        )


if __name__ == "__main__":
    main()
