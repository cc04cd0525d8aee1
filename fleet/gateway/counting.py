"""Prompt token counts for routing: exact with the profile's tokenizer, estimated without.

Without a tokenizer file the count is ``ceil(characters / 4)``, the usual rule of thumb
for English text with BPE vocabularies; it over-counts code and under-counts CJK text,
so set the profile's ``tokenizer`` where the over-long check must be exact. A chat
request also pays for its template: ``CHAT_MESSAGE_OVERHEAD`` tokens a message plus
``CHAT_REPLY_OVERHEAD`` for the assistant header (ChatML: ``<|im_start|>role\\n`` ...
``<|im_end|>\\n``), an estimate that keeps the gateway's limit check close to vLLM's.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Protocol

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
CHAT_MESSAGE_OVERHEAD = 4
CHAT_REPLY_OVERHEAD = 3


class TokenCounter(Protocol):
    exact: bool

    def count(self, text: str) -> int: ...


class EstimateCounter:
    """``ceil(len(text) / 4)``: free, and within a small factor for most prompts."""

    exact = False

    def count(self, text: str) -> int:
        return -(-len(text) // CHARS_PER_TOKEN)

    def __reduce__(self) -> str:
        return "ESTIMATE"


class TokenizerCounter:
    """Counts with a Hugging Face ``tokenizer.json``, as vLLM will."""

    exact = True

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        self.path = path
        self._tokenizer = Tokenizer.from_file(path)

    def count(self, text: str) -> int:
        try:
            encoding = self._tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            # Lone surrogates (valid JSON escapes, invalid UTF-8) cannot cross into Rust.
            encoding = self._tokenizer.encode(text.encode("utf-8", "replace").decode(), add_special_tokens=False)
        return len(encoding.ids)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """A routing table built in the gateway's database worker travels with the path alone.

        The receiving process loads the file once (``counter_for`` caches it), instead of
        a pickle of the whole vocabulary arriving with every refresh.
        """
        return counter_for, (self.path,)


ESTIMATE = EstimateCounter()


@lru_cache(maxsize=64)
def counter_for(path: str) -> TokenCounter:
    """The counter for a profile's ``tokenizer`` setting; loaded once, off the request path.

    An unreadable file falls back to the estimate with a warning, so a typo in the admin
    degrades routing accuracy instead of taking the gateway down.
    """
    if not path:
        return ESTIMATE
    try:
        return TokenizerCounter(path)
    except Exception as exc:  # tokenizers raises plain Exception for unreadable files
        logger.warning("tokenizer %s unusable (%s); estimating tokens as characters / %d", path, exc, CHARS_PER_TOKEN)
        return ESTIMATE
