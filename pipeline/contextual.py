"""Contextual chunks: the document title and heading path in force at a chunk, as a prefix for its embedding.

Pure and sync: from a Document's title and headings (found by sources) to a prefix that, with the chunk, fits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .records import Document
from .tokens import TokenCounter

__all__ = ["MAX_PREFIX_TOKENS", "PathTracker", "document_title", "fit_prefix", "prefix_elements", "prefix_reserve",
           "render_prefix"]

MAX_PREFIX_TOKENS = 64  # a prefix is context, not content: past this it would crowd the chunk out
SEPARATOR = " › "
_END = "\n\n"
_MAX_ELEMENT_CHARS = 200  # a "heading" longer than this is a paragraph someone marked up as one
_ATX_MARK = re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]+|$)")
_CLOSING_HASHES = re.compile(r"(?:^|[ \t]+)#+$")


def prefix_reserve(max_tokens: int) -> int:
    """Tokens chunks of a document with context leave free for the prefix: 64, or an eighth of a small limit."""
    return min(MAX_PREFIX_TOKENS, max_tokens // 8)


def document_title(doc: Document) -> str:
    """The metadata title (an HTML <title>, a .jsonl record's title), else the first level-1 heading."""
    title = doc.metadata.get("title")
    if isinstance(title, str) and title.strip():
        return " ".join(title.split())
    return next((words for _, level, words in doc.headings if level == 1), "")


def _key(words: str) -> str:
    return " ".join(_CLOSING_HASHES.sub("", _ATX_MARK.sub("", words.strip())).split()).casefold()


class PathTracker:
    """The title and heading path at each chunk start of one document; starts must not decrease.

    Walks the headings once for all the chunks of the document, whatever their number.
    """

    def __init__(self, doc: Document) -> None:
        self.title = document_title(doc)
        self.headings = doc.headings
        self._next = 0
        self._stack: list[tuple[int, str]] = []  # (level, words) of the open sections

    def path(self, text: str, start: int) -> list[str]:
        """The context of the chunk `text` that starts at offset `start`: title, then the sections it is in
        (its own leading heading included), a repeated element once."""
        content = start + len(text) - len(text.lstrip())
        while self._next < len(self.headings) and self.headings[self._next][0] <= content:
            _, level, words = self.headings[self._next]
            while self._stack and self._stack[-1][0] >= level:
                self._stack.pop()
            self._stack.append((level, words))
            self._next += 1
        path: list[str] = []
        for words in [self.title, *(w for _, w in self._stack)]:
            if words and (not path or _key(path[-1]) != _key(words)):
                path.append(words)
        return path


def prefix_elements(path: Sequence[str], text: str) -> list[str]:
    """The path less what the chunk already starts with (its first line: the title, or its own heading)."""
    lead = _key(text.lstrip().split("\n", 1)[0])
    return [words for words in path if _key(words) != lead]


def render_prefix(elements: Sequence[str]) -> str:
    return SEPARATOR.join(elements) + _END if elements else ""


def fit_prefix(elements: Sequence[str], text: str, text_tokens: int, counter: TokenCounter, *, max_tokens: int,
               cap: int) -> tuple[str, int]:
    """(prefix, tokens of prefix + text): the longest rendering of `elements` whose prefix costs at most `cap`
    tokens and keeps prefix + text within max_tokens, counted whole by `counter`.

    Outer elements go first (the title, then the outer sections), then the last one is cut at a word, in
    halves; ("", text_tokens) when nothing fits. text_tokens is counter.count(text).
    """
    parts = [w if len(w) <= _MAX_ELEMENT_CHARS else w[:_MAX_ELEMENT_CHARS].rstrip() + "…" for w in elements]
    while parts and cap > 0:
        prefix = render_prefix(parts)
        tokens = counter.count(prefix + text)
        if tokens <= max_tokens and tokens - text_tokens <= cap:
            return prefix, tokens
        if len(parts) > 1:
            parts = parts[1:]
            continue
        words = parts[0].removesuffix("…")
        half = words[: len(words) // 2]
        cut = half.rsplit(" ", 1)[0] if " " in half else half
        parts = [cut.rstrip() + "…"] if cut.strip() else []
    return "", text_tokens
