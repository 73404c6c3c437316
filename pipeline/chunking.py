"""Chunking: split Documents into Chunks that fit the model's token limit, with offsets into the source.

Pure and sync; knows nothing of providers, Parquet or FAISS. Counting comes from pipeline.tokens.

How a chunk is placed: a fitter estimates how far it may reach within the target (learning the text's
characters per token from the counts made so far); the cut goes at the best boundary in the back half of
that reach (blank line or heading, then line, then sentence), else at the last word start, else inside the
word; then the counter checks the whole chunk, overlap included, against max_tokens, and the plan shrinks
until it passes. So the limit holds whatever the estimate was; pieces' counts are never summed.

Contextual chunks (ChunkSettings.contextual): a document with a title or headings is chunked prefix_reserve
tokens short of the limit (unless it fits whole in one chunk), and each chunk is embedded with its title and
heading path in front (contextual.py), the whole counted again against the limit.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .config import ChunkingConfig
from .contextual import PathTracker, fit_prefix, prefix_elements, prefix_reserve
from .errors import ConfigError
from .records import Chunk, Document, ModelSpec
from .tokens import TokenCounter, fitter_for

__all__ = ["ChunkSettings", "Span", "chunk_document", "chunk_stream", "chunk_text", "split_for_retry"]

_MIN_FILL = 0.5  # a heading, line or sentence cut must keep at least this share of the reachable body
_REPLANS = 8  # shrinking re-plans before falling back to bisection on the exact count
_FIRST_WINDOW = 512  # characters searched backward for a boundary before widening the search

# Every boundary pattern ends where the next piece starts: after the whitespace, before a non-space.
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*(?=\S)|\n(?=[^\S\n]{0,3}#{1,6}[ \t])")
_LINE = re.compile(r"\n\s*(?=\S)")
_SENTENCE = re.compile(r"[.!?…][\"'»”’)\]]*\s+(?=\S)|[。！？](?=\S)")
_WORD = re.compile(r"\s+(?=\S)")
_NON_SPACE = re.compile(r"\S")
_HEADING_LINE = re.compile(r"[^\S\n]{0,3}#{1,6}[ \t][^\n]*\n")
_ABBREVIATIONS = frozenset({
    "e.g", "i.e", "cf", "vs", "mr", "mrs", "ms", "dr", "prof", "st", "no", "fig", "eq", "vol", "pp", "approx",
    "т.е", "т.д", "т.п", "т.к", "т.н", "др", "пр", "см", "ср", "стр", "рис", "табл", "гл", "г", "гг", "в", "вв",
    "ул", "д", "им", "проф", "доц", "руб", "коп", "тыс", "млн", "млрд", "напр",
})
_OPENERS = "\"'«“(["


@dataclass(frozen=True)
class ChunkSettings:
    """Token sizes for one model: a hard limit, the preferred size, and the overlap between chunks."""

    max_tokens: int  # hard limit (model's max_input_tokens)
    target_tokens: int  # preferred size (<= max_tokens)
    overlap_tokens: int = 0
    contextual: bool = False  # embed each chunk with its document's title and heading path in front

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"chunking: max_tokens must be positive, got {self.max_tokens}")
        if not 0 < self.target_tokens <= self.max_tokens:
            raise ConfigError(
                f"chunking: target_tokens {self.target_tokens} must be between 1 and the model's "
                f"limit of {self.max_tokens} tokens"
            )
        if self.overlap_tokens < 0 or 2 * self.overlap_tokens >= self.target_tokens:
            raise ConfigError(
                f"chunking: overlap_tokens {self.overlap_tokens} must be under half of target_tokens "
                f"{self.target_tokens}"
            )

    @classmethod
    def for_model(cls, spec: ModelSpec, cfg: ChunkingConfig, *, contextual: bool = False) -> ChunkSettings:
        """Settings from the registry limit and [chunking]; target 0 means the model's limit.

        `contextual` is decided by the caller ([chunking] contextual may be unset: see RunContext).
        Raises ConfigError if the target exceeds the limit or the overlap is half the target or more.
        """
        target = cfg.target_tokens or spec.max_input_tokens
        if target > spec.max_input_tokens:
            raise ConfigError(
                f"[chunking] target_tokens {target} exceeds model {spec.name!r}'s limit of "
                f"{spec.max_input_tokens} tokens"
            )
        return cls(max_tokens=spec.max_input_tokens, target_tokens=target, overlap_tokens=cfg.overlap_tokens,
                   contextual=contextual)

    def reserving(self, tokens: int) -> ChunkSettings:
        """These settings with `tokens` fewer for the chunk (the overlap shrinks if it must, to stay valid)."""
        if tokens <= 0:
            return self
        limit = self.max_tokens - tokens
        target = min(self.target_tokens, limit)
        return ChunkSettings(max_tokens=limit, target_tokens=target,
                             overlap_tokens=min(self.overlap_tokens, (target - 1) // 2), contextual=self.contextual)


@dataclass(frozen=True)
class Span:
    """A chunk's place in the source: text[start:end]; its first overlap_chars repeat the previous chunk."""

    start: int
    end: int
    token_count: int
    overlap_chars: int


def _last_boundary(pattern: re.Pattern[str], text: str, lo: int, hi: int,
                   accept: Callable[[str, re.Match[str]], bool] | None = None) -> int:
    """The last accepted boundary (match end) in (lo, hi], or -1; searches back from hi in widening windows."""
    window = _FIRST_WINDOW
    endpos = min(len(text), hi + 1)  # one character of look-ahead past hi
    while True:
        a = max(lo, hi - window)
        for m in reversed(list(pattern.finditer(text, a, endpos))):
            if lo < m.end() <= hi and (accept is None or accept(text, m)):
                return m.end()
        if a == lo:
            return -1
        window *= 8


def _not_after_heading(text: str, m: re.Match[str]) -> bool:
    """A break right after a markdown heading would leave the heading at the end of a chunk, cut off."""
    newline = text.rfind("\n", max(0, m.start() - 256), m.start())
    if newline < 0 and m.start() > 256:
        return True  # a line that long is prose, not a heading
    return _HEADING_LINE.match(text, newline + 1, m.start() + 1) is None


def _is_sentence_end(text: str, m: re.Match[str]) -> bool:
    """Filters abbreviations and initials out of '.' matches; '!', '?' and '…' always end a sentence."""
    start = m.start()
    if text[start] != ".":
        return True
    if m.end() < len(text) and text[m.end()].islower():
        return False
    k = start
    while k > 0 and start - k < 12 and not text[k - 1].isspace():
        k -= 1
    word = text[k:start].lstrip(_OPENERS).lower()
    return not (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()))


def _inside_word_cut(text: str, pos: int, f: int) -> int:
    """A cut at f, moved left off combining marks and out of CRLF when that keeps the body non-empty."""
    cut = f
    while cut - 1 > pos and unicodedata.combining(text[cut]):
        cut -= 1
    if cut - 1 > pos and text[cut - 1] == "\r" and text[cut] == "\n":
        cut -= 1
    return cut


def _choose_cut(text: str, pos: int, f: int) -> int:
    """The best cut in (pos, f] for a body starting at pos that may reach f (pos < f < len(text))."""
    m = _NON_SPACE.search(text, pos, f)
    if m is None:
        return f  # the reach is all whitespace: nothing better to keep together
    content = m.start()  # cuts stay past it, so no body is whitespace only
    half = max(content, pos + int((f - pos) * _MIN_FILL))
    for pattern in (_PARAGRAPH, _LINE):
        cut = _last_boundary(pattern, text, half, f, _not_after_heading)
        if cut > 0:
            return cut
    cut = _last_boundary(_SENTENCE, text, half, f, _is_sentence_end)
    if cut > 0:
        return cut
    if f > content + 1 and (text[f - 1].isspace() or text[f].isspace()):
        return f  # inside or at a run of whitespace: as good as a word boundary
    cut = _last_boundary(_WORD, text, content, f)
    if cut > 0:
        return cut
    return _inside_word_cut(text, content, f)


def _content_end(text: str) -> int:
    """The offset just past the last non-whitespace character (0 for blank text), without copying text."""
    end = len(text)
    while end > 0:
        a = max(0, end - 4096)
        stripped = len(text[a:end].rstrip())
        if stripped:
            return a + stripped
        end = a
    return 0


class _NeedMore(Exception):
    """A stream window was asked about text past its end."""


class _Chunker:
    """One pass over one text; the fitter learns the text's density from chunk to chunk."""

    def __init__(self, text: str, settings: ChunkSettings, counter: TokenCounter, *, final: bool = True) -> None:
        self.text = text
        self.settings = settings
        self.counter = counter
        self.fitter = fitter_for(counter, text)
        self.observe: Callable[[int, int, int], None] | None = getattr(self.fitter, "observe", None)
        # a window of a stream (final=False) has more text after it: no chunk may reach its end, and its
        # trailing whitespace is not the text's
        self.final = final
        self.content_end = _content_end(text) if final else len(text) + 1
        self.resume = (0, -1, 0)  # where a window stopped: body start, previous body start, its tokens
        self.starved = False  # it stopped because only whitespace was left in it
        self.need_room = False  # it stopped because a chunk might reach past its end

    def count(self, start: int, end: int) -> int:
        return self.counter.count(self.text[start:end])

    def _reach(self, start: int, budget: int, failed: int) -> int:
        """The fitter's reach, short of a known failure; a window cannot answer past its own end."""
        f = min(self.fitter.fit_end(start, budget), failed - 1)
        if f >= len(self.text) and not self.final:
            raise _NeedMore
        return f

    def _blank_body(self, pos: int, end: int) -> bool:
        return end < self.content_end and _NON_SPACE.search(self.text, pos, end) is None

    def place(self, start: int, pos: int) -> tuple[int, int] | None:
        """(end, tokens) of the chunk text[start:end] whose body starts at pos, or None if none fits."""
        text, n, limit = self.text, len(self.text), self.settings.max_tokens
        budget = self.settings.target_tokens
        failed, reach = n + 1, pos
        for _ in range(_REPLANS):
            f = self._reach(start, budget, failed)
            if f <= pos:
                break
            reach = max(reach, f)
            # whitespace after the last word goes with the last chunk, never alone
            cut = n if f >= self.content_end else _choose_cut(text, pos, f)
            if self._blank_body(pos, cut):
                break  # a blank body with text after it: only if the exact count says nothing more fits
            tokens = self.count(start, cut)
            if self.observe is not None:
                self.observe(start, cut, tokens)
            if tokens <= limit:
                if cut < n and self.observe is not None:
                    return self._refill(start, pos, budget, f, (cut, tokens))
                return cut, tokens
            # if the whole tail did not fit, end before the last word, so it takes the whitespace along
            failed = min(failed, self.content_end if cut == n and self.content_end > pos + 1 else cut)
            budget -= max(1, tokens - limit)
        # the fitter misjudged: bisect on the exact count, within a few times what it thought reachable
        return self._bisect(start, pos, min(failed, pos + 4 * max(reach - pos, 16 * limit)))

    def _refill(self, start: int, pos: int, budget: int, f: int, placed: tuple[int, int]) -> tuple[int, int]:
        """One more try when the count taught the fitter that the chunk could reach well past f."""
        f2 = self._reach(start, budget, len(self.text) + 1)
        if f2 <= f + (f - start) // 16:
            return placed
        cut = len(self.text) if f2 >= self.content_end else _choose_cut(self.text, pos, f2)
        if cut <= placed[0]:
            return placed
        tokens = self.count(start, cut)
        if self.observe is not None:
            self.observe(start, cut, tokens)
        return (cut, tokens) if tokens <= self.settings.max_tokens else placed

    def _bisect(self, start: int, pos: int, failed: int) -> tuple[int, int] | None:
        """Exact fallback: the longest text[start:c] with c < failed that the counter accepts."""
        limit = self.settings.max_tokens
        lo, hi = pos, min(failed, len(self.text) + 1)
        best: tuple[int, int] | None = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            tokens = self.count(start, mid)
            if tokens <= limit:
                lo, best = mid, (mid, tokens)
            else:
                hi = mid
        if best is None:
            return None
        end = best[0]
        if end == len(self.text) and not self.final:
            raise _NeedMore
        if end < len(self.text):
            cut = _choose_cut(self.text, pos, end)
            if cut != end:
                tokens = self.count(start, cut)
                if tokens <= limit:
                    return cut, tokens
        return best

    def overlap_start(self, prev_start: int, pos: int, prev_tokens: int) -> int:
        """Where the overlap into the previous body (prev_start, pos) begins: about overlap_tokens back."""
        want = self.settings.overlap_tokens
        if want <= 0 or pos <= prev_start + 1:
            return pos
        chars_per_token = (pos - prev_start) / max(1, prev_tokens)
        start = max(prev_start + 1, pos - int(want * chars_per_token))
        # begin the overlap at a word when the overlap has one, so it does not open on half a word
        m = _WORD.search(self.text, start, pos)
        if m is not None and m.end() < pos:
            return m.end()
        return _inside_word_cut(self.text, prev_start, start) if start < pos else pos

    def spans(self, pos: int = 0, prev_body: int = -1, prev_tokens: int = 0) -> Iterator[Span]:
        """Spans from body start pos on; a stream window stops where it needs more text (see resume)."""
        text = self.text
        if self.final and self.content_end == 0:
            return
        content_ahead = -1
        while pos < len(text):
            if not self.final and content_ahead < pos:
                m = _NON_SPACE.search(text, pos)
                content_ahead = m.start() if m is not None else len(text)
                # nothing comes out of a window while only whitespace is ahead: the rest may be blank
                self.starved = content_ahead == len(text)
                if self.starved:
                    break
            start = pos if prev_body < 0 else self.overlap_start(prev_body, pos, prev_tokens)
            try:
                placed = self.place(start, pos)
                if start < pos and (placed is None or self._blank_body(pos, placed[0])):
                    start = pos  # the overlap left no room: this chunk goes without one
                    placed = self.place(start, pos)
            except _NeedMore:
                self.need_room = True
                break
            if placed is None:
                raise ConfigError(
                    f"chunking: max_tokens {self.settings.max_tokens} cannot hold even one character at "
                    f"offset {pos} with counter {self.counter.name!r}"
                )
            end, tokens = placed
            yield Span(start=start, end=end, token_count=tokens, overlap_chars=pos - start)
            prev_body, prev_tokens = pos, tokens
            pos = end
        self.resume = (pos, prev_body, prev_tokens)


def chunk_text(text: str, settings: ChunkSettings, counter: TokenCounter) -> Iterator[Span]:
    """Spans that tile text (less their overlaps), each within settings.max_tokens by counter.count.

    Blank text yields nothing. Raises ConfigError if the limit cannot hold a single character.
    """
    return _Chunker(text, settings, counter).spans()


def chunk_stream(pieces: Iterable[str], settings: ChunkSettings, counter: TokenCounter, *,
                 window_chars: int = 1 << 20) -> Iterator[tuple[Span, str]]:
    """chunk_text over a text given in pieces (a file read in blocks): (span, chunk text), offsets in the whole.

    Holds about window_chars of text, more while one piece, one chunk or a run of whitespace needs it; a
    chunk comes out once the text after it is in, so chunks obey every rule of chunk_text.
    """
    pieces_left = iter(pieces)
    buf, base, final = "", 0, False
    state = (0, -1, 0)  # body start, previous body start, previous chunk's tokens, relative to buf
    content_ahead = False  # whether buf holds non-whitespace after the next body start
    need = window_chars  # characters wanted after the next body start before chunking again
    while True:
        parts, size = [buf], len(buf)
        while not final and (size - state[0] < need or not content_ahead):
            piece = next(pieces_left, None)
            if piece is None:
                final = True
            else:
                parts.append(piece)
                size += len(piece)
                content_ahead = content_ahead or (bool(piece) and not piece.isspace())
        buf = "".join(parts)
        chunker = _Chunker(buf, settings, counter, final=final)
        for span in chunker.spans(*state):
            yield (Span(span.start + base, span.end + base, span.token_count, span.overlap_chars),
                   buf[span.start : span.end])
        if final:
            return
        pos, prev_body, prev_tokens = chunker.resume
        content_ahead = not chunker.starved
        # a chunk that could reach past the window's end waits for a window twice the room it had
        need = max(window_chars, 2 * (len(buf) - pos)) if chunker.need_room else window_chars
        keep = prev_body if prev_body >= 0 else pos  # the overlap of the next chunk reaches back into it
        buf, base = buf[keep:], base + keep
        state = (pos - keep, prev_body - keep if prev_body >= 0 else -1, prev_tokens)


def chunk_document(doc: Document, settings: ChunkSettings, counter: TokenCounter) -> list[Chunk]:
    """A Document's Chunks in order, ids f"{doc_id}:{i}", each carrying its offsets and content hash.

    With settings.contextual, a document with a title or headings gets contextual chunks (see the module).
    """
    if settings.contextual and (doc.headings or doc.metadata.get("title")):
        return _contextual_chunks(doc, settings, counter)
    return [_chunk(doc, i, span) for i, span in enumerate(chunk_text(doc.text, settings, counter))]


def _chunk(doc: Document, i: int, span: Span, context: str = "", token_count: int | None = None,
           metadata: dict | None = None) -> Chunk:
    """doc's i-th Chunk at span; its hash is of what is embedded (context + text), its text its own."""
    piece = doc.text[span.start : span.end]
    return Chunk(
        chunk_id=f"{doc.doc_id}:{i}",
        doc_id=doc.doc_id,
        source_path=doc.source_path,
        chunk_index=i,
        char_start=span.start,
        char_end=span.end,
        text=piece,
        token_count=span.token_count if token_count is None else token_count,
        content_hash=hashlib.sha256((context + piece).encode("utf-8", "surrogatepass")).hexdigest(),
        doc_type=doc.doc_type,
        overlap_chars=span.overlap_chars,
        metadata=doc.metadata if metadata is None else metadata,
        context=context,
    )


def _contextual_chunks(doc: Document, settings: ChunkSettings, counter: TokenCounter) -> list[Chunk]:
    """chunk_document with a title and heading path embedded in front of each chunk, within the limit.

    text, char_start and char_end stay the chunk's own; content_hash and token_count are those of what is
    embedded (Chunk.embed_text), so the vector cache serves a chunk without context across the setting.
    """
    spans = chunk_text(doc.text, settings, counter)
    first = next(spans, None)
    if first is None:
        return []
    reserve = prefix_reserve(settings.max_tokens)
    if first.end < len(doc.text):  # more than one chunk: make room for the prefixes
        spans = chunk_text(doc.text, settings.reserving(reserve), counter)
    else:  # the whole document fits in one chunk: its boundaries stay, the prefix takes what room is left
        spans = iter([first])
    tracker = PathTracker(doc)
    chunks: list[Chunk] = []
    for i, span in enumerate(spans):
        piece = doc.text[span.start : span.end]
        path = tracker.path(piece, span.start)
        prefix, tokens = fit_prefix(prefix_elements(path, piece), piece, span.token_count, counter,
                                    max_tokens=settings.max_tokens, cap=reserve)
        chunks.append(_chunk(doc, i, span, prefix, tokens, {**doc.metadata, "headings": path} if path else None))
    return chunks


def _nearest(pattern: re.Pattern[str], text: str, lo: int, hi: int, mid: int) -> int:
    best = -1
    for m in pattern.finditer(text, lo, min(len(text), hi + 1)):
        end = m.end()
        if lo < end <= hi and (best < 0 or abs(end - mid) < abs(best - mid)):
            best = end
    return best


def split_for_retry(text: str, counter: TokenCounter) -> list[tuple[int, int]]:
    """Two pieces (start, end) tiling text, cut at the best natural boundary near its token middle.

    For a text a server rejected as too long. Each piece is strictly shorter than text; a text of one
    character comes back whole, an empty one as no pieces.
    """
    n = len(text)
    if n < 2:
        return [(0, n)] if n else []
    # the middle by tokens, not characters, so that a text half Russian and half English splits evenly
    lo, hi = 1, n - 1
    for _ in range(12):
        if hi - lo < 2:
            break
        mid = (lo + hi) // 2
        if counter.count(text[:mid]) < counter.count(text[mid:]):
            lo = mid
        else:
            hi = mid
    middle = (lo + hi) // 2
    quarter = max(1, n // 4)
    a, b = max(1, middle - quarter), min(n - 1, middle + quarter)
    for pattern in (_PARAGRAPH, _LINE, _SENTENCE, _WORD):
        cut = _nearest(pattern, text, a - 1, b, middle)
        if 0 < cut < n:
            return [(0, cut), (cut, n)]
    cut = max(1, min(n - 1, middle))
    if cut > 1 and unicodedata.combining(text[cut]):
        cut = _inside_word_cut(text, 0, cut)
    return [(0, cut), (cut, n)]
