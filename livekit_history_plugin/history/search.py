"""Full-text recall over one caller's stored turns: the query language and the hits.

Store-side and livekit-free (the CLI's `recall` uses it without importing livekit).

A recall query is natural language ("the order number I gave you"), never the
engine's own syntax: it is reduced to its words (`query_terms`), and every word
is passed to the engine as a quoted phrase (SQLite FTS5) or through
`plainto_tsquery` (PostgreSQL). Quotes, `*`, `NEAR`, `OR`, `:`, `'; DROP ...` in
a query are therefore just characters around words: they can neither raise a
syntax error nor change what is matched, and the user scope is added by the
store, outside anything the query can reach.

Words are OR-ed and ranked (bm25 on SQLite, ts_rank on PostgreSQL, a bounded
idf score on the fallback), so "what was my order number" finds the turn that
holds "order number 4417" without needing "what" or "was" in it. Matching is
case-insensitive; SQLite (and the fallback) also fold accents ("cafe" finds
"café"), PostgreSQL does not (that needs the unaccent extension). No stemming: "order" does not
match "ordered", in any language alike.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from .models import Turn

# words of a query or a turn: letters and digits of any script (as FTS5's
# unicode61 and PostgreSQL's parser split them; `_` separates there too)
_WORD = re.compile(r"[^\W_]+")
R = TypeVar("R")
MAX_QUERY_TERMS = 16
MAX_TERM_CHARS = 64
MAX_QUERY_CHARS = 1_000
# the fallback scans this many of the user's latest turns (Redis has no text index)
SCAN_FALLBACK_TURNS = 2_000
# The indexed stores rank in three bounded phases, so a caller with 10,000 turns
# costs about what one with 500 does: (1) turns holding every word: the newest
# SEARCH_WINDOW of the index matches (SQLite), or on PostgreSQL all of them when
# one word is rare (a word in fewer than SEARCH_WINDOW of the caller's turns),
# else those among the caller's newest SEARCH_WINDOW turns; (2) if fewer than k,
# turns holding any of the query's rare words (all of them); (3) if still fewer,
# any word, within the newest max(64, 8 k) matches (SQLite) or the caller's
# newest SEARCH_WINDOW turns (PostgreSQL). Phase order is rank order: all words
# before some words.
SEARCH_WINDOW = 256

# English function words that carry nothing for ranking; dropped unless the
# query is made of nothing else
STOP_WORDS = frozenset(
    """a about all am an and any are as at be been but by can could did do does
    for from had has have how i i'd i'm is it it's its me my of on or our so
    than that the their them then there these they this to us was we were what
    when where which who why will with would you your yours""".split()
)


class RecallHit(BaseModel):
    """One stored turn that matched a recall query (higher score = better match)."""

    model_config = ConfigDict(frozen=True)

    turn: Turn
    score: float


def fold(word: str) -> str:
    """Case- and accent-folded form of a word (as the SQLite index stores it)."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def query_terms(query: str) -> list[str]:
    """The distinct words of a query, case-folded, in order, stop words dropped
    (unless that leaves none); at most MAX_QUERY_TERMS of MAX_TERM_CHARS each.

    Accents are kept: SQLite's tokenizer folds them on both sides itself, and
    PostgreSQL's 'simple' configuration indexes them as written.
    """
    if not isinstance(query, str):
        raise TypeError(f"recall query must be a string, not {type(query).__name__}")
    words: list[str] = []
    for m in _WORD.finditer(query[:MAX_QUERY_CHARS]):
        w = m.group().casefold()[:MAX_TERM_CHARS]
        if w and w not in words:
            words.append(w)
    content = [w for w in words if w not in STOP_WORDS]
    return (content or words)[:MAX_QUERY_TERMS]


def fts5_phrase(term: str) -> str:
    """A term as an FTS5 string: double quotes, inner quotes doubled. Inside one,
    `OR`, `NEAR`, `*`, `:` and `^` are plain characters."""
    return '"' + term.replace('"', '""') + '"'


def fts5_match(owner_token: str, terms: Sequence[str], op: str = "OR") -> str:
    """The FTS5 MATCH expression: this owner's rows AND the terms joined by `op`."""
    if not terms:
        raise ValueError("no terms to match")
    if op not in ("OR", "AND"):
        raise ValueError(f"op must be OR or AND, not {op!r}")
    joined = f" {op} ".join(fts5_phrase(t) for t in terms)
    return f"fts_owner : {fts5_phrase(owner_token)} AND text : ({joined})"


def owner_token(user_id: str) -> str:
    """What SQLite's `hex(user_id)` produces: upper-case hex of the UTF-8 bytes."""
    return user_id.encode("utf-8").hex().upper()


def text_words(text: str) -> set[str]:
    return {fold(m.group()) for m in _WORD.finditer(text)}


def scan_search(
    turns: Iterable[Turn], terms: Sequence[str], limit: int, *, exclude_conversation_id: str | None
) -> list[RecallHit]:
    """Rank turns by the query terms without an index (the bounded fallback).

    Score: the sum over matched terms of log(1 + n / df), df counted within the
    scanned turns, so a rare word (an order number) outweighs a common one.
    Ties: newest first.
    """
    wanted = {fold(t) for t in terms}
    candidates: list[tuple[Turn, set[str]]] = []
    for t in turns:
        if exclude_conversation_id is not None and t.conversation_id == exclude_conversation_id:
            continue
        found = text_words(t.text) & wanted
        candidates.append((t, found))
    n = len(candidates)
    df: dict[str, int] = dict.fromkeys(wanted, 0)
    for _, found in candidates:
        for w in found:
            df[w] += 1
    scored = [
        RecallHit(turn=t, score=sum(math.log(1 + n / df[w]) for w in found))
        for t, found in candidates
        if found
    ]
    scored.sort(key=lambda h: (-h.score, _newest_first(h.turn)))
    return scored[:limit]


def _newest_first(t: Turn) -> tuple[float, str, int]:
    return (-t.created_at.timestamp(), t.conversation_id, -t.seq)


@dataclass(frozen=True)
class Candidate(Generic[R]):
    """A stored row a phase of a search found: its id, recency, length in
    characters, which query terms it holds (indexes) and the row itself."""

    key: Hashable
    recency: float  # larger is newer (created_at as a number)
    length: int
    matched: frozenset[int]
    row: R


# stands in for the user's turn count in idf: only the ratio between words matters
IDF_TOTAL = 4 * SEARCH_WINDOW


def rank_phases(
    phases: Sequence[Sequence[Candidate[R]]],
    doc_freq: Sequence[int],
    limit: int,
) -> list[tuple[R, float]]:
    """The best `limit` candidates: phase by phase (earlier phases first), within a
    phase by a bm25-style score (idf of each term held, length-normalised), then
    newest first; each row once.

    Ranking happens here, not in the engine: bm25 in FTS5 (and ts_rank over every
    match in PostgreSQL) first visits every row holding each word, which for a
    common word in a large table costs more than the whole search. `doc_freq` is
    each term's count among the user's turns, capped at SEARCH_WINDOW.
    """
    idf = [math.log(1 + IDF_TOTAL / max(df, 1)) for df in doc_freq]
    out: list[tuple[R, float]] = []
    seen: set[Hashable] = set()
    for phase in phases:
        fresh = [c for c in phase if c.key not in seen]
        if not fresh:
            continue
        average = max(1.0, sum(c.length for c in fresh) / len(fresh))
        scored = []
        for c in fresh:
            norm = 2.2 / (1 + 1.2 * (0.25 + 0.75 * c.length / average))  # bm25 with tf = 1
            scored.append((sum(idf[i] for i in c.matched) * norm, c))
        scored.sort(key=lambda sc: (-sc[0], -sc[1].recency))
        for score, c in scored:
            seen.add(c.key)
            out.append((c.row, score))
            if len(out) >= limit:
                return out
    return out


def check_recall_args(query: str, limit: int) -> list[str]:
    """Validate a recall request; the terms to search ([] = nothing to search)."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"recall limit must be an int >= 0, got {limit!r}")
    return query_terms(query)
