"""Exact o200k_base token counts, with no network access.

gpt-realtime, gpt-4o(-mini)-realtime and every other OpenAI realtime model use the
``o200k_base`` encoding. ``tiktoken`` is the reference implementation, but
``tiktoken.get_encoding("o200k_base")`` downloads the rank file from a blob store
on first use, which a voice agent in a locked-down network cannot do. We ship
the rank file inside this package (``history/data/o200k_base.tiktoken.gz``),
check its SHA-256 against the hash tiktoken itself pins for that file, and hand
it to ``tiktoken.Encoding``: the counts are tiktoken's own, so they are exact by
construction, and nothing is ever fetched.

Counting is cached per text, so the turns of a caller that come back on every
call are tokenized once per process.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import threading
from enum import Enum
from importlib import resources

import tiktoken

ENCODING_NAME = "o200k_base"

# The hash `tiktoken_ext/openai_public.py` pins for o200k_base.tiktoken.
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

# Copied from `tiktoken_ext/openai_public.py` (MIT); tests/history/test_tokens.py
# checks it is still identical to the installed tiktoken's.
O200K_BASE_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
O200K_BASE_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

_DATA_FILE = "o200k_base.tiktoken.gz"

# Per-message overhead, from OpenAI's cookbook "How to count tokens with tiktoken"
# (num_tokens_from_messages, the value it uses for gpt-4o and every later chat
# model): each message is framed as <|start|>{role}<|message|>{content}<|end|>,
# i.e. 3 framing tokens plus the tokens of the role name plus the content. OpenAI
# publishes no separate figure for realtime conversation items; they are rendered
# into the same chat format, so we use the same rule.
MESSAGE_OVERHEAD_TOKENS = 3
# Same source: every reply is primed with <|start|>assistant<|message|>.
REPLY_PRIMING_TOKENS = 3

# The cache holds at most this many characters of text (~8 MB of str payload for
# ASCII); past it the oldest half is dropped. Turn texts are capped at 8,000 chars
# on load, so this keeps well over a full 10k-turn history of typical voice turns.
_CACHE_MAX_CHARS = 8_000_000


class TokenizerDataError(RuntimeError):
    """The bundled o200k_base rank file is missing or does not match its pinned hash."""


_encoding: tiktoken.Encoding | None = None
_encoding_lock = threading.Lock()


def _load_ranks() -> dict[bytes, int]:
    try:
        data_dir = resources.files("livekit_history_plugin.history").joinpath("data")
        packed = data_dir.joinpath(_DATA_FILE).read_bytes()
        raw = gzip.decompress(packed)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TokenizerDataError(
            f"cannot read the bundled {ENCODING_NAME} rank file "
            f"(livekit_history_plugin/history/data/{_DATA_FILE}): {e}; reinstall the package"
        ) from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise TokenizerDataError(
            f"bundled {ENCODING_NAME} rank file has sha256 {digest}, expected "
            f"{O200K_BASE_SHA256}; the installation is corrupt, reinstall the package"
        )
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def get_encoding() -> tiktoken.Encoding:
    """The o200k_base encoding, built from the bundled file on first use (~0.3 s)."""
    global _encoding
    enc = _encoding
    if enc is not None:
        return enc
    with _encoding_lock:
        if _encoding is None:
            _encoding = tiktoken.Encoding(
                ENCODING_NAME,
                pat_str=O200K_BASE_PAT_STR,
                mergeable_ranks=_load_ranks(),
                special_tokens=O200K_BASE_SPECIAL_TOKENS,
            )
        return _encoding


def warm_up() -> None:
    """Build the encoding now (e.g. in the agent's prewarm) instead of on the first call."""
    get_encoding()


_warm_thread: threading.Thread | None = None


def warm_up_in_background() -> None:
    """Start building the encoding in a daemon thread, once per process; returns at once.

    `HistoryPlugin` calls this when it is built, and again on `attach` / `load`,
    so the ~0.3 s build overlaps the worker's idle time instead of a call's
    start. A failure (corrupt install) is raised again by the next
    `get_encoding()` on the path that needs it.
    """
    global _warm_thread
    if _encoding is not None or _warm_thread is not None:
        return
    with _encoding_lock:
        if _encoding is not None or _warm_thread is not None:
            return
        _warm_thread = threading.Thread(
            target=_build_quietly, name="lhp-tokenizer-warm-up", daemon=True
        )
        _warm_thread.start()


def _build_quietly() -> None:
    try:
        get_encoding()
    except TokenizerDataError:
        pass  # raised to the caller that needs the encoding


def encoding_ready() -> bool:
    """True once the encoding is built (counting never waits then)."""
    return _encoding is not None


async def wait_ready() -> tiktoken.Encoding:
    """The encoding, waiting for the background build in a worker thread, so the
    event loop keeps running meanwhile; at once when it is built."""
    enc = _encoding
    if enc is not None:
        return enc
    warm_up_in_background()
    thread = _warm_thread
    if thread is not None:
        # the build is that thread's: waiting on the lock from another thread could
        # win the lock first and build it twice as slow under a loaded GIL
        await asyncio.to_thread(thread.join)
    enc = _encoding
    return enc if enc is not None else await asyncio.to_thread(get_encoding)


class _CountCache:
    """text -> token count, bounded by the characters it holds.

    A plain dict: reads are lock-free (atomic under the GIL) because they are the
    hot path; only eviction takes the lock. Eviction drops the oldest-inserted
    half, which is enough for "the same caller's turns come back every call".
    """

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, text: str) -> int | None:
        return self._counts.get(text)

    def put(self, text: str, count: int) -> None:
        if len(text) > self._max_chars // 4:
            return
        with self._lock:
            if text in self._counts:
                return
            self._counts[text] = count
            self._chars += len(text)
            if self._chars > self._max_chars:
                self._evict_half()

    def _evict_half(self) -> None:
        target = self._max_chars // 2
        for key in list(self._counts):
            if self._chars <= target:
                break
            del self._counts[key]
            self._chars -= len(key)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._counts)


_cache = _CountCache(_CACHE_MAX_CHARS)


def count_tokens(text: str) -> int:
    """Exact o200k_base token count of `text`.

    Text that looks like a special token (``<|endoftext|>``) is counted as the
    plain text it is, as the API does for message content.
    """
    if not text:
        return 0
    cached = _cache.get(text)
    if cached is not None:
        return cached
    n = len(get_encoding().encode_ordinary(text))
    _cache.put(text, n)
    return n


def clear_cache() -> None:
    """Forget cached counts (tests, or to release memory)."""
    _cache.clear()


def truncate_to_tokens(text: str, n: int) -> str:
    """The longest prefix of `text`, cut on a token boundary, with at most `n` tokens.

    ``count_tokens(result) <= n`` always holds: a cut can split a multi-byte
    character (the partial bytes are dropped) and a prefix can re-tokenize
    differently, so the result is re-counted and shortened until it fits.
    """
    if n <= 0:
        return ""
    enc = get_encoding()
    tokens = enc.encode_ordinary(text)
    if len(tokens) <= n:
        return text
    keep = n
    while keep > 0:
        prefix = enc.decode_bytes(tokens[:keep]).decode("utf-8", errors="ignore")
        if count_tokens(prefix) <= n:
            return prefix
        keep -= 1
    return ""


def _role_name(role: str | Enum) -> str:
    return str(role.value) if isinstance(role, Enum) else role


def message_tokens(role: str | Enum, text: str) -> int:
    """Tokens one chat/realtime message takes in the context window.

    ``MESSAGE_OVERHEAD_TOKENS`` framing tokens + the role name + the content.
    `role` is the wire role ("user", "assistant", "system") or a `Role`.
    """
    return MESSAGE_OVERHEAD_TOKENS + count_tokens(_role_name(role)) + count_tokens(text)
