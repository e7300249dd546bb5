"""o200k_base counting: the bundled file is OpenAI's, nothing is fetched, counts are exact."""

from __future__ import annotations

import base64
import gzip
import hashlib
import inspect
import re
import socket
from importlib import resources
from typing import Any

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from hypothesis import given, settings
from hypothesis import strategies as st

from livekit_history_plugin.history import tokens
from livekit_history_plugin.history.models import Role
from livekit_history_plugin.history.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    count_tokens,
    message_tokens,
    truncate_to_tokens,
)

# letters, digits, spaces, newlines, punctuation, apostrophes, CJK, RTL, emoji + ZWJ,
# combining marks, full-width forms: the places a BPE pre-tokenizer can go wrong
ALPHABET = st.sampled_from(
    list("abcXYZ019 \n\r\t.,!?'\"-/<>|_")
    + [
        "'s",
        "'LL",
        "東",
        "京",
        "ع",
        "ب",
        "न",
        "é",
        "e\u0301",
        "👍",
        "🏽",
        "\u200d",
        "👨",
        "！",
        "Ａ",
    ]
)
TEXTS = st.lists(ALPHABET, max_size=60).map("".join)


def _bundled_ranks() -> dict[bytes, int]:
    packed = resources.files("livekit_history_plugin.history").joinpath("data")
    raw = gzip.decompress(packed.joinpath("o200k_base.tiktoken.gz").read_bytes())
    return {base64.b64decode(t): int(r) for t, r in (ln.split() for ln in raw.splitlines() if ln)}


def test_bundled_file_is_the_one_tiktoken_pins() -> None:
    # the installed tiktoken's own pinned hash for the file it would download
    source = inspect.getsource(openai_public.o200k_base)
    pinned = re.search(r'expected_hash="([0-9a-f]{64})"', source)
    assert pinned is not None
    assert tokens.O200K_BASE_SHA256 == pinned.group(1)
    packed = resources.files("livekit_history_plugin.history").joinpath("data")
    raw = gzip.decompress(packed.joinpath("o200k_base.tiktoken.gz").read_bytes())
    assert hashlib.sha256(raw).hexdigest() == pinned.group(1)


def test_encoding_parameters_equal_tiktokens_own(monkeypatch: pytest.MonkeyPatch) -> None:
    ranks = _bundled_ranks()
    # hand tiktoken's constructor our verified ranks instead of letting it download
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: ranks)
    official = openai_public.o200k_base()
    assert official["pat_str"] == tokens.O200K_BASE_PAT_STR
    assert official["special_tokens"] == tokens.O200K_BASE_SPECIAL_TOKENS
    enc = tokens.get_encoding()
    assert enc.n_vocab == tiktoken.Encoding(**official).n_vocab == 200019
    assert enc._mergeable_ranks == ranks


def test_loads_with_the_network_blocked(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("token counting tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_encoding", None)  # force a fresh load from the bundled file
    tokens.clear_cache()
    assert count_tokens("Hello, world!") == 4
    assert list(tmp_path.iterdir()) == []  # tiktoken's download cache was never touched


def test_known_ids() -> None:
    enc = tokens.get_encoding()
    assert enc.encode_ordinary("Hello, world!") == [13225, 11, 2375, 0]
    assert enc.decode(enc.encode_ordinary("こんにちは 👨‍👩‍👧")) == "こんにちは 👨‍👩‍👧"


def test_special_token_text_is_counted_as_plain_text() -> None:
    # the API never lets message content produce a special token
    assert count_tokens("<|endoftext|>") > 1


def test_cache_returns_the_same_count() -> None:
    tokens.clear_cache()
    text = "A caller asked about order 12345 on Monday."
    first = count_tokens(text)
    assert count_tokens(text) == first == len(tokens.get_encoding().encode_ordinary(text))
    assert count_tokens("") == 0


def test_cache_stays_bounded() -> None:
    cache = tokens._CountCache(max_chars=1_000)
    for i in range(500):
        cache.put(f"text number {i}", i)
    assert cache._chars <= 1_000
    assert cache.get("text number 499") == 499


def test_message_tokens() -> None:
    assert MESSAGE_OVERHEAD_TOKENS == 3
    assert message_tokens("user", "hi there") == 3 + 1 + count_tokens("hi there")
    assert message_tokens(Role.ASSISTANT, "ok") == message_tokens("assistant", "ok")
    assert message_tokens("user", "") == 4


@settings(max_examples=300, deadline=None)
@given(TEXTS, st.integers(min_value=0, max_value=40))
def test_truncate_fits_and_is_a_prefix(text: str, n: int) -> None:
    cut = truncate_to_tokens(text, n)
    assert count_tokens(cut) <= n
    assert text.startswith(cut)
    if count_tokens(text) <= n:
        assert cut == text


def test_truncate_never_splits_a_character() -> None:
    text = "👨‍👩‍👧‍👦" * 20
    for n in range(1, 30):
        cut = truncate_to_tokens(text, n)
        assert "\ufffd" not in cut
        assert count_tokens(cut) <= n


@settings(max_examples=400, deadline=None)
@given(TEXTS, st.sampled_from(list("aZ9.<[-\"'東👍")), TEXTS)
def test_counts_add_up_across_a_newline(head: str, first: str, tail: str) -> None:
    # what render and budget rely on: a piece ending in "\n" followed by a piece
    # starting with a non-space character costs the sum of the two
    a, b = head + "\n", first + tail
    assert count_tokens(a + b) == count_tokens(a) + count_tokens(b)
